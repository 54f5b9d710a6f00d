//! Java and C#: package/namespace, classes, interfaces, enums, records, methods and
//! constructors, `import`/`using`, method invocations and `new`, typed locals, parameters and
//! fields, and test annotations (`@Test`, `[Fact]`, `[Test]`, `[TestMethod]`).

use tree_sitter::Node;

use super::{Cx, Flow, Scope, line, named_children, split_path};
use crate::facts::{Import, SymbolKind, TypeHint};

pub(super) fn visit(cx: &mut Cx<'_>, node: Node<'_>, scope: Scope) -> Flow {
    match node.kind() {
        "package_declaration" => {
            if let Some(n) = named_children(node)
                .into_iter()
                .find(|c| c.kind() != "annotation")
            {
                cx.facts.package = Some(cx.text(n).to_string());
            }
            Flow::Skip
        }
        "namespace_declaration" | "file_scoped_namespace_declaration" => {
            if cx.facts.package.is_none()
                && let Some(n) = cx.field_text(node, "name")
            {
                cx.facts.package = Some(n.to_string());
            }
            Flow::Descend(scope)
        }
        "class_declaration"
        | "interface_declaration"
        | "enum_declaration"
        | "record_declaration"
        | "struct_declaration"
        | "annotation_type_declaration" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let (index, inner) = cx.define(node, name, SymbolKind::Type, scope);
            let is_interface = node.kind() == "interface_declaration";
            for c in named_children(node) {
                match c.kind() {
                    // Java
                    "superclass" => {
                        if let Some(t) = c.named_child(0).and_then(|t| cx.type_path(t)) {
                            cx.sym(index).bases.push(t);
                        }
                    }
                    "super_interfaces" | "extends_interfaces" => {
                        for list in named_children(c) {
                            for t in named_children(list) {
                                if let Some(t) = cx.type_path(t) {
                                    if is_interface {
                                        cx.sym(index).bases.push(t);
                                    } else {
                                        cx.sym(index).implements.push(t);
                                    }
                                }
                            }
                        }
                    }
                    // C#: one list; interfaces are `I` + capital by convention
                    "base_list" => {
                        for t in named_children(c) {
                            let Some(p) = cx.type_path(t) else { continue };
                            let last = p.last().map(String::as_str).unwrap_or("");
                            let mut chars = last.chars();
                            let looks_interface = chars.next() == Some('I')
                                && chars.next().is_some_and(char::is_uppercase);
                            if looks_interface && !is_interface {
                                cx.sym(index).implements.push(p);
                            } else {
                                cx.sym(index).bases.push(p);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Flow::Descend(inner)
        }
        "method_declaration" | "constructor_declaration" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let is_test = has_test_marker(cx, node);
            let kind = cx.fn_kind(scope, is_test);
            let (index, inner) = cx.define(node, name, kind, scope);
            let ret = node
                .child_by_field_name("type")
                .or_else(|| node.child_by_field_name("returns"));
            if let Some(t) = ret.and_then(|t| cx.type_path(t)) {
                cx.sym(index).ret = Some(t);
            }
            if node.kind() == "constructor_declaration"
                && let Some(class) = scope.class
            {
                let cname = cx.facts.symbols[class as usize].name.clone();
                cx.sym(index).ret = Some(vec![cname]);
            }
            if let Some(params) = node.child_by_field_name("parameters") {
                for p in named_children(params) {
                    if matches!(
                        p.kind(),
                        "formal_parameter" | "parameter" | "spread_parameter"
                    ) && let (Some(n), Some(t)) = (
                        cx.field_text(p, "name"),
                        p.child_by_field_name("type").and_then(|t| cx.type_path(t)),
                    ) {
                        cx.local(inner, n, TypeHint::Declared(t));
                    }
                }
            }
            Flow::Descend(inner)
        }
        "method_invocation" => {
            let name = cx.field_text(node, "name").unwrap_or("").to_string();
            match node.child_by_field_name("object") {
                None => cx.call(node, scope, vec![name], false),
                Some(obj) => {
                    let mut path = Vec::new();
                    let opaque = match cx.callee_path(obj) {
                        Some((p, false)) => {
                            path = p;
                            false
                        }
                        _ => true,
                    };
                    path.push(name);
                    cx.call(node, scope, path, opaque);
                }
            }
            Flow::Descend(scope)
        }
        "invocation_expression" => {
            if let Some(f) = node.child_by_field_name("function") {
                cx.call_expr(node, scope, f);
            }
            Flow::Descend(scope)
        }
        "object_creation_expression" => {
            if let Some(t) = node
                .child_by_field_name("type")
                .and_then(|t| cx.type_path(t))
            {
                cx.call(node, scope, t, false);
            }
            Flow::Descend(scope)
        }
        "import_declaration" => {
            let text = cx.text(node);
            let body = text
                .trim_start_matches("import")
                .trim()
                .trim_end_matches(';')
                .trim();
            let body = body.strip_prefix("static ").unwrap_or(body).trim();
            let mut path = split_path(body);
            let glob = path.last().is_some_and(|l| l == "*");
            if glob {
                path.pop();
                cx.import(
                    node,
                    scope,
                    Import {
                        glob: true,
                        ..Import::new(line(node), path)
                    },
                );
            } else if let Some(name) = path.pop() {
                let imp = Import {
                    name: Some(name.clone()),
                    alias: Some(name),
                    ..Import::new(line(node), path)
                };
                cx.import(node, scope, imp);
            }
            Flow::Skip
        }
        "using_directive" => {
            let children = named_children(node);
            let alias = node
                .child_by_field_name("alias")
                .map(|a| cx.text(a).to_string());
            let Some(target) = children
                .iter()
                .rev()
                .find(|c| matches!(c.kind(), "qualified_name" | "identifier"))
            else {
                return Flow::Skip;
            };
            let mut path = split_path(cx.text(*target));
            match alias {
                Some(alias) => {
                    let name = path.pop();
                    cx.import(
                        node,
                        scope,
                        Import {
                            name,
                            alias: Some(alias),
                            ..Import::new(line(node), path)
                        },
                    );
                }
                None => cx.import(
                    node,
                    scope,
                    Import {
                        glob: true,
                        ..Import::new(line(node), path)
                    },
                ),
            }
            Flow::Skip
        }
        "local_variable_declaration" | "field_declaration" | "local_declaration_statement" => {
            let is_field = node.kind() == "field_declaration";
            // C# wraps the type and declarators in a `variable_declaration`
            let holder = named_children(node)
                .into_iter()
                .find(|c| c.kind() == "variable_declaration")
                .unwrap_or(node);
            let declared = holder
                .child_by_field_name("type")
                .filter(|t| cx.text(*t) != "var")
                .and_then(|t| cx.type_path(t));
            for d in named_children(holder)
                .into_iter()
                .filter(|d| d.kind() == "variable_declarator")
            {
                let Some(name_node) = d.child_by_field_name("name").or_else(|| d.named_child(0))
                else {
                    continue;
                };
                let name = cx.text(name_node);
                let hint = declared.clone().map(TypeHint::Declared).or_else(|| {
                    let value = d
                        .child_by_field_name("value")
                        .or_else(|| named_children(d).into_iter().nth(1))?;
                    value_hint(cx, value)
                });
                if let Some(h) = hint {
                    if is_field {
                        cx.field(scope, name, h);
                    } else {
                        cx.local(scope, name, h);
                    }
                }
            }
            Flow::Descend(scope)
        }
        _ => Flow::Descend(scope),
    }
}

fn value_hint(cx: &Cx<'_>, value: Node<'_>) -> Option<TypeHint> {
    match value.kind() {
        "object_creation_expression" => cx
            .type_path(value.child_by_field_name("type")?)
            .map(TypeHint::Declared),
        "method_invocation" => {
            let mut path = match value.child_by_field_name("object") {
                Some(o) => match cx.callee_path(o)? {
                    (p, false) => p,
                    _ => return None,
                },
                None => Vec::new(),
            };
            path.push(cx.field_text(value, "name")?.to_string());
            Some(TypeHint::CallOf(path))
        }
        "invocation_expression" => {
            let (path, opaque) = cx.callee_path(value.child_by_field_name("function")?)?;
            if opaque {
                None
            } else {
                Some(TypeHint::CallOf(path))
            }
        }
        "equals_value_clause" => value_hint(cx, value.named_child(0)?),
        _ => None,
    }
}

fn has_test_marker(cx: &Cx<'_>, node: Node<'_>) -> bool {
    const MARKERS: [&str; 7] = [
        "Test",
        "Fact",
        "Theory",
        "TestMethod",
        "TestCase",
        "ParameterizedTest",
        "RepeatedTest",
    ];
    for c in named_children(node) {
        if matches!(c.kind(), "modifiers" | "attribute_list") {
            let text = cx.text(c);
            for token in text.split(|ch: char| !ch.is_alphanumeric()) {
                if MARKERS.contains(&token) {
                    return true;
                }
            }
        }
    }
    false
}
