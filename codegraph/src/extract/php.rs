//! PHP: namespace, functions, classes, interfaces, traits, enums, methods, `use` clauses,
//! function, method, static and `new` calls, and typed parameters and assignments.

use tree_sitter::Node;

use super::{Cx, Flow, Scope, line, named_children, split_path};
use crate::facts::{Import, SymbolKind, TypeHint};

pub(super) fn visit(cx: &mut Cx<'_>, node: Node<'_>, scope: Scope) -> Flow {
    match node.kind() {
        "namespace_definition" => {
            if let Some(n) = cx.field_text(node, "name") {
                cx.facts.package = Some(split_path(n).join("."));
            }
            Flow::Descend(scope)
        }
        "function_definition" | "method_declaration" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let in_test_class = scope
                .class
                .is_some_and(|c| cx.facts.symbols[c as usize].name.ends_with("Test"));
            let is_test = name.starts_with("test") && (cx.test_file || in_test_class);
            let kind = cx.fn_kind(scope, is_test);
            let (index, inner) = cx.define(node, name, kind, scope);
            if let Some(t) = node
                .child_by_field_name("return_type")
                .and_then(|t| type_of(cx, t))
            {
                cx.sym(index).ret = Some(t);
            }
            if let Some(params) = node.child_by_field_name("parameters") {
                for p in named_children(params) {
                    if let (Some(n), Some(t)) = (
                        cx.field_text(p, "name"),
                        p.child_by_field_name("type").and_then(|t| type_of(cx, t)),
                    ) {
                        cx.local(inner, n.trim_start_matches('$'), TypeHint::Declared(t));
                    }
                }
            }
            Flow::Descend(inner)
        }
        "class_declaration"
        | "interface_declaration"
        | "trait_declaration"
        | "enum_declaration" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let (index, inner) = cx.define(node, name, SymbolKind::Type, scope);
            for c in named_children(node) {
                let implements = c.kind() == "class_interface_clause";
                if c.kind() == "base_clause" || implements {
                    for t in named_children(c) {
                        let p = split_path(cx.text(t));
                        if p.is_empty() {
                            continue;
                        }
                        if implements {
                            cx.sym(index).implements.push(p);
                        } else {
                            cx.sym(index).bases.push(p);
                        }
                    }
                }
            }
            Flow::Descend(inner)
        }
        "function_call_expression" => {
            if let Some(f) = node.child_by_field_name("function") {
                let p = split_path(cx.text(f));
                if !p.is_empty() && f.kind() != "variable_name" {
                    cx.call(node, scope, p, false);
                }
            }
            Flow::Descend(scope)
        }
        "member_call_expression" | "nullsafe_member_call_expression" => {
            let name = cx.field_text(node, "name").unwrap_or("").to_string();
            let object = node.child_by_field_name("object");
            match object.map(|o| (o.kind(), cx.text(o))) {
                Some(("variable_name", "$this")) => {
                    cx.call(node, scope, vec!["self".into(), name], false)
                }
                Some(("variable_name", v)) => cx.call(
                    node,
                    scope,
                    vec![v.trim_start_matches('$').to_string(), name],
                    false,
                ),
                Some(("member_access_expression", _)) => {
                    let o = object.unwrap_or(node);
                    let base = o.child_by_field_name("object").map(|b| cx.text(b));
                    let field = cx.field_text(o, "name").unwrap_or("");
                    if base == Some("$this") {
                        cx.call(
                            node,
                            scope,
                            vec!["self".into(), field.to_string(), name],
                            false,
                        );
                    } else {
                        cx.call(node, scope, vec![name], true);
                    }
                }
                _ => cx.call(node, scope, vec![name], true),
            }
            Flow::Descend(scope)
        }
        "scoped_call_expression" => {
            let name = cx.field_text(node, "name").unwrap_or("").to_string();
            let scope_text = cx.field_text(node, "scope").unwrap_or("");
            let head = match scope_text {
                "self" | "static" => vec!["self".to_string()],
                "parent" => vec!["super".to_string()],
                other => split_path(other),
            };
            let mut path = head;
            path.push(name);
            cx.call(node, scope, path, false);
            Flow::Descend(scope)
        }
        "object_creation_expression" => {
            if let Some(t) = named_children(node)
                .into_iter()
                .find(|c| matches!(c.kind(), "name" | "qualified_name"))
            {
                cx.call(node, scope, split_path(cx.text(t)), false);
            }
            Flow::Descend(scope)
        }
        "namespace_use_clause" => {
            let children = named_children(node);
            let Some(target) = children.first() else {
                return Flow::Skip;
            };
            let mut path = split_path(cx.text(*target));
            let alias = node
                .child_by_field_name("alias")
                .map(|a| cx.text(a).to_string())
                .or_else(|| children.get(1).map(|a| cx.text(*a).to_string()))
                .or_else(|| path.last().cloned());
            let name = path.pop();
            cx.import(
                node,
                scope,
                Import {
                    name,
                    alias,
                    ..Import::new(line(node), path)
                },
            );
            Flow::Skip
        }
        "assignment_expression" => {
            if let (Some(left), Some(right)) = (
                node.child_by_field_name("left"),
                node.child_by_field_name("right"),
            ) && right.kind() == "object_creation_expression"
                && let Some(t) = named_children(right)
                    .into_iter()
                    .find(|c| matches!(c.kind(), "name" | "qualified_name"))
            {
                let t = split_path(cx.text(t));
                let ltext = cx.text(left);
                if let Some(field) = ltext.strip_prefix("$this->") {
                    cx.field(scope, field, TypeHint::Declared(t));
                } else if left.kind() == "variable_name" {
                    cx.local(scope, ltext.trim_start_matches('$'), TypeHint::Declared(t));
                }
            }
            Flow::Descend(scope)
        }
        _ => Flow::Descend(scope),
    }
}

fn type_of(cx: &Cx<'_>, node: Node<'_>) -> Option<Vec<String>> {
    let text = cx.text(node).trim_start_matches('?');
    if text.contains('|') || text.is_empty() {
        return None;
    }
    Some(split_path(text))
}
