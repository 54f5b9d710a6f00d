//! Resolution: links call sites, imports, base classes and trait impls to the definitions
//! they name, using scopes, imports (aliases, relative and re-exported), module layout and
//! the types of `self`, typed locals and fields. A reference that cannot be followed to one
//! definition stays unresolved; nothing is guessed from a bare name alone.
//!
//! The [`Index`] holds the cross-file tables (built from every file's interface); a
//! [`Resolver`] walks them for one file at a time and records which other files it
//! consulted, so an edit can re-resolve exactly the files that depended on it.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::facts::{FileFacts, SymbolKind, TypeHint};
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
    traits_of: HashMap<NodeId, Vec<NodeId>>,
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
        let mut traits_of: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
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
                        methods_of.entry(t).or_default().push(NodeId {
                            file: id,
                            sym: Some(i as u32),
                        });
                    }
                }
                for imp in &facts.impls {
                    if let (Res::Val(Val::Sym(t)), Res::Val(Val::Sym(tr))) = (
                        r.resolve_path(id, imp.scope, &imp.ty, 0),
                        r.resolve_path(id, imp.scope, &imp.tr, 0),
                    ) {
                        traits_of.entry(t).or_default().push(tr);
                    }
                }
            }
        }
        ix.methods_of = methods_of;
        ix.traits_of = traits_of;
        ix
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
        }
    }

    /// Resolves every reference of file `id`.
    pub fn links(&mut self, id: u32) -> Links {
        self.current = id;
        self.deps.clear();
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
            match self.resolve_path(id, call.from, &call.path, 0) {
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
            Some(SymbolKind::Function | SymbolKind::Method | SymbolKind::Test | SymbolKind::Type)
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
        for s in self.chain(f, scope) {
            let sym = &facts.symbols[s as usize];
            if matches!(
                sym.kind,
                SymbolKind::Function | SymbolKind::Method | SymbolKind::Test
            ) && let Some((_, hint)) = sym.locals.iter().rev().find(|(n, _)| n == name)
            {
                if let Some(t) = self.hint_type(f, Some(s), hint, depth + 1) {
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
