//! Benchmark on real code bases: full build, incremental update after one changed file
//! (a body edit, and an edit that adds a function), load from the index, and blast-radius and
//! navigation queries. Each measurement runs in a child process so its peak RSS is its own.
//!
//! Usage: `cargo bench -p codegraph --bench compare -- [--runs N] NAME=REPO_DIR:CHANGED_FILE ...`
//! or the same list, comma-separated, in `CODEGRAPH_BENCH_REPOS`. `codegraph/bench/run.sh`
//! prepares the inputs and runs this next to code-review-graph.

use std::path::{Path, PathBuf};
use std::time::Instant;

use codegraph::{Change, Config, Graph};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1..]);
        return;
    }
    let mut runs = 5;
    let mut specs = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--runs" {
            runs = it.next().and_then(|n| n.parse().ok()).unwrap_or(runs);
        } else if a.contains('=') {
            specs.push(a.clone());
        }
    }
    if specs.is_empty()
        && let Ok(env) = std::env::var("CODEGRAPH_BENCH_REPOS")
    {
        specs = env
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
    }
    if specs.is_empty() {
        eprintln!(
            "usage: compare [--runs N] NAME=REPO_DIR:CHANGED_FILE ... (or CODEGRAPH_BENCH_REPOS)"
        );
        std::process::exit(2);
    }
    println!(
        "| repository | files | call edges | resolved % | full build | incremental (body edit) | incremental (new function) | load index | blast radius | navigate |"
    );
    println!("|---|---:|---:|---:|---|---|---|---|---|---|");
    for spec in specs {
        let (name, rest) = spec.split_once('=').expect("NAME=DIR:FILE");
        let (dir, file) = rest.rsplit_once(':').expect("NAME=DIR:FILE");
        bench_repo(name, Path::new(dir), file, runs);
    }
}

fn bench_repo(name: &str, dir: &Path, changed: &str, runs: usize) {
    let scratch =
        std::env::temp_dir().join(format!("codegraph-bench-{name}-{}", std::process::id()));
    let index = scratch.join("index.bin");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let original = std::fs::read(dir.join(changed)).expect("changed file readable");
    let mut build = Vec::new();
    let mut stats = Vec::new();
    for _ in 0..runs {
        let out = run_child(&[
            "build",
            &dir.display().to_string(),
            &index.display().to_string(),
        ]);
        build.push((out[0], out[1]));
        stats = out;
    }
    let mut body = Vec::new();
    let mut added = Vec::new();
    for i in 0..runs {
        for (kind, acc) in [("body", &mut body), ("add", &mut added)] {
            let out = run_child(&[
                "update",
                &dir.display().to_string(),
                &index.display().to_string(),
                changed,
                kind,
                &i.to_string(),
            ]);
            std::fs::write(dir.join(changed), &original).expect("restore changed file");
            acc.push((out[0], out[1]));
        }
    }
    let mut load = Vec::new();
    for _ in 0..runs {
        let out = run_child(&["load", &index.display().to_string()]);
        load.push((out[0], out[1]));
    }
    let query = run_child(&["query", &index.display().to_string(), changed]);
    let (files, calls, resolved_pct) = (stats[2], stats[3], stats[4]);
    println!(
        "| {name} | {files:.0} | {calls:.0} | {resolved_pct:.1} | {} | {} | {} | {} | {:.3} ms | {:.2} ms |",
        fmt(&build),
        fmt(&body),
        fmt(&added),
        fmt(&load),
        query[0],
        query[1]
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

fn fmt(samples: &[(f64, f64)]) -> String {
    let wall = median(samples.iter().map(|s| s.0).collect());
    let rss = median(samples.iter().map(|s| s.1).collect());
    if wall >= 1000.0 {
        format!("{:.2} s / {:.0} MiB", wall / 1000.0, rss / 1024.0)
    } else {
        format!("{wall:.1} ms / {:.0} MiB", rss / 1024.0)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn run_child(args: &[&str]) -> Vec<f64> {
    let exe = std::env::current_exe().expect("own executable");
    let cwd = std::env::current_dir().expect("working directory");
    let out = xcmd::Cmd::new(exe, cwd)
        .to_std()
        .arg("--child")
        .args(args)
        .output()
        .expect("run child");
    if !out.status.success() {
        panic!(
            "child {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|t| t.parse().expect("numeric child output"))
        .collect()
}

/// Peak resident set size of this process (KiB).
fn peak_rss_kib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn child(args: &[String]) {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    match args[0].as_str() {
        "build" => {
            let (repo, index) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
            let t = Instant::now();
            let g = Graph::build(&repo, Config::default()).expect("build");
            g.save(&index).expect("save");
            let wall = ms(t);
            let (resolved, external, unresolved) = g.call_stats();
            let pct = 100.0 * resolved as f64 / (resolved + unresolved).max(1) as f64;
            let _ = external;
            println!(
                "{wall} {} {} {resolved} {pct}",
                peak_rss_kib(),
                g.file_count()
            );
        }
        "update" => {
            let (repo, index, file, kind, n) = (
                PathBuf::from(&args[1]),
                PathBuf::from(&args[2]),
                &args[3],
                &args[4],
                &args[5],
            );
            let mut g = Graph::load(&index, Config::default()).expect("load");
            let path = repo.join(file);
            let mut text = std::fs::read_to_string(&path).expect("read changed file");
            let rust = file.ends_with(".rs");
            match (kind.as_str(), rust) {
                ("body", true) => text.push_str(&format!("\n// bench edit {n}\n")),
                ("body", false) => text.push_str(&format!("\n# bench edit {n}\n")),
                (_, true) => text.push_str(&format!("\npub fn bench_added_{n}() {{}}\n")),
                (_, false) => text.push_str(&format!("\n\ndef bench_added_{n}():\n    pass\n")),
            }
            std::fs::write(&path, text).expect("write changed file");
            let t = Instant::now();
            let stats = g.update(&repo).expect("update");
            let wall = ms(t);
            assert_eq!(
                stats.parsed, 1,
                "exactly the changed file is parsed: {stats:?}"
            );
            println!("{wall} {}", peak_rss_kib());
        }
        "load" => {
            let t = Instant::now();
            let g = Graph::load(Path::new(&args[1]), Config::default()).expect("load");
            let wall = ms(t);
            assert!(g.file_count() > 0);
            println!("{wall} {}", peak_rss_kib());
        }
        "query" => {
            let g = Graph::load(Path::new(&args[1]), Config::default()).expect("load");
            let file = &args[2];
            let entry = g.file(file).expect("changed file indexed");
            // the most referenced function of the file, as a one-function change
            let sym = entry
                .facts
                .symbols
                .iter()
                .max_by_key(|s| s.end_line - s.start_line)
                .expect("file has symbols");
            let change = vec![Change {
                path: file.clone(),
                ranges: vec![(sym.start_line, sym.start_line + 1)],
            }];
            let mut blast = Vec::new();
            for _ in 0..200 {
                let t = Instant::now();
                let b = g.blast_radius(&change);
                blast.push(ms(t));
                std::hint::black_box(b);
            }
            let mut nav = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                let m = g.navigate("Session timeout is ignored when a proxy is configured and the connection pool retries the request");
                nav.push(ms(t));
                std::hint::black_box(m);
            }
            println!("{} {}", median(blast), median(nav));
        }
        other => panic!("unknown child mode {other}"),
    }
}
