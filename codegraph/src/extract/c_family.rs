//! C and C++: function definitions (out-of-line `A::f` gets `A` as owner), structs, classes,
//! unions, enums and namespaces, `#include`, calls and `new`, and typed declarations.

use tree_sitter::Node;

use super::{Cx, Flow, Scope, line, named_children, unquote};
use crate::facts::{Import, SymbolKind, TypeHint};

pub(super) fn visit(cx: &mut Cx<'_>, node: Node<'_>, scope: Scope) -> Flow {
    match node.kind() {
        "function_definition" => {
            let Some(decl) = node
                .child_by_field_name("declarator")
                .and_then(function_declarator)
            else {
                return Flow::Descend(scope);
            };
            let Some(name_node) = decl.child_by_field_name("declarator") else {
                return Flow::Descend(scope);
            };
            let mut fscope = scope;
            let name = if name_node.kind() == "qualified_identifier" {
                let Some((mut path, _)) = cx.callee_path(name_node) else {
                    return Flow::Descend(scope);
                };
                let name = path.pop().unwrap_or_default();
                if !path.is_empty() && scope.class.is_none() {
                    fscope.owner = Some(cx.owners.len() as u32);
                    cx.owners.push(path);
                }
                name
            } else {
                cx.text(name_node).to_string()
            };
            let is_test = cx.test_file && (name.starts_with("test_") || name.starts_with("Test"));
            let kind = cx.fn_kind(fscope, is_test);
            let (index, mut inner) = cx.define(node, &name, kind, fscope);
            inner.owner = None;
            if let Some(t) = node
                .child_by_field_name("type")
                .and_then(|t| cx.type_path(t))
            {
                cx.sym(index).ret = Some(t);
            }
            if let Some(params) = decl.child_by_field_name("parameters") {
                for p in named_children(params) {
                    declared_local(cx, p, inner, false);
                }
            }
            Flow::Descend(inner)
        }
        "struct_specifier" | "class_specifier" | "union_specifier" | "enum_specifier" => {
            if node.child_by_field_name("body").is_none() {
                return Flow::Descend(scope);
            }
            let Some(name) = cx.field_text(node, "name") else {
                return Flow::Descend(scope);
            };
            let (index, inner) = cx.define(node, name, SymbolKind::Type, scope);
            for c in named_children(node) {
                if c.kind() == "base_class_clause" {
                    for t in named_children(c) {
                        if let Some(p) = cx.type_path(t) {
                            cx.sym(index).bases.push(p);
                        }
                    }
                }
            }
            if let Some(body) = node.child_by_field_name("body") {
                for f in named_children(body) {
                    if f.kind() == "field_declaration"
                        && f.child_by_field_name("declarator")
                            .is_some_and(|d| d.kind() == "field_identifier")
                    {
                        declared_local(cx, f, inner, true);
                    }
                }
            }
            Flow::Descend(inner)
        }
        "namespace_definition" => {
            let Some(name) = cx.field_text(node, "name") else {
                return Flow::Descend(scope);
            };
            let (_, inner) = cx.define(node, name, SymbolKind::Module, scope);
            Flow::Descend(inner)
        }
        "call_expression" => {
            if let Some(f) = node.child_by_field_name("function") {
                cx.call_expr(node, scope, f);
            }
            Flow::Descend(scope)
        }
        "new_expression" => {
            if let Some(t) = node
                .child_by_field_name("type")
                .and_then(|t| cx.type_path(t))
            {
                cx.call(node, scope, t, false);
            }
            Flow::Descend(scope)
        }
        "preproc_include" => {
            if let Some(p) = node.child_by_field_name("path") {
                let system = p.kind() == "system_lib_string";
                let spec = unquote(cx.text(p));
                let spec = if system { format!("<{spec}>") } else { spec };
                cx.import(
                    node,
                    scope,
                    Import {
                        glob: true,
                        ..Import::new(line(node), vec![spec])
                    },
                );
            }
            Flow::Skip
        }
        "declaration" => {
            if scope.func.is_some() {
                declared_local(cx, node, scope, false);
            }
            Flow::Descend(scope)
        }
        _ => Flow::Descend(scope),
    }
}

fn function_declarator(node: Node<'_>) -> Option<Node<'_>> {
    let mut cur = node;
    for _ in 0..8 {
        if cur.kind() == "function_declarator" {
            return Some(cur);
        }
        cur = cur.child_by_field_name("declarator")?;
    }
    None
}

/// `Foo x`, `Foo *x = ...`, `Foo x(...)`: records `x` as a `Foo`.
fn declared_local(cx: &mut Cx<'_>, node: Node<'_>, scope: Scope, field: bool) {
    let Some(ty) = node.child_by_field_name("type") else {
        return;
    };
    if matches!(
        ty.kind(),
        "primitive_type" | "placeholder_type_specifier" | "sized_type_specifier"
    ) {
        return;
    }
    let Some(t) = cx.type_path(ty) else { return };
    let mut cursor = node.walk();
    let decls: Vec<Node<'_>> = node
        .children_by_field_name("declarator", &mut cursor)
        .collect();
    for d in decls {
        let mut cur = d;
        for _ in 0..6 {
            match cur.kind() {
                "identifier" | "field_identifier" => {
                    let name = cx.text(cur);
                    if field {
                        cx.field(scope, name, TypeHint::Declared(t.clone()));
                    } else {
                        cx.local(scope, name, TypeHint::Declared(t.clone()));
                    }
                    break;
                }
                _ => match cur.child_by_field_name("declarator") {
                    Some(n) => cur = n,
                    None => break,
                },
            }
        }
    }
}
