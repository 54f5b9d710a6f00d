//! Precision and recall of direct call edges on the labelled corpora: the small projects in
//! `tests/corpus/<lang>` (every call edge labelled, `expected.txt`), and real projects fetched
//! from their registries (`real.rs`; the direct callers of chosen targets labelled). Each fails
//! below precision 0.95 or recall 0.9.

use codegraph::{Config, Graph};

use crate::real::{PROJECTS, labels, source};
use crate::support::{call_pairs, corpus, expected};

const LANGS: [&str; 5] = ["python", "rust", "go", "typescript", "java"];

#[test]
fn direct_callers_meet_the_goals() {
    let mut failures = Vec::new();
    let (mut tp_all, mut found_all, mut exp_all) = (0, 0, 0);
    for lang in LANGS {
        let dir = corpus().join(lang);
        let g = Graph::build(&dir, Config::default()).expect("corpus builds");
        let found = call_pairs(&g);
        let want = expected(&dir);
        let tp = found.intersection(&want).count();
        let precision = if found.is_empty() {
            0.0
        } else {
            tp as f64 / found.len() as f64
        };
        let recall = tp as f64 / want.len() as f64;
        println!(
            "{lang}: precision {precision:.3} ({tp}/{}), recall {recall:.3} ({tp}/{})",
            found.len(),
            want.len()
        );
        for extra in found.difference(&want) {
            println!("  unexpected: {} -> {}", extra.0, extra.1);
        }
        for missing in want.difference(&found) {
            println!("  missing:    {} -> {}", missing.0, missing.1);
        }
        if precision < 0.95 || recall < 0.9 {
            failures.push(lang);
        }
        tp_all += tp;
        found_all += found.len();
        exp_all += want.len();
    }
    println!(
        "all: precision {:.3}, recall {:.3}",
        tp_all as f64 / found_all as f64,
        tp_all as f64 / exp_all as f64
    );
    assert!(
        failures.is_empty(),
        "below precision 0.95 / recall 0.9: {failures:?}"
    );
}

#[test]
fn real_projects_direct_callers_meet_the_goals() {
    let mut failures = Vec::new();
    for p in &PROJECTS {
        let dir = match source(p) {
            Ok(dir) => dir,
            Err(e) if std::env::var_os("BP_SKIP_NETWORK_CORPUS").is_some_and(|v| v == "1") => {
                println!("{}: skipped (BP_SKIP_NETWORK_CORPUS=1): {e}", p.name);
                continue;
            }
            Err(e) => panic!(
                "the real corpus {} {} is not available: {e}; make {} reachable, or set \
                 BP_SKIP_NETWORK_CORPUS=1 to skip this test",
                p.name, p.version, p.url
            ),
        };
        let want = labels(p.name);
        let g = Graph::build(&dir, Config::default()).expect("real project builds");
        let found: std::collections::BTreeSet<(String, String)> = call_pairs(&g)
            .into_iter()
            .filter(|(_, to)| want.targets.contains(to))
            .collect();
        for t in &want.targets {
            let (path, qual) = t.split_once("::").expect("target is path::name");
            assert!(
                g.find(path, Some(qual)).is_some(),
                "{}: target {t} is not a node of the graph",
                p.name
            );
        }
        let tp = found.intersection(&want.calls).count();
        let precision = if found.is_empty() {
            0.0
        } else {
            tp as f64 / found.len() as f64
        };
        let recall = tp as f64 / want.calls.len() as f64;
        let (resolved, external, unresolved) = g.call_stats();
        println!(
            "{} {}: precision {precision:.3} ({tp}/{}), recall {recall:.3} ({tp}/{}), resolved share {:.1} % \
             ({resolved} resolved, {unresolved} unresolved, {external} external call sites)",
            p.name,
            p.version,
            found.len(),
            want.calls.len(),
            100.0 * resolved as f64 / (resolved + unresolved).max(1) as f64
        );
        for extra in found.difference(&want.calls) {
            println!("  unexpected: {} -> {}", extra.0, extra.1);
        }
        for missing in want.calls.difference(&found) {
            println!("  missing:    {} -> {}", missing.0, missing.1);
        }
        if precision < 0.95 || recall < 0.9 {
            failures.push(p.name);
        }
    }
    assert!(
        failures.is_empty(),
        "below precision 0.95 / recall 0.9 on real code: {failures:?}"
    );
}
