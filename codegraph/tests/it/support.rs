//! Helpers shared by the integration tests: corpus location, edge listing, scratch repos.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use codegraph::{EdgeKind, Graph};

/// The labelled corpus directory.
pub fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Distinct call edges as `caller -> callee` names.
pub fn call_pairs(g: &Graph) -> BTreeSet<(String, String)> {
    g.edges()
        .into_iter()
        .filter(|e| e.kind == EdgeKind::Calls)
        .map(|e| (name(g, e.from), g.node_name(e.to)))
        .collect()
}

fn name(g: &Graph, n: codegraph::NodeId) -> String {
    if n.sym.is_none() {
        format!("{}::<top>", g.node_name(n))
    } else {
        g.node_name(n)
    }
}

/// The labelled `caller -> callee` pairs of a corpus language directory.
pub fn expected(dir: &Path) -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(dir.join("expected.txt")).expect("corpus has expected.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (a, b) = l
                .split_once(" -> ")
                .unwrap_or_else(|| panic!("bad expected line {l:?}"));
            (a.trim().to_string(), b.trim().to_string())
        })
        .collect()
}
