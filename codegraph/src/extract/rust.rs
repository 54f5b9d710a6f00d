//! Rust: items, `impl` blocks (methods get their type as owner; `impl Trait for T` becomes an
//! IMPLEMENTS fact), inline modules, `use` trees, calls (including those written inside macro
//! token trees), typed parameters, `let` bindings and struct fields.

use tree_sitter::Node;

use super::{Cx, Flow, Scope, line, named_children};
use crate::facts::{Impl, Import, SymbolKind, TypeHint, TypePath};

/// Generic wrappers whose first type argument is what a function hands back.
const WRAPPERS: [&str; 9] = [
    "Result",
    "Option",
    "Box",
    "Arc",
    "Rc",
    "Poll",
    "Pin",
    "io::Result",
    "Mutex",
];

pub(super) fn visit(cx: &mut Cx<'_>, node: Node<'_>, scope: Scope) -> Flow {
    match node.kind() {
        "function_item" | "function_signature_item" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let is_test = has_test_attribute(cx, node);
            let kind = cx.fn_kind(scope, is_test);
            let (index, inner) = cx.define(node, name, kind, scope);
            if let Some(ret) = node
                .child_by_field_name("return_type")
                .and_then(|t| ret_type(cx, t))
            {
                cx.sym(index).ret = Some(ret);
            }
            if let Some(params) = node.child_by_field_name("parameters") {
                for p in named_children(params) {
                    if p.kind() == "parameter"
                        && let Some(pat) = p.child_by_field_name("pattern")
                        && pat.kind() == "identifier"
                        && let Some(t) = p.child_by_field_name("type").and_then(|t| cx.type_path(t))
                    {
                        cx.local(inner, cx.text(pat), TypeHint::Declared(t));
                    }
                }
            }
            Flow::Descend(inner)
        }
        "struct_item" | "enum_item" | "union_item" | "trait_item" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let (index, inner) = cx.define(node, name, SymbolKind::Type, scope);
            if let Some(body) = node.child_by_field_name("body") {
                for f in named_children(body) {
                    if f.kind() == "field_declaration"
                        && let (Some(n), Some(t)) =
                            (cx.field_text(f, "name"), f.child_by_field_name("type"))
                        && let Some(t) = cx.type_path(t)
                    {
                        cx.sym(index)
                            .locals
                            .push((n.to_string(), TypeHint::Declared(t)));
                    }
                }
            }
            if node.kind() == "trait_item"
                && let Some(bounds) = node.child_by_field_name("bounds")
            {
                for b in named_children(bounds) {
                    if let Some(t) = cx.type_path(b) {
                        cx.sym(index).bases.push(t);
                    }
                }
            }
            Flow::Descend(inner)
        }
        "impl_item" => {
            let Some(ty) = node
                .child_by_field_name("type")
                .and_then(|t| cx.type_path(t))
            else {
                return Flow::Descend(scope);
            };
            if let Some(tr) = node
                .child_by_field_name("trait")
                .and_then(|t| cx.type_path(t))
            {
                cx.facts.impls.push(Impl {
                    line: line(node),
                    scope: scope.module,
                    ty: ty.clone(),
                    tr,
                });
            }
            let mut inner = scope;
            inner.owner = Some(cx.owners.len() as u32);
            cx.owners.push(ty);
            Flow::Descend(inner)
        }
        "mod_item" => {
            if node.child_by_field_name("body").is_none() {
                return Flow::Skip;
            }
            let name = cx.field_text(node, "name").unwrap_or("");
            let (_, inner) = cx.define(node, name, SymbolKind::Module, scope);
            Flow::Descend(inner)
        }
        "call_expression" => {
            if let Some(f) = node.child_by_field_name("function") {
                cx.call_expr(node, scope, f);
            }
            Flow::Descend(scope)
        }
        "macro_invocation" => {
            let Some(tt) = named_children(node)
                .into_iter()
                .find(|c| c.kind() == "token_tree")
            else {
                return Flow::Skip;
            };
            // item-position macros (`cfg_rt! { pub fn spawn ... }`) wrap definitions: parse them
            let item_position = node
                .parent()
                .is_some_and(|p| matches!(p.kind(), "source_file" | "declaration_list"));
            if item_position && cx.text(tt).starts_with('{') {
                expand_items(cx, tt, scope);
            } else {
                token_tree_calls(cx, tt, scope, 0);
            }
            Flow::Skip
        }
        "use_declaration" => {
            if let Some(arg) = node.child_by_field_name("argument") {
                let mut out = Vec::new();
                use_tree(cx, arg, &[], &mut out);
                for (path, alias, glob) in out {
                    let imp = Import {
                        alias,
                        glob,
                        ..Import::new(line(node), path)
                    };
                    cx.import(node, scope, imp);
                }
            }
            Flow::Skip
        }
        "let_declaration" => {
            if let Some(pat) = node.child_by_field_name("pattern")
                && pat.kind() == "identifier"
            {
                let name = cx.text(pat);
                let hint = match node
                    .child_by_field_name("type")
                    .and_then(|t| cx.type_path(t))
                {
                    Some(t) => Some(TypeHint::Declared(t)),
                    None => node
                        .child_by_field_name("value")
                        .and_then(|v| value_hint(cx, v)),
                };
                if let Some(hint) = hint {
                    cx.local(scope, name, hint);
                }
            }
            Flow::Descend(scope)
        }
        _ => Flow::Descend(scope),
    }
}

/// The type a `let` initialiser produces, when it can be named.
fn value_hint(cx: &Cx<'_>, value: Node<'_>) -> Option<TypeHint> {
    match value.kind() {
        "call_expression" => {
            let function = value.child_by_field_name("function")?;
            // `x.unwrap()`, `x.expect(..)`: the type is what `x` holds
            if function.kind() == "field_expression"
                && matches!(cx.field_text(function, "field"), Some("unwrap" | "expect"))
                && let Some(inner) = function.child_by_field_name("value")
            {
                return value_hint(cx, inner);
            }
            let (path, opaque) = cx.callee_path(function)?;
            if opaque {
                None
            } else {
                Some(TypeHint::CallOf(path))
            }
        }
        "struct_expression" => cx
            .type_path(value.child_by_field_name("name")?)
            .map(TypeHint::Declared),
        "reference_expression"
        | "try_expression"
        | "await_expression"
        | "parenthesized_expression" => value_hint(
            cx,
            value.named_child(value.named_child_count().saturating_sub(1) as u32)?,
        ),
        _ => None,
    }
}

/// A return type, unwrapping `Result<T, E>`, `Option<T>`, `Box<T>` and similar.
fn ret_type(cx: &Cx<'_>, node: Node<'_>) -> Option<TypePath> {
    if node.kind() == "generic_type" {
        let base = node.child_by_field_name("type")?;
        let base_text = cx.text(base);
        if WRAPPERS
            .iter()
            .any(|w| base_text == *w || base_text.ends_with(&format!("::{w}")))
        {
            let args = node.child_by_field_name("type_arguments")?;
            let first = args.named_child(0)?;
            return ret_type(cx, first);
        }
    }
    if matches!(node.kind(), "abstract_type" | "dynamic_type") {
        return None;
    }
    cx.type_path(node)
}

fn has_test_attribute(cx: &Cx<'_>, node: Node<'_>) -> bool {
    let mut prev = node.prev_named_sibling();
    while let Some(p) = prev {
        match p.kind() {
            "attribute_item" => {
                let text = cx.text(p);
                let inner = text.trim_start_matches("#[").trim_end_matches(']');
                let path = inner.split(['(', ' ']).next().unwrap_or("");
                let last = path.rsplit("::").next().unwrap_or(path);
                if last == "test"
                    || last.starts_with("test_")
                    || last == "rstest"
                    || last == "bench"
                {
                    return true;
                }
            }
            "line_comment" | "block_comment" => {}
            _ => break,
        }
        prev = p.prev_named_sibling();
    }
    false
}

/// Flattens a `use` tree into (path, bound name, glob).
fn use_tree(
    cx: &Cx<'_>,
    node: Node<'_>,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>, bool)>,
) {
    let join =
        |extra: Vec<String>| -> Vec<String> { prefix.iter().cloned().chain(extra).collect() };
    match node.kind() {
        "identifier" | "scoped_identifier" | "crate" | "self" | "super" => {
            let path = join(super::split_path(cx.text(node)));
            if path.last().is_some_and(|l| l == "self") {
                let path = path[..path.len() - 1].to_vec();
                let alias = path.last().cloned();
                out.push((path, alias, false));
            } else {
                let alias = path.last().cloned();
                out.push((path, alias, false));
            }
        }
        "use_as_clause" => {
            let Some(p) = node.child_by_field_name("path") else {
                return;
            };
            let mut path = join(super::split_path(cx.text(p)));
            if path.last().is_some_and(|l| l == "self") {
                path.pop();
            }
            let alias = cx.field_text(node, "alias").map(str::to_string);
            if alias.as_deref() != Some("_") {
                out.push((path, alias, false));
            }
        }
        "scoped_use_list" => {
            let base = node
                .child_by_field_name("path")
                .map(|p| super::split_path(cx.text(p)))
                .unwrap_or_default();
            let prefix = join(base);
            if let Some(list) = node.child_by_field_name("list") {
                use_tree(cx, list, &prefix, out);
            }
        }
        "use_list" => {
            for c in named_children(node) {
                use_tree(cx, c, prefix, out);
            }
        }
        "use_wildcard" => {
            let base = named_children(node)
                .first()
                .map(|p| super::split_path(cx.text(*p)))
                .unwrap_or_default();
            out.push((join(base), None, true));
        }
        _ => {}
    }
}

/// Calls written inside a macro's token tree (`name(`, `a::b(`, `x.m(`), which the grammar
/// leaves unparsed.
fn token_tree_calls(cx: &mut Cx<'_>, tt: Node<'_>, scope: Scope, depth: usize) {
    if depth > 32 {
        return;
    }
    let mut path: Vec<String> = Vec::new();
    let mut opaque = false;
    let mut last_was_sep = false;
    let mut skip_attribute = false;
    let mut cursor = tt.walk();
    let children: Vec<Node<'_>> = tt.children(&mut cursor).collect();
    for child in children {
        match child.kind() {
            "identifier" | "self" | "super" | "crate" => {
                if !last_was_sep {
                    path.clear();
                    opaque = false;
                }
                let t = cx.text(child);
                path.push(if t == "self" {
                    "self".to_string()
                } else {
                    t.to_string()
                });
                last_was_sep = false;
            }
            "::" | "." => {
                if path.is_empty() {
                    opaque = true;
                }
                last_was_sep = true;
            }
            "token_tree" if skip_attribute => {
                skip_attribute = false;
                path.clear();
            }
            "token_tree" => {
                if !path.is_empty() && !last_was_sep && cx.text(child).starts_with('(') {
                    let p = std::mem::take(&mut path);
                    cx.call(child, scope, p, opaque);
                } else {
                    path.clear();
                }
                opaque = true;
                last_was_sep = false;
                token_tree_calls(cx, child, scope, depth + 1);
            }
            "#" => {
                // an attribute inside the macro body: `#[cfg(...)]` is not a call
                skip_attribute = true;
                path.clear();
                last_was_sep = false;
            }
            "!" => {
                // a nested macro: `name!(...)` is not a call of `name`
                path.clear();
                last_was_sep = false;
            }
            _ => {
                path.clear();
                opaque = false;
                last_was_sep = false;
            }
        }
    }
}

/// Parses the body of an item-position macro as Rust items and extracts them in place,
/// shifting their lines to where the body sits in the file.
fn expand_items(cx: &mut Cx<'_>, tt: Node<'_>, scope: Scope) {
    let text = cx.text(tt);
    if text.len() < 2 {
        return;
    }
    let inner = &text[1..text.len() - 1];
    let mut parser = tree_sitter::Parser::new();
    if parser
        .set_language(&crate::lang::Lang::Rust.grammar())
        .is_err()
    {
        return;
    }
    let Some(tree) = parser.parse(inner, None) else {
        return;
    };
    let offset = tt.start_position().row as u32;
    let before = (
        cx.facts.symbols.len(),
        cx.facts.imports.len(),
        cx.facts.calls.len(),
        cx.facts.impls.len(),
    );
    let mut sub = Cx {
        src: inner.as_bytes(),
        lang: cx.lang,
        test_file: cx.test_file,
        facts: std::mem::replace(&mut cx.facts, crate::facts::FileFacts::empty(cx.lang)),
        owners: std::mem::take(&mut cx.owners),
    };
    let root = tree.root_node();
    let mut cursor = root.walk();
    for child in root.children(&mut cursor) {
        super::walk(&mut sub, child, scope, 1);
    }
    cx.facts = sub.facts;
    cx.owners = sub.owners;
    let facts = &mut cx.facts;
    for s in &mut facts.symbols[before.0..] {
        s.start_line += offset;
        s.end_line += offset;
    }
    for i in &mut facts.imports[before.1..] {
        i.line += offset;
    }
    for c in &mut facts.calls[before.2..] {
        c.line += offset;
    }
    for i in &mut facts.impls[before.3..] {
        i.line += offset;
    }
}
