//! Extraction: one syntax tree in, one [`FileFacts`] out. The walk and the helpers shared by
//! all languages live here; each language module decides what its node kinds mean
//! (definition, import, call, typed local) through one `visit` function.

mod c_family;
mod go;
mod java_cs;
mod js;
mod php;
mod python;
mod ruby;
mod rust;

use tree_sitter::{Node, Parser};

use crate::facts::{Call, FileFacts, Import, Symbol, SymbolKind, TypeHint, TypePath};
use crate::lang::Lang;

/// Deepest nesting the walk descends into; deeper subtrees (machine-made code) are skipped.
const MAX_DEPTH: usize = 600;

/// Parses `source` as `lang` and extracts its facts. Syntax errors are tolerated: the
/// parts of the tree that parsed are used and the count of error nodes is recorded.
pub fn extract(parser: &mut Parser, lang: Lang, source: &str, path: &str) -> FileFacts {
    let mut cx = Cx {
        src: source.as_bytes(),
        lang,
        test_file: is_test_path(path),
        owners: Vec::new(),
        sub_parser: None,
        macro_depth: 0,
        facts: FileFacts {
            lines: source.lines().count() as u32,
            ..FileFacts::empty(lang)
        },
    };
    if parser.set_language(&lang.grammar()).is_err() {
        return cx.facts;
    }
    let Some(tree) = parser.parse(source, None) else {
        return cx.facts;
    };
    let root = tree.root_node();
    walk(&mut cx, root, Scope::default(), 0);
    cx.facts
}

/// Whether a path looks like test code (a `tests`/`test`/`spec` directory or a test-named file).
pub fn is_test_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    lower.split('/').any(|seg| {
        matches!(
            seg,
            "test" | "tests" | "spec" | "specs" | "__tests__" | "testing"
        )
    }) || name.starts_with("test_")
        || name.contains("_test.")
        || name.contains(".test.")
        || name.contains(".spec.")
        || name.contains("_spec.")
        || name.ends_with("test.java")
        || name.ends_with("tests.cs")
        || name.ends_with("test.php")
}

/// The walk's position: the enclosing definition and type.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Scope {
    /// Innermost enclosing symbol of any kind.
    pub sym: Option<u32>,
    /// Innermost enclosing type.
    pub class: Option<u32>,
    /// Innermost enclosing function or method (where typed locals go).
    pub func: Option<u32>,
    /// Innermost enclosing module symbol (where imports are scoped).
    pub module: Option<u32>,
    /// The `impl` block the walk is in (index into `Cx::owners`).
    pub owner: Option<u32>,
}

/// What a language's `visit` tells the walk.
pub(crate) enum Flow {
    /// Visit the children with this scope.
    Descend(Scope),
    /// Do not visit the children.
    Skip,
}

pub(crate) struct Cx<'a> {
    pub src: &'a [u8],
    pub lang: Lang,
    pub test_file: bool,
    pub facts: FileFacts,
    /// Types of the `impl` blocks (and similar) the walk is inside; indexed by [`Scope::owner`].
    pub owners: Vec<crate::facts::TypePath>,
    /// A parser for text taken out of the file (macro bodies and arguments), made on first use.
    pub sub_parser: Option<Parser>,
    /// How many macro texts the walk is inside (each is parsed again): bounded, so nested
    /// macros cannot make the work grow without limit.
    pub macro_depth: u32,
}

pub(crate) fn walk(cx: &mut Cx<'_>, node: Node<'_>, scope: Scope, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    if node.is_error() || node.is_missing() {
        cx.facts.parse_errors += 1;
    }
    let flow = match cx.lang {
        Lang::Python => python::visit(cx, node, scope),
        Lang::Rust => rust::visit(cx, node, scope),
        Lang::JavaScript | Lang::TypeScript | Lang::Tsx => js::visit(cx, node, scope),
        Lang::Go => go::visit(cx, node, scope),
        Lang::Java | Lang::CSharp => java_cs::visit(cx, node, scope),
        Lang::C | Lang::Cpp => c_family::visit(cx, node, scope),
        Lang::Ruby => ruby::visit(cx, node, scope),
        Lang::Php => php::visit(cx, node, scope),
    };
    let Flow::Descend(inner) = flow else { return };
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        walk(cx, child, inner, depth + 1);
    }
}

impl<'a> Cx<'a> {
    /// Parses `source` as Rust with the file's second parser.
    pub fn parse_rust(&mut self, source: &str) -> Option<tree_sitter::Tree> {
        if self.sub_parser.is_none() {
            let mut p = Parser::new();
            p.set_language(&Lang::Rust.grammar()).ok()?;
            self.sub_parser = Some(p);
        }
        self.sub_parser.as_mut()?.parse(source, None)
    }

    pub fn text(&self, node: Node<'_>) -> &'a str {
        std::str::from_utf8(&self.src[node.byte_range()]).unwrap_or("")
    }

    pub fn field_text(&self, node: Node<'_>, field: &str) -> Option<&'a str> {
        node.child_by_field_name(field).map(|n| self.text(n))
    }

    /// Adds a definition and returns the scope for its body.
    pub fn define(
        &mut self,
        node: Node<'_>,
        name: &str,
        kind: SymbolKind,
        scope: Scope,
    ) -> (u32, Scope) {
        self.define_span(node, node, name, kind, scope)
    }

    /// Adds a definition whose span runs from `first` to `last` (decorators, attributes).
    pub fn define_span(
        &mut self,
        first: Node<'_>,
        last: Node<'_>,
        name: &str,
        kind: SymbolKind,
        scope: Scope,
    ) -> (u32, Scope) {
        let index = self.facts.symbols.len() as u32;
        self.facts.symbols.push(Symbol {
            name: name.to_string(),
            kind,
            parent: scope.sym,
            owner: None,
            start_line: first.start_position().row as u32 + 1,
            end_line: last.end_position().row as u32 + 1,
            bases: Vec::new(),
            implements: Vec::new(),
            ret: None,
            locals: Vec::new(),
            sig: None,
        });
        if scope.func.is_none()
            && let Some(k) = scope.owner
            && matches!(kind, SymbolKind::Method | SymbolKind::Test)
        {
            self.facts.symbols[index as usize].owner = Some(self.owners[k as usize].clone());
        }
        let mut inner = scope;
        inner.sym = Some(index);
        match kind {
            SymbolKind::Type => {
                inner.class = Some(index);
                inner.func = None;
                inner.owner = None;
            }
            SymbolKind::Module => {
                inner.module = Some(index);
                inner.class = None;
                inner.func = None;
                inner.owner = None;
            }
            SymbolKind::Function | SymbolKind::Method | SymbolKind::Test | SymbolKind::Macro => {
                inner.func = Some(index)
            }
        }
        (index, inner)
    }

    pub fn sym(&mut self, index: u32) -> &mut Symbol {
        &mut self.facts.symbols[index as usize]
    }

    /// Function kind for a definition: method inside a type, test by the language's rule.
    pub fn fn_kind(&self, scope: Scope, is_test: bool) -> SymbolKind {
        if is_test {
            SymbolKind::Test
        } else if (scope.class.is_some() || scope.owner.is_some()) && scope.func.is_none() {
            SymbolKind::Method
        } else {
            SymbolKind::Function
        }
    }

    pub fn call(&mut self, node: Node<'_>, scope: Scope, path: Vec<String>, opaque_receiver: bool) {
        if path.is_empty() || path.iter().any(|s| s.is_empty()) {
            return;
        }
        self.facts.calls.push(Call {
            from: scope.sym,
            line: line(node),
            path,
            opaque_receiver,
            recv: None,
            mac: false,
        });
    }

    /// Records a call whose callee is the expression `callee`.
    pub fn call_expr(&mut self, node: Node<'_>, scope: Scope, callee: Node<'_>) {
        if let Some((path, opaque)) = self.callee_path(callee) {
            self.call(node, scope, path, opaque);
        }
    }

    pub fn import(&mut self, node: Node<'_>, scope: Scope, import: Import) {
        let _ = node;
        let mut import = import;
        import.scope = scope.func.or(scope.module);
        self.facts.imports.push(import);
    }

    /// Records a typed local in the enclosing function (or a field in the enclosing type).
    pub fn local(&mut self, scope: Scope, name: &str, hint: TypeHint) {
        let target = scope.func.or(scope.class);
        if let Some(i) = target
            && !name.is_empty()
        {
            self.facts.symbols[i as usize]
                .locals
                .push((name.to_string(), hint));
        }
    }

    /// Records a field of the enclosing type.
    pub fn field(&mut self, scope: Scope, name: &str, hint: TypeHint) {
        if let Some(i) = scope.class
            && !name.is_empty()
        {
            let locals = &mut self.facts.symbols[i as usize].locals;
            if !locals.iter().any(|(n, _)| n == name) {
                locals.push((name.to_string(), hint));
            }
        }
    }

    /// The callee expression as a path of names, and whether its receiver is opaque.
    pub fn callee_path(&self, node: Node<'_>) -> Option<(Vec<String>, bool)> {
        let mut path = Vec::new();
        let opaque = self.expr_path(node, &mut path, 0);
        if path.is_empty() {
            None
        } else {
            Some((path, opaque))
        }
    }

    /// Appends the names of a member/path expression; returns true if the head is opaque.
    fn expr_path(&self, node: Node<'_>, out: &mut Vec<String>, depth: usize) -> bool {
        if depth > 16 {
            return true;
        }
        let kind = node.kind();
        match kind {
            "identifier"
            | "field_identifier"
            | "property_identifier"
            | "type_identifier"
            | "constant"
            | "name"
            | "simple_identifier"
            | "namespace_identifier"
            | "private_property_identifier"
            | "shorthand_property_identifier"
            | "package_identifier"
            | "predefined_type" => {
                out.push(self.text(node).to_string());
                false
            }
            "self" | "this" | "super" | "crate" | "base" => {
                out.push(normalize_self(self.text(node)));
                false
            }
            "attribute"
            | "member_expression"
            | "field_expression"
            | "selector_expression"
            | "member_access_expression"
            | "field_access"
            | "scoped_identifier"
            | "qualified_identifier"
            | "scope_resolution"
            | "scoped_type_identifier"
            | "qualified_name"
            | "optional_chain"
            | "qualified_type" => {
                let object = [
                    "object",
                    "value",
                    "operand",
                    "argument",
                    "expression",
                    "scope",
                    "path",
                    "package",
                ]
                .iter()
                .find_map(|f| node.child_by_field_name(f));
                let member = ["attribute", "property", "field", "name"]
                    .iter()
                    .find_map(|f| node.child_by_field_name(f));
                let Some(member) = member else {
                    // PHP qualified_name and similar: names separated by punctuation
                    return self.names_of(node, out);
                };
                let opaque = match object {
                    Some(o) => {
                        let before = out.len();
                        let opaque = self.expr_path(o, out, depth + 1);
                        if opaque {
                            out.truncate(before);
                        }
                        opaque
                    }
                    None => false,
                };
                if member.kind() == "qualified_identifier" || member.kind() == "template_function" {
                    return self.expr_path(member, out, depth + 1) || opaque;
                }
                out.push(self.text(member).to_string());
                opaque
            }
            "generic_function" | "template_function" | "generic_name" | "generic_type"
            | "template_type" => {
                match ["function", "name", "type"]
                    .iter()
                    .find_map(|f| node.child_by_field_name(f))
                {
                    Some(inner) => self.expr_path(inner, out, depth + 1),
                    None => match node.named_child(0) {
                        Some(inner) => self.expr_path(inner, out, depth + 1),
                        None => true,
                    },
                }
            }
            "parenthesized_expression" | "non_null_expression" | "await_expression" => {
                match node.named_child(0) {
                    Some(inner) => self.expr_path(inner, out, depth + 1),
                    None => true,
                }
            }
            _ => true,
        }
    }

    fn names_of(&self, node: Node<'_>, out: &mut Vec<String>) -> bool {
        let mut cursor = node.walk();
        for child in node.named_children(&mut cursor) {
            match child.kind() {
                "namespace_name" | "namespace_name_as_prefix" => {
                    self.names_of(child, out);
                }
                _ => out.extend(split_path(self.text(child))),
            }
        }
        false
    }

    /// A type expression as a path of names, without generics, references or pointers.
    pub fn type_path(&self, node: Node<'_>) -> Option<TypePath> {
        let kind = node.kind();
        match kind {
            "reference_type" | "pointer_type" | "pointer_declarator" | "nullable_type"
            | "type_annotation" | "optional_type" | "array_type" | "slice_type" | "type"
            | "type_arguments" => {
                let mut cursor = node.walk();
                let inner = node.named_children(&mut cursor).find(|c| {
                    !matches!(
                        c.kind(),
                        "lifetime" | "mutable_specifier" | "type_qualifier" | "comment"
                    )
                });
                inner.and_then(|n| self.type_path(n))
            }
            "generic_type"
            | "parameterized_type"
            | "template_type"
            | "generic_name"
            | "scoped_type_identifier"
            | "qualified_identifier"
            | "scoped_identifier"
            | "qualified_type"
            | "qualified_name"
            | "member_expression"
            | "attribute"
            | "selector_expression"
            | "field_access"
            | "member_access_expression" => {
                // generic wrappers: the base type is the first named child or `type`/`name`
                if matches!(
                    kind,
                    "generic_type" | "parameterized_type" | "template_type" | "generic_name"
                ) {
                    let base = node
                        .child_by_field_name("type")
                        .or_else(|| node.child_by_field_name("name"))
                        .or_else(|| node.named_child(0))?;
                    return self.type_path(base);
                }
                let (path, opaque) = self.callee_path(node)?;
                if opaque { None } else { Some(path) }
            }
            "identifier" | "type_identifier" | "name" | "constant" | "scope_resolution"
            | "simple_identifier" => {
                let t = self.text(node);
                let path = split_path(t);
                if path.is_empty() { None } else { Some(path) }
            }
            _ => None,
        }
    }
}

pub(crate) fn line(node: Node<'_>) -> u32 {
    node.start_position().row as u32 + 1
}

fn normalize_self(text: &str) -> String {
    match text {
        "this" | "self" | "$this" => "self".to_string(),
        "base" => "super".to_string(),
        other => other.to_string(),
    }
}

/// Splits a textual path on `.`, `::`, `\` and `/`-free separators into names.
pub(crate) fn split_path(text: &str) -> Vec<String> {
    text.split(['.', ':', '\\'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The string inside a string literal node (quotes stripped).
pub(crate) fn unquote(text: &str) -> String {
    text.trim()
        .trim_matches(|c| c == '"' || c == '\'' || c == '`' || c == '<' || c == '>')
        .to_string()
}

/// Named children of a node.
pub(crate) fn named_children<'t>(node: Node<'t>) -> Vec<Node<'t>> {
    let mut cursor = node.walk();
    node.named_children(&mut cursor).collect()
}
