//! Would petgraph serve the code graph's traversals? The blast radius walks the reverse index
//! (`Graph::incoming`, kept up to date file by file on every incremental update) breadth-first,
//! two hops, skipping `Contains` edges. This measures that walk against the same walk on a
//! petgraph `DiGraphMap` holding the same edges, and what building that map costs.
//!
//! Usage: `cargo bench -p codegraph --bench petgraph -- REPO_DIR CHANGED_FILE` (the changed
//! file's longest definition is the seed, as in the `compare` bench).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::Instant;

use codegraph::{Change, Config, EdgeKind, Graph, NodeId};
use petgraph::Direction;
use petgraph::graphmap::DiGraphMap;

/// Queries per measurement (the median is reported).
const RUNS: usize = 200;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [dir, file] = args.as_slice() else {
        eprintln!("usage: petgraph REPO_DIR CHANGED_FILE");
        std::process::exit(2);
    };
    let g = Graph::build(Path::new(dir), Config::default()).expect("the graph builds");
    let (file_id, entry) = g
        .files()
        .find(|(_, f)| f.path == *file)
        .expect("the changed file is in the graph");
    let (sym, def) = entry
        .facts
        .symbols
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| s.end_line - s.start_line)
        .expect("the file defines something");
    let change = Change {
        path: file.clone(),
        ranges: vec![(def.start_line, def.start_line + 1)],
    };
    let seed = NodeId {
        file: file_id,
        sym: Some(sym as u32),
    };
    let blast = median(|| {
        g.blast_radius(std::slice::from_ref(&change));
    });
    let ours = median(|| {
        walk(seed, |n| {
            g.incoming(n).iter().map(|&(f, k, _)| (f, k)).collect()
        });
    });
    let started = Instant::now();
    let mut map: DiGraphMap<NodeId, EdgeKind> = DiGraphMap::new();
    for e in g.edges() {
        map.add_edge(e.from, e.to, e.kind);
    }
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    let theirs = median(|| {
        walk(seed, |n| {
            map.edges_directed(n, Direction::Incoming)
                .map(|(from, _, k)| (from, *k))
                .collect()
        });
    });
    println!(
        "| repository | edges | blast radius (whole query) | 2-hop walk, reverse index | 2-hop walk, petgraph DiGraphMap | building the DiGraphMap |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| {dir} | {} | {blast:.3} ms | {ours:.3} ms | {theirs:.3} ms | {build_ms:.1} ms |",
        map.edge_count()
    );
}

/// The blast radius's walk: breadth-first over incoming edges, two hops, without `Contains`.
fn walk(seed: NodeId, incoming: impl Fn(NodeId) -> Vec<(NodeId, EdgeKind)>) -> usize {
    let mut depth: HashMap<NodeId, u32> = HashMap::from([(seed, 0)]);
    let mut queue = VecDeque::from([seed]);
    while let Some(n) = queue.pop_front() {
        let d = depth[&n];
        if d >= 2 {
            continue;
        }
        for (from, kind) in incoming(n) {
            if kind != EdgeKind::Contains && !depth.contains_key(&from) {
                depth.insert(from, d + 1);
                queue.push_back(from);
            }
        }
    }
    depth.len()
}

/// Median wall time of `f` over [`RUNS`] runs, in milliseconds.
fn median(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}
