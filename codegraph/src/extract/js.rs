//! JavaScript, TypeScript and TSX: functions (declared or bound to a name), classes,
//! interfaces, methods, ES imports and re-exports, `require`, calls and `new`, typed
//! parameters and fields, and `it`/`test` cases as test nodes.

use tree_sitter::Node;

use super::{Cx, Flow, Scope, line, named_children, unquote};
use crate::facts::{Import, SymbolKind, TypeHint};

pub(super) fn visit(cx: &mut Cx<'_>, node: Node<'_>, scope: Scope) -> Flow {
    match node.kind() {
        "function_declaration" | "generator_function_declaration" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let kind = cx.fn_kind(scope, false);
            let (index, inner) = cx.define(node, name, kind, scope);
            params_and_ret(cx, node, index, inner);
            Flow::Descend(inner)
        }
        "class_declaration"
        | "abstract_class_declaration"
        | "class"
        | "interface_declaration"
        | "enum_declaration" => {
            let Some(name) = cx.field_text(node, "name") else {
                return Flow::Descend(scope);
            };
            let (index, inner) = cx.define(node, name, SymbolKind::Type, scope);
            for c in named_children(node) {
                match c.kind() {
                    "class_heritage" => heritage(cx, c, index),
                    "extends_type_clause" => {
                        for t in named_children(c) {
                            if let Some(p) = cx.type_path(t) {
                                cx.sym(index).bases.push(p);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Flow::Descend(inner)
        }
        "method_definition" | "method_signature" | "abstract_method_signature" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let kind = cx.fn_kind(scope, false);
            let (index, inner) = cx.define(node, name, kind, scope);
            params_and_ret(cx, node, index, inner);
            Flow::Descend(inner)
        }
        "public_field_definition" | "field_definition" => {
            let name = node
                .child_by_field_name("name")
                .or_else(|| node.child_by_field_name("property"))
                .map(|n| cx.text(n));
            if let Some(name) = name {
                let hint = node
                    .child_by_field_name("type")
                    .and_then(|t| cx.type_path(t))
                    .map(TypeHint::Declared)
                    .or_else(|| {
                        node.child_by_field_name("value")
                            .and_then(|v| value_hint(cx, v))
                    });
                if let Some(h) = hint {
                    cx.field(scope, name, h);
                }
            }
            Flow::Descend(scope)
        }
        "variable_declarator" => {
            let (Some(name_node), Some(value)) = (
                node.child_by_field_name("name"),
                node.child_by_field_name("value"),
            ) else {
                return Flow::Descend(scope);
            };
            if matches!(
                value.kind(),
                "arrow_function" | "function_expression" | "function" | "generator_function"
            ) && name_node.kind() == "identifier"
            {
                let kind = if scope.func.is_none() && scope.class.is_some() {
                    SymbolKind::Method
                } else {
                    SymbolKind::Function
                };
                let (index, inner) = cx.define(node, cx.text(name_node), kind, scope);
                params_and_ret(cx, value, index, inner);
                return Flow::Descend(inner);
            }
            if let Some(spec) = require_of(cx, value) {
                match name_node.kind() {
                    "identifier" => {
                        let alias = Some(cx.text(name_node).to_string());
                        cx.import(
                            node,
                            scope,
                            Import {
                                alias,
                                ..Import::new(line(node), vec![spec])
                            },
                        );
                    }
                    "object_pattern" => {
                        for p in named_children(name_node) {
                            let (name, alias) = match p.kind() {
                                "shorthand_property_identifier_pattern" => (cx.text(p), cx.text(p)),
                                "pair_pattern" => (
                                    cx.field_text(p, "key").unwrap_or(""),
                                    cx.field_text(p, "value").unwrap_or(""),
                                ),
                                _ => continue,
                            };
                            let imp = Import {
                                name: Some(name.to_string()),
                                alias: Some(alias.to_string()),
                                ..Import::new(line(node), vec![spec.clone()])
                            };
                            cx.import(node, scope, imp);
                        }
                    }
                    _ => {}
                }
                return Flow::Skip;
            }
            if name_node.kind() == "identifier" {
                let hint = node
                    .child_by_field_name("type")
                    .and_then(|t| cx.type_path(t))
                    .map(TypeHint::Declared)
                    .or_else(|| value_hint(cx, value));
                if let Some(h) = hint {
                    cx.local(scope, cx.text(name_node), h);
                }
            }
            Flow::Descend(scope)
        }
        "call_expression" => {
            let Some(f) = node.child_by_field_name("function") else {
                return Flow::Descend(scope);
            };
            let fname = cx.text(f);
            let base = fname.split('.').next().unwrap_or("");
            if matches!(base, "it" | "test") && f.kind() != "call_expression" {
                let args = node.child_by_field_name("arguments");
                let title = args
                    .and_then(|a| a.named_child(0))
                    .filter(|a| matches!(a.kind(), "string" | "template_string"));
                if let Some(title) = title {
                    let name = unquote(cx.text(title));
                    let (_, inner) = cx.define(node, &name, SymbolKind::Test, scope);
                    return Flow::Descend(inner);
                }
            }
            cx.call_expr(node, scope, f);
            Flow::Descend(scope)
        }
        "new_expression" => {
            if let Some(c) = node.child_by_field_name("constructor") {
                cx.call_expr(node, scope, c);
            }
            Flow::Descend(scope)
        }
        "import_statement" => {
            let Some(source) = node.child_by_field_name("source") else {
                return Flow::Skip;
            };
            let spec = unquote(cx.text(source));
            let l = line(node);
            let push =
                |cx: &mut Cx<'_>, name: Option<String>, alias: Option<String>, glob: bool| {
                    cx.import(
                        node,
                        scope,
                        Import {
                            name,
                            alias,
                            glob,
                            ..Import::new(l, vec![spec.clone()])
                        },
                    );
                };
            let mut any = false;
            for clause in named_children(node)
                .into_iter()
                .filter(|c| c.kind() == "import_clause")
            {
                for c in named_children(clause) {
                    match c.kind() {
                        "identifier" => {
                            push(cx, Some("default".into()), Some(cx.text(c).into()), false)
                        }
                        "namespace_import" => {
                            let alias = named_children(c).first().map(|n| cx.text(*n).to_string());
                            push(cx, None, alias, false)
                        }
                        "named_imports" => {
                            for s in named_children(c)
                                .into_iter()
                                .filter(|s| s.kind() == "import_specifier")
                            {
                                let name = cx.field_text(s, "name").unwrap_or("").to_string();
                                let alias = cx
                                    .field_text(s, "alias")
                                    .map(str::to_string)
                                    .unwrap_or_else(|| name.clone());
                                push(cx, Some(name), Some(alias), false);
                            }
                        }
                        _ => {}
                    }
                    any = true;
                }
            }
            if !any {
                // side-effect import: `import './x'`
                push(cx, None, None, false);
            }
            Flow::Skip
        }
        "export_statement" => {
            let Some(source) = node.child_by_field_name("source") else {
                default_export(cx, node, scope);
                return Flow::Descend(scope);
            };
            let spec = unquote(cx.text(source));
            let l = line(node);
            let mut any = false;
            for c in named_children(node) {
                match c.kind() {
                    "export_clause" => {
                        for s in named_children(c)
                            .into_iter()
                            .filter(|s| s.kind() == "export_specifier")
                        {
                            let name = cx.field_text(s, "name").unwrap_or("").to_string();
                            let alias = cx
                                .field_text(s, "alias")
                                .map(str::to_string)
                                .unwrap_or_else(|| name.clone());
                            let imp = Import {
                                name: Some(name),
                                alias: Some(alias),
                                ..Import::new(l, vec![spec.clone()])
                            };
                            cx.import(node, scope, imp);
                            any = true;
                        }
                    }
                    "namespace_export" => {
                        let alias = named_children(c).first().map(|n| cx.text(*n).to_string());
                        cx.import(
                            node,
                            scope,
                            Import {
                                alias,
                                ..Import::new(l, vec![spec.clone()])
                            },
                        );
                        any = true;
                    }
                    _ => {}
                }
            }
            if !any {
                cx.import(
                    node,
                    scope,
                    Import {
                        glob: true,
                        ..Import::new(l, vec![spec])
                    },
                );
            }
            Flow::Skip
        }
        _ => Flow::Descend(scope),
    }
}

fn heritage(cx: &mut Cx<'_>, node: Node<'_>, index: u32) {
    for c in named_children(node) {
        match c.kind() {
            "extends_clause" => {
                if let Some(p) = c.child_by_field_name("value").and_then(|v| cx.type_path(v)) {
                    cx.sym(index).bases.push(p);
                }
            }
            "implements_clause" => {
                for t in named_children(c) {
                    if let Some(p) = cx.type_path(t) {
                        cx.sym(index).implements.push(p);
                    }
                }
            }
            // plain JavaScript: `extends <expression>`
            _ => {
                if let Some(p) = cx.type_path(c) {
                    cx.sym(index).bases.push(p);
                }
            }
        }
    }
}

fn params_and_ret(cx: &mut Cx<'_>, node: Node<'_>, index: u32, inner: Scope) {
    if let Some(ret) = node
        .child_by_field_name("return_type")
        .and_then(|t| cx.type_path(t))
    {
        cx.sym(index).ret = Some(ret);
    }
    let Some(params) = node.child_by_field_name("parameters") else {
        return;
    };
    for p in named_children(params) {
        if !matches!(p.kind(), "required_parameter" | "optional_parameter") {
            continue;
        }
        let Some(pat) = p.child_by_field_name("pattern") else {
            continue;
        };
        let Some(t) = p.child_by_field_name("type").and_then(|t| cx.type_path(t)) else {
            continue;
        };
        let name = cx.text(pat);
        cx.local(inner, name, TypeHint::Declared(t.clone()));
        // `constructor(private db: Db)` declares a field too
        if named_children(p)
            .iter()
            .any(|c| c.kind() == "accessibility_modifier")
        {
            cx.field(inner, name, TypeHint::Declared(t));
        }
    }
}

fn value_hint(cx: &Cx<'_>, value: Node<'_>) -> Option<TypeHint> {
    match value.kind() {
        "new_expression" => cx
            .type_path(value.child_by_field_name("constructor")?)
            .map(TypeHint::Declared),
        "call_expression" => {
            let (path, opaque) = cx.callee_path(value.child_by_field_name("function")?)?;
            if opaque {
                None
            } else {
                Some(TypeHint::CallOf(path))
            }
        }
        "await_expression"
        | "parenthesized_expression"
        | "as_expression"
        | "non_null_expression" => value_hint(cx, value.named_child(0)?),
        _ => None,
    }
}

/// `require('./x')` → `./x`.
fn require_of(cx: &Cx<'_>, value: Node<'_>) -> Option<String> {
    if value.kind() != "call_expression" {
        return None;
    }
    let f = value.child_by_field_name("function")?;
    if cx.text(f) != "require" {
        return None;
    }
    let arg = value.child_by_field_name("arguments")?.named_child(0)?;
    if arg.kind() != "string" {
        return None;
    }
    Some(unquote(cx.text(arg)))
}

/// `export default function f` / `export default f`: binds `default` to `f` in this file.
fn default_export(cx: &mut Cx<'_>, node: Node<'_>, scope: Scope) {
    let mut cursor = node.walk();
    if !node.children(&mut cursor).any(|c| c.kind() == "default") {
        return;
    }
    let target = node
        .child_by_field_name("declaration")
        .and_then(|d| d.child_by_field_name("name"))
        .or_else(|| {
            node.child_by_field_name("value")
                .filter(|v| v.kind() == "identifier")
        });
    if let Some(t) = target {
        let name = cx.text(t).to_string();
        let imp = Import {
            name: Some(name),
            alias: Some("default".into()),
            ..Import::new(line(node), vec![String::new()])
        };
        cx.import(node, scope, imp);
    }
}
