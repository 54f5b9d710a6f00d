//! Go: package clause, functions, methods (the receiver type is the owner), struct and
//! interface types (embedded fields count as bases), imports, calls and typed variables.

use tree_sitter::Node;

use super::{Cx, Flow, Scope, line, named_children, unquote};
use crate::facts::{Import, SymbolKind, TypeHint};

pub(super) fn visit(cx: &mut Cx<'_>, node: Node<'_>, scope: Scope) -> Flow {
    match node.kind() {
        "package_clause" => {
            if let Some(n) = named_children(node).first() {
                cx.facts.package = Some(cx.text(*n).to_string());
            }
            Flow::Skip
        }
        "function_declaration" | "method_declaration" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let is_test = cx.test_file
                && ["Test", "Benchmark", "Example", "Fuzz"]
                    .iter()
                    .any(|p| name.starts_with(p))
                && node.kind() == "function_declaration";
            let mut fscope = scope;
            let mut receiver = None;
            if node.kind() == "method_declaration"
                && let Some(recv) = node.child_by_field_name("receiver")
                && let Some(decl) = named_children(recv)
                    .into_iter()
                    .find(|c| c.kind() == "parameter_declaration")
                && let Some(ty) = decl
                    .child_by_field_name("type")
                    .and_then(|t| cx.type_path(t))
            {
                fscope.owner = Some(cx.owners.len() as u32);
                cx.owners.push(ty.clone());
                receiver = decl
                    .child_by_field_name("name")
                    .map(|n| (cx.text(n).to_string(), ty));
            }
            let kind = if is_test {
                SymbolKind::Test
            } else if fscope.owner.is_some() {
                SymbolKind::Method
            } else {
                SymbolKind::Function
            };
            let (index, inner) = cx.define(node, name, kind, fscope);
            if let Some((rname, ty)) = receiver {
                cx.local(inner, &rname, TypeHint::Declared(ty));
            }
            if let Some(result) = node.child_by_field_name("result") {
                let first = if result.kind() == "parameter_list" {
                    named_children(result)
                        .first()
                        .and_then(|p| p.child_by_field_name("type"))
                } else {
                    Some(result)
                };
                if let Some(t) = first.and_then(|t| cx.type_path(t)) {
                    cx.sym(index).ret = Some(t);
                }
            }
            if let Some(params) = node.child_by_field_name("parameters") {
                for p in named_children(params) {
                    let Some(t) = p.child_by_field_name("type").and_then(|t| cx.type_path(t))
                    else {
                        continue;
                    };
                    let mut cursor = p.walk();
                    for n in p.children_by_field_name("name", &mut cursor) {
                        cx.local(inner, cx.text(n), TypeHint::Declared(t.clone()));
                    }
                }
            }
            let mut inner = inner;
            inner.owner = None;
            Flow::Descend(inner)
        }
        "type_spec" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let Some(ty) = node.child_by_field_name("type") else {
                return Flow::Skip;
            };
            if !matches!(ty.kind(), "struct_type" | "interface_type") {
                return Flow::Skip;
            }
            let (index, inner) = cx.define(node, name, SymbolKind::Type, scope);
            for list in named_children(ty) {
                for f in named_children(list) {
                    match f.kind() {
                        "field_declaration" => {
                            let Some(t) =
                                f.child_by_field_name("type").and_then(|t| cx.type_path(t))
                            else {
                                continue;
                            };
                            let mut cursor = f.walk();
                            let names: Vec<String> = f
                                .children_by_field_name("name", &mut cursor)
                                .map(|n| cx.text(n).to_string())
                                .collect();
                            if names.is_empty() {
                                cx.sym(index).bases.push(t);
                            } else {
                                for n in names {
                                    cx.sym(index)
                                        .locals
                                        .push((n, TypeHint::Declared(t.clone())));
                                }
                            }
                        }
                        "type_elem" | "interface_type_name" | "constraint_elem" => {
                            if let Some(t) = f.named_child(0).and_then(|t| cx.type_path(t)) {
                                cx.sym(index).bases.push(t);
                            }
                        }
                        "method_elem" | "method_spec" => {
                            if let Some(n) = cx.field_text(f, "name") {
                                cx.define(f, n, SymbolKind::Method, inner);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Flow::Skip
        }
        "call_expression" => {
            if let Some(f) = node.child_by_field_name("function") {
                cx.call_expr(node, scope, f);
            }
            Flow::Descend(scope)
        }
        "import_spec" => {
            let Some(path) = node.child_by_field_name("path") else {
                return Flow::Skip;
            };
            let spec = unquote(cx.text(path));
            let explicit = cx.field_text(node, "name");
            let (alias, glob) = match explicit {
                Some(".") => (None, true),
                Some("_") => return Flow::Skip,
                Some(a) => (Some(a.to_string()), false),
                None => (spec.rsplit('/').next().map(str::to_string), false),
            };
            cx.import(
                node,
                scope,
                Import {
                    alias,
                    glob,
                    ..Import::new(line(node), vec![spec])
                },
            );
            Flow::Skip
        }
        "short_var_declaration" | "assignment_statement" => {
            let (Some(left), Some(right)) = (
                node.child_by_field_name("left"),
                node.child_by_field_name("right"),
            ) else {
                return Flow::Descend(scope);
            };
            let lefts = named_children(left);
            let rights = named_children(right);
            if let (Some(l), Some(r)) = (lefts.first(), rights.first())
                && l.kind() == "identifier"
                && let Some(h) = value_hint(cx, *r)
            {
                cx.local(scope, cx.text(*l), h);
            }
            Flow::Descend(scope)
        }
        "var_spec" => {
            let hint = match node
                .child_by_field_name("type")
                .and_then(|t| cx.type_path(t))
            {
                Some(t) => Some(TypeHint::Declared(t)),
                None => node
                    .child_by_field_name("value")
                    .and_then(|v| named_children(v).first().and_then(|r| value_hint(cx, *r))),
            };
            if let Some(h) = hint {
                let mut cursor = node.walk();
                let names: Vec<String> = node
                    .children_by_field_name("name", &mut cursor)
                    .map(|n| cx.text(n).to_string())
                    .collect();
                for n in names {
                    cx.local(scope, &n, h.clone());
                }
            }
            Flow::Descend(scope)
        }
        _ => Flow::Descend(scope),
    }
}

fn value_hint(cx: &Cx<'_>, value: Node<'_>) -> Option<TypeHint> {
    match value.kind() {
        "composite_literal" => cx
            .type_path(value.child_by_field_name("type")?)
            .map(TypeHint::Declared),
        "unary_expression" => value_hint(cx, value.child_by_field_name("operand")?),
        "call_expression" => {
            let (path, opaque) = cx.callee_path(value.child_by_field_name("function")?)?;
            if opaque {
                None
            } else {
                Some(TypeHint::CallOf(path))
            }
        }
        _ => None,
    }
}
