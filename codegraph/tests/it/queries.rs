//! Navigation and blast-radius queries on the corpus.

use codegraph::{BlastOptions, BlastRadius, Change, Config, EdgeKind, Graph, NavigationMap};

use crate::support::corpus;

#[test]
fn navigation_ranks_the_files_an_issue_is_about() {
    let g = Graph::build(&corpus().join("python"), Config::default()).expect("build");
    let map = g.navigate("Closing a Session does not close its HTTPAdapter; the adapter stays open after session.close()");
    assert!(
        map.files.len() >= 5 && map.files.len() <= 15,
        "{} files",
        map.files.len()
    );
    let top: Vec<&str> = map.files.iter().take(2).map(|f| f.path.as_str()).collect();
    assert!(
        top.contains(&"shop/sessions.py") && top.contains(&"shop/adapters.py"),
        "{map:#?}"
    );
    let sessions = map
        .files
        .iter()
        .find(|f| f.path == "shop/sessions.py")
        .expect("sessions listed");
    assert!(
        sessions
            .symbols
            .iter()
            .take(2)
            .any(|s| s.name == "Session.close"),
        "{:?}",
        sessions.symbols
    );
    assert!(!sessions.reasons.is_empty());
    assert!(
        map.keywords.contains(&"httpadapter".to_string())
            && map.keywords.contains(&"adapter".to_string())
    );
    let json = serde_json::to_string(&map).expect("serialize");
    let back: NavigationMap = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, map);
}

#[test]
fn blast_radius_follows_callers_and_finds_tests() {
    let g = Graph::build(&corpus().join("python"), Config::default()).expect("build");
    // the body of util.get (lines 5-6)
    let b = g.blast_radius(&[Change {
        path: "shop/util.py".into(),
        ranges: vec![(6, 6)],
    }]);
    let changed: Vec<&str> = b.changed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(changed, vec!["get"]);
    let load = b
        .impacted
        .iter()
        .find(|i| i.symbol.name == "Item.load")
        .expect("Item.load impacted");
    assert_eq!((load.hops, load.via), (1, EdgeKind::Calls));
    assert_eq!(load.depends_on.name, "get");
    assert!(
        b.impacted
            .iter()
            .any(|i| i.symbol.name == "Item.save" && i.hops == 2)
    );
    assert!(
        !b.impacted.iter().any(|i| i.symbol.path == "shop/api.py"),
        "api.get is a different get: {b:#?}"
    );
    assert!(b.impacted_files.contains(&"shop/models.py".to_string()));
    assert!(
        !b.impacted_files.contains(&"shop/util.py".to_string()),
        "the changed file is not listed"
    );
    let tests: Vec<&str> = b.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(tests, vec!["test_util_get"]);
    let json = serde_json::to_string(&b).expect("serialize");
    let back: BlastRadius = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, b);
}

#[test]
fn coverage_names_the_blast_radius_symbols_a_test_calls() {
    let g = Graph::build(&corpus().join("python"), Config::default()).expect("build");
    let b = g.blast_radius(&[Change {
        path: "shop/util.py".into(),
        ranges: vec![(6, 6)],
    }]);
    let c = g.coverage(&b);
    let get = c
        .covered
        .iter()
        .find(|s| s.symbol.name == "get")
        .unwrap_or_else(|| panic!("get is tested: {c:#?}"));
    let tests: Vec<&str> = get.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(tests, vec!["test_util_get"]);
    assert!(
        c.not_covered.iter().any(|s| s.name == "Item.save"),
        "no test calls Item.save: {c:#?}"
    );
    let all = c.covered.len() + c.not_covered.len();
    assert_eq!(c.fraction(), Some(c.covered.len() as f64 / all as f64));
    assert!(c.fraction().unwrap() < 1.0);
    assert_eq!(g.coverage(&BlastRadius::default()).fraction(), None);
}

#[test]
fn blast_radius_hops_limit_and_unknown_paths() {
    let g = Graph::build(&corpus().join("python"), Config::default()).expect("build");
    let change = [
        Change {
            path: "shop/sessions.py".into(),
            ranges: vec![(7, 8)],
        },
        Change {
            path: "README.md".into(),
            ranges: vec![],
        },
    ];
    let one = g.blast_radius_with(
        &change,
        &BlastOptions {
            hops: 1,
            ..BlastOptions::default()
        },
    );
    assert_eq!(
        one.changed
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec!["BaseSession.prepare"]
    );
    assert!(one.impacted.iter().all(|i| i.hops == 1));
    assert!(
        one.impacted
            .iter()
            .any(|i| i.symbol.name == "Session.request")
    );
    assert_eq!(one.unknown_paths, vec!["README.md".to_string()]);
    let four = g.blast_radius_with(
        &change,
        &BlastOptions {
            hops: 4,
            ..BlastOptions::default()
        },
    );
    assert!(
        four.tests.iter().any(|t| t.name == "test_get"),
        "{:?}",
        four.tests
    );
    assert!(four.impacted_files.contains(&"client.py".to_string()));
}
