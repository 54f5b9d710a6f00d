//! Precision and recall of direct call edges on the labelled corpus (`tests/corpus/<lang>`,
//! with `expected.txt` written by reading the code). Fails below precision 0.95 or recall
//! 0.9 for any language.

use codegraph::{Config, Graph};

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
