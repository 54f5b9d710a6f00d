//! Ruby: classes, modules, methods (`def self.x` too), `require`/`require_relative`,
//! `include` (a base), calls with and without receivers, and `it`/`test` blocks as tests.

use tree_sitter::Node;

use super::{Cx, Flow, Scope, line, named_children, split_path, unquote};
use crate::facts::{Import, SymbolKind, TypeHint};

pub(super) fn visit(cx: &mut Cx<'_>, node: Node<'_>, scope: Scope) -> Flow {
    match node.kind() {
        "class" | "module" => {
            let Some(name_node) = node.child_by_field_name("name") else {
                return Flow::Descend(scope);
            };
            let path = split_path(cx.text(name_node));
            let name = path.last().cloned().unwrap_or_default();
            let kind = if node.kind() == "class" {
                SymbolKind::Type
            } else {
                SymbolKind::Module
            };
            let (index, mut inner) = cx.define(node, &name, kind, scope);
            if kind == SymbolKind::Module {
                // methods in a module are methods of the module (mixins)
                inner.class = Some(index);
            }
            if let Some(sup) = node.child_by_field_name("superclass")
                && let Some(t) = sup.named_child(0).and_then(|t| cx.type_path(t))
            {
                cx.sym(index).bases.push(t);
            }
            Flow::Descend(inner)
        }
        "method" | "singleton_method" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let is_test = cx.test_file && name.starts_with("test_");
            let kind = cx.fn_kind(scope, is_test);
            let (_, inner) = cx.define(node, name, kind, scope);
            Flow::Descend(inner)
        }
        "call" => {
            let method = cx.field_text(node, "method").unwrap_or("");
            let receiver = node.child_by_field_name("receiver");
            let args = node.child_by_field_name("arguments");
            let first_arg = args.and_then(|a| a.named_child(0));
            if receiver.is_none() {
                match method {
                    "require" | "require_relative" | "load" => {
                        if let Some(a) = first_arg.filter(|a| a.kind() == "string") {
                            let mut spec = unquote(cx.text(a));
                            if method == "require_relative" {
                                spec = format!("./{spec}");
                            }
                            cx.import(
                                node,
                                scope,
                                Import {
                                    glob: true,
                                    ..Import::new(line(node), vec![spec])
                                },
                            );
                        }
                        return Flow::Skip;
                    }
                    "include" | "extend" | "prepend" => {
                        if let (Some(class), Some(a)) = (scope.class, first_arg)
                            && let Some(t) = cx.type_path(a)
                        {
                            cx.sym(class).bases.push(t);
                        }
                        return Flow::Skip;
                    }
                    "it" | "test" | "specify" | "scenario" => {
                        if let Some(a) = first_arg.filter(|a| a.kind() == "string") {
                            let name = unquote(cx.text(a));
                            let (_, inner) = cx.define(node, &name, SymbolKind::Test, scope);
                            return Flow::Descend(inner);
                        }
                    }
                    "attr_accessor" | "attr_reader" | "attr_writer" | "private" | "public"
                    | "protected" | "describe" | "context" | "puts" | "raise" | "p" => {
                        return Flow::Descend(scope);
                    }
                    _ => {}
                }
                cx.call(node, scope, vec![method.to_string()], false);
                return Flow::Descend(scope);
            }
            let recv = receiver.unwrap_or(node);
            let mut path = Vec::new();
            let opaque = match cx.callee_path(recv) {
                Some((p, false)) => {
                    path = p;
                    false
                }
                _ => true,
            };
            if method == "new" && !opaque {
                cx.call(node, scope, path, false);
            } else {
                path.push(method.to_string());
                cx.call(node, scope, path, opaque);
            }
            Flow::Descend(scope)
        }
        "assignment" => {
            if let (Some(left), Some(right)) = (
                node.child_by_field_name("left"),
                node.child_by_field_name("right"),
            ) && right.kind() == "call"
                && cx.field_text(right, "method") == Some("new")
                && let Some(t) = right
                    .child_by_field_name("receiver")
                    .and_then(|r| cx.type_path(r))
            {
                match left.kind() {
                    "identifier" => cx.local(scope, cx.text(left), TypeHint::Declared(t)),
                    "instance_variable" => cx.field(
                        scope,
                        cx.text(left).trim_start_matches('@'),
                        TypeHint::Declared(t),
                    ),
                    _ => {}
                }
            }
            Flow::Descend(scope)
        }
        _ => {
            let _ = named_children;
            Flow::Descend(scope)
        }
    }
}
