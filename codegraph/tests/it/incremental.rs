//! Incremental update and persistence: an update equals a rebuild from scratch, a body edit
//! changes only the edited file's edges, and the index survives a save/load round trip.

use codegraph::{Config, Graph};

use crate::support::{append, named_edges, scratch_copy};

fn assert_same_as_rebuild(g: &Graph, dir: &std::path::Path) {
    let fresh = Graph::build(dir, Config::default()).expect("rebuild");
    assert_eq!(
        named_edges(g),
        named_edges(&fresh),
        "incremental result differs from a full rebuild"
    );
}

#[test]
fn body_edit_reparses_and_resolves_only_that_file() {
    let dir = scratch_copy("python");
    let mut g = Graph::build(dir.path(), Config::default()).expect("build");
    let before = named_edges(&g);
    // a new call inside an existing function, on a new line at the end of the body
    let api = dir.path().join("shop/api.py");
    let text = std::fs::read_to_string(&api).expect("read").replace(
        "    return request(\"GET\", url)",
        "    u.log(url)\n    return request(\"GET\", url)",
    );
    std::fs::write(&api, text).expect("write");
    let stats = g.update(dir.path()).expect("update");
    assert_eq!((stats.parsed, stats.resolved), (1, 1), "{stats:?}");
    let after = named_edges(&g);
    let changed: Vec<_> = before.symmetric_difference(&after).collect();
    assert!(!changed.is_empty());
    assert!(
        changed
            .iter()
            .all(|(from, _, _, _)| from.starts_with("shop/api.py")
                || from.starts_with("shop/util.py::log")),
        "only edges of the edited file change: {changed:?}"
    );
    assert_same_as_rebuild(&g, dir.path());
}

#[test]
fn interface_changes_match_a_rebuild() {
    let dir = scratch_copy("python");
    let mut g = Graph::build(dir.path(), Config::default()).expect("build");
    // a new function at the top of a module shifts every symbol after it
    let util = dir.path().join("shop/util.py");
    let text = std::fs::read_to_string(&util).expect("read");
    std::fs::write(
        &util,
        format!("def first():\n    return log('x')\n\n\n{text}"),
    )
    .expect("write");
    g.update(dir.path()).expect("update");
    assert_same_as_rebuild(&g, dir.path());
    // a removed function: its callers lose the edge
    let text = std::fs::read_to_string(&util)
        .expect("read")
        .replace("def get(key):\n    return key.strip()\n", "");
    std::fs::write(&util, text).expect("write");
    g.update(dir.path()).expect("update");
    assert_same_as_rebuild(&g, dir.path());
    // a new base class changes method lookups elsewhere
    let models = dir.path().join("shop/models.py");
    let text = std::fs::read_to_string(&models)
        .expect("read")
        .replace("class Item:", "class Item(BaseSession):");
    std::fs::write(
        &models,
        format!("from .sessions import BaseSession\n{text}"),
    )
    .expect("write");
    g.update(dir.path()).expect("update");
    assert_same_as_rebuild(&g, dir.path());
    // new and removed files
    std::fs::write(
        dir.path().join("shop/extra.py"),
        "from .api import post\n\ndef send():\n    return post('u')\n",
    )
    .expect("write");
    g.update(dir.path()).expect("update");
    assert_same_as_rebuild(&g, dir.path());
    std::fs::remove_file(dir.path().join("shop/adapters.py")).expect("remove");
    let stats = g.update(dir.path()).expect("update");
    assert_eq!(stats.removed, 1);
    assert_same_as_rebuild(&g, dir.path());
}

#[test]
fn rust_edits_match_a_rebuild() {
    let dir = scratch_copy("rust");
    let mut g = Graph::build(dir.path(), Config::default()).expect("build");
    append(
        &dir.path().join("src/thread.rs"),
        "\npub fn extra() {\n    sleep(1);\n}\n",
    );
    g.update(dir.path()).expect("update");
    assert_same_as_rebuild(&g, dir.path());
    let sleep = dir.path().join("src/time/sleep.rs");
    let text = std::fs::read_to_string(&sleep)
        .expect("read")
        .replace("pub fn is_elapsed", "pub fn has_elapsed");
    std::fs::write(&sleep, text).expect("write");
    g.update(dir.path()).expect("update");
    assert_same_as_rebuild(&g, dir.path());
}

#[test]
fn unchanged_tree_does_nothing() {
    let dir = scratch_copy("go");
    let mut g = Graph::build(dir.path(), Config::default()).expect("build");
    let stats = g.update(dir.path()).expect("update");
    assert_eq!((stats.parsed, stats.resolved, stats.removed), (0, 0, 0));
}

#[test]
fn index_round_trip_and_load_or_build() {
    let dir = scratch_copy("typescript");
    let index = dir.path().join(".cache/graph.idx");
    let (g, stats) =
        Graph::load_or_build(dir.path(), &index, Config::default()).expect("first build");
    assert!(stats.parsed > 0 && index.exists());
    let loaded = Graph::load(&index, Config::default()).expect("load");
    assert_eq!(named_edges(&g), named_edges(&loaded));
    let (again, stats) =
        Graph::load_or_build(dir.path(), &index, Config::default()).expect("second run");
    assert_eq!(stats.parsed, 0, "nothing re-parsed after a load: {stats:?}");
    assert_eq!(named_edges(&g), named_edges(&again));
    // an edit after a load updates incrementally and equals a rebuild
    append(
        &dir.path().join("src/other.ts"),
        "\nexport function more(): void {\n  run();\n}\n",
    );
    let (mut updated, stats) =
        Graph::load_or_build(dir.path(), &index, Config::default()).expect("third run");
    assert_eq!(stats.parsed, 1);
    assert_same_as_rebuild(&updated, dir.path());
    assert_eq!(updated.update(dir.path()).expect("noop").parsed, 0);
}

#[test]
fn a_damaged_index_is_an_error_and_load_or_build_recovers() {
    let dir = scratch_copy("java");
    let index = dir.path().join("graph.idx");
    std::fs::write(&index, b"not an index").expect("write");
    let err = Graph::load(&index, Config::default())
        .err()
        .expect("damaged index refused");
    assert!(err.to_string().contains("not a codegraph index"), "{err}");
    let (g, _) = Graph::load_or_build(dir.path(), &index, Config::default()).expect("rebuilds");
    assert!(g.file_count() > 0);
    assert!(Graph::load(&index, Config::default()).is_ok());
}
