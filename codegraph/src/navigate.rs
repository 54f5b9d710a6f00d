//! Navigation: from an issue's text to 5–15 ranked files, each with its key symbols and the
//! reasons it was chosen. Scores combine name and path matches (weighted by how rare the
//! keyword is in the repository), graph centrality and 1-hop neighbours of the best matches.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::facts::SymbolKind;
use crate::graph::Graph;
use crate::resolve::{EdgeKind, NodeId};

/// Limits of a navigation query.
#[derive(Clone, Debug)]
pub struct NavigateOptions {
    /// Fewest files returned (when the repository has that many).
    pub min_files: usize,
    /// Most files returned.
    pub max_files: usize,
    /// Most key symbols listed per file.
    pub symbols_per_file: usize,
}

impl Default for NavigateOptions {
    fn default() -> NavigateOptions {
        NavigateOptions {
            min_files: 5,
            max_files: 15,
            symbols_per_file: 5,
        }
    }
}

/// A symbol worth opening first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeySymbol {
    /// Qualified name inside the file (`Session.request`).
    pub name: String,
    /// What it is.
    pub kind: SymbolKind,
    /// First line.
    pub line: u32,
}

/// One file of a navigation map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NavFile {
    /// Path relative to the repository root.
    pub path: String,
    /// Ranking score (higher first).
    pub score: f64,
    /// Key symbols, best first.
    pub symbols: Vec<KeySymbol>,
    /// Why the file was chosen.
    pub reasons: Vec<String>,
}

/// The files an agent should open first for an issue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NavigationMap {
    /// Keywords taken from the issue text.
    pub keywords: Vec<String>,
    /// Ranked files.
    pub files: Vec<NavFile>,
}

const STOPWORDS: &[&str] = &[
    "the",
    "and",
    "for",
    "with",
    "that",
    "this",
    "from",
    "when",
    "into",
    "should",
    "would",
    "could",
    "there",
    "their",
    "have",
    "has",
    "had",
    "not",
    "but",
    "are",
    "was",
    "were",
    "been",
    "being",
    "which",
    "what",
    "where",
    "while",
    "will",
    "can",
    "does",
    "did",
    "doing",
    "than",
    "then",
    "them",
    "they",
    "you",
    "your",
    "our",
    "its",
    "also",
    "only",
    "some",
    "any",
    "all",
    "more",
    "most",
    "other",
    "such",
    "each",
    "very",
    "just",
    "like",
    "make",
    "makes",
    "made",
    "use",
    "used",
    "using",
    "get",
    "set",
    "new",
    "add",
    "fix",
    "bug",
    "issue",
    "error",
    "problem",
    "expected",
    "actual",
    "behavior",
    "behaviour",
    "please",
    "thanks",
    "after",
    "before",
    "because",
    "about",
    "over",
    "under",
    "between",
    "without",
    "within",
    "how",
    "why",
    "who",
    "code",
    "file",
    "files",
    "line",
    "lines",
    "run",
    "runs",
    "work",
    "works",
    "working",
    "test",
    "tests",
    "def",
    "self",
    "return",
    "returns",
    "true",
    "false",
    "none",
    "null",
    "http",
    "https",
    "www",
    "com",
    "github",
    "instead",
    "still",
    "currently",
    "now",
    "need",
    "needs",
    "want",
    "see",
    "seems",
    "way",
    "one",
    "two",
    "may",
    "might",
    "must",
    "here",
];

/// Keywords of a text: identifiers and their camelCase/snake_case parts, lowercased, in order.
pub fn keywords(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |w: String, out: &mut Vec<String>| {
        if w.len() >= 3
            && !STOPWORDS.contains(&w.as_str())
            && !w.chars().all(|c| c.is_ascii_digit())
            && seen.insert(w.clone())
        {
            out.push(w);
        }
    };
    for token in text.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        if token.is_empty() || token.len() > 64 {
            continue;
        }
        let parts = words(token);
        if parts.len() > 1 {
            push(token.to_lowercase(), &mut out);
        }
        for p in parts {
            push(p, &mut out);
        }
        if out.len() >= 40 {
            break;
        }
    }
    out
}

/// Splits an identifier into lowercase words (`HTTPAdapter` → `http`, `adapter`; `get_conn` → `get`, `conn`).
pub(crate) fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in name.split(|c: char| !c.is_alphanumeric()) {
        let chars: Vec<char> = part.chars().collect();
        let mut cur = String::new();
        for i in 0..chars.len() {
            let c = chars[i];
            let boundary = i > 0
                && c.is_uppercase()
                && (chars[i - 1].is_lowercase()
                    || chars[i - 1].is_ascii_digit()
                    || chars.get(i + 1).is_some_and(|n| n.is_lowercase()));
            if boundary && !cur.is_empty() {
                out.push(std::mem::take(&mut cur).to_lowercase());
            }
            cur.push(c);
        }
        if !cur.is_empty() {
            out.push(cur.to_lowercase());
        }
    }
    out
}

struct Candidate {
    base: f64,
    reasons: Vec<String>,
}

impl Graph {
    /// The files to open first for an issue, with default limits.
    pub fn navigate(&self, issue_text: &str) -> NavigationMap {
        self.navigate_with(issue_text, &NavigateOptions::default())
    }

    /// The files to open first for an issue.
    pub fn navigate_with(&self, issue_text: &str, opts: &NavigateOptions) -> NavigationMap {
        let kws = keywords(issue_text);
        let kw_index: HashMap<&str, usize> = kws
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        let n_files = self.file_count().max(1) as f64;
        // per file: keyword → (best strength, symbol or None for a path match)
        let mut hits: HashMap<u32, HashMap<usize, (f64, Option<u32>)>> = HashMap::new();
        let mut df = vec![0usize; kws.len()];
        let mut sym_scores: Vec<(u32, u32, f64)> = Vec::new();
        for (id, e) in self.files() {
            let mut file_hits: HashMap<usize, (f64, Option<u32>)> = HashMap::new();
            let mut note = |k: usize, strength: f64, sym: Option<u32>| {
                let slot = file_hits.entry(k).or_insert((0.0, None));
                if strength > slot.0 {
                    *slot = (strength, sym);
                }
            };
            let stem = e.path.rsplit('/').next().unwrap_or(&e.path);
            let stem = stem.split('.').next().unwrap_or(stem).to_lowercase();
            if let Some(&k) = kw_index.get(stem.as_str()) {
                note(k, 2.5, None);
            }
            for seg in e.path.split('/') {
                for w in words(seg) {
                    if let Some(&k) = kw_index.get(w.as_str()) {
                        note(k, 1.2, None);
                    }
                }
            }
            for (i, s) in e.facts.symbols.iter().enumerate() {
                let lower = s.name.to_lowercase();
                let mut sym_score = 0.0;
                if let Some(&k) = kw_index.get(lower.as_str()) {
                    note(k, 3.0, Some(i as u32));
                    sym_score += 3.0;
                }
                let qualified = e.facts.qualified_name(i as u32);
                let mut seen_k = Vec::new();
                for w in words(&qualified) {
                    if let Some(&k) = kw_index.get(w.as_str())
                        && !seen_k.contains(&k)
                    {
                        seen_k.push(k);
                        note(k, 1.0, Some(i as u32));
                        sym_score += 1.0;
                    }
                }
                if sym_score > 0.0 {
                    sym_scores.push((id, i as u32, sym_score));
                }
            }
            for &k in file_hits.keys() {
                df[k] += 1;
            }
            if !file_hits.is_empty() {
                hits.insert(id, file_hits);
            }
        }
        let idf: Vec<f64> = df
            .iter()
            .map(|&d| (n_files / (1.0 + d as f64)).ln().max(0.1) + 0.5)
            .collect();
        let mut cands: BTreeMap<u32, Candidate> = BTreeMap::new();
        for (&id, file_hits) in &hits {
            let e = self.entry(id).expect("hit file exists");
            let mut base = 0.0;
            let mut reasons = Vec::new();
            let mut sorted: Vec<(&usize, &(f64, Option<u32>))> = file_hits.iter().collect();
            sorted.sort_by(|a, b| {
                (b.1.0 * idf[*b.0])
                    .total_cmp(&(a.1.0 * idf[*a.0]))
                    .then(a.0.cmp(b.0))
            });
            for (&k, &(strength, sym)) in sorted {
                base += strength * idf[k];
                match sym {
                    Some(s) => {
                        if reasons.len() < 3 {
                            reasons.push(format!(
                                "defines `{}` (matches \"{}\")",
                                e.facts.qualified_name(s),
                                kws[k]
                            ));
                        }
                    }
                    None => {
                        if reasons.len() < 3 {
                            reasons.push(format!("path matches \"{}\"", kws[k]));
                        }
                    }
                }
            }
            if crate::extract::is_test_path(&e.path) {
                base *= 0.8;
            }
            cands.insert(id, Candidate { base, reasons });
        }
        // centrality: incoming references from other files
        let centrality = |id: u32| -> f64 {
            let Some(e) = self.entry(id) else { return 0.0 };
            let mut n = self
                .incoming(NodeId {
                    file: id,
                    sym: None,
                })
                .len();
            for i in 0..e.facts.symbols.len() as u32 {
                n += self
                    .incoming(NodeId {
                        file: id,
                        sym: Some(i),
                    })
                    .iter()
                    .filter(|(from, _, _)| from.file != id)
                    .count();
            }
            (1.0 + n as f64).ln()
        };
        let mut scores: HashMap<u32, (f64, Vec<String>)> = HashMap::new();
        for (&id, c) in &cands {
            let cen = centrality(id);
            let mut reasons = c.reasons.clone();
            if cen >= 2.0 {
                reasons.push(format!(
                    "referenced from other files ({} references)",
                    cen.exp().round() as u64 - 1
                ));
            }
            scores.insert(id, (c.base * (1.0 + 0.15 * cen), reasons));
        }
        // 1-hop neighbours of the best matches
        let mut top: Vec<(u32, f64)> = scores.iter().map(|(&id, (s, _))| (id, *s)).collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut bonus: HashMap<u32, (f64, String)> = HashMap::new();
        for &(id, s) in top.iter().take(5) {
            let Some(e) = self.entry(id) else { continue };
            let mut neighbours: HashMap<u32, &'static str> = HashMap::new();
            for edge in &e.links.edges {
                if edge.to.file != id {
                    neighbours
                        .entry(edge.to.file)
                        .or_insert(if edge.kind == EdgeKind::Imports {
                            "imported by"
                        } else {
                            "used by"
                        });
                }
            }
            for i in std::iter::once(None).chain((0..e.facts.symbols.len() as u32).map(Some)) {
                for (from, _, _) in self.incoming(NodeId { file: id, sym: i }) {
                    if from.file != id {
                        neighbours.entry(from.file).or_insert("uses");
                    }
                }
            }
            for (n, rel) in neighbours {
                let add = 0.3 * s;
                let slot = bonus.entry(n).or_insert((0.0, String::new()));
                if add > slot.0 {
                    *slot = (add, format!("{rel} `{}`", e.path));
                }
            }
        }
        for (id, (add, reason)) in bonus {
            let entry = scores.entry(id).or_insert_with(|| (0.0, Vec::new()));
            entry.0 += add;
            entry.1.push(reason);
        }
        let mut ranked: Vec<(u32, f64, Vec<String>)> =
            scores.into_iter().map(|(id, (s, r))| (id, s, r)).collect();
        ranked.sort_by(|a, b| {
            b.1.total_cmp(&a.1).then_with(|| {
                self.entry(a.0)
                    .map(|e| &e.path)
                    .cmp(&self.entry(b.0).map(|e| &e.path))
            })
        });
        let best = ranked.first().map_or(0.0, |r| r.1);
        let mut chosen: Vec<(u32, f64, Vec<String>)> = Vec::new();
        for r in ranked {
            if chosen.len() >= opts.max_files
                || (chosen.len() >= opts.min_files && r.1 < 0.2 * best)
            {
                break;
            }
            chosen.push(r);
        }
        if chosen.len() < opts.min_files {
            // fill with the most referenced files
            let have: HashSet<u32> = chosen.iter().map(|c| c.0).collect();
            let mut central: Vec<(u32, f64)> = self
                .files()
                .filter(|(id, _)| !have.contains(id))
                .map(|(id, _)| (id, centrality(id)))
                .collect();
            central.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for (id, c) in central.into_iter().take(opts.min_files - chosen.len()) {
                chosen.push((
                    id,
                    0.01 * c,
                    vec!["central: referenced from many files".to_string()],
                ));
            }
        }
        let mut by_file_syms: HashMap<u32, Vec<(f64, u32)>> = HashMap::new();
        for &(f, sym, score) in &sym_scores {
            by_file_syms.entry(f).or_default().push((score, sym));
        }
        let files = chosen
            .into_iter()
            .filter_map(|(id, score, reasons)| {
                let e = self.entry(id)?;
                let mut syms: Vec<(f64, u32)> = by_file_syms.get(&id).cloned().unwrap_or_default();
                syms.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let mut picked: Vec<u32> = Vec::new();
                for (_, s) in syms {
                    if !picked.contains(&s) {
                        picked.push(s);
                    }
                }
                if picked.len() < opts.symbols_per_file {
                    let mut by_refs: Vec<(usize, u32)> = (0..e.facts.symbols.len() as u32)
                        .filter(|s| {
                            !picked.contains(s)
                                && e.facts.symbols[*s as usize].kind != SymbolKind::Module
                        })
                        .map(|s| {
                            (
                                self.incoming(NodeId {
                                    file: id,
                                    sym: Some(s),
                                })
                                .len(),
                                s,
                            )
                        })
                        .collect();
                    by_refs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                    picked.extend(by_refs.into_iter().map(|(_, s)| s));
                }
                picked.truncate(opts.symbols_per_file);
                let symbols = picked
                    .into_iter()
                    .map(|s| {
                        let sym = &e.facts.symbols[s as usize];
                        KeySymbol {
                            name: e.facts.qualified_name(s),
                            kind: sym.kind,
                            line: sym.start_line,
                        }
                    })
                    .collect();
                Some(NavFile {
                    path: e.path.clone(),
                    score: (score * 1000.0).round() / 1000.0,
                    symbols,
                    reasons,
                })
            })
            .collect();
        NavigationMap {
            keywords: kws,
            files,
        }
    }
}
