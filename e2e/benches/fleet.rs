//! A fleet under load: labelled issues across repositories and runners (an executor that
//! commits one file per task — no agent), the GitHub simulator with instant CI, the real
//! controller on PostgreSQL. Prints merged PRs per second, CPU per merged PR (this process: the
//! controller, the runners and the simulator; their git children; PostgreSQL), the `ci_wait` →
//! merged tail, and whatever did not merge.
//!
//! `cargo bench -p e2e --bench fleet` (`BP_FLEET_ISSUES`, `BP_FLEET_REPOS`, `BP_FLEET_RUNNERS`,
//! `BP_FLEET_STAGES`, `BP_FLEET_CONTROLLERS`; defaults 500, 10, 20, 16, 1)

use std::time::Duration;

use e2e::fleet::{Fleet, run};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let fleet = Fleet {
        issues: env("BP_FLEET_ISSUES", 500),
        repos: env("BP_FLEET_REPOS", 10),
        runners: env("BP_FLEET_RUNNERS", 20),
        stage_concurrency: env("BP_FLEET_STAGES", 16),
        controllers: env("BP_FLEET_CONTROLLERS", 1),
        model: false,
        limit: Duration::from_secs(1800),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(run(fleet));
    let merged = r.merged.max(1) as f64;
    println!("{fleet:?}");
    println!(
        "merged {} of {} in {:.1} s: {:.2} merged PRs/s",
        r.merged,
        fleet.issues,
        r.wall.as_secs_f64(),
        r.merged as f64 / r.wall.as_secs_f64()
    );
    println!(
        "CPU per merged PR: {:.1} ms in-process (controller, runners, simulator), {:.1} ms git children, {:.1} ms PostgreSQL",
        r.cpu_process * 1000.0 / merged,
        r.cpu_children * 1000.0 / merged,
        r.cpu_postgres * 1000.0 / merged
    );
    println!(
        "ci_wait → merged: p50 {:.3} s, p99 {:.3} s",
        r.ci_to_merged.0, r.ci_to_merged.1
    );
    println!(
        "ended otherwise: {}, stuck: {}",
        r.ended_otherwise.len(),
        r.stuck.len()
    );
    for (id, status, error) in r.ended_otherwise.iter().take(5) {
        println!(
            "  task {id} {status}: {}",
            error.clone().unwrap_or_default()
        );
    }
    for (id, status) in r.stuck.iter().take(5) {
        println!("  task {id} stuck in {status}");
    }
}
