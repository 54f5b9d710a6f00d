//! Resolution: links call sites, imports, base classes and trait impls to the definitions
//! they name, using scopes, imports (aliases, relative and re-exported), module layout and
//! the types of `self`, typed locals and fields. A reference that cannot be followed to one
//! definition stays unresolved; nothing is guessed from a bare name alone.
//!
//! Rust method calls are followed through their receiver expression: field chains, return
//! types of signatures (with generic arguments put in), indexing of arrays, slices, `Vec` and
//! maps, `let` bindings typed from their initialiser and visible only on the lines after them,
//! the standard pointers and guards (`Box`, `Arc`, `Pin`, `MutexGuard`, ...), `Deref` impls and
//! type aliases of the repository, and bounded generics, `impl Trait` and `dyn Trait`, which
//! resolve to the trait's method. Calls in `macro_rules!` bodies start from the macro's node.
//!
//! The [`Index`] holds the cross-file tables (built from every file's interface); a
//! [`Resolver`] walks them for one file at a time and records which other files it
//! consulted, so an edit can re-resolve exactly the files that depended on it.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::facts::{Expr, FileFacts, SymbolKind, Ty, TypeHint};
use crate::lang::Lang;
use crate::layout::{self, Layout};

/// A node of the graph: a file (`sym == None`) or a symbol inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// File id (stable for the life of the index).
    pub file: u32,
    /// Symbol index inside the file, or `None` for the file itself.
    pub sym: Option<u32>,
}

/// The kind of an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EdgeKind {
    /// A file or symbol contains a symbol.
    Contains,
    /// A call from a symbol (or file top level) to a function, method or type.
    Calls,
    /// A file imports a file or symbol.
    Imports,
    /// A type extends a type.
    Inherits,
    /// A type implements an interface or trait.
    Implements,
    /// A symbol is exercised by a test.
    TestedBy,
    /// A call to a base-type or trait method that may run this overriding implementation at
    /// run time. Blast radius only: the direct-caller view never holds such an edge.
    Dispatch,
}

/// A resolved edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Edge {
    /// What the edge means.
    pub kind: EdgeKind,
    /// Source node.
    pub from: NodeId,
    /// Target node.
    pub to: NodeId,
    /// Line of the reference in the source file (1-based).
    pub line: u32,
}

/// Resolution results for one file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    /// Edges whose source is in this file (CALLS, IMPORTS, INHERITS, IMPLEMENTS).
    pub edges: Vec<Edge>,
    /// Call sites that name something outside the repository (standard library, packages).
    pub external_calls: u32,
    /// Call sites that could not be resolved to one definition.
    pub unresolved_calls: u32,
    /// Other files whose definitions or imports were consulted.
    pub deps: Vec<u32>,
}

/// The source of one file for resolution: its path and facts.
pub trait Source {
    /// Path relative to the repository root.
    fn path(&self) -> &str;
    /// Extracted facts.
    fn facts(&self) -> &FileFacts;
}

/// A resolved value while following a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Val {
    File(u32),
    Pkg(u32),
    Sym(NodeId),
    Inst(NodeId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Res {
    Val(Val),
    External,
    Missing,
}

/// Names the Rust prelude brings into every module.
const RUST_PRELUDE: &[&str] = &[
    "Ok",
    "Err",
    "Some",
    "None",
    "drop",
    "Box",
    "Vec",
    "String",
    "Option",
    "Result",
    "Default",
    "Clone",
    "Iterator",
    "ToString",
    "ToOwned",
    "From",
    "Into",
    "Send",
    "Sync",
    "Sized",
    "Drop",
    "Fn",
    "FnMut",
    "FnOnce",
    "PartialEq",
    "Eq",
];

/// How deep a chain of lookups may go (imports of imports, bases of bases).
const MAX_DEPTH: u32 = 12;

/// How many expressions and bindings may be followed inside one another (locals typed from
/// calls on locals typed from calls); each one starts its lookups with a fresh depth.
const MAX_NESTING: u32 = 48;

/// Cross-file tables, built from every file's interface.
#[derive(Debug, Default)]
pub struct Index {
    layout: Layout,
    by_path: HashMap<String, u32>,
    /// file id → symbol name → symbol indices
    names: HashMap<u32, HashMap<String, Vec<u32>>>,
    /// packages: Go directories and Java/C#/PHP declared packages → files
    pkgs: Vec<Vec<u32>>,
    pkg_by_key: HashMap<String, u32>,
    /// language family → name → top-level definitions (C, C++, Ruby, PHP globals)
    globals: HashMap<String, Vec<NodeId>>,
    methods_of: HashMap<NodeId, Vec<NodeId>>,
    /// method declared outside its type → the type
    owner_of: HashMap<NodeId, NodeId>,
    traits_of: HashMap<NodeId, Vec<NodeId>>,
    /// Rust types with a `Deref` / `Index` impl in the repository → (the impl's file and
    /// scope, its self type, the `Target` / `Output` type).
    deref_of: HashMap<NodeId, Assoc>,
    index_of: HashMap<NodeId, Assoc>,
    /// Rust macro name → its `macro_rules!` definitions.
    macros: HashMap<String, Vec<NodeId>>,
}

/// An associated type of an impl, with where to resolve it.
#[derive(Clone, Debug)]
struct Assoc {
    file: u32,
    scope: Option<u32>,
    self_ty: Option<Ty>,
    target: Ty,
}

fn family(lang: Lang) -> &'static str {
    match lang {
        Lang::C | Lang::Cpp => "c",
        Lang::JavaScript | Lang::TypeScript | Lang::Tsx => "js",
        other => other.name(),
    }
}

fn pkg_key(lang: Lang, name: &str) -> String {
    format!("{}:{name}", family(lang))
}

impl Index {
    /// Builds the tables for `files` (indexed by file id) and the layout files.
    pub fn build<S: Source + Sync>(
        files: &[Option<S>],
        layout_files: &[(String, String)],
    ) -> Index {
        let list: Vec<(u32, &str, Lang)> = files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().map(|f| (i as u32, f.path(), f.facts().lang)))
            .collect();
        let mut ix = Index {
            layout: layout::build(&list, layout_files),
            ..Index::default()
        };
        for (id, f) in files.iter().enumerate() {
            let Some(f) = f else { continue };
            let id = id as u32;
            ix.by_path.insert(f.path().to_string(), id);
            let facts = f.facts();
            let mut names: HashMap<String, Vec<u32>> = HashMap::new();
            for (i, s) in facts.symbols.iter().enumerate() {
                names.entry(s.name.clone()).or_default().push(i as u32);
                if s.kind == SymbolKind::Macro {
                    ix.macros.entry(s.name.clone()).or_default().push(NodeId {
                        file: id,
                        sym: Some(i as u32),
                    });
                }
                let global = s.parent.is_none()
                    || facts.symbols[s.parent.unwrap_or(0) as usize].kind == SymbolKind::Module;
                if global
                    && matches!(facts.lang, Lang::C | Lang::Cpp | Lang::Ruby | Lang::Php)
                    && matches!(
                        s.kind,
                        SymbolKind::Function | SymbolKind::Type | SymbolKind::Module
                    )
                    && s.owner.is_none()
                {
                    ix.globals
                        .entry(format!("{}:{}", family(facts.lang), s.name))
                        .or_default()
                        .push(NodeId {
                            file: id,
                            sym: Some(i as u32),
                        });
                }
            }
            ix.names.insert(id, names);
            let key = match facts.lang {
                Lang::Go => Some(pkg_key(Lang::Go, layout::parent_dir(f.path()))),
                Lang::Java | Lang::CSharp | Lang::Php => {
                    facts.package.as_deref().map(|p| pkg_key(facts.lang, p))
                }
                _ => None,
            };
            if let Some(key) = key {
                let next = ix.pkgs.len() as u32;
                let p = *ix.pkg_by_key.entry(key).or_insert(next);
                if p == next {
                    ix.pkgs.push(Vec::new());
                }
                ix.pkgs[p as usize].push(id);
            }
        }
        // methods declared outside their type, and trait impls, need the tables above
        let mut methods_of: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        let mut owner_of: HashMap<NodeId, NodeId> = HashMap::new();
        let mut traits_of: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        let mut deref_of: HashMap<NodeId, Assoc> = HashMap::new();
        let mut index_of: HashMap<NodeId, Assoc> = HashMap::new();
        {
            let mut r = Resolver::new(files, &ix);
            for (id, f) in files.iter().enumerate() {
                let Some(f) = f else { continue };
                let id = id as u32;
                r.current = id;
                let facts = f.facts();
                for (i, s) in facts.symbols.iter().enumerate() {
                    let Some(owner) = &s.owner else { continue };
                    if let Res::Val(Val::Sym(t)) = r.resolve_path(id, s.parent, owner, 0)
                        && r.is_type(t)
                    {
                        let m = NodeId {
                            file: id,
                            sym: Some(i as u32),
                        };
                        methods_of.entry(t).or_default().push(m);
                        owner_of.insert(m, t);
                    }
                }
                for imp in &facts.impls {
                    if let (Res::Val(Val::Sym(t)), Res::Val(Val::Sym(tr))) = (
                        r.resolve_path(id, imp.scope, &imp.ty, 0),
                        r.resolve_path(id, imp.scope, &imp.tr, 0),
                    ) {
                        traits_of.entry(t).or_default().push(tr);
                    }
                    let wanted = match imp.tr.last().map(String::as_str) {
                        Some("Deref") => Some(("Target", &mut deref_of)),
                        Some("Index") => Some(("Output", &mut index_of)),
                        _ => None,
                    };
                    if let Some((name, map)) = wanted
                        && let Some((_, target)) = imp.assoc.iter().find(|(n, _)| n == name)
                        && let Res::Val(Val::Sym(t)) = r.resolve_path(id, imp.scope, &imp.ty, 0)
                    {
                        map.entry(t).or_insert(Assoc {
                            file: id,
                            scope: imp.scope,
                            self_ty: imp.self_ty.clone(),
                            target: target.clone(),
                        });
                    }
                }
            }
        }
        ix.methods_of = methods_of;
        ix.owner_of = owner_of;
        ix.traits_of = traits_of;
        ix.deref_of = deref_of;
        ix.index_of = index_of;
        ix
    }
}

impl Index {
    /// The type a method declared outside it belongs to (Rust `impl`, Go receivers).
    pub(crate) fn owner_of(&self, m: NodeId) -> Option<NodeId> {
        self.owner_of.get(&m).copied()
    }

    /// Methods declared outside type `t`.
    pub(crate) fn methods_of(&self, t: NodeId) -> &[NodeId] {
        self.methods_of.get(&t).map_or(&[], Vec::as_slice)
    }

    /// Traits implemented for `t` by separate `impl` blocks.
    pub(crate) fn traits_of(&self, t: NodeId) -> &[NodeId] {
        self.traits_of.get(&t).map_or(&[], Vec::as_slice)
    }
}

/// Resolves the references of files against an [`Index`].
pub struct Resolver<'a, S> {
    files: &'a [Option<S>],
    ix: &'a Index,
    memo: HashMap<(u32, u32), Res>,
    bases_memo: HashMap<NodeId, Vec<NodeId>>,
    deps: BTreeSet<u32>,
    current: u32,
    /// The line of the reference being resolved in the current file (0: none), which decides
    /// which `let` bindings are visible.
    line: u32,
    /// Types of the current file's locals already followed, by (file, function, index in its
    /// locals); cleared with each file, so the files they consulted are in `deps` already.
    local_memo: HashMap<(u32, u32, u32), Option<RTy>>,
    /// Expressions and bindings being followed inside one another (bounded by `MAX_NESTING`).
    nesting: u32,
}

impl<'a, S: Source> Resolver<'a, S> {
    /// A resolver over `files` and their index.
    pub fn new(files: &'a [Option<S>], ix: &'a Index) -> Resolver<'a, S> {
        Resolver {
            files,
            ix,
            memo: HashMap::new(),
            bases_memo: HashMap::new(),
            deps: BTreeSet::new(),
            current: 0,
            line: 0,
            local_memo: HashMap::new(),
            nesting: 0,
        }
    }

    /// Resolves every reference of file `id`.
    pub fn links(&mut self, id: u32) -> Links {
        self.current = id;
        self.deps.clear();
        self.local_memo.clear();
        let mut links = Links::default();
        let Some(file) = self.file(id) else {
            return links;
        };
        let facts = file.facts();
        let file_node = NodeId {
            file: id,
            sym: None,
        };
        for call in &facts.calls {
            if call.opaque_receiver {
                links.unresolved_calls += 1;
                continue;
            }
            self.line = call.line;
            let res = if call.mac {
                self.resolve_macro(id, &call.path)
            } else if let (Some(recv), Some(name)) = (&call.recv, call.path.last()) {
                self.method_call(id, call.from, recv, name)
            } else {
                self.resolve_path(id, call.from, &call.path, 0)
            };
            self.line = 0;
            match res {
                Res::Val(Val::Sym(t)) if self.callable(t) => {
                    links.edges.push(Edge {
                        kind: EdgeKind::Calls,
                        from: NodeId {
                            file: id,
                            sym: call.from,
                        },
                        to: t,
                        line: call.line,
                    });
                }
                Res::External => links.external_calls += 1,
                _ => links.unresolved_calls += 1,
            }
        }
        let mut seen = BTreeSet::new();
        for (i, imp) in facts.imports.iter().enumerate() {
            let targets: Vec<NodeId> = match self.resolve_import(id, i as u32, 0) {
                Res::Val(Val::Sym(t)) => vec![t],
                Res::Val(Val::File(f)) => vec![NodeId { file: f, sym: None }],
                Res::Val(Val::Pkg(p)) => self.ix.pkgs[p as usize]
                    .iter()
                    .filter(|&&f| f != id)
                    .map(|&f| NodeId { file: f, sym: None })
                    .collect(),
                _ => Vec::new(),
            };
            for t in targets {
                if t.file != id && seen.insert(t) {
                    links.edges.push(Edge {
                        kind: EdgeKind::Imports,
                        from: file_node,
                        to: t,
                        line: imp.line,
                    });
                }
            }
        }
        for (i, s) in facts.symbols.iter().enumerate() {
            if s.kind != SymbolKind::Type {
                continue;
            }
            let from = NodeId {
                file: id,
                sym: Some(i as u32),
            };
            for (paths, kind) in [
                (&s.bases, EdgeKind::Inherits),
                (&s.implements, EdgeKind::Implements),
            ] {
                for p in paths {
                    if let Res::Val(Val::Sym(t)) = self.resolve_path(id, s.parent, p, 0)
                        && self.is_type(t)
                        && t != from
                    {
                        // a trait's supertraits and a Go embedding read as inheritance
                        links.edges.push(Edge {
                            kind,
                            from,
                            to: t,
                            line: s.start_line,
                        });
                    }
                }
            }
        }
        for imp in &facts.impls {
            if let (Res::Val(Val::Sym(t)), Res::Val(Val::Sym(tr))) = (
                self.resolve_path(id, imp.scope, &imp.ty, 0),
                self.resolve_path(id, imp.scope, &imp.tr, 0),
            ) && self.is_type(t)
                && self.is_type(tr)
            {
                links.edges.push(Edge {
                    kind: EdgeKind::Implements,
                    from: t,
                    to: tr,
                    line: imp.line,
                });
            }
        }
        self.deps.remove(&id);
        links.deps = self.deps.iter().copied().collect();
        links
    }

    fn file(&self, id: u32) -> Option<&'a S> {
        self.files.get(id as usize).and_then(Option::as_ref)
    }

    fn facts(&self, id: u32) -> &'a FileFacts {
        self.files[id as usize]
            .as_ref()
            .map(Source::facts)
            .expect("file id refers to a live file")
    }

    fn touch(&mut self, id: u32) {
        if id != self.current {
            self.deps.insert(id);
        }
    }

    fn kind(&self, n: NodeId) -> Option<SymbolKind> {
        n.sym.map(|s| self.facts(n.file).symbols[s as usize].kind)
    }

    fn is_type(&self, n: NodeId) -> bool {
        self.kind(n) == Some(SymbolKind::Type)
    }

    fn callable(&self, n: NodeId) -> bool {
        matches!(
            self.kind(n),
            Some(
                SymbolKind::Function
                    | SymbolKind::Method
                    | SymbolKind::Test
                    | SymbolKind::Type
                    | SymbolKind::Macro
            )
        )
    }

    /// Symbols of file `f` named `name` whose parent is `parent`.
    fn named(&self, f: u32, parent: Option<u32>, name: &str) -> Option<u32> {
        let list = self.ix.names.get(&f)?.get(name)?;
        let facts = self.facts(f);
        list.iter().copied().find(|&i| {
            facts.symbols[i as usize].parent == parent && facts.symbols[i as usize].owner.is_none()
        })
    }

    fn resolve_path(&mut self, f: u32, scope: Option<u32>, path: &[String], depth: u32) -> Res {
        let Some((head, rest)) = path.split_first() else {
            return Res::Missing;
        };
        let mut cur = match self.head(f, scope, head, path.len() > 1, depth) {
            Res::Val(v) => v,
            other => return other,
        };
        for (i, name) in rest.iter().enumerate() {
            let more = i + 1 < rest.len();
            if more
                && let Val::File(g) = cur
                && let Some(sub) = self.rust_child_module(g, name)
            {
                cur = Val::File(sub);
                continue;
            }
            cur = match self.member(cur, name, depth + 1) {
                Res::Val(v) => v,
                Res::External => return Res::External,
                Res::Missing => return Res::Missing,
            };
        }
        Res::Val(cur)
    }

    /// The chain of enclosing symbols from `scope` outwards.
    fn chain(&self, f: u32, scope: Option<u32>) -> Vec<u32> {
        let facts = self.facts(f);
        let mut out = Vec::new();
        let mut cur = scope;
        while let Some(s) = cur {
            out.push(s);
            cur = facts.symbols[s as usize].parent;
            if out.len() > 64 {
                break;
            }
        }
        out
    }

    /// The type `self` means inside `scope`.
    fn self_type(&mut self, f: u32, scope: Option<u32>, depth: u32) -> Option<NodeId> {
        let facts = self.facts(f);
        for s in self.chain(f, scope) {
            let sym = &facts.symbols[s as usize];
            if let Some(owner) = &sym.owner {
                if let Res::Val(Val::Sym(t)) = self.resolve_path(f, sym.parent, owner, depth + 1) {
                    return Some(t);
                }
                return None;
            }
            if matches!(sym.kind, SymbolKind::Type)
                || (facts.lang == Lang::Ruby && sym.kind == SymbolKind::Module)
            {
                return Some(NodeId {
                    file: f,
                    sym: Some(s),
                });
            }
        }
        None
    }

    /// The Rust module value of `scope` in file `f`: the innermost inline module, or the file.
    fn rust_module(&self, f: u32, scope: Option<u32>) -> Val {
        let facts = self.facts(f);
        for s in self.chain(f, scope) {
            if facts.symbols[s as usize].kind == SymbolKind::Module {
                return Val::Sym(NodeId {
                    file: f,
                    sym: Some(s),
                });
            }
        }
        Val::File(f)
    }

    fn rust_parent(&mut self, f: u32, scope: Option<u32>) -> Res {
        let facts = self.facts(f);
        let chain = self.chain(f, scope);
        let mods: Vec<u32> = chain
            .into_iter()
            .filter(|&s| facts.symbols[s as usize].kind == SymbolKind::Module)
            .collect();
        match mods.len() {
            0 => {
                let Some(m) = self.ix.layout.rust_module.get(&f) else {
                    return Res::Missing;
                };
                if m.path.is_empty() {
                    return Res::Missing;
                }
                let parent = &m.path[..m.path.len() - 1];
                if parent.is_empty() {
                    return Res::Val(Val::File(m.root));
                }
                match self.ix.layout.rust_files.get(&(m.root, parent.join("::"))) {
                    Some(&p) => Res::Val(Val::File(p)),
                    None => Res::Missing,
                }
            }
            1 => Res::Val(Val::File(f)),
            _ => Res::Val(Val::Sym(NodeId {
                file: f,
                sym: Some(mods[1]),
            })),
        }
    }

    fn head(&mut self, f: u32, scope: Option<u32>, name: &str, has_rest: bool, depth: u32) -> Res {
        if depth > MAX_DEPTH {
            return Res::Missing;
        }
        let lang = self.facts(f).lang;
        match (lang, name) {
            (Lang::Rust, "crate") => {
                return match self.ix.layout.rust_module.get(&f) {
                    Some(m) => Res::Val(Val::File(m.root)),
                    None => Res::Missing,
                };
            }
            (Lang::Rust, "super") => return self.rust_parent(f, scope),
            (Lang::Rust, "Self") => {
                return match self.self_type(f, scope, depth) {
                    Some(t) => Res::Val(Val::Sym(t)),
                    None => Res::Missing,
                };
            }
            (Lang::Rust, "self") => {
                return match self.self_type(f, scope, depth) {
                    Some(t) => Res::Val(Val::Inst(t)),
                    None => Res::Val(self.rust_module(f, scope)),
                };
            }
            (Lang::Rust, "std" | "core" | "alloc") => return Res::External,
            (Lang::Rust, _)
                if RUST_PRELUDE.contains(&name) && self.named(f, None, name).is_none() =>
            {
                let bound = self
                    .facts(f)
                    .imports
                    .iter()
                    .any(|i| i.alias.as_deref() == Some(name));
                if !bound {
                    return Res::External;
                }
            }
            (_, "self") => {
                return match self.self_type(f, scope, depth) {
                    Some(t) => Res::Val(Val::Inst(t)),
                    None => Res::Missing,
                };
            }
            (_, "super") => {
                let Some(t) = self.self_type(f, scope, depth) else {
                    return Res::Missing;
                };
                let bases = self.bases(t, depth);
                return match bases.first() {
                    Some(&b) => Res::Val(Val::Inst(b)),
                    None => Res::Missing,
                };
            }
            _ => {}
        }
        if lang == Lang::Rust
            && has_rest
            && let Val::File(m) = self.rust_module(f, scope)
            && let Some(sub) = self.rust_child_module(m, name)
        {
            return Res::Val(Val::File(sub));
        }
        let facts = self.facts(f);
        let line = if f == self.current { self.line } else { 0 };
        // a Rust path `a::b` names an item: locals are values, reached only as receivers
        let locals_visible = !(lang == Lang::Rust && has_rest);
        for s in self.chain(f, scope) {
            let sym = &facts.symbols[s as usize];
            if locals_visible
                && matches!(
                    sym.kind,
                    SymbolKind::Function
                        | SymbolKind::Method
                        | SymbolKind::Test
                        | SymbolKind::Macro
                )
                && let Some(i) = sym
                    .locals
                    .iter()
                    .rposition(|(n, h)| n == name && visible(h, line))
            {
                let t = if lang == Lang::Rust {
                    self.local_rty(f, s, i)
                        .and_then(|t| self.repo_type(&t, depth + 1))
                } else {
                    let hint = &sym.locals[i].1;
                    self.hint_type(f, Some(s), hint, depth + 1)
                };
                if let Some(t) = t {
                    return Res::Val(Val::Inst(t));
                }
                // a local shadows anything outer, typed or not
                return Res::Missing;
            }
            if let Some(c) = self.named(f, Some(s), name) {
                return Res::Val(Val::Sym(NodeId {
                    file: f,
                    sym: Some(c),
                }));
            }
            let implicit = lang.implicit_this();
            if sym.kind == SymbolKind::Type && implicit
                || (lang == Lang::Ruby && matches!(sym.kind, SymbolKind::Type | SymbolKind::Module))
            {
                let r = self.type_member(
                    NodeId {
                        file: f,
                        sym: Some(s),
                    },
                    name,
                    depth + 1,
                );
                if r != Res::Missing {
                    return r;
                }
            }
            let r = self.scoped_imports(f, Some(s), name, depth);
            if r != Res::Missing {
                return r;
            }
        }
        if let Some(c) = self.named(f, None, name) {
            return Res::Val(Val::Sym(NodeId {
                file: f,
                sym: Some(c),
            }));
        }
        let r = self.scoped_imports(f, None, name, depth);
        if r != Res::Missing {
            return r;
        }
        self.language_scope(f, lang, name, has_rest, depth)
    }

    /// Imports visible in `scope` (exactly): bindings named `name`, then glob imports.
    fn scoped_imports(&mut self, f: u32, scope: Option<u32>, name: &str, depth: u32) -> Res {
        let facts = self.facts(f);
        for (i, imp) in facts.imports.iter().enumerate() {
            if imp.scope == scope && imp.alias.as_deref() == Some(name) {
                let r = self.resolve_import(f, i as u32, depth + 1);
                if r != Res::Missing {
                    return r;
                }
            }
        }
        for (i, imp) in facts.imports.iter().enumerate() {
            if imp.scope == scope
                && imp.glob
                && let Res::Val(v) = self.resolve_import(f, i as u32, depth + 1)
            {
                let r = self.member(v, name, depth + 1);
                if let Res::Val(_) = r {
                    return r;
                }
            }
        }
        Res::Missing
    }

    fn language_scope(
        &mut self,
        f: u32,
        lang: Lang,
        name: &str,
        has_rest: bool,
        depth: u32,
    ) -> Res {
        match lang {
            Lang::Rust => {
                if let Some(&root) = self.ix.layout.rust_crates.get(name) {
                    self.touch(root);
                    return Res::Val(Val::File(root));
                }
                if has_rest {
                    Res::External
                } else {
                    Res::Missing
                }
            }
            Lang::Go | Lang::Java | Lang::CSharp | Lang::Php => {
                let key = match lang {
                    Lang::Go => pkg_key(lang, layout::parent_dir(self.path(f))),
                    _ => match &self.facts(f).package {
                        Some(p) => pkg_key(lang, p),
                        None => String::new(),
                    },
                };
                if let Some(&p) = self.ix.pkg_by_key.get(&key)
                    && let Res::Val(v) = self.member(Val::Pkg(p), name, depth + 1)
                {
                    return Res::Val(v);
                }
                if lang == Lang::Php {
                    return self.global(lang, name);
                }
                Res::Missing
            }
            Lang::C | Lang::Cpp | Lang::Ruby => self.global(lang, name),
            _ => Res::Missing,
        }
    }

    /// A global definition, only when exactly one exists.
    fn global(&mut self, lang: Lang, name: &str) -> Res {
        let Some(list) = self.ix.globals.get(&format!("{}:{name}", family(lang))) else {
            return Res::Missing;
        };
        let mut distinct: Vec<NodeId> = Vec::new();
        for &n in list {
            if !distinct.contains(&n) {
                distinct.push(n);
            }
        }
        if distinct.len() == 1 {
            self.touch(distinct[0].file);
            return Res::Val(Val::Sym(distinct[0]));
        }
        Res::Missing
    }

    fn path(&self, f: u32) -> &'a str {
        self.files[f as usize]
            .as_ref()
            .map(Source::path)
            .unwrap_or("")
    }

    /// The type a local's hint names.
    fn hint_type(
        &mut self,
        f: u32,
        scope: Option<u32>,
        hint: &TypeHint,
        depth: u32,
    ) -> Option<NodeId> {
        if depth > MAX_DEPTH {
            return None;
        }
        match hint {
            TypeHint::Declared(p) => match self.resolve_path(f, scope, p, depth + 1) {
                Res::Val(Val::Sym(t)) if self.is_type(t) => Some(t),
                _ => None,
            },
            TypeHint::Ty(_) | TypeHint::Let { .. } => {
                let t = self.hint_rty(f, scope, hint, depth + 1)?;
                self.repo_type(&t, depth + 1)
            }
            TypeHint::CallOf(p) => match self.resolve_path(f, scope, p, depth + 1) {
                Res::Val(Val::Sym(t)) if self.is_type(t) => Some(t),
                Res::Val(Val::Sym(func)) => {
                    let sym = &self.facts(func.file).symbols[func.sym? as usize];
                    let ret = sym.ret.clone()?;
                    match self.resolve_path(func.file, func.sym, &ret, depth + 1) {
                        Res::Val(Val::Sym(t)) if self.is_type(t) => Some(t),
                        _ => None,
                    }
                }
                _ => None,
            },
        }
    }

    fn member(&mut self, v: Val, name: &str, depth: u32) -> Res {
        if depth > MAX_DEPTH {
            return Res::Missing;
        }
        match v {
            Val::File(g) => self.file_member(g, name, depth),
            Val::Pkg(p) => {
                let files = self.ix.pkgs[p as usize].clone();
                for g in files {
                    self.touch(g);
                    if let Some(c) = self.named(g, None, name) {
                        return Res::Val(Val::Sym(NodeId {
                            file: g,
                            sym: Some(c),
                        }));
                    }
                }
                Res::Missing
            }
            Val::Sym(n) => match self.kind(n) {
                Some(SymbolKind::Module) => {
                    self.touch(n.file);
                    if let Some(c) = self.named(n.file, n.sym, name) {
                        return Res::Val(Val::Sym(NodeId {
                            file: n.file,
                            sym: Some(c),
                        }));
                    }
                    let r = self.scoped_imports(n.file, n.sym, name, depth);
                    if r != Res::Missing {
                        return r;
                    }
                    if self.facts(n.file).lang == Lang::Ruby {
                        self.type_member(n, name, depth)
                    } else {
                        Res::Missing
                    }
                }
                Some(SymbolKind::Type) => self.type_member(n, name, depth),
                _ => Res::Missing,
            },
            Val::Inst(t) => self.type_member(t, name, depth),
        }
    }

    fn file_member(&mut self, g: u32, name: &str, depth: u32) -> Res {
        self.touch(g);
        if let Some(c) = self.named(g, None, name) {
            return Res::Val(Val::Sym(NodeId {
                file: g,
                sym: Some(c),
            }));
        }
        let facts = self.facts(g);
        for (i, imp) in facts.imports.iter().enumerate() {
            if imp.scope.is_none() && imp.alias.as_deref() == Some(name) {
                let r = self.resolve_import(g, i as u32, depth + 1);
                if r != Res::Missing {
                    return r;
                }
            }
        }
        match facts.lang {
            Lang::Python => {
                if let Some((module, true)) = self.ix.layout.py_name.get(&g)
                    && let Some(&sub) = self.ix.layout.py_modules.get(&format!("{module}.{name}"))
                {
                    self.touch(sub);
                    return Res::Val(Val::File(sub));
                }
            }
            Lang::Rust => {
                if let Some(m) = self.ix.layout.rust_module.get(&g) {
                    let mut p = m.path.clone();
                    p.push(name.to_string());
                    if let Some(&sub) = self.ix.layout.rust_files.get(&(m.root, p.join("::"))) {
                        self.touch(sub);
                        return Res::Val(Val::File(sub));
                    }
                }
            }
            Lang::C | Lang::Cpp => {
                for companion in self.companions(g) {
                    self.touch(companion);
                    if let Some(c) = self.named(companion, None, name) {
                        return Res::Val(Val::Sym(NodeId {
                            file: companion,
                            sym: Some(c),
                        }));
                    }
                }
            }
            _ => {}
        }
        for (i, imp) in facts.imports.iter().enumerate() {
            if imp.scope.is_none()
                && imp.glob
                && !matches!(facts.lang, Lang::C | Lang::Cpp | Lang::Ruby)
                && let Res::Val(v) = self.resolve_import(g, i as u32, depth + 1)
                && v != Val::File(g)
            {
                let r = self.member(v, name, depth + 1);
                if let Res::Val(_) = r {
                    return r;
                }
            }
        }
        Res::Missing
    }

    /// The file of Rust module `name` declared under the module of file `g`.
    fn rust_child_module(&mut self, g: u32, name: &str) -> Option<u32> {
        let m = self.ix.layout.rust_module.get(&g)?;
        let mut p = m.path.clone();
        p.push(name.to_string());
        let sub = *self.ix.layout.rust_files.get(&(m.root, p.join("::")))?;
        self.touch(sub);
        Some(sub)
    }

    /// Source files that implement a C/C++ header (`x.h` → `x.c`, `x.cc`, `x.cpp`).
    fn companions(&self, header: u32) -> Vec<u32> {
        let path = self.path(header);
        let Some((stem, ext)) = path.rsplit_once('.') else {
            return Vec::new();
        };
        if !matches!(ext, "h" | "hpp" | "hh" | "hxx") {
            return Vec::new();
        }
        ["c", "cc", "cpp", "cxx"]
            .iter()
            .filter_map(|e| self.ix.by_path.get(&format!("{stem}.{e}")).copied())
            .collect()
    }

    /// Resolved base types of `t` (classes, interfaces, traits it implements), memoised.
    fn bases(&mut self, t: NodeId, depth: u32) -> Vec<NodeId> {
        if let Some(b) = self.bases_memo.get(&t) {
            return b.clone();
        }
        self.bases_memo.insert(t, Vec::new());
        let Some(si) = t.sym else { return Vec::new() };
        let sym = &self.facts(t.file).symbols[si as usize];
        let parent = sym.parent;
        let paths: Vec<Vec<String>> = sym
            .bases
            .iter()
            .chain(sym.implements.iter())
            .cloned()
            .collect();
        let mut out = Vec::new();
        for p in paths {
            if let Res::Val(Val::Sym(b)) = self.resolve_path(t.file, parent, &p, depth + 1)
                && b != t
                && self
                    .kind(b)
                    .is_some_and(|k| matches!(k, SymbolKind::Type | SymbolKind::Module))
            {
                out.push(b);
            }
        }
        if let Some(traits) = self.ix.traits_of.get(&t) {
            out.extend(traits.iter().copied());
        }
        self.bases_memo.insert(t, out.clone());
        out
    }

    fn type_member(&mut self, t: NodeId, name: &str, depth: u32) -> Res {
        if depth > MAX_DEPTH {
            return Res::Missing;
        }
        self.touch(t.file);
        if let Some(c) = self.named(t.file, t.sym, name) {
            return Res::Val(Val::Sym(NodeId {
                file: t.file,
                sym: Some(c),
            }));
        }
        if let Some(methods) = self.ix.methods_of.get(&t) {
            for &m in methods {
                if self.facts(m.file).symbols[m.sym.unwrap_or(0) as usize].name == name {
                    self.touch(m.file);
                    return Res::Val(Val::Sym(m));
                }
            }
        }
        let sym = &self.facts(t.file).symbols[t.sym.unwrap_or(0) as usize];
        if let Some((_, hint)) = sym.locals.iter().find(|(n, _)| n == name) {
            let hint = hint.clone();
            // fields are written at type level; resolve their types from inside the type
            return match self.hint_type(t.file, t.sym, &hint, depth + 1) {
                Some(ft) => Res::Val(Val::Inst(ft)),
                None => Res::Missing,
            };
        }
        for b in self.bases(t, depth) {
            let r = self.type_member(b, name, depth + 1);
            if r != Res::Missing {
                return r;
            }
        }
        Res::Missing
    }

    fn resolve_import(&mut self, f: u32, i: u32, depth: u32) -> Res {
        if let Some(&r) = self.memo.get(&(f, i)) {
            if let Res::Val(v) = r {
                self.touch_val(v);
            }
            return r;
        }
        if depth > MAX_DEPTH {
            return Res::Missing;
        }
        // guard against an import that names itself
        self.memo.insert((f, i), Res::Missing);
        let r = self.resolve_import_uncached(f, i, depth);
        self.memo.insert((f, i), r);
        r
    }

    fn touch_val(&mut self, v: Val) {
        match v {
            Val::File(g) => self.touch(g),
            Val::Sym(n) | Val::Inst(n) => self.touch(n.file),
            Val::Pkg(p) => {
                for g in self.ix.pkgs[p as usize].clone() {
                    self.touch(g);
                }
            }
        }
    }

    fn resolve_import_uncached(&mut self, f: u32, i: u32, depth: u32) -> Res {
        let facts = self.facts(f);
        let imp = &facts.imports[i as usize];
        let lang = facts.lang;
        let module = match lang {
            Lang::Python => {
                let mut parts: Vec<String> = Vec::new();
                if imp.level > 0 {
                    let Some((name, is_pkg)) = self.ix.layout.py_name.get(&f) else {
                        return Res::Missing;
                    };
                    parts = name.split('.').map(str::to_string).collect();
                    if !is_pkg {
                        parts.pop();
                    }
                    for _ in 1..imp.level {
                        if parts.pop().is_none() {
                            return Res::Missing;
                        }
                    }
                }
                parts.extend(imp.path.iter().cloned());
                match self.ix.layout.py_modules.get(&parts.join(".")) {
                    Some(&m) => Val::File(m),
                    None if imp.level == 0 => return Res::External,
                    None => return Res::Missing,
                }
            }
            Lang::Rust => {
                let r = self.resolve_path(f, imp.scope, &imp.path, depth + 1);
                return match r {
                    Res::Val(v) if imp.glob || imp.name.is_none() => Res::Val(v),
                    other => other,
                };
            }
            Lang::JavaScript | Lang::TypeScript | Lang::Tsx => {
                let spec = imp.path.first().map(String::as_str).unwrap_or("");
                if spec.is_empty() {
                    Val::File(f)
                } else if spec.starts_with('.') {
                    match self.js_file(f, spec) {
                        Some(g) => Val::File(g),
                        None => return Res::Missing,
                    }
                } else {
                    return Res::External;
                }
            }
            Lang::Go => {
                let spec = imp.path.first().map(String::as_str).unwrap_or("");
                match layout::go_import_dir(&self.ix.layout, spec)
                    .and_then(|d| self.ix.pkg_by_key.get(&pkg_key(lang, &d)).copied())
                {
                    Some(p) => Val::Pkg(p),
                    None => return Res::External,
                }
            }
            Lang::Java | Lang::CSharp | Lang::Php => {
                let path = imp.path.clone();
                let mut found = None;
                for k in (1..=path.len()).rev() {
                    if let Some(&p) = self.ix.pkg_by_key.get(&pkg_key(lang, &path[..k].join("."))) {
                        let mut v = Val::Pkg(p);
                        let mut ok = true;
                        for seg in &path[k..] {
                            match self.member(v, seg, depth + 1) {
                                Res::Val(next) => v = next,
                                _ => {
                                    ok = false;
                                    break;
                                }
                            }
                        }
                        if ok {
                            found = Some(v);
                            break;
                        }
                    }
                }
                match found {
                    Some(v) => v,
                    None if path.is_empty() && lang == Lang::Php => {
                        let name = imp.name.clone().unwrap_or_default();
                        return self.global(lang, &name);
                    }
                    None => return Res::External,
                }
            }
            Lang::C | Lang::Cpp | Lang::Ruby => {
                let spec = imp.path.first().map(String::as_str).unwrap_or("");
                if spec.starts_with('<') {
                    return Res::External;
                }
                match self.include_file(f, spec, lang == Lang::Ruby) {
                    Some(g) => Val::File(g),
                    None => return Res::External,
                }
            }
        };
        self.touch_val(module);
        match &imp.name {
            Some(name) => self.member(module, name, depth + 1),
            None => Res::Val(module),
        }
    }

    fn js_file(&self, f: u32, spec: &str) -> Option<u32> {
        let base = layout::normalize(&layout::join_path(layout::parent_dir(self.path(f)), spec))?;
        const SUFFIXES: [&str; 13] = [
            "",
            ".ts",
            ".tsx",
            ".js",
            ".jsx",
            ".mjs",
            ".cjs",
            ".d.ts",
            "/index.ts",
            "/index.tsx",
            "/index.js",
            "/index.jsx",
            "/index.mjs",
        ];
        let stripped = base.strip_suffix(".js").map(str::to_string);
        for s in SUFFIXES {
            if let Some(&g) = self.ix.by_path.get(&format!("{base}{s}")) {
                return Some(g);
            }
        }
        // TypeScript sources import `./x.js` for `./x.ts`
        let stripped = stripped?;
        [".ts", ".tsx"]
            .iter()
            .find_map(|s| self.ix.by_path.get(&format!("{stripped}{s}")).copied())
    }

    fn include_file(&self, f: u32, spec: &str, ruby: bool) -> Option<u32> {
        let spec = if ruby && !spec.ends_with(".rb") {
            format!("{spec}.rb")
        } else {
            spec.to_string()
        };
        let rel = layout::normalize(&layout::join_path(layout::parent_dir(self.path(f)), &spec));
        if let Some(g) = rel.and_then(|r| self.ix.by_path.get(&r).copied()) {
            return Some(g);
        }
        let spec = spec.trim_start_matches("./");
        if let Some(&g) = self.ix.by_path.get(spec) {
            return Some(g);
        }
        let suffix = format!("/{spec}");
        let mut hits = self.ix.by_path.iter().filter(|(p, _)| p.ends_with(&suffix));
        let first = hits.next().map(|(_, &g)| g);
        if hits.next().is_some() { None } else { first }
    }
}

/// Whether a local's hint is visible on `line` (0: no line known, every binding is).
fn visible(h: &TypeHint, line: u32) -> bool {
    match h {
        TypeHint::Let { from, to, .. } => line == 0 || (*from <= line && line <= *to),
        _ => true,
    }
}

/// Standard smart pointers and guards that dereference to their first type argument.
const SEE_THROUGH: [&str; 16] = [
    "Box",
    "Rc",
    "Arc",
    "Pin",
    "Ref",
    "RefMut",
    "MutexGuard",
    "RwLockReadGuard",
    "RwLockWriteGuard",
    "MappedMutexGuard",
    "OwnedMutexGuard",
    "Cow",
    "ManuallyDrop",
    "AssertUnwindSafe",
    "NonNull",
    "Weak",
];

/// Methods that hand back the value they are called on (seen through its pointers).
const SAME_METHODS: [&str; 14] = [
    "get_unchecked_mut",
    "get_ref",
    "clone",
    "to_owned",
    "borrow",
    "borrow_mut",
    "as_ref",
    "as_mut",
    "deref",
    "deref_mut",
    "by_ref",
    "unwrap",
    "expect",
    "get_mut",
];

/// What a method of a standard container gives back.
enum StdRule {
    /// The container itself.
    Same,
    /// Its type argument `i`.
    Inner(usize),
    /// `Option` of its type argument `i`.
    OptionOf(usize),
}

fn std_method(ty: &str, method: &str) -> Option<StdRule> {
    match ty {
        "Option" | "Result" | "Poll" | "LockResult" | "TryLockResult" => match method {
            "unwrap" | "expect" | "unwrap_unchecked" | "unwrap_or_default" | "unwrap_or"
            | "unwrap_or_else" => Some(StdRule::Inner(0)),
            "as_ref" | "as_mut" | "as_deref" | "as_deref_mut" | "take" | "clone" | "as_pin_mut"
            | "cloned" | "copied" | "replace" => Some(StdRule::Same),
            _ => None,
        },
        "Mutex" | "RwLock" | "RefCell" | "Cell" | "UnsafeCell" | "OnceCell" | "OnceLock"
        | "Lazy" | "LazyLock" | "CachePadded" => match method {
            "lock" | "read" | "write" | "try_lock" | "try_read" | "try_write" | "borrow"
            | "borrow_mut" | "get_mut" | "get" | "into_inner" | "get_or_init" | "blocking_lock" => {
                Some(StdRule::Inner(0))
            }
            _ => None,
        },
        "Vec" | "VecDeque" | "[]" | "LinkedList" | "BinaryHeap" | "Slab" | "SmallVec"
        | "ArrayVec" | "BTreeSet" | "HashSet" => match method {
            "get" | "get_mut" | "first" | "last" | "first_mut" | "last_mut" | "pop"
            | "pop_front" | "pop_back" | "front" | "back" | "front_mut" | "back_mut" | "peek" => {
                Some(StdRule::OptionOf(0))
            }
            "get_unchecked" | "get_unchecked_mut" | "remove" | "swap_remove" => {
                Some(StdRule::Inner(0))
            }
            _ => None,
        },
        "HashMap" | "BTreeMap" | "IndexMap" => match method {
            "get" | "get_mut" | "remove" => Some(StdRule::OptionOf(1)),
            _ => None,
        },
        _ => None,
    }
}

/// Element type argument of a standard sequence or map (`v[i]`).
fn std_index(ty: &str) -> Option<usize> {
    match ty {
        "Vec" | "VecDeque" | "[]" | "Slab" | "SmallVec" | "ArrayVec" => Some(0),
        "HashMap" | "BTreeMap" | "IndexMap" => Some(1),
        _ => None,
    }
}

/// A type during resolution: where its names are to be looked up, and its arguments.
#[derive(Clone, Debug)]
struct RTy {
    head: Head,
    args: Vec<RTy>,
}

#[derive(Clone, Debug)]
enum Head {
    /// A path written in `file` inside `scope`.
    Path {
        path: Vec<String>,
        file: u32,
        scope: Option<u32>,
    },
    /// A type already resolved.
    Node(NodeId),
}

impl RTy {
    fn of(t: &Ty, file: u32, scope: Option<u32>) -> Option<RTy> {
        if t.path.is_empty() {
            return None;
        }
        Some(RTy {
            head: Head::Path {
                path: t.path.clone(),
                file,
                scope,
            },
            args: t
                .args
                .iter()
                .map(|a| {
                    RTy::of(a, file, scope).unwrap_or(RTy {
                        head: Head::Path {
                            path: vec!["_".to_string()],
                            file,
                            scope,
                        },
                        args: Vec::new(),
                    })
                })
                .collect(),
        })
    }

    fn node(n: NodeId) -> RTy {
        RTy {
            head: Head::Node(n),
            args: Vec::new(),
        }
    }

    /// The last segment of a written path.
    fn name(&self) -> Option<&str> {
        match &self.head {
            Head::Path { path, .. } => path.last().map(String::as_str),
            Head::Node(_) => None,
        }
    }

    /// Replaces single-name paths bound in `map`.
    fn subst(self, map: &[(String, RTy)]) -> RTy {
        if map.is_empty() {
            return self;
        }
        if let Head::Path { path, .. } = &self.head
            && path.len() == 1
            && let Some((_, t)) = map.iter().find(|(n, _)| *n == path[0])
        {
            return t.clone();
        }
        RTy {
            head: self.head,
            args: self.args.into_iter().map(|a| a.subst(map)).collect(),
        }
    }
}

/// How deep a type may be followed through pointers, guards and `Deref` impls.
const MAX_PEEL: usize = 8;

impl<S: Source> Resolver<'_, S> {
    /// A `macro_rules!` macro named by an invocation: one in the same file, else the only one of
    /// that name in the same crate; external when the repository defines none of that name.
    fn resolve_macro(&mut self, f: u32, path: &[String]) -> Res {
        let Some(name) = path.last() else {
            return Res::Missing;
        };
        let Some(list) = self.ix.macros.get(name) else {
            return Res::External;
        };
        let here: Vec<NodeId> = list.iter().copied().filter(|n| n.file == f).collect();
        if here.len() == 1 {
            return Res::Val(Val::Sym(here[0]));
        }
        let root = self.ix.layout.rust_module.get(&f).map(|m| m.root);
        let same_crate: Vec<NodeId> = list
            .iter()
            .copied()
            .filter(|n| self.ix.layout.rust_module.get(&n.file).map(|m| m.root) == root)
            .collect();
        if same_crate.len() == 1 {
            self.touch(same_crate[0].file);
            return Res::Val(Val::Sym(same_crate[0]));
        }
        if same_crate.is_empty() {
            Res::External
        } else {
            Res::Missing
        }
    }

    /// The method `name` called on the value of `recv`.
    fn method_call(&mut self, f: u32, scope: Option<u32>, recv: &Expr, name: &str) -> Res {
        let Some(t) = self.eval(f, scope, recv) else {
            return Res::Missing;
        };
        if let Some((m, _)) = self.find_method(t.clone(), name, 0) {
            return Res::Val(Val::Sym(m));
        }
        // a method of a type from outside the repository is outside it too
        let mut t = t;
        for _ in 0..MAX_PEEL {
            match self.peel(&t, 0) {
                Some(inner) => t = inner,
                None => break,
            }
        }
        match self.ty_node(&t, 0) {
            Res::External => Res::External,
            _ => Res::Missing,
        }
    }

    /// What `t` resolves to when it names a type of the repository.
    fn ty_node(&mut self, t: &RTy, depth: u32) -> Res {
        match &t.head {
            Head::Node(n) => Res::Val(Val::Sym(*n)),
            Head::Path { path, file, scope } => {
                let (path, file, scope) = (path.clone(), *file, *scope);
                // a written type is read where it was written, whatever line is being resolved
                let saved = std::mem::take(&mut self.line);
                let r = self.resolve_path(file, scope, &path, depth + 1);
                self.line = saved;
                r
            }
        }
    }

    /// The repository type `t` is, seen through standard pointers, guards and `Deref` impls.
    fn repo_type(&mut self, t: &RTy, depth: u32) -> Option<NodeId> {
        let mut t = t.clone();
        for _ in 0..MAX_PEEL {
            match self.ty_node(&t, depth) {
                Res::Val(Val::Sym(n) | Val::Inst(n))
                    if self.is_type(n) && self.alias(n).is_none() =>
                {
                    return Some(n);
                }
                _ => t = self.peel(&t, depth)?,
            }
        }
        None
    }

    /// One dereference of `t`: a standard pointer's argument, or a repository `Deref` target.
    fn peel(&mut self, t: &RTy, depth: u32) -> Option<RTy> {
        if let Res::Val(Val::Sym(n)) = self.ty_node(t, depth)
            && self.is_type(n)
        {
            if let Some((target, generics)) = self.alias(n) {
                let scope = self.facts(n.file).symbols[n.sym? as usize].parent;
                let map: Vec<(String, RTy)> =
                    generics.into_iter().zip(t.args.iter().cloned()).collect();
                return Some(RTy::of(&target, n.file, scope)?.subst(&map));
            }
            if let Some(a) = self.ix.deref_of.get(&n).cloned() {
                return self.assoc_ty(t, &a);
            }
        }
        if t.name().is_some_and(|n| SEE_THROUGH.contains(&n)) {
            return t.args.first().cloned();
        }
        None
    }

    /// A type alias's target and generic parameters (`type Lists<T> = Mutex<ListsInner<T>>`).
    fn alias(&self, n: NodeId) -> Option<(Ty, Vec<String>)> {
        let sym = &self.facts(n.file).symbols[n.sym? as usize];
        let sig = sym.sig.as_ref()?;
        if sym.kind != SymbolKind::Type || self.facts(n.file).lang != Lang::Rust {
            return None;
        }
        sig.ret.clone().map(|t| (t, sig.generics.clone()))
    }

    /// An impl's associated type for the instance `t` (its arguments put in for the impl's).
    fn assoc_ty(&self, t: &RTy, a: &Assoc) -> Option<RTy> {
        let target = RTy::of(&a.target, a.file, a.scope)?;
        let map = a
            .self_ty
            .as_ref()
            .map(|st| params(st, t))
            .unwrap_or_default();
        Some(target.subst(&map))
    }

    /// The method `name` on `t` or what it dereferences to, with the receiver type it was found on.
    fn find_method(&mut self, t: RTy, name: &str, depth: u32) -> Option<(NodeId, RTy)> {
        let mut t = t;
        for _ in 0..MAX_PEEL {
            if let Res::Val(Val::Sym(n) | Val::Inst(n)) = self.ty_node(&t, depth)
                && self.is_type(n)
                && let Res::Val(Val::Sym(m)) = self.type_member(n, name, depth + 1)
                && matches!(
                    self.kind(m),
                    Some(SymbolKind::Method | SymbolKind::Function | SymbolKind::Test)
                )
            {
                return Some((m, t));
            }
            t = self.peel(&t, depth)?;
        }
        None
    }

    /// The type of a field `name` of `t` (seen through pointers and `Deref`).
    fn field_of(&mut self, t: RTy, name: &str, depth: u32) -> Option<RTy> {
        let mut t = t;
        for _ in 0..MAX_PEEL {
            if let Res::Val(Val::Sym(n) | Val::Inst(n)) = self.ty_node(&t, depth)
                && self.is_type(n)
            {
                let sym = &self.facts(n.file).symbols[n.sym? as usize];
                if let Some((_, hint)) = sym.locals.iter().find(|(f, _)| f == name) {
                    self.touch(n.file);
                    let hint = hint.clone();
                    let generics = sym
                        .sig
                        .as_ref()
                        .map(|s| s.generics.clone())
                        .unwrap_or_default();
                    let ft = self.hint_rty(n.file, n.sym, &hint, depth + 1)?;
                    let map: Vec<(String, RTy)> =
                        generics.into_iter().zip(t.args.iter().cloned()).collect();
                    return Some(ft.subst(&map));
                }
            }
            t = self.peel(&t, depth)?;
        }
        None
    }

    /// The type of `t[i]`.
    fn index_of(&mut self, t: RTy, depth: u32) -> Option<RTy> {
        let mut t = t;
        for _ in 0..MAX_PEEL {
            match self.ty_node(&t, depth) {
                Res::Val(Val::Sym(n) | Val::Inst(n)) if self.is_type(n) => {
                    if let Some(a) = self.ix.index_of.get(&n).cloned() {
                        return self.assoc_ty(&t, &a);
                    }
                }
                _ => {
                    if let Some(i) = t.name().and_then(std_index) {
                        return t.args.get(i).cloned();
                    }
                }
            }
            t = self.peel(&t, depth)?;
        }
        None
    }

    /// The type of `t.name(..)`.
    fn method_value(&mut self, t: RTy, name: &str, depth: u32) -> Option<RTy> {
        if let Some((m, on)) = self.find_method(t.clone(), name, depth) {
            let Some(sig) = self.facts(m.file).symbols[m.sym? as usize].sig.clone() else {
                return self.written_ret(m);
            };
            let ret = sig.ret.as_ref()?;
            if ret.path == ["Self"] {
                return Some(on);
            }
            let mut map = sig
                .self_ty
                .as_ref()
                .map(|st| params(st, &on))
                .unwrap_or_default();
            let scope = self.facts(m.file).symbols[m.sym? as usize].parent;
            for (n, b) in &sig.bounds {
                if !map.iter().any(|(k, _)| k == n)
                    && let Some(b) = RTy::of(b, m.file, scope)
                {
                    map.push((n.clone(), b));
                }
            }
            return Some(RTy::of(ret, m.file, Some(m.sym?))?.subst(&map));
        }
        let mut t = t;
        for _ in 0..MAX_PEEL {
            let repo = matches!(self.ty_node(&t, depth), Res::Val(Val::Sym(n)) if self.is_type(n));
            if !repo && let Some(rule) = t.name().and_then(|n| std_method(n, name)) {
                return match rule {
                    StdRule::Same => Some(t),
                    StdRule::Inner(i) => t.args.get(i).cloned(),
                    StdRule::OptionOf(i) => Some(RTy {
                        head: match &t.head {
                            Head::Path { file, scope, .. } => Head::Path {
                                path: vec!["Option".to_string()],
                                file: *file,
                                scope: *scope,
                            },
                            Head::Node(_) => return None,
                        },
                        args: vec![t.args.get(i).cloned()?],
                    }),
                };
            }
            match self.peel(&t, depth) {
                Some(inner) => t = inner,
                None => break,
            }
        }
        if SAME_METHODS.contains(&name) {
            return Some(t);
        }
        None
    }

    /// The return type a function's signature names without generic arguments (languages
    /// other than Rust): `def f() -> Session`.
    fn written_ret(&self, func: NodeId) -> Option<RTy> {
        let ret = self.facts(func.file).symbols[func.sym? as usize]
            .ret
            .as_ref()?;
        RTy::of(
            &Ty {
                path: ret.clone(),
                args: Vec::new(),
            },
            func.file,
            func.sym,
        )
    }

    /// The parameter of a closure given to a standard `Option`/`Result` method
    /// (`opt.map(|x| ..)`: x is what the option holds).
    fn std_closure_param(&mut self, t: RTy, method: &str, arg: u32, param: u32) -> Option<RTy> {
        if param != 0 {
            return None;
        }
        let mut t = t;
        for _ in 0..MAX_PEEL {
            let which = match (t.name(), method, arg) {
                (
                    Some("Option" | "Result"),
                    "map" | "and_then" | "inspect" | "is_some_and" | "is_none_or" | "is_ok_and"
                    | "filter" | "take_if",
                    0,
                ) => Some(0),
                (Some("Option" | "Result"), "map_or" | "map_or_else", 1) => Some(0),
                (Some("Result"), "map_err" | "or_else" | "inspect_err" | "is_err_and", 0) => {
                    Some(1)
                }
                _ => None,
            };
            if let Some(i) = which {
                return t.args.get(i).cloned();
            }
            t = self.peel(&t, 0)?;
        }
        None
    }

    /// The type of a local's hint (`f`/`scope`: where the local is declared).
    fn hint_rty(&mut self, f: u32, scope: Option<u32>, hint: &TypeHint, depth: u32) -> Option<RTy> {
        match hint {
            TypeHint::Ty(t) => RTy::of(t, f, scope),
            TypeHint::Declared(p) => RTy::of(
                &Ty {
                    path: p.clone(),
                    args: Vec::new(),
                },
                f,
                scope,
            ),
            TypeHint::CallOf(_) => self.hint_type(f, scope, hint, depth + 1).map(RTy::node),
            TypeHint::Let {
                ty, value, from, ..
            } => {
                if let Some(t) = ty {
                    return RTy::of(t, f, scope);
                }
                let value = value.as_ref()?;
                // the initialiser sees the bindings before the `let`
                let saved = self.line;
                if f == self.current {
                    self.line = from.saturating_sub(1);
                }
                let r = self.eval(f, scope, value);
                self.line = saved;
                r
            }
        }
    }

    /// The type of `self` inside `scope`: the `impl` block's self type with bounded parameters
    /// replaced by their bounds, else the enclosing type.
    fn self_rty(&mut self, f: u32, scope: Option<u32>, depth: u32) -> Option<RTy> {
        let facts = self.facts(f);
        for s in self.chain(f, scope) {
            let sym = &facts.symbols[s as usize];
            if let Some(sig) = &sym.sig
                && let Some(st) = &sig.self_ty
            {
                let map: Vec<(String, RTy)> = sig
                    .bounds
                    .iter()
                    .filter_map(|(n, b)| Some((n.clone(), RTy::of(b, f, sym.parent)?)))
                    .collect();
                return Some(RTy::of(st, f, sym.parent)?.subst(&map));
            }
            if sym.owner.is_some() {
                break;
            }
        }
        self.self_type(f, scope, depth).map(RTy::node)
    }

    /// The type of an expression's value, when it can be followed.
    fn eval(&mut self, f: u32, scope: Option<u32>, e: &Expr) -> Option<RTy> {
        if self.nesting >= MAX_NESTING {
            return None;
        }
        self.nesting += 1;
        let r = self.eval_inner(f, scope, e);
        self.nesting -= 1;
        r
    }

    fn eval_inner(&mut self, f: u32, scope: Option<u32>, e: &Expr) -> Option<RTy> {
        // lookups made from here start fresh: the nesting bound keeps this recursion finite
        let depth = 0;
        match e {
            Expr::Path(p) => {
                let (head, rest) = p.split_first()?;
                let mut t = if head == "self" && self.facts(f).lang == Lang::Rust {
                    self.self_rty(f, scope, depth)?
                } else if let Some((s, i)) = (rest.is_empty() || self.facts(f).lang != Lang::Rust)
                    .then(|| self.local(f, scope, head))
                    .flatten()
                {
                    self.local_rty(f, s, i)?
                } else {
                    return match self.resolve_path(f, scope, p, depth + 1) {
                        Res::Val(Val::Sym(n) | Val::Inst(n)) if self.is_type(n) => {
                            Some(RTy::node(n))
                        }
                        _ => None,
                    };
                };
                for name in rest {
                    t = self.field_of(t, name, depth + 1)?;
                }
                Some(t)
            }
            Expr::Field(e, name) => {
                let t = self.eval(f, scope, e)?;
                self.field_of(t, name, depth + 1)
            }
            Expr::Method(e, name) => {
                let t = self.eval(f, scope, e)?;
                self.method_value(t, name, depth + 1)
            }
            Expr::Index(e) => {
                let t = self.eval(f, scope, e)?;
                self.index_of(t, depth + 1)
            }
            Expr::Try(e) => {
                let t = self.eval(f, scope, e)?;
                match t.name() {
                    Some("Option" | "Result" | "Poll" | "LockResult") => t.args.first().cloned(),
                    _ => Some(t),
                }
            }
            Expr::Typed(t) => RTy::of(t, f, scope),
            Expr::Arg(e, i) => {
                let mut t = self.eval(f, scope, e)?;
                for _ in 0..MAX_PEEL {
                    if matches!(
                        t.name(),
                        Some("Option" | "Result" | "Poll" | "LockResult" | "TryLockResult")
                    ) {
                        return t.args.get(*i as usize).cloned();
                    }
                    t = self.peel(&t, depth + 1)?;
                }
                None
            }
            Expr::ClosureParam { callee, arg, param } => {
                let (func, map) = match callee.as_ref() {
                    Expr::Method(recv, name) => {
                        let t = self.eval(f, scope, recv)?;
                        let Some((m, on)) = self.find_method(t.clone(), name, depth + 1) else {
                            return self.std_closure_param(t, name, *arg, *param);
                        };
                        let sig = self.facts(m.file).symbols[m.sym? as usize].sig.as_ref()?;
                        let map = sig
                            .self_ty
                            .as_ref()
                            .map(|st| params(st, &on))
                            .unwrap_or_default();
                        (m, map)
                    }
                    Expr::Path(p) => match self.resolve_path(f, scope, p, depth + 1) {
                        Res::Val(Val::Sym(func)) => (func, Vec::new()),
                        _ => return None,
                    },
                    _ => return None,
                };
                let sig = self.facts(func.file).symbols[func.sym? as usize]
                    .sig
                    .as_ref()?;
                let bound = sig.params.get(*arg as usize)?.as_ref()?;
                if bound.path != ["Fn"] {
                    return None;
                }
                let t = bound.args.get(*param as usize)?;
                Some(RTy::of(t, func.file, func.sym)?.subst(&map))
            }
            Expr::Call(callee, arg) => {
                let Expr::Path(p) = callee.as_ref() else {
                    return None;
                };
                match self.resolve_path(f, scope, p, depth + 1) {
                    Res::Val(Val::Sym(n)) if self.is_type(n) => Some(RTy::node(n)),
                    Res::Val(Val::Sym(func)) => {
                        let sym = &self.facts(func.file).symbols[func.sym? as usize];
                        let Some(sig) = sym.sig.as_ref() else {
                            // other languages: the return type as written
                            return self.written_ret(func);
                        };
                        let ret = sig.ret.as_ref()?;
                        if ret.path == ["Self"] {
                            return self.self_rty(func.file, func.sym, depth + 1);
                        }
                        let map: Vec<(String, RTy)> = sig
                            .bounds
                            .iter()
                            .filter_map(|(n, b)| {
                                Some((n.clone(), RTy::of(b, func.file, sym.parent)?))
                            })
                            .collect();
                        Some(RTy::of(ret, func.file, func.sym)?.subst(&map))
                    }
                    Res::External | Res::Missing => {
                        // `Arc::new(x)`, `Some(x)`: the wrapper around the argument's type
                        let inner = self.eval(f, scope, arg.as_deref()?)?;
                        let wrapper = match p.as_slice() {
                            [one] => match one.as_str() {
                                "Some" => "Option",
                                "Ok" => "Result",
                                other => other,
                            },
                            [.., w, _] => w.as_str(),
                            [] => return None,
                        };
                        Some(RTy {
                            head: Head::Path {
                                path: vec![wrapper.to_string()],
                                file: f,
                                scope,
                            },
                            args: vec![inner],
                        })
                    }
                    _ => None,
                }
            }
            Expr::Unknown => None,
        }
    }

    /// The innermost local named `name` visible at the current line: its function and its
    /// index among the function's locals.
    fn local(&self, f: u32, scope: Option<u32>, name: &str) -> Option<(u32, usize)> {
        let facts = self.facts(f);
        let line = if f == self.current { self.line } else { 0 };
        for s in self.chain(f, scope) {
            let sym = &facts.symbols[s as usize];
            if !matches!(
                sym.kind,
                SymbolKind::Function | SymbolKind::Method | SymbolKind::Test | SymbolKind::Macro
            ) {
                continue;
            }
            if let Some(i) = sym
                .locals
                .iter()
                .rposition(|(n, h)| n == name && visible(h, line))
            {
                return Some((s, i));
            }
        }
        None
    }

    /// The type of local `i` of function `s` in file `f` (memoised for the current file: a
    /// binding's type does not depend on where it is used).
    fn local_rty(&mut self, f: u32, s: u32, i: usize) -> Option<RTy> {
        if self.nesting >= MAX_NESTING {
            return None;
        }
        let key = (f, s, i as u32);
        if f == self.current {
            if let Some(t) = self.local_memo.get(&key) {
                return t.clone();
            }
            // a binding being followed is unknown to itself
            self.local_memo.insert(key, None);
        }
        let hint = self.facts(f).symbols[s as usize].locals[i].1.clone();
        self.nesting += 1;
        let t = self.hint_rty(f, Some(s), &hint, 0);
        self.nesting -= 1;
        if f == self.current {
            self.local_memo.insert(key, t.clone());
        }
        t
    }
}

/// The impl's generic parameters (single names among `self_ty`'s arguments) bound to the
/// instance's arguments, by position.
fn params(self_ty: &Ty, inst: &RTy) -> Vec<(String, RTy)> {
    self_ty
        .args
        .iter()
        .zip(inst.args.iter())
        .filter(|(a, _)| a.path.len() == 1 && a.args.is_empty())
        .map(|(a, i)| (a.path[0].clone(), i.clone()))
        .collect()
}
