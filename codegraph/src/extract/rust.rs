//! Rust: items, `impl` blocks (methods get their type as owner; `impl Trait for T` becomes an
//! IMPLEMENTS fact), inline modules, `use` trees, calls with their receivers as expressions
//! ([`Expr`]), typed parameters with generic bounds, `let` and pattern bindings with the lines
//! they are visible on, struct fields, type aliases, and macros: `macro_rules!` bodies and
//! expression-position macro arguments are parsed as code where they parse (token trees are
//! scanned for calls where they do not), item-position macro bodies as items.

use tree_sitter::Node;

use super::{Cx, Flow, Scope, line, named_children};
use crate::facts::{Expr, Impl, Import, Sig, SymbolKind, Ty, TypeHint, TypePath};

/// How many macro texts inside one another are parsed again; deeper ones are scanned for
/// calls as tokens only.
const MAX_MACRO_DEPTH: u32 = 6;

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
            let mut bounds = Vec::new();
            let block = enclosing_impl(node);
            if let Some(imp) = block {
                generic_bounds(cx, imp, &mut bounds);
            }
            generic_bounds(cx, node, &mut bounds);
            let mut sig = Sig {
                ret: node
                    .child_by_field_name("return_type")
                    .and_then(|t| ty(cx, t, &bounds)),
                self_ty: block
                    .and_then(|imp| imp.child_by_field_name("type"))
                    .and_then(|t| ty(cx, t, &[])),
                generics: Vec::new(),
                bounds,
                params: Vec::new(),
            };
            if let Some(params) = node.child_by_field_name("parameters") {
                for p in named_children(params) {
                    if p.kind() != "parameter" {
                        continue;
                    }
                    let t = p
                        .child_by_field_name("type")
                        .and_then(|t| ty(cx, t, &sig.bounds));
                    if let (Some(pat), Some(t)) = (p.child_by_field_name("pattern"), &t)
                        && pat.kind() == "identifier"
                    {
                        cx.local(inner, cx.text(pat), TypeHint::Ty(Box::new(t.clone())));
                    }
                    sig.params.push(t);
                }
            }
            cx.sym(index).sig = Some(Box::new(sig));
            Flow::Descend(inner)
        }
        "struct_item" | "enum_item" | "union_item" | "trait_item" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let (index, inner) = cx.define(node, name, SymbolKind::Type, scope);
            if let Some(body) = node.child_by_field_name("body") {
                let mut position = 0;
                for f in named_children(body) {
                    if f.kind() == "field_declaration"
                        && let (Some(n), Some(t)) =
                            (cx.field_text(f, "name"), f.child_by_field_name("type"))
                        && let Some(t) = ty(cx, t, &[])
                    {
                        cx.sym(index)
                            .locals
                            .push((n.to_string(), TypeHint::Ty(Box::new(t))));
                    }
                    // tuple struct fields are named by position
                    if body.kind() == "ordered_field_declaration_list"
                        && !matches!(f.kind(), "attribute_item" | "visibility_modifier")
                    {
                        if let Some(t) = ty(cx, f, &[]) {
                            cx.sym(index)
                                .locals
                                .push((position.to_string(), TypeHint::Ty(Box::new(t))));
                        }
                        position += 1;
                    }
                }
            }
            let generics: Vec<String> = node
                .child_by_field_name("type_parameters")
                .map(|tp| {
                    named_children(tp)
                        .into_iter()
                        .filter(|p| p.kind() == "type_parameter")
                        .filter_map(|p| cx.field_text(p, "name").map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if !generics.is_empty() {
                cx.sym(index).sig = Some(Box::new(Sig {
                    generics,
                    ..Sig::default()
                }));
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
                let mut assoc = Vec::new();
                if matches!(tr.last().map(String::as_str), Some("Deref" | "Index"))
                    && let Some(body) = node.child_by_field_name("body")
                {
                    let mut bounds = Vec::new();
                    generic_bounds(cx, node, &mut bounds);
                    for item in named_children(body) {
                        if item.kind() == "type_item"
                            && let (Some(n), Some(t)) = (
                                cx.field_text(item, "name"),
                                item.child_by_field_name("type")
                                    .and_then(|t| self::ty(cx, t, &bounds)),
                            )
                        {
                            assoc.push((n.to_string(), t));
                        }
                    }
                }
                cx.facts.impls.push(Impl {
                    line: line(node),
                    scope: scope.module,
                    ty: ty.clone(),
                    tr,
                    self_ty: node
                        .child_by_field_name("type")
                        .and_then(|t| self::ty(cx, t, &[])),
                    assoc,
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
                let method = if f.kind() == "generic_function" {
                    f.child_by_field_name("function")
                        .filter(|g| g.kind() == "field_expression")
                } else {
                    Some(f).filter(|g| g.kind() == "field_expression")
                };
                match method {
                    Some(m) => {
                        if let (Some(name), Some(value)) =
                            (cx.field_text(m, "field"), m.child_by_field_name("value"))
                        {
                            let recv = expr(cx, value, 0);
                            cx.call(node, scope, vec![name.to_string()], false);
                            if let Some(c) = cx.facts.calls.last_mut()
                                && c.line == line(node)
                                && c.recv.is_none()
                            {
                                c.recv = Some(Box::new(recv));
                            }
                        }
                    }
                    None => cx.call_expr(node, scope, f),
                }
            }
            Flow::Descend(scope)
        }
        "macro_definition" => {
            let name = cx.field_text(node, "name").unwrap_or("");
            let (_, inner) = cx.define(node, name, SymbolKind::Macro, scope);
            for rule in named_children(node) {
                if rule.kind() == "macro_rule"
                    && let Some(body) = rule.child_by_field_name("right")
                {
                    expand_macro_body(cx, body, inner);
                }
            }
            Flow::Skip
        }
        "let_condition" | "for_expression" => {
            // `if let P = v`, `for P in v`: P's names are bound after v, in the body
            if let Some(pat) = node.child_by_field_name("pattern") {
                let value = node.child_by_field_name("value");
                let from = value.map_or(line(pat), |v| v.end_position().row as u32 + 2);
                let to = body_end(node);
                match value.filter(|_| node.kind() == "let_condition") {
                    Some(v) => bind_variant(cx, scope, pat, v, from, to),
                    None => bind_untyped(cx, scope, pat, from, to),
                }
            }
            Flow::Descend(scope)
        }
        "closure_expression" => {
            let Some(params) = node.child_by_field_name("parameters") else {
                return Flow::Descend(scope);
            };
            let (from, to) = (line(node), node.end_position().row as u32 + 1);
            // a closure passed to a call: its parameters are typed by the callee's bound
            let site = node
                .parent()
                .filter(|a| a.kind() == "arguments")
                .and_then(|a| {
                    let call = a.parent().filter(|c| c.kind() == "call_expression")?;
                    let index = named_children(a).iter().position(|c| *c == node)?;
                    let callee = callee_expr(cx, call.child_by_field_name("function")?)?;
                    Some((callee, index as u32))
                });
            for (j, p) in named_children(params).into_iter().enumerate() {
                let (pat, written) = if p.kind() == "parameter" {
                    (
                        p.child_by_field_name("pattern"),
                        p.child_by_field_name("type").and_then(|t| ty(cx, t, &[])),
                    )
                } else {
                    (Some(p), None)
                };
                let Some(pat) = pat else { continue };
                if pat.kind() != "identifier" {
                    bind_untyped(cx, scope, pat, from, to);
                    continue;
                }
                let value = match (&written, &site) {
                    (None, Some((callee, arg))) => Some(Expr::ClosureParam {
                        callee: Box::new(callee.clone()),
                        arg: *arg,
                        param: j as u32,
                    }),
                    _ => None,
                };
                let hint = TypeHint::binding(written, value, from, to);
                cx.local(scope, cx.text(pat), hint);
            }
            Flow::Descend(scope)
        }
        "match_arm" => {
            if let Some(pat) = node.child_by_field_name("pattern") {
                let (from, to) = (line(node), node.end_position().row as u32 + 1);
                // the scrutinee: match_arm → match_block → match_expression
                let value = node
                    .parent()
                    .and_then(|b| b.parent())
                    .filter(|m| m.kind() == "match_expression")
                    .and_then(|m| m.child_by_field_name("value"));
                let guard = pat.child_by_field_name("condition").map(|g| g.id());
                let inner = named_children(pat)
                    .into_iter()
                    .find(|c| Some(c.id()) != guard);
                match (value, inner) {
                    (Some(v), Some(p)) if pat.kind() == "match_pattern" => {
                        bind_variant(cx, scope, p, v, from, to)
                    }
                    _ => bind_untyped(cx, scope, pat, from, to),
                }
            }
            Flow::Descend(scope)
        }
        "macro_invocation" => {
            if let Some(m) = node.child_by_field_name("macro") {
                let mut path = super::split_path(cx.text(m));
                if path.first().is_some_and(|h| h == "$crate") {
                    path[0] = "crate".to_string();
                }
                cx.call(node, scope, path, false);
                if let Some(c) = cx.facts.calls.last_mut() {
                    c.mac = true;
                }
            }
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
            } else if !parse_macro_args(cx, tt, scope) {
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
            let from = node.end_position().row as u32 + 2;
            let to = binding_end(node);
            if let Some(pat) = node.child_by_field_name("pattern") {
                if pat.kind() == "identifier" {
                    let bounds = scope
                        .func
                        .and_then(|f| cx.facts.symbols[f as usize].sig.as_ref())
                        .map(|s| s.bounds.clone())
                        .unwrap_or_default();
                    let hint = TypeHint::binding(
                        node.child_by_field_name("type")
                            .and_then(|t| ty(cx, t, &bounds)),
                        node.child_by_field_name("value").map(|v| expr(cx, v, 0)),
                        from,
                        to,
                    );
                    cx.local(scope, cx.text(pat), hint);
                } else if pat.kind() == "tuple_pattern"
                    && let Some(elems) = node
                        .child_by_field_name("value")
                        .and_then(|v| tuple_elements(v))
                {
                    // `let (a, b) = (x, y)` or a block ending in a tuple
                    for (i, p) in named_children(pat).into_iter().enumerate() {
                        match elems.get(i) {
                            Some(e) if p.kind() == "identifier" => {
                                let hint = TypeHint::binding(None, Some(expr(cx, *e, 0)), from, to);
                                cx.local(scope, cx.text(p), hint);
                            }
                            _ => bind_untyped(cx, scope, p, from, to),
                        }
                    }
                } else if pat.kind() == "struct_pattern"
                    && let Some(value) = node.child_by_field_name("value")
                {
                    // `let S { a, b: c, .. } = v`: a is v.a, c is v.b
                    let value = expr(cx, value, 0);
                    for f in named_children(pat) {
                        if f.kind() != "field_pattern" {
                            continue;
                        }
                        let Some(field) = f.child_by_field_name("name") else {
                            continue;
                        };
                        let bound = match f.child_by_field_name("pattern") {
                            Some(p) if p.kind() == "identifier" => p,
                            Some(p) => {
                                bind_untyped(cx, scope, p, from, to);
                                continue;
                            }
                            None => field,
                        };
                        let hint = TypeHint::binding(
                            None,
                            Some(Expr::Field(
                                Box::new(value.clone()),
                                cx.text(field).to_string(),
                            )),
                            from,
                            to,
                        );
                        cx.local(scope, cx.text(bound), hint);
                    }
                } else {
                    bind_untyped(cx, scope, pat, from, to);
                }
            }
            Flow::Descend(scope)
        }
        "type_item" => {
            // a type alias (not an associated type): a node whose target is seen through
            let associated = node.parent().is_some_and(|p| {
                p.kind() == "declaration_list"
                    && p.parent()
                        .is_some_and(|g| matches!(g.kind(), "impl_item" | "trait_item"))
            });
            if associated {
                return Flow::Skip;
            }
            let name = cx.field_text(node, "name").unwrap_or("");
            let target = node
                .child_by_field_name("type")
                .and_then(|t| ty(cx, t, &[]));
            let (index, _) = cx.define(node, name, SymbolKind::Type, scope);
            let generics: Vec<String> = node
                .child_by_field_name("type_parameters")
                .map(|tp| {
                    named_children(tp)
                        .into_iter()
                        .filter(|p| p.kind() == "type_parameter")
                        .filter_map(|p| cx.field_text(p, "name").map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            cx.sym(index).sig = Some(Box::new(Sig {
                ret: target,
                generics,
                ..Sig::default()
            }));
            Flow::Skip
        }
        _ => Flow::Descend(scope),
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
    // for each segment after the first: whether `.` (not `::`) came before it
    let mut dots: Vec<bool> = Vec::new();
    let mut pending_dot = false;
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
                    dots.clear();
                    opaque = false;
                }
                if !path.is_empty() {
                    dots.push(pending_dot);
                }
                path.push(cx.text(child).to_string());
                last_was_sep = false;
            }
            "::" | "." => {
                if path.is_empty() {
                    opaque = true;
                }
                pending_dot = child.kind() == ".";
                last_was_sep = true;
            }
            "token_tree" if skip_attribute => {
                skip_attribute = false;
                path.clear();
                dots.clear();
            }
            "token_tree" => {
                if !path.is_empty() && !last_was_sep && cx.text(child).starts_with('(') {
                    let p = std::mem::take(&mut path);
                    let d = std::mem::take(&mut dots);
                    record_token_call(cx, child, scope, p, &d, opaque);
                } else {
                    path.clear();
                    dots.clear();
                }
                opaque = true;
                last_was_sep = false;
                token_tree_calls(cx, child, scope, depth + 1);
            }
            "#" => {
                // an attribute inside the macro body: `#[cfg(...)]` is not a call
                skip_attribute = true;
                path.clear();
                dots.clear();
                last_was_sep = false;
            }
            "!" => {
                // a nested macro: `name!(...)` is not a call of `name`
                path.clear();
                dots.clear();
                last_was_sep = false;
            }
            _ => {
                path.clear();
                dots.clear();
                opaque = false;
                last_was_sep = false;
            }
        }
    }
}

/// Records a call found in a token tree: a path call (`a::b(`), or a method call on a
/// receiver written as `a::b.c.d(` (a path, then fields).
fn record_token_call(
    cx: &mut Cx<'_>,
    node: Node<'_>,
    scope: Scope,
    path: Vec<String>,
    dots: &[bool],
    opaque: bool,
) {
    let Some(first_dot) = dots.iter().position(|&d| d) else {
        cx.call(node, scope, path, opaque);
        return;
    };
    if opaque || !dots[first_dot..].iter().all(|&d| d) {
        cx.call(node, scope, path, true);
        return;
    }
    // dots[i] is the separator before path[i + 1]
    let mut recv = Expr::Path(path[..=first_dot].to_vec());
    for field in &path[first_dot + 1..path.len() - 1] {
        recv = Expr::Field(Box::new(recv), field.clone());
    }
    let method = path[path.len() - 1].clone();
    cx.call(node, scope, vec![method], false);
    if let Some(c) = cx.facts.calls.last_mut()
        && c.line == line(node)
        && c.recv.is_none()
    {
        c.recv = Some(Box::new(recv));
    }
}

/// Parses an expression-position macro's arguments (`assert_eq!(a.b(), c)`) as call
/// arguments and extracts them like ordinary code; false when they do not parse.
fn parse_macro_args(cx: &mut Cx<'_>, tt: Node<'_>, scope: Scope) -> bool {
    if cx.macro_depth >= MAX_MACRO_DEPTH {
        return false;
    }
    let text = cx.text(tt);
    if text.len() < 2 || !text.is_char_boundary(1) || !text.is_char_boundary(text.len() - 1) {
        return false;
    }
    let source = format!("fn __m() {{ __m({}); }}", &text[1..text.len() - 1]);
    let Some(tree) = cx.parse_rust(&source) else {
        return false;
    };
    let root = tree.root_node();
    if root.has_error() {
        return false;
    }
    let args = root
        .named_child(0)
        .and_then(|f| f.child_by_field_name("body"))
        .and_then(|b| b.named_child(0))
        .and_then(|st| st.named_child(0))
        .filter(|c| c.kind() == "call_expression")
        .and_then(|c| c.child_by_field_name("arguments"));
    let Some(args) = args else {
        return false;
    };
    let nodes = named_children(args);
    walk_sub(cx, &source, tt.start_position().row as u32, scope, &nodes);
    true
}

/// Parses the body of an item-position macro as Rust items and extracts them in place,
/// shifting their lines to where the body sits in the file.
fn expand_items(cx: &mut Cx<'_>, tt: Node<'_>, scope: Scope) {
    if cx.macro_depth >= MAX_MACRO_DEPTH {
        token_tree_calls(cx, tt, scope, 0);
        return;
    }
    let text = cx.text(tt);
    if text.len() < 2 {
        return;
    }
    let inner = &text[1..text.len() - 1];
    let Some(tree) = cx.parse_rust(inner) else {
        return;
    };
    let root = tree.root_node();
    let mut cursor = root.walk();
    let nodes: Vec<Node<'_>> = root.children(&mut cursor).collect();
    let errors = cx.facts.parse_errors;
    walk_sub(cx, inner, tt.start_position().row as u32, scope, &nodes);
    // an item-position macro body is the file's own code: its syntax errors count
    let sub_errors = count_errors(root);
    cx.facts.parse_errors = errors + sub_errors;
}

fn count_errors(node: Node<'_>) -> u32 {
    let mut n = 0;
    let mut stack = vec![node];
    while let Some(x) = stack.pop() {
        if x.is_error() || x.is_missing() {
            n += 1;
        }
        if x.has_error() {
            let mut c = x.walk();
            stack.extend(x.children(&mut c));
        }
    }
    n
}

/// The last line a binding made by `node` is visible on: the end of the enclosing block.
fn binding_end(node: Node<'_>) -> u32 {
    let mut cur = node.parent();
    while let Some(p) = cur {
        if matches!(
            p.kind(),
            "block" | "function_item" | "closure_expression" | "match_arm" | "source_file"
        ) {
            return p.end_position().row as u32 + 1;
        }
        cur = p.parent();
    }
    u32::MAX
}

/// Records the names a pattern binds as locals of unknown type, visible on lines
/// `from..=to`: they shadow outer bindings of the same name there.
fn bind_untyped(cx: &mut Cx<'_>, scope: Scope, pat: Node<'_>, from: u32, to: u32) {
    let mut stack = vec![pat];
    let mut seen = 0;
    while let Some(n) = stack.pop() {
        seen += 1;
        if seen > 256 {
            return;
        }
        match n.kind() {
            "identifier" => {
                let name = cx.text(n);
                // `Some(x)` binds x; a lone capitalised name is a constant or variant
                if name.chars().next().is_some_and(char::is_lowercase) || name.starts_with('_') {
                    let hint = TypeHint::binding(None, None, from, to);
                    cx.local(scope, name, hint);
                }
            }
            // the path of `Some(..)`, `Foo { .. }` and field names are not bindings
            "scoped_identifier" | "field_identifier" | "type_identifier" => {}
            // `pat if guard`: the guard binds nothing
            "match_pattern" => {
                let guard = n.child_by_field_name("condition").map(|g| g.id());
                let mut c = n.walk();
                stack.extend(n.named_children(&mut c).filter(|k| Some(k.id()) != guard));
            }
            "tuple_struct_pattern" | "struct_pattern" => {
                let mut c = n.walk();
                for (i, child) in n.named_children(&mut c).enumerate() {
                    if i > 0 || child.kind() != "identifier" {
                        stack.push(child);
                    }
                }
            }
            "field_pattern" => {
                // `Foo { a, b: c }` binds a and c
                match n.child_by_field_name("pattern") {
                    Some(p) => stack.push(p),
                    None => {
                        if let Some(name) = n.child_by_field_name("name") {
                            let text = cx.text(name);
                            cx.local(scope, text, TypeHint::binding(None, None, from, to));
                        }
                    }
                }
            }
            "parameter" => {
                // closure parameters with a written type
                if let Some(p) = n.child_by_field_name("pattern") {
                    stack.push(p);
                }
            }
            _ => {
                let mut c = n.walk();
                stack.extend(n.named_children(&mut c));
            }
        }
    }
}

/// The `impl` block a function item sits in directly.
fn enclosing_impl(node: Node<'_>) -> Option<Node<'_>> {
    let list = node.parent().filter(|p| p.kind() == "declaration_list")?;
    list.parent().filter(|p| p.kind() == "impl_item")
}

/// Marker and std traits that say nothing about which method a bounded parameter calls.
const MARKER_TRAITS: [&str; 14] = [
    "Send",
    "Sync",
    "Sized",
    "Unpin",
    "Copy",
    "Clone",
    "Debug",
    "Default",
    "Eq",
    "PartialEq",
    "Hash",
    "Ord",
    "PartialOrd",
    "Display",
];

/// The first bound of a bound list that names a trait with methods of interest.
fn first_bound(cx: &Cx<'_>, bounds: Node<'_>) -> Option<Ty> {
    for b in named_children(bounds) {
        let b = if b.kind() == "higher_ranked_trait_bound" {
            b.child_by_field_name("type")?
        } else {
            b
        };
        if matches!(b.kind(), "lifetime" | "removed_trait_bound") {
            continue;
        }
        let t = ty(cx, b, &[])?;
        if t.path
            .last()
            .is_some_and(|l| !MARKER_TRAITS.contains(&l.as_str()))
        {
            return Some(t);
        }
    }
    None
}

/// Generic parameters of `node` (a function or `impl` item) with a trait bound, from its
/// parameter list and its `where` clause.
fn generic_bounds(cx: &Cx<'_>, node: Node<'_>, out: &mut Vec<(String, Ty)>) {
    if let Some(tp) = node.child_by_field_name("type_parameters") {
        for p in named_children(tp) {
            if p.kind() == "type_parameter"
                && let (Some(n), Some(b)) =
                    (cx.field_text(p, "name"), p.child_by_field_name("bounds"))
                && let Some(t) = first_bound(cx, b)
            {
                out.push((n.to_string(), t));
            }
        }
    }
    for c in named_children(node) {
        if c.kind() != "where_clause" {
            continue;
        }
        for pred in named_children(c) {
            if pred.kind() == "where_predicate"
                && let (Some(left), Some(b)) = (
                    pred.child_by_field_name("left"),
                    pred.child_by_field_name("bounds"),
                )
                && left.kind() == "type_identifier"
                && !out.iter().any(|(n, _)| n == cx.text(left))
                && let Some(t) = first_bound(cx, b)
            {
                out.push((cx.text(left).to_string(), t));
            }
        }
    }
}

/// A type with its generic arguments; `bounds` replaces bounded generic parameters.
fn ty(cx: &Cx<'_>, node: Node<'_>, bounds: &[(String, Ty)]) -> Option<Ty> {
    ty_at(cx, node, bounds, 0)
}

fn ty_at(cx: &Cx<'_>, node: Node<'_>, bounds: &[(String, Ty)], depth: usize) -> Option<Ty> {
    if depth > 16 {
        return None;
    }
    match node.kind() {
        "reference_type" | "pointer_type" => {
            ty_at(cx, node.child_by_field_name("type")?, bounds, depth + 1)
        }
        "array_type" => Some(Ty {
            path: vec!["[]".to_string()],
            args: vec![
                ty_at(cx, node.child_by_field_name("element")?, bounds, depth + 1).unwrap_or(Ty {
                    path: Vec::new(),
                    args: Vec::new(),
                }),
            ],
        }),
        "generic_type" => {
            let base = node.child_by_field_name("type")?;
            let path = cx.type_path(base)?;
            let mut args = Vec::new();
            if let Some(list) = node.child_by_field_name("type_arguments") {
                for a in named_children(list) {
                    if matches!(
                        a.kind(),
                        "lifetime" | "type_binding" | "block" | "integer_literal"
                    ) {
                        continue;
                    }
                    args.push(ty_at(cx, a, bounds, depth + 1).unwrap_or(Ty {
                        path: Vec::new(),
                        args: Vec::new(),
                    }));
                }
            }
            Some(Ty { path, args })
        }
        "abstract_type" | "dynamic_type" => {
            let t = node.child_by_field_name("trait")?;
            if t.kind() == "bounded_type" {
                return first_bound(cx, t);
            }
            ty_at(cx, t, bounds, depth + 1)
        }
        "bounded_type" => first_bound(cx, node),
        // `FnOnce(&mut T) -> U`: the path `Fn` with the parameter types as arguments
        "function_type" => {
            let params = node.child_by_field_name("parameters")?;
            let args = named_children(params)
                .into_iter()
                .filter(|p| !matches!(p.kind(), "attribute_item" | "lifetime"))
                .map(|p| {
                    let t = if p.kind() == "parameter" {
                        p.child_by_field_name("type")
                    } else {
                        Some(p)
                    };
                    t.and_then(|t| ty_at(cx, t, bounds, depth + 1))
                        .unwrap_or(Ty {
                            path: Vec::new(),
                            args: Vec::new(),
                        })
                })
                .collect();
            Some(Ty {
                path: vec!["Fn".to_string()],
                args,
            })
        }
        "type_identifier" => {
            let name = cx.text(node);
            if let Some((_, b)) = bounds.iter().find(|(n, _)| n == name) {
                return Some(b.clone());
            }
            Some(Ty {
                path: vec![name.to_string()],
                args: Vec::new(),
            })
        }
        "scoped_type_identifier" | "scoped_identifier" | "primitive_type" | "identifier" => {
            Some(Ty {
                path: cx
                    .type_path(node)
                    .or_else(|| Some(vec![cx.text(node).to_string()]))?,
                args: Vec::new(),
            })
        }
        _ => None,
    }
}

/// Constructors whose value is their first argument, wrapped (`Arc::new(x)`, `Some(x)`).
fn wraps_argument(path: &[String]) -> bool {
    match path {
        [one] => matches!(one.as_str(), "Some" | "Ok" | "Box" | "Poll" | "Ready"),
        [.., ty, f] => {
            matches!(
                ty.as_str(),
                "Box"
                    | "Arc"
                    | "Rc"
                    | "Pin"
                    | "Mutex"
                    | "RwLock"
                    | "RefCell"
                    | "Cell"
                    | "UnsafeCell"
                    | "ManuallyDrop"
                    | "Option"
                    | "Some"
                    | "Poll"
            ) && matches!(
                f.as_str(),
                "new" | "pin" | "clone" | "from" | "new_unchecked" | "Ready"
            )
        }
        _ => false,
    }
}

/// An expression as steps the resolver can follow to its type.
fn expr(cx: &Cx<'_>, node: Node<'_>, depth: usize) -> Expr {
    if depth > 24 {
        return Expr::Unknown;
    }
    let inner = |n: Option<Node<'_>>| match n {
        Some(n) => expr(cx, n, depth + 1),
        None => Expr::Unknown,
    };
    match node.kind() {
        "identifier" | "self" | "crate" | "super" | "scoped_identifier" => {
            match cx.callee_path(node) {
                Some((p, false)) => Expr::Path(p),
                _ => Expr::Unknown,
            }
        }
        "generic_function" => inner(node.child_by_field_name("function")),
        "field_expression" => {
            let Some(field) = cx.field_text(node, "field") else {
                return Expr::Unknown;
            };
            Expr::Field(
                Box::new(inner(node.child_by_field_name("value"))),
                field.to_string(),
            )
        }
        "call_expression" => {
            let Some(f) = node.child_by_field_name("function") else {
                return Expr::Unknown;
            };
            let f = if f.kind() == "generic_function"
                && f.child_by_field_name("function")
                    .is_some_and(|g| g.kind() == "field_expression")
            {
                f.child_by_field_name("function").unwrap_or(f)
            } else {
                f
            };
            if f.kind() == "field_expression" {
                let Some(name) = cx.field_text(f, "field") else {
                    return Expr::Unknown;
                };
                return Expr::Method(
                    Box::new(inner(f.child_by_field_name("value"))),
                    name.to_string(),
                );
            }
            let callee = inner(Some(f));
            let arg = match &callee {
                Expr::Path(p) if wraps_argument(p) => node
                    .child_by_field_name("arguments")
                    .and_then(|a| a.named_child(0))
                    .map(|a| Box::new(expr(cx, a, depth + 1))),
                _ => None,
            };
            Expr::Call(Box::new(callee), arg)
        }
        "index_expression" => Expr::Index(Box::new(inner(node.named_child(0)))),
        "try_expression" => Expr::Try(Box::new(inner(node.named_child(0)))),
        "await_expression" | "parenthesized_expression" | "reference_expression" => {
            inner(node.named_child(node.named_child_count().saturating_sub(1) as u32))
        }
        "unary_expression" if cx.text(node).starts_with('*') => inner(node.named_child(0)),
        "struct_expression" => match node
            .child_by_field_name("name")
            .and_then(|n| ty(cx, n, &[]))
        {
            Some(t) => Expr::Typed(t),
            None => Expr::Unknown,
        },
        "block" | "unsafe_block" => inner(tail(node)),
        "if_expression" => inner(node.child_by_field_name("consequence").and_then(tail)),
        "loop_expression" => inner(node.child_by_field_name("body").and_then(break_value)),
        "macro_invocation" => pin_macro(cx, node, depth),
        "type_cast_expression" => match node
            .child_by_field_name("type")
            .and_then(|n| ty(cx, n, &[]))
        {
            Some(t) => Expr::Typed(t),
            None => Expr::Unknown,
        },
        _ => Expr::Unknown,
    }
}

/// Parses the body of a `macro_rules!` rule as a block of statements and extracts it in
/// place, its calls starting from the macro's node: metavariables (`$x`) become names that
/// resolve to nothing, `$crate` becomes `crate`, repetition marks (`$( .. ),*`) are dropped.
fn expand_macro_body(cx: &mut Cx<'_>, body: Node<'_>, scope: Scope) {
    if cx.macro_depth >= MAX_MACRO_DEPTH {
        return;
    }
    let start = body.start_byte();
    let mut text: Vec<u8> = cx.src[body.byte_range()].to_vec();
    if text.len() < 2 {
        return;
    }
    let mut stack = vec![body];
    let mut seen = 0;
    while let Some(n) = stack.pop() {
        seen += 1;
        if seen > 100_000 {
            return;
        }
        let (a, b) = (n.start_byte() - start, n.end_byte() - start);
        match n.kind() {
            "metavariable" => {
                let is_crate = &text[a..b] == b"$crate";
                text[a] = if is_crate { b' ' } else { b'_' };
            }
            "token_repetition" => {
                // `$(` .. `)` sep op: keep what is inside once
                let mut c = n.walk();
                let children: Vec<Node<'_>> = n.children(&mut c).collect();
                let close = children.iter().rposition(|k| k.kind() == ")");
                for (i, k) in children.iter().enumerate() {
                    let blank = match close {
                        Some(close) => i <= 1 || i >= close,
                        None => false,
                    };
                    if blank {
                        for byte in &mut text[k.start_byte() - start..k.end_byte() - start] {
                            if *byte != b'\n' {
                                *byte = b' ';
                            }
                        }
                    } else {
                        stack.push(*k);
                    }
                }
            }
            _ => {
                let mut c = n.walk();
                stack.extend(n.children(&mut c));
            }
        }
    }
    let last = text.len() - 1;
    text[0] = b'{';
    text[last] = b'}';
    let mut source = b"fn __macro_body() ".to_vec();
    source.extend_from_slice(&text);
    let Ok(source) = String::from_utf8(source) else {
        return;
    };
    let mut parser = tree_sitter::Parser::new();
    if parser
        .set_language(&crate::lang::Lang::Rust.grammar())
        .is_err()
    {
        return;
    }
    let Some(tree) = parser.parse(&source, None) else {
        return;
    };
    let Some(block) = tree
        .root_node()
        .named_child(0)
        .and_then(|f| f.child_by_field_name("body"))
    else {
        return;
    };
    let nodes: Vec<Node<'_>> = named_children(block);
    walk_sub(cx, &source, body.start_position().row as u32, scope, &nodes);
}

/// Walks nodes of a separately parsed text (`source`) as if they were at `offset` lines into
/// this file: their facts join this file's, their lines shifted; their syntax errors do not count.
fn walk_sub(cx: &mut Cx<'_>, source: &str, offset: u32, scope: Scope, nodes: &[Node<'_>]) {
    let before = (
        cx.facts.symbols.len(),
        cx.facts.imports.len(),
        cx.facts.calls.len(),
        cx.facts.impls.len(),
    );
    let errors = cx.facts.parse_errors;
    // the enclosing function or type may get locals from the walk: shift those too
    let outer: Vec<(u32, usize)> = [scope.func, scope.class]
        .into_iter()
        .flatten()
        .filter(|&i| (i as usize) < before.0)
        .map(|i| (i, cx.facts.symbols[i as usize].locals.len()))
        .collect();
    let mut sub = Cx {
        src: source.as_bytes(),
        lang: cx.lang,
        test_file: cx.test_file,
        facts: std::mem::replace(&mut cx.facts, crate::facts::FileFacts::empty(cx.lang)),
        owners: std::mem::take(&mut cx.owners),
        sub_parser: cx.sub_parser.take(),
        macro_depth: cx.macro_depth + 1,
    };
    for &n in nodes {
        super::walk(&mut sub, n, scope, 1);
    }
    cx.facts = sub.facts;
    cx.owners = sub.owners;
    cx.sub_parser = sub.sub_parser;
    cx.facts.parse_errors = errors;
    let facts = &mut cx.facts;
    let shift = |h: &mut TypeHint| {
        if let TypeHint::Let { from, to, .. } = h {
            *from = from.saturating_add(offset);
            *to = to.saturating_add(offset);
        }
    };
    for s in &mut facts.symbols[before.0..] {
        s.start_line += offset;
        s.end_line += offset;
        for (_, h) in &mut s.locals {
            shift(h);
        }
    }
    for (i, len) in outer {
        for (_, h) in &mut facts.symbols[i as usize].locals[len..] {
            shift(h);
        }
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

/// The callee of a call as an expression: `Method(recv, name)` for a method call, else its path.
fn callee_expr(cx: &Cx<'_>, f: Node<'_>) -> Option<Expr> {
    let f = if f.kind() == "generic_function" {
        f.child_by_field_name("function")?
    } else {
        f
    };
    if f.kind() == "field_expression" {
        let name = cx.field_text(f, "field")?;
        let value = f.child_by_field_name("value")?;
        return Some(Expr::Method(Box::new(expr(cx, value, 0)), name.to_string()));
    }
    match expr(cx, f, 0) {
        Expr::Path(p) => Some(Expr::Path(p)),
        _ => None,
    }
}

/// The tail expression of a block (`{ ..; x }` is `x`), if it has one.
fn tail(block: Node<'_>) -> Option<Node<'_>> {
    let block = if block.kind() == "unsafe_block" {
        named_children(block)
            .into_iter()
            .find(|c| c.kind() == "block")?
    } else {
        block
    };
    let last = named_children(block).into_iter().rev().find(|c| {
        !matches!(
            c.kind(),
            "line_comment" | "block_comment" | "attribute_item"
        )
    })?;
    if last.kind().ends_with("_statement")
        || last.kind().ends_with("_declaration")
        || last.kind().ends_with("_item")
    {
        return None;
    }
    Some(last)
}

/// The value of the first `break` of a loop body (not one of an inner loop or closure).
fn break_value(body: Node<'_>) -> Option<Node<'_>> {
    let mut stack = vec![body];
    let mut seen = 0;
    while let Some(n) = stack.pop() {
        seen += 1;
        if seen > 4096 {
            return None;
        }
        if n.kind() == "break_expression" {
            if let Some(v) = named_children(n).into_iter().find(|c| c.kind() != "label") {
                return Some(v);
            }
            continue;
        }
        if n != body
            && matches!(
                n.kind(),
                "loop_expression" | "while_expression" | "for_expression" | "closure_expression"
            )
        {
            continue;
        }
        let mut c = n.walk();
        let children: Vec<Node<'_>> = n.named_children(&mut c).collect();
        stack.extend(children.into_iter().rev());
    }
    None
}

/// `pin!(e)` / `std::pin::pin!(e)`: the value is `e` pinned.
fn pin_macro(cx: &Cx<'_>, node: Node<'_>, depth: usize) -> Expr {
    if cx.macro_depth >= MAX_MACRO_DEPTH {
        return Expr::Unknown;
    }
    let is_pin = node
        .child_by_field_name("macro")
        .is_some_and(|m| cx.text(m) == "pin" || cx.text(m).ends_with("::pin"));
    let Some(tt) = named_children(node)
        .into_iter()
        .find(|c| c.kind() == "token_tree")
    else {
        return Expr::Unknown;
    };
    if !is_pin {
        return Expr::Unknown;
    }
    let text = cx.text(tt);
    if text.len() < 2 {
        return Expr::Unknown;
    }
    let source = format!("fn f() {{ {} }}", &text[1..text.len() - 1]);
    let mut parser = tree_sitter::Parser::new();
    if parser
        .set_language(&crate::lang::Lang::Rust.grammar())
        .is_err()
    {
        return Expr::Unknown;
    }
    let Some(tree) = parser.parse(&source, None) else {
        return Expr::Unknown;
    };
    let root = tree.root_node();
    if root.has_error() {
        return Expr::Unknown;
    }
    let Some(value) = root
        .named_child(0)
        .and_then(|f| f.child_by_field_name("body"))
        .and_then(tail)
    else {
        return Expr::Unknown;
    };
    let sub = Cx {
        src: source.as_bytes(),
        lang: cx.lang,
        test_file: cx.test_file,
        facts: crate::facts::FileFacts::empty(cx.lang),
        owners: Vec::new(),
        sub_parser: None,
        macro_depth: cx.macro_depth + 1,
    };
    let inner = expr(&sub, value, depth + 1);
    Expr::Call(
        Box::new(Expr::Path(vec!["Pin".to_string(), "new".to_string()])),
        Some(Box::new(inner)),
    )
}

/// The elements of a tuple expression, seen through blocks that end in one.
fn tuple_elements(value: Node<'_>) -> Option<Vec<Node<'_>>> {
    let mut v = value;
    for _ in 0..8 {
        match v.kind() {
            "tuple_expression" => {
                return Some(
                    named_children(v)
                        .into_iter()
                        .filter(|c| c.kind() != "attribute_item")
                        .collect(),
                );
            }
            "block" | "unsafe_block" => v = tail(v)?,
            _ => return None,
        }
    }
    None
}

/// The last line of the body of the `if let` / `while let` / `for` a binding belongs to.
fn body_end(node: Node<'_>) -> u32 {
    let mut cur = Some(node);
    while let Some(n) = cur {
        let body = match n.kind() {
            "if_expression" => n.child_by_field_name("consequence"),
            "while_expression" | "for_expression" => n.child_by_field_name("body"),
            _ => None,
        };
        if let Some(b) = body {
            return b.end_position().row as u32 + 1;
        }
        if matches!(n.kind(), "block" | "function_item" | "closure_expression") {
            break;
        }
        cur = n.parent();
    }
    binding_end(node)
}

/// `Some(x)`, `Ok(x)`, `Err(x)`, `Ready(x)` matched against `value`: x is typed from the
/// value's type argument; any other pattern binds names of unknown type.
fn bind_variant(cx: &mut Cx<'_>, scope: Scope, pat: Node<'_>, value: Node<'_>, from: u32, to: u32) {
    if pat.kind() == "tuple_struct_pattern" {
        let parts = named_children(pat);
        let variant = parts
            .first()
            .map(|t| cx.text(*t).rsplit("::").next().unwrap_or("").to_string());
        let index = match variant.as_deref() {
            Some("Some" | "Ok" | "Ready") => Some(0),
            Some("Err") => Some(1),
            _ => None,
        };
        if let (Some(i), 2) = (index, parts.len()) {
            let mut bound = parts[1];
            while matches!(bound.kind(), "ref_pattern" | "mut_pattern") {
                match bound.named_child(bound.named_child_count().saturating_sub(1) as u32) {
                    Some(b) => bound = b,
                    None => break,
                }
            }
            if bound.kind() == "identifier" {
                let hint = TypeHint::binding(
                    None,
                    Some(Expr::Arg(Box::new(expr(cx, value, 0)), i)),
                    from,
                    to,
                );
                cx.local(scope, cx.text(bound), hint);
                return;
            }
        }
    }
    bind_untyped(cx, scope, pat, from, to);
}
