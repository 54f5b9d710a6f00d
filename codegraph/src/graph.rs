//! The graph of one repository: files with their facts and resolved links, built in
//! parallel, updated incrementally by content hash, saved to and loaded from an index file.
//!
//! An edit whose file keeps its interface (names, kinds, owners, bases, return types, fields,
//! imports) re-resolves only that file. An interface change also re-resolves the files that
//! consulted it and the files that mention a name it gained or lost. Added or removed files
//! and layout changes (`Cargo.toml`, `go.mod`) re-resolve everything, without re-parsing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::extract;
use crate::facts::{FileFacts, SymbolKind};
use crate::resolve::{Edge, EdgeKind, Index, Links, NodeId, Resolver, Source};
use crate::scan::{self, Config};

/// Bumped whenever the stored format or the meaning of stored data changes.
const FORMAT_VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"CGRAPHv1";

/// Errors of building, updating, saving and loading a graph.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository directory could not be read.
    #[error("cannot read repository {path}: {source}")]
    Repo {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The index file could not be read or written.
    #[error("cannot access index file {path}: {source}")]
    IndexIo {
        /// The index file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The work was stopped (its deadline passed or it was no longer wanted); nothing was saved.
    #[error("stopped before the graph was complete (deadline or cancel)")]
    Stopped,
    /// The index file is not an index of this version (rebuild it).
    #[error("index file {path} is not a codegraph index of format {FORMAT_VERSION}: {reason}")]
    IndexFormat {
        /// The index file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// One indexed file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the repository root, `/`-separated.
    pub path: String,
    /// SHA-256 of the contents, hex.
    pub hash: String,
    /// Size when last checked.
    pub size: u64,
    /// Modification time when last checked (ns since the epoch).
    pub mtime_ns: u128,
    /// What the file says.
    pub facts: FileFacts,
    /// What its references resolve to.
    pub links: Links,
}

impl Source for FileEntry {
    fn path(&self) -> &str {
        &self.path
    }
    fn facts(&self) -> &FileFacts {
        &self.facts
    }
}

/// What an update did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStats {
    /// Files parsed (new or changed contents).
    pub parsed: usize,
    /// Files removed from the graph.
    pub removed: usize,
    /// Files whose references were resolved again.
    pub resolved: usize,
    /// Files in the graph after the update.
    pub files: usize,
    /// Files skipped as binary, generated, minified or oversized.
    pub skipped: usize,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    files: Vec<Option<FileEntry>>,
    layout: Vec<(String, String)>,
    skipped: Vec<(String, u64, u128)>,
}

/// The code graph of one repository.
pub struct Graph {
    pub(crate) files: Vec<Option<FileEntry>>,
    pub(crate) by_path: HashMap<String, u32>,
    layout: Vec<(String, String)>,
    /// Files skipped by content (binary, generated), with the size and mtime they had.
    skipped: HashMap<String, (u64, u128)>,
    config: Config,
    pub(crate) index: Option<Index>,
    /// Reverse adjacency: target → (source, kind, line).
    pub(crate) incoming: HashMap<NodeId, Vec<(NodeId, EdgeKind, u32)>>,
}

impl Graph {
    /// An empty graph with this configuration.
    pub fn new(config: Config) -> Graph {
        Graph {
            files: Vec::new(),
            by_path: HashMap::new(),
            layout: Vec::new(),
            skipped: HashMap::new(),
            config,
            index: None,
            incoming: HashMap::new(),
        }
    }

    /// Builds the graph of the repository at `repo` from scratch.
    pub fn build(repo: &Path, config: Config) -> Result<Graph, Error> {
        let mut g = Graph::new(config);
        g.update(repo)?;
        Ok(g)
    }

    /// Loads the index at `index_path` if it is valid and brings it up to date with `repo`;
    /// otherwise builds from scratch. Saves the result to `index_path` when anything changed.
    pub fn load_or_build(
        repo: &Path,
        index_path: &Path,
        config: Config,
    ) -> Result<(Graph, UpdateStats), Error> {
        let mut g = match Graph::load(index_path, config.clone()) {
            Ok(g) => g,
            Err(e) => {
                if index_path.exists() {
                    tracing::warn!(index = %index_path.display(), error = %e, "index unusable, rebuilding");
                }
                Graph::new(config)
            }
        };
        let stats = g.update(repo)?;
        if stats.parsed > 0 || stats.removed > 0 || !index_path.exists() {
            g.save(index_path)?;
        }
        Ok((g, stats))
    }

    /// Brings the graph up to date with the working tree at `repo`: files whose size or
    /// modification time changed are hashed, and re-parsed when their hash changed.
    pub fn update(&mut self, repo: &Path) -> Result<UpdateStats, Error> {
        let found = scan::scan(repo, &self.config).map_err(|source| {
            if self.config.stop.stopped() {
                Error::Stopped
            } else {
                Error::Repo {
                    path: repo.to_path_buf(),
                    source,
                }
            }
        })?;
        let mut stats = UpdateStats {
            skipped: found.skipped_large,
            ..UpdateStats::default()
        };
        let layout_changed = found.layout != self.layout;
        let present: HashSet<&str> = found.files.iter().map(|f| f.path.as_str()).collect();
        let removed: Vec<u32> = self
            .by_path
            .iter()
            .filter(|(p, _)| !present.contains(p.as_str()))
            .map(|(_, &id)| id)
            .collect();
        let mut candidates = Vec::new();
        for f in &found.files {
            if let Some(&(size, mtime)) = self.skipped.get(&f.path)
                && size == f.size
                && mtime == f.mtime_ns
            {
                continue;
            }
            match self
                .by_path
                .get(&f.path)
                .and_then(|&id| self.files[id as usize].as_ref())
            {
                Some(e) if e.size == f.size && e.mtime_ns == f.mtime_ns => {}
                _ => candidates.push(f.clone()),
            }
        }
        self.skipped.retain(|p, _| present.contains(p.as_str()));
        let parsed = parse_all(repo, &candidates, &self.config);
        if self.config.stop.stopped() {
            return Err(Error::Stopped);
        }
        let mut changed: Vec<(u32, Option<FileFacts>)> = Vec::new();
        let mut added = false;
        for (found, outcome) in candidates.iter().zip(parsed) {
            let (hash, facts) = match outcome {
                Parsed::Skip => {
                    stats.skipped += 1;
                    self.skipped
                        .insert(found.path.clone(), (found.size, found.mtime_ns));
                    if let Some(id) = self.by_path.remove(&found.path) {
                        self.files[id as usize] = None;
                        changed.push((id, None));
                        added = true;
                    }
                    continue;
                }
                Parsed::Unreadable => continue,
                Parsed::Same(hash) => (hash, None),
                Parsed::Facts(hash, facts) => (hash, Some(facts)),
            };
            match self.by_path.get(&found.path).copied() {
                Some(id) => {
                    let entry = self.files[id as usize]
                        .as_mut()
                        .expect("indexed path has an entry");
                    entry.size = found.size;
                    entry.mtime_ns = found.mtime_ns;
                    if entry.hash == hash {
                        continue;
                    }
                    let facts = match facts {
                        Some(f) => f,
                        None => continue,
                    };
                    entry.hash = hash;
                    let old = std::mem::replace(&mut entry.facts, facts);
                    stats.parsed += 1;
                    changed.push((id, Some(old)));
                }
                None => {
                    let Some(facts) = facts else { continue };
                    let id = self.files.len() as u32;
                    self.files.push(Some(FileEntry {
                        path: found.path.clone(),
                        hash,
                        size: found.size,
                        mtime_ns: found.mtime_ns,
                        facts,
                        links: Links::default(),
                    }));
                    self.by_path.insert(found.path.clone(), id);
                    stats.parsed += 1;
                    added = true;
                }
            }
        }
        for &id in &removed {
            if let Some(e) = self.files[id as usize].take() {
                self.by_path.remove(&e.path);
                self.remove_incoming(id, &e.links);
                stats.removed += 1;
            }
        }
        self.layout = found.layout;
        let full = layout_changed || added || !removed.is_empty();
        let to_resolve: Vec<u32> = if full {
            self.index = Some(Index::build(&self.files, &self.layout));
            (0..self.files.len() as u32)
                .filter(|&i| self.files[i as usize].is_some())
                .collect()
        } else {
            self.affected(&changed)
        };
        stats.resolved = to_resolve.len();
        self.resolve(&to_resolve);
        if self.config.stop.stopped() {
            return Err(Error::Stopped);
        }
        stats.files = self.by_path.len();
        Ok(stats)
    }

    /// Files to re-resolve after `changed` files got new facts (old facts given).
    fn affected(&mut self, changed: &[(u32, Option<FileFacts>)]) -> Vec<u32> {
        let mut out: BTreeSet<u32> = changed.iter().map(|(id, _)| *id).collect();
        let mut names: HashSet<String> = HashSet::new();
        let mut interface_changed: Vec<u32> = Vec::new();
        let mut remaps: Vec<(u32, HashMap<u32, u32>)> = Vec::new();
        for (id, old) in changed {
            let Some(new) = self.files[*id as usize].as_ref().map(|e| &e.facts) else {
                continue;
            };
            let Some(old) = old else { continue };
            if !old.interface_eq(new) {
                // a changed glob import can change what any name means anywhere: start over
                let globs = |f: &FileFacts| {
                    f.imports
                        .iter()
                        .filter(|i| i.glob)
                        .map(|i| (i.path.clone(), i.level, i.scope))
                        .collect::<Vec<_>>()
                };
                if globs(old) != globs(new) {
                    self.index = Some(Index::build(&self.files, &self.layout));
                    return (0..self.files.len() as u32)
                        .filter(|&i| self.files[i as usize].is_some())
                        .collect();
                }
                match remap(old, new) {
                    Some(map) => remaps.push((*id, map)),
                    None => interface_changed.push(*id),
                }
                let a: HashSet<&str> = old.symbols.iter().map(|s| s.name.as_str()).collect();
                let b: HashSet<&str> = new.symbols.iter().map(|s| s.name.as_str()).collect();
                names.extend(a.symmetric_difference(&b).map(|s| s.to_string()));
                let ia: HashSet<&str> = old
                    .imports
                    .iter()
                    .filter_map(|i| i.alias.as_deref())
                    .collect();
                let ib: HashSet<&str> = new
                    .imports
                    .iter()
                    .filter_map(|i| i.alias.as_deref())
                    .collect();
                names.extend(ia.symmetric_difference(&ib).map(|s| s.to_string()));
            }
        }
        for (id, map) in &remaps {
            // symbols only added or removed: move edges into the file to the new indices;
            // files that pointed at a removed symbol resolve again
            for (g, e) in self.files.iter_mut().enumerate() {
                let Some(e) = e else { continue };
                for edge in &mut e.links.edges {
                    if edge.to.file == *id
                        && let Some(s) = edge.to.sym
                    {
                        match map.get(&s) {
                            Some(&n) => edge.to.sym = Some(n),
                            None => {
                                out.insert(g as u32);
                            }
                        }
                    }
                }
            }
            let keys: Vec<NodeId> = self
                .incoming
                .keys()
                .filter(|k| k.file == *id && k.sym.is_some())
                .copied()
                .collect();
            let mut moved = Vec::new();
            for k in keys {
                let list = self.incoming.remove(&k).unwrap_or_default();
                if let Some(&n) = k.sym.and_then(|s| map.get(&s)) {
                    moved.push((
                        NodeId {
                            file: *id,
                            sym: Some(n),
                        },
                        list,
                    ));
                }
            }
            self.incoming.extend(moved);
        }
        if interface_changed.is_empty() && remaps.is_empty() {
            if self.index.is_none() {
                self.index = Some(Index::build(&self.files, &self.layout));
            }
            return out.into_iter().collect();
        }
        self.index = Some(Index::build(&self.files, &self.layout));
        let changed_set: HashSet<u32> = interface_changed.iter().copied().collect();
        for (id, e) in self.files.iter().enumerate() {
            let Some(e) = e else { continue };
            if e.links.deps.iter().any(|d| changed_set.contains(d))
                || (!names.is_empty() && mentions(&e.facts, &names))
            {
                out.insert(id as u32);
            }
        }
        out.into_iter().collect()
    }

    /// Re-resolves the given files (in parallel when there are many) and updates the reverse index.
    fn resolve(&mut self, ids: &[u32]) {
        let Some(index) = self.index.as_ref() else {
            return;
        };
        let threads = threads(&self.config).min(ids.len().div_ceil(64)).max(1);
        let files = &self.files;
        let stop = &self.config.stop;
        let results: Vec<(u32, Links)> = if threads <= 1 {
            let mut r = Resolver::new(files, index);
            ids.iter()
                .take_while(|_| !stop.stopped())
                .map(|&id| (id, r.links(id)))
                .collect()
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        s.spawn(move || {
                            let mut r = Resolver::new(files, index);
                            ids.iter()
                                .skip(t)
                                .step_by(threads)
                                .take_while(|_| !stop.stopped())
                                .map(|&id| (id, r.links(id)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("resolver thread panicked"))
                    .collect()
            })
        };
        let full = ids.len() == self.by_path.len();
        if full {
            self.incoming.clear();
        }
        for (id, links) in results {
            if !full {
                let old = std::mem::take(
                    &mut self.files[id as usize]
                        .as_mut()
                        .expect("resolved file exists")
                        .links,
                );
                self.remove_incoming(id, &old);
            }
            for e in &links.edges {
                self.incoming
                    .entry(e.to)
                    .or_default()
                    .push((e.from, e.kind, e.line));
            }
            self.files[id as usize]
                .as_mut()
                .expect("resolved file exists")
                .links = links;
        }
    }

    fn remove_incoming(&mut self, id: u32, links: &Links) {
        let targets: BTreeSet<NodeId> = links.edges.iter().map(|e| e.to).collect();
        for t in targets {
            if let Some(list) = self.incoming.get_mut(&t) {
                list.retain(|(from, _, _)| from.file != id);
                if list.is_empty() {
                    self.incoming.remove(&t);
                }
            }
        }
    }

    fn rebuild_incoming(&mut self) {
        self.incoming.clear();
        for e in self.files.iter().flatten() {
            for edge in &e.links.edges {
                self.incoming
                    .entry(edge.to)
                    .or_default()
                    .push((edge.from, edge.kind, edge.line));
            }
        }
    }

    /// Writes the index to `path` (atomically: a temporary file is renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let io = |source| Error::IndexIo {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let stored = Stored {
            version: FORMAT_VERSION,
            files: self.files.clone(),
            layout: self.layout.clone(),
            skipped: self
                .skipped
                .iter()
                .map(|(p, &(s, m))| (p.clone(), s, m))
                .collect(),
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let file = fs::File::create(&tmp).map_err(io)?;
        let mut w = BufWriter::new(file);
        w.write_all(MAGIC).map_err(io)?;
        bincode::serialize_into(&mut w, &stored).map_err(|e| Error::IndexFormat {
            path: path.to_path_buf(),
            reason: format!("cannot encode: {e}"),
        })?;
        w.flush().map_err(io)?;
        drop(w);
        fs::rename(&tmp, path).map_err(io)
    }

    /// Reads an index written by [`Graph::save`].
    pub fn load(path: &Path, config: Config) -> Result<Graph, Error> {
        let io = |source| Error::IndexIo {
            path: path.to_path_buf(),
            source,
        };
        let bytes = fs::read(path).map_err(io)?;
        let format = |reason: String| Error::IndexFormat {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(format("missing header".into()));
        }
        let stored: Stored = bincode::deserialize_from(BufReader::new(&bytes[MAGIC.len()..]))
            .map_err(|e| format(format!("cannot decode: {e}")))?;
        if stored.version != FORMAT_VERSION {
            return Err(format(format!("found format {}", stored.version)));
        }
        let mut g = Graph::new(config);
        g.by_path = stored
            .files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().map(|f| (f.path.clone(), i as u32)))
            .collect();
        g.files = stored.files;
        g.layout = stored.layout;
        g.skipped = stored
            .skipped
            .into_iter()
            .map(|(p, s, m)| (p, (s, m)))
            .collect();
        g.rebuild_incoming();
        Ok(g)
    }

    /// Number of files in the graph.
    pub fn file_count(&self) -> usize {
        self.by_path.len()
    }

    /// The indexed file at `path`, if any.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.by_path
            .get(path)
            .and_then(|&id| self.files[id as usize].as_ref())
    }

    /// Every indexed file, with its id.
    pub fn files(&self) -> impl Iterator<Item = (u32, &FileEntry)> {
        self.files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().map(|f| (i as u32, f)))
    }

    /// The entry of a file id.
    pub fn entry(&self, file: u32) -> Option<&FileEntry> {
        self.files.get(file as usize).and_then(Option::as_ref)
    }

    /// A readable name for a node: `path::Qualified.name` (or the path for a file node).
    pub fn node_name(&self, n: NodeId) -> String {
        let Some(e) = self.entry(n.file) else {
            return format!("<file {}>", n.file);
        };
        match n.sym {
            None => e.path.clone(),
            Some(s) => format!("{}::{}", e.path, e.facts.qualified_name(s)),
        }
    }

    /// Finds a node by `path` and dotted qualified name (`Session.request`); the file node for `None`.
    pub fn find(&self, path: &str, qualified: Option<&str>) -> Option<NodeId> {
        let id = *self.by_path.get(path)?;
        let Some(q) = qualified else {
            return Some(NodeId {
                file: id,
                sym: None,
            });
        };
        let facts = &self.files[id as usize].as_ref()?.facts;
        (0..facts.symbols.len() as u32)
            .find(|&i| facts.qualified_name(i) == q)
            .map(|i| NodeId {
                file: id,
                sym: Some(i),
            })
    }

    /// Every stored edge (CALLS, IMPORTS, INHERITS, IMPLEMENTS), plus the derived CONTAINS
    /// (file or parent → symbol) and TESTED_BY (called symbol → calling test) edges.
    pub fn edges(&self) -> Vec<Edge> {
        let mut out = Vec::new();
        for (id, e) in self.files() {
            for (i, s) in e.facts.symbols.iter().enumerate() {
                out.push(Edge {
                    kind: EdgeKind::Contains,
                    from: NodeId {
                        file: id,
                        sym: s.parent,
                    },
                    to: NodeId {
                        file: id,
                        sym: Some(i as u32),
                    },
                    line: s.start_line,
                });
            }
            for edge in &e.links.edges {
                out.push(*edge);
                if edge.kind == EdgeKind::Calls && self.is_test(edge.from) {
                    out.push(Edge {
                        kind: EdgeKind::TestedBy,
                        from: edge.to,
                        to: edge.from,
                        line: edge.line,
                    });
                }
            }
        }
        out
    }

    /// Edges into `n` (callers, importers, subtypes).
    pub fn incoming(&self, n: NodeId) -> &[(NodeId, EdgeKind, u32)] {
        self.incoming.get(&n).map_or(&[], Vec::as_slice)
    }

    /// Edges out of `n` that start in its file (calls from it, for a file: its imports).
    pub fn outgoing(&self, n: NodeId) -> impl Iterator<Item = &Edge> {
        self.entry(n.file)
            .into_iter()
            .flat_map(move |e| e.links.edges.iter().filter(move |edge| edge.from == n))
    }

    /// Whether a node is a test.
    pub fn is_test(&self, n: NodeId) -> bool {
        self.kind(n) == Some(SymbolKind::Test)
    }

    /// The kind of a symbol node (`None` for file nodes).
    pub fn kind(&self, n: NodeId) -> Option<SymbolKind> {
        let s = n.sym?;
        self.entry(n.file).map(|e| e.facts.symbols[s as usize].kind)
    }

    /// Totals over the graph: resolved call edges, external and unresolved call sites.
    pub fn call_stats(&self) -> (usize, usize, usize) {
        let mut resolved = 0;
        let mut external = 0;
        let mut unresolved = 0;
        for (_, e) in self.files() {
            resolved += e
                .links
                .edges
                .iter()
                .filter(|x| x.kind == EdgeKind::Calls)
                .count();
            external += e.links.external_calls as usize;
            unresolved += e.links.unresolved_calls as usize;
        }
        (resolved, external, unresolved)
    }
}

/// When an edit only added or removed symbols and every surviving symbol kept what other
/// files can see, the map from old to new symbol indices; `None` otherwise.
fn remap(old: &FileFacts, new: &FileFacts) -> Option<HashMap<u32, u32>> {
    let same_imports = old.imports.len() == new.imports.len()
        && old.imports.iter().zip(&new.imports).all(|(a, b)| {
            a.path == b.path
                && a.level == b.level
                && a.name == b.name
                && a.alias == b.alias
                && a.glob == b.glob
        });
    if old.package != new.package || old.impls != new.impls || !same_imports {
        return None;
    }
    let keys = |f: &FileFacts| -> Vec<(String, SymbolKind, u32)> {
        let mut seen: HashMap<(String, SymbolKind), u32> = HashMap::new();
        (0..f.symbols.len() as u32)
            .map(|i| {
                let k = (f.qualified_name(i), f.symbols[i as usize].kind);
                let n = seen.entry(k.clone()).or_insert(0);
                *n += 1;
                (k.0, k.1, *n)
            })
            .collect()
    };
    let new_keys: HashMap<(String, SymbolKind, u32), u32> = keys(new)
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k, i as u32))
        .collect();
    let mut map = HashMap::new();
    for (i, k) in keys(old).into_iter().enumerate() {
        if let Some(&j) = new_keys.get(&k) {
            map.insert(i as u32, j);
        }
    }
    for (&i, &j) in &map {
        let (a, b) = (&old.symbols[i as usize], &new.symbols[j as usize]);
        let parent_ok = match (a.parent, b.parent) {
            (None, None) => true,
            (Some(p), Some(q)) => map.get(&p) == Some(&q),
            _ => false,
        };
        let visible_same = a.owner == b.owner
            && a.bases == b.bases
            && a.implements == b.implements
            && a.ret == b.ret
            && a.sig == b.sig
            && (a.kind != SymbolKind::Type || a.locals == b.locals);
        if !parent_ok || !visible_same {
            return None;
        }
    }
    Some(map)
}

/// Whether a file's references mention any of `names`.
fn mentions(facts: &FileFacts, names: &HashSet<String>) -> bool {
    // most names differ in length from the few changed ones: compare lengths before hashing
    let lens: Vec<usize> = names.iter().map(String::len).collect();
    let name = |s: &str| lens.contains(&s.len()) && names.contains(s);
    let hit = |p: &[String]| p.iter().any(|s| name(s));
    facts
        .calls
        .iter()
        .any(|c| hit(&c.path) || c.recv.as_ref().is_some_and(|r| r.mentions(&name)))
        || facts
            .imports
            .iter()
            .any(|i| hit(&i.path) || i.name.as_ref().is_some_and(|n| names.contains(n)))
        || facts.impls.iter().any(|i| {
            hit(&i.ty)
                || hit(&i.tr)
                || i.self_ty.as_ref().is_some_and(|t| t.mentions(&name))
                || i.assoc.iter().any(|(_, t)| t.mentions(&name))
        })
        || facts.symbols.iter().any(|s| {
            s.bases.iter().any(|b| hit(b))
                || s.implements.iter().any(|b| hit(b))
                || s.owner.as_deref().is_some_and(hit)
                || s.ret.as_deref().is_some_and(hit)
                || s.locals.iter().any(|(_, h)| h.mentions(&name))
                || s.sig.as_ref().is_some_and(|sig| {
                    sig.ret
                        .iter()
                        .chain(&sig.self_ty)
                        .any(|t| t.mentions(&name))
                        || sig.bounds.iter().any(|(_, t)| t.mentions(&name))
                        || sig.params.iter().flatten().any(|t| t.mentions(&name))
                })
        })
}

enum Parsed {
    Facts(String, FileFacts),
    Same(String),
    Skip,
    Unreadable,
}

fn threads(config: &Config) -> usize {
    if config.threads > 0 {
        config.threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Reads, hashes and parses files in parallel (largest first, spread over the threads).
fn parse_all(repo: &Path, files: &[scan::Found], config: &Config) -> Vec<Parsed> {
    let threads = threads(config).min(files.len().div_ceil(8)).max(1);
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(files[i].size));
    let mut results: Vec<Option<Parsed>> = (0..files.len()).map(|_| None).collect();
    let chunks: Vec<Vec<usize>> = (0..threads)
        .map(|t| order.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                std::thread::Builder::new()
                    .stack_size(16 * 1024 * 1024)
                    .spawn_scoped(s, move || {
                        let mut parser = tree_sitter::Parser::new();
                        chunk
                            .iter()
                            .take_while(|_| !config.stop.stopped())
                            .map(|&i| (i, parse_one(repo, &files[i], config, &mut parser)))
                            .collect::<Vec<_>>()
                    })
                    .expect("spawn parser thread")
            })
            .collect();
        for h in handles {
            for (i, p) in h.join().expect("parser thread panicked") {
                results[i] = Some(p);
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or(Parsed::Unreadable))
        .collect()
}

fn parse_one(
    repo: &Path,
    found: &scan::Found,
    config: &Config,
    parser: &mut tree_sitter::Parser,
) -> Parsed {
    let Ok(Some(bytes)) = scan::read_regular(&repo.join(&found.path), config.max_file_bytes) else {
        return Parsed::Unreadable;
    };
    if scan::skip_contents(&bytes).is_some() {
        return Parsed::Skip;
    }
    let hash = hex::encode(Sha256::digest(&bytes));
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Parsed::Skip;
    };
    let _ = Parsed::Same(String::new());
    Parsed::Facts(
        hash,
        extract::extract(parser, found.lang, text, &found.path),
    )
}
