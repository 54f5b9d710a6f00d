//! Python: `def`, `class`, calls (a receiver that is itself a call or an attribute of one is
//! kept as an expression to follow through return annotations), `import`/`from ... import`,
//! typed parameters and assignments from calls or typed names (locals and `self.x` fields).

use tree_sitter::Node;

use super::{Cx, Flow, Scope, named_children, split_path};
use crate::facts::{Expr, Import, SymbolKind, TypeHint};

pub(super) fn visit(cx: &mut Cx<'_>, node: Node<'_>, scope: Scope) -> Flow {
    match node.kind() {
        "function_definition" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let in_test_class = scope
                .class
                .is_some_and(|c| cx.facts.symbols[c as usize].name.starts_with("Test"));
            let is_test =
                name.starts_with("test") && (cx.test_file || in_test_class) && scope.func.is_none();
            let kind = cx.fn_kind(scope, is_test);
            let kind = if is_test { SymbolKind::Test } else { kind };
            let (index, inner) = cx.define(node, name, kind, scope);
            if let Some(ret) = node
                .child_by_field_name("return_type")
                .and_then(|t| cx.type_path(t))
            {
                cx.sym(index).ret = Some(ret);
            }
            if let Some(params) = node.child_by_field_name("parameters") {
                for p in named_children(params) {
                    if matches!(p.kind(), "typed_parameter" | "typed_default_parameter") {
                        let pname = p
                            .child_by_field_name("name")
                            .or_else(|| p.named_child(0))
                            .map(|n| cx.text(n))
                            .unwrap_or("");
                        if let Some(t) = p.child_by_field_name("type").and_then(|t| cx.type_path(t))
                        {
                            cx.local(inner, pname, TypeHint::Declared(t));
                        }
                    }
                }
            }
            Flow::Descend(inner)
        }
        "class_definition" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let (index, inner) = cx.define(node, name, SymbolKind::Type, scope);
            if let Some(supers) = node.child_by_field_name("superclasses") {
                for arg in named_children(supers) {
                    if arg.kind() == "keyword_argument" {
                        continue;
                    }
                    if let Some(t) = cx.type_path(arg) {
                        cx.sym(index).bases.push(t);
                    }
                }
            }
            Flow::Descend(inner)
        }
        "call" => {
            if let Some(f) = node.child_by_field_name("function") {
                if f.kind() == "attribute"
                    && let Some(obj) = f.child_by_field_name("object")
                    && obj.kind() == "call"
                    && obj
                        .child_by_field_name("function")
                        .is_some_and(|g| cx.text(g) == "super")
                {
                    let method = cx.field_text(f, "attribute").unwrap_or("").to_string();
                    cx.call(node, scope, vec!["super".to_string(), method], false);
                } else {
                    match cx.callee_path(f) {
                        // `a.b().c()`, `f().g()`: the receiver is followed as an expression
                        Some((_, true)) if f.kind() == "attribute" => {
                            let recv = f.child_by_field_name("object").map(|o| expr(cx, o, 0));
                            let name = cx.field_text(f, "attribute").unwrap_or("").to_string();
                            cx.call(node, scope, vec![name], false);
                            if let Some(c) = cx.facts.calls.last_mut()
                                && c.line == super::line(node)
                                && c.recv.is_none()
                            {
                                c.recv = recv.map(Box::new);
                            }
                        }
                        _ => cx.call_expr(node, scope, f),
                    }
                }
            }
            Flow::Descend(scope)
        }
        "import_statement" => {
            for item in named_children(node) {
                let (path, alias) = match item.kind() {
                    "dotted_name" => {
                        let path = split_path(cx.text(item));
                        let alias = path.first().cloned();
                        (path, alias)
                    }
                    "aliased_import" => {
                        let path = split_path(cx.field_text(item, "name").unwrap_or(""));
                        (path, cx.field_text(item, "alias").map(str::to_string))
                    }
                    _ => continue,
                };
                // `import a.b` binds `a` to the package; `import a.b as x` binds x to a.b
                let path = if item.kind() == "dotted_name" {
                    path[..1.min(path.len())].to_vec()
                } else {
                    path
                };
                cx.import(
                    item,
                    scope,
                    Import {
                        alias,
                        ..Import::new(super::line(item), path)
                    },
                );
            }
            Flow::Skip
        }
        "import_from_statement" => {
            let Some(module) = node.child_by_field_name("module_name") else {
                return Flow::Skip;
            };
            let (path, level) = if module.kind() == "relative_import" {
                let mut level = 0;
                let mut path = Vec::new();
                for c in named_children(module) {
                    match c.kind() {
                        "import_prefix" => {
                            level = cx.text(c).chars().filter(|&ch| ch == '.').count() as u32
                        }
                        "dotted_name" => path = split_path(cx.text(c)),
                        _ => {}
                    }
                }
                (path, level)
            } else {
                (split_path(cx.text(module)), 0)
            };
            let line = super::line(node);
            let mut any = false;
            let mut cursor = node.walk();
            for item in node.children_by_field_name("name", &mut cursor) {
                let (name, alias) = match item.kind() {
                    "dotted_name" => (cx.text(item).to_string(), cx.text(item).to_string()),
                    "aliased_import" => (
                        cx.field_text(item, "name").unwrap_or("").to_string(),
                        cx.field_text(item, "alias").unwrap_or("").to_string(),
                    ),
                    _ => continue,
                };
                any = true;
                let imp = Import {
                    level,
                    name: Some(name),
                    alias: Some(alias),
                    ..Import::new(line, path.clone())
                };
                cx.import(item, scope, imp);
            }
            if !any
                && named_children(node)
                    .iter()
                    .any(|c| c.kind() == "wildcard_import")
            {
                cx.import(
                    node,
                    scope,
                    Import {
                        level,
                        glob: true,
                        ..Import::new(line, path)
                    },
                );
            }
            Flow::Skip
        }
        "assignment" => {
            let (Some(left), Some(right)) = (
                node.child_by_field_name("left"),
                node.child_by_field_name("right"),
            ) else {
                return Flow::Descend(scope);
            };
            let hint = if let Some(t) = node
                .child_by_field_name("type")
                .and_then(|t| cx.type_path(t))
            {
                Some(TypeHint::Declared(t))
            } else if right.kind() == "call" {
                right
                    .child_by_field_name("function")
                    .and_then(|f| cx.callee_path(f))
                    .filter(|(_, opaque)| !opaque)
                    .map(|(p, _)| TypeHint::CallOf(p))
            } else if right.kind() == "identifier" {
                // `self.x = x` in `__init__(self, x: X)`: the attribute has the parameter's type
                let name = cx.text(right);
                scope.func.and_then(|f| {
                    cx.facts.symbols[f as usize]
                        .locals
                        .iter()
                        .rev()
                        .find(|(n, _)| n == name)
                        .map(|(_, h)| h.clone())
                })
            } else {
                None
            };
            if let Some(hint) = hint {
                match left.kind() {
                    "identifier" => cx.local(scope, cx.text(left), hint),
                    "attribute"
                        if left
                            .child_by_field_name("object")
                            .is_some_and(|o| cx.text(o) == "self") =>
                    {
                        let field = cx.field_text(left, "attribute").unwrap_or("");
                        cx.field(scope, field, hint);
                    }
                    _ => {}
                }
            }
            Flow::Descend(scope)
        }
        _ => Flow::Descend(scope),
    }
}

/// A receiver expression, for the resolver to follow through return types and attributes.
fn expr(cx: &Cx<'_>, node: Node<'_>, depth: usize) -> Expr {
    if depth > 24 {
        return Expr::Unknown;
    }
    match node.kind() {
        "identifier" | "attribute" => match cx.callee_path(node) {
            Some((p, false)) => Expr::Path(p),
            _ if node.kind() == "attribute" => {
                match (
                    node.child_by_field_name("object"),
                    cx.field_text(node, "attribute"),
                ) {
                    (Some(o), Some(a)) => {
                        Expr::Field(Box::new(expr(cx, o, depth + 1)), a.to_string())
                    }
                    _ => Expr::Unknown,
                }
            }
            _ => Expr::Unknown,
        },
        "call" => {
            let Some(f) = node.child_by_field_name("function") else {
                return Expr::Unknown;
            };
            match cx.callee_path(f) {
                Some((p, false)) => Expr::Call(Box::new(Expr::Path(p)), None),
                _ if f.kind() == "attribute" => {
                    match (
                        f.child_by_field_name("object"),
                        cx.field_text(f, "attribute"),
                    ) {
                        (Some(o), Some(a)) => {
                            Expr::Method(Box::new(expr(cx, o, depth + 1)), a.to_string())
                        }
                        _ => Expr::Unknown,
                    }
                }
                _ => Expr::Unknown,
            }
        }
        "parenthesized_expression" | "await" => match node.named_child(0) {
            Some(inner) => expr(cx, inner, depth + 1),
            None => Expr::Unknown,
        },
        _ => Expr::Unknown,
    }
}
