//! Blast radius: from changed files and line ranges to the changed symbols, the symbols that
//! depend on them within N hops (with the edge that connects each), the files outside the
//! diff that hold them, and the tests that reach them. A changed method that overrides or
//! implements a base-type or trait method also impacts that method's callers (edge
//! `Dispatch`): they may run it, though no call names it.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::facts::SymbolKind;
use crate::graph::Graph;
use crate::resolve::{EdgeKind, NodeId};

/// A changed file: the line ranges that changed (1-based, inclusive); empty means the whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Path relative to the repository root.
    pub path: String,
    /// Changed line ranges (new-file line numbers).
    pub ranges: Vec<(u32, u32)>,
}

/// Limits of a blast-radius query.
#[derive(Clone, Debug)]
pub struct BlastOptions {
    /// How many dependency hops to follow from the changed symbols.
    pub hops: u32,
    /// Most impacted symbols listed (the rest is counted in `truncated`).
    pub max_impacted: usize,
}

impl Default for BlastOptions {
    fn default() -> BlastOptions {
        BlastOptions {
            hops: 2,
            max_impacted: 200,
        }
    }
}

/// A symbol (or file, when `name` is empty) named for people and prompts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SymbolRef {
    /// File path.
    pub path: String,
    /// Qualified name inside the file; empty for the file itself.
    pub name: String,
    /// Kind; `None` for a file.
    pub kind: Option<SymbolKind>,
    /// First line (0 for a file).
    pub line: u32,
}

/// A symbol that can break, with the edge through which it depends on the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impact {
    /// The impacted symbol or file.
    pub symbol: SymbolRef,
    /// Hops from the nearest changed symbol (1 = direct dependant).
    pub hops: u32,
    /// The edge kind connecting it (CALLS, IMPORTS, INHERITS, IMPLEMENTS).
    pub via: EdgeKind,
    /// What it depends on (a changed or already impacted symbol).
    pub depends_on: SymbolRef,
    /// Line of the reference in the impacted symbol's file.
    pub line: u32,
}

/// What a change can break.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlastRadius {
    /// Symbols whose lines changed (innermost definitions).
    pub changed: Vec<SymbolRef>,
    /// Dependants within the hop limit, nearest first.
    pub impacted: Vec<Impact>,
    /// Files holding impacted symbols that are not part of the change.
    pub impacted_files: Vec<String>,
    /// Tests that reach a changed or impacted symbol.
    pub tests: Vec<SymbolRef>,
    /// Changed paths the graph does not know (new, ignored or non-source files).
    pub unknown_paths: Vec<String>,
    /// Impacted symbols left out by the limit.
    pub truncated: usize,
}

/// A symbol of a blast radius that tests reach, and the tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covered {
    /// The changed or impacted symbol.
    pub symbol: SymbolRef,
    /// The tests that call it (its tested-by edges).
    pub tests: Vec<SymbolRef>,
}

/// Which symbols of a blast radius tests reach: a symbol is covered when a test calls it (a
/// `TestedBy` edge of the graph). Files and the tests themselves are not counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Symbols with at least one tested-by edge.
    pub covered: Vec<Covered>,
    /// Symbols without one.
    pub not_covered: Vec<SymbolRef>,
}

impl Coverage {
    /// Covered symbols over all symbols (`None` when there are none).
    pub fn fraction(&self) -> Option<f64> {
        let all = self.covered.len() + self.not_covered.len();
        (all > 0).then(|| self.covered.len() as f64 / all as f64)
    }
}

impl Graph {
    /// Which of the changed and impacted symbols of `b` a test calls directly.
    pub fn coverage(&self, b: &BlastRadius) -> Coverage {
        let mut out = Coverage::default();
        let mut seen: HashSet<&SymbolRef> = HashSet::new();
        let symbols = b.changed.iter().chain(b.impacted.iter().map(|i| &i.symbol));
        for s in symbols {
            if s.name.is_empty() || s.kind == Some(SymbolKind::Test) || !seen.insert(s) {
                continue;
            }
            let Some(n) = self.find(&s.path, Some(s.name.as_str())) else {
                continue;
            };
            let tests: BTreeSet<SymbolRef> = self
                .incoming(n)
                .iter()
                .filter(|(from, kind, _)| *kind == EdgeKind::Calls && self.is_test(*from))
                .map(|(from, _, _)| self.symbol_ref(*from))
                .collect();
            if tests.is_empty() {
                out.not_covered.push(s.clone());
            } else {
                out.covered.push(Covered {
                    symbol: s.clone(),
                    tests: tests.into_iter().collect(),
                });
            }
        }
        out
    }

    /// A readable reference to a node.
    pub fn symbol_ref(&self, n: NodeId) -> SymbolRef {
        let Some(e) = self.entry(n.file) else {
            return SymbolRef {
                path: String::new(),
                name: String::new(),
                kind: None,
                line: 0,
            };
        };
        match n.sym {
            None => SymbolRef {
                path: e.path.clone(),
                name: String::new(),
                kind: None,
                line: 0,
            },
            Some(s) => {
                let sym = &e.facts.symbols[s as usize];
                SymbolRef {
                    path: e.path.clone(),
                    name: e.facts.qualified_name(s),
                    kind: Some(sym.kind),
                    line: sym.start_line,
                }
            }
        }
    }

    /// The blast radius of a change, with default limits.
    pub fn blast_radius(&self, changes: &[Change]) -> BlastRadius {
        self.blast_radius_with(changes, &BlastOptions::default())
    }

    /// The blast radius of a change.
    pub fn blast_radius_with(&self, changes: &[Change], opts: &BlastOptions) -> BlastRadius {
        let mut out = BlastRadius::default();
        let mut seeds: Vec<NodeId> = Vec::new();
        let mut changed_files: HashSet<u32> = HashSet::new();
        for c in changes {
            let Some(&id) = self.by_path.get(&c.path) else {
                out.unknown_paths.push(c.path.clone());
                continue;
            };
            changed_files.insert(id);
            let facts = &self.entry(id).expect("indexed path has an entry").facts;
            let overlaps = |s: &crate::facts::Symbol| {
                c.ranges.is_empty()
                    || c.ranges
                        .iter()
                        .any(|&(a, b)| s.start_line <= b && a <= s.end_line)
            };
            let hit: Vec<u32> = (0..facts.symbols.len() as u32)
                .filter(|&i| overlaps(&facts.symbols[i as usize]))
                .collect();
            let hit_set: HashSet<u32> = hit.iter().copied().collect();
            // innermost: drop symbols with a changed child
            let has_changed_child: HashSet<u32> = hit
                .iter()
                .filter_map(|&i| facts.symbols[i as usize].parent)
                .filter(|p| hit_set.contains(p))
                .collect();
            let mut any = false;
            for &i in &hit {
                if c.ranges.is_empty() || !has_changed_child.contains(&i) {
                    let n = NodeId {
                        file: id,
                        sym: Some(i),
                    };
                    out.changed.push(self.symbol_ref(n));
                    seeds.push(n);
                    any = true;
                }
            }
            // lines outside any definition (imports, top-level code) change the file itself
            let outside = c.ranges.is_empty()
                || c.ranges.iter().any(|&(a, b)| {
                    !facts
                        .symbols
                        .iter()
                        .any(|s| s.parent.is_none() && s.start_line <= a && b <= s.end_line)
                });
            if outside || !any {
                seeds.push(NodeId {
                    file: id,
                    sym: None,
                });
            }
        }
        // a changed type changes what its members see
        let mut extra = Vec::new();
        for n in &seeds {
            if self.kind(*n) == Some(SymbolKind::Type) {
                let facts = &self.entry(n.file).expect("seed file exists").facts;
                for (i, s) in facts.symbols.iter().enumerate() {
                    if s.parent == n.sym {
                        extra.push(NodeId {
                            file: n.file,
                            sym: Some(i as u32),
                        });
                    }
                }
            }
        }
        seeds.extend(extra);
        let seed_set: HashSet<NodeId> = seeds.iter().copied().collect();
        let mut depth: HashMap<NodeId, u32> = seeds.iter().map(|&n| (n, 0)).collect();
        let mut queue: VecDeque<NodeId> = seeds.iter().copied().collect();
        let mut tests: BTreeSet<SymbolRef> = BTreeSet::new();
        let mut files: BTreeSet<String> = BTreeSet::new();
        let mut impacted = Vec::new();
        while let Some(n) = queue.pop_front() {
            let d = depth[&n];
            if self.is_test(n) {
                tests.insert(self.symbol_ref(n));
            }
            if d > opts.hops {
                continue;
            }
            let mut edges: Vec<(NodeId, EdgeKind, u32)> = self.incoming(n).to_vec();
            for base in self.overridden(n) {
                edges.extend(
                    self.incoming(base)
                        .iter()
                        .filter(|(_, k, _)| *k == EdgeKind::Calls)
                        .map(|&(from, _, line)| (from, EdgeKind::Dispatch, line)),
                );
            }
            for (from, kind, line) in edges {
                if kind == EdgeKind::Contains || depth.contains_key(&from) {
                    continue;
                }
                depth.insert(from, d + 1);
                queue.push_back(from);
                if d < opts.hops && !seed_set.contains(&from) {
                    if !changed_files.contains(&from.file) {
                        files.insert(
                            self.entry(from.file)
                                .map(|e| e.path.clone())
                                .unwrap_or_default(),
                        );
                    }
                    impacted.push(Impact {
                        symbol: self.symbol_ref(from),
                        hops: d + 1,
                        via: kind,
                        depends_on: self.symbol_ref(n),
                        line,
                    });
                }
            }
        }
        impacted.sort_by(|a, b| a.hops.cmp(&b.hops).then_with(|| a.symbol.cmp(&b.symbol)));
        if impacted.len() > opts.max_impacted {
            out.truncated = impacted.len() - opts.max_impacted;
            impacted.truncate(opts.max_impacted);
        }
        out.impacted = impacted;
        out.impacted_files = files.into_iter().collect();
        out.tests = tests.into_iter().collect();
        out
    }
}

impl Graph {
    /// The base-type and trait methods a method overrides or implements: same-named methods
    /// of the types its type extends or implements, up to a few levels up.
    fn overridden(&self, m: NodeId) -> Vec<NodeId> {
        let (Some(ix), Some(si)) = (self.index.as_ref(), m.sym) else {
            return Vec::new();
        };
        let Some(e) = self.entry(m.file) else {
            return Vec::new();
        };
        let sym = &e.facts.symbols[si as usize];
        if sym.kind != SymbolKind::Method {
            return Vec::new();
        }
        let owner = ix.owner_of(m).or_else(|| {
            let p = NodeId {
                file: m.file,
                sym: sym.parent,
            };
            (sym.parent.is_some() && self.kind(p) == Some(SymbolKind::Type)).then_some(p)
        });
        let Some(owner) = owner else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut seen: HashSet<NodeId> = HashSet::from([owner]);
        let mut level = vec![owner];
        for _ in 0..4 {
            let mut next = Vec::new();
            for t in level {
                let ups = self
                    .outgoing(t)
                    .filter(|e| matches!(e.kind, EdgeKind::Inherits | EdgeKind::Implements))
                    .map(|e| e.to)
                    .chain(ix.traits_of(t).iter().copied());
                for a in ups.collect::<Vec<_>>() {
                    if seen.insert(a) {
                        next.push(a);
                    }
                }
            }
            for &a in &next {
                out.extend(self.method_named(a, &sym.name));
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        out
    }

    /// Methods of type `t` named `name`, declared inside it or in separate blocks.
    fn method_named(&self, t: NodeId, name: &str) -> Vec<NodeId> {
        let Some(e) = self.entry(t.file) else {
            return Vec::new();
        };
        let inside = e
            .facts
            .symbols
            .iter()
            .enumerate()
            .filter(|(_, s)| s.parent == t.sym && s.name == name && s.kind == SymbolKind::Method)
            .map(|(i, _)| NodeId {
                file: t.file,
                sym: Some(i as u32),
            });
        let outside = self.index.iter().flat_map(|ix| {
            ix.methods_of(t).iter().copied().filter(|m| {
                m.sym.is_some_and(|s| {
                    self.entry(m.file)
                        .is_some_and(|f| f.facts.symbols[s as usize].name == name)
                })
            })
        });
        inside.chain(outside).collect()
    }
}
