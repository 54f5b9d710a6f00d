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

/// Copies a corpus language directory into a fresh temporary directory.
pub fn scratch_copy(lang: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&corpus().join(lang), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read corpus dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Every edge of the graph as names (so graphs with different file ids compare equal).
pub fn named_edges(g: &Graph) -> BTreeSet<(String, EdgeKind, String, u32)> {
    g.edges()
        .into_iter()
        .map(|e| (g.node_name(e.from), e.kind, g.node_name(e.to), e.line))
        .collect()
}

/// Appends text to a file, making sure its modification time moves.
pub fn append(path: &Path, text: &str) {
    let mut contents = std::fs::read_to_string(path).expect("read");
    contents.push_str(text);
    std::fs::write(path, contents).expect("write");
}
