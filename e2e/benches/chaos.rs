//! The chaos run in full: labelled issues across repositories through the whole pipeline on the
//! multi-host rig ([`e2e::chaos`]) while every fault of [`Fault::ALL`] is injected in turn. Prints,
//! per fault, the time to recover and the agent work it cost; then what the run did in all
//! (merged, wall time, agent work done and lost) and anything that happened other than once.
//! Needs root and iproute2.
//!
//! `cargo bench -p e2e --bench chaos` (`BP_CHAOS_ISSUES`, `BP_CHAOS_REPOS`, `BP_CHAOS_AGENT_MS`,
//! `BP_CHAOS_LEASE_MS`; defaults 20, 3, 3000, 4000)

use std::time::Duration;

use e2e::chaos::{Chaos, Fault, run, work};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !e2e::netns::available() {
        std::process::exit(2);
    }
    let chaos = Chaos {
        issues: env("BP_CHAOS_ISSUES", 20) as usize,
        repos: env("BP_CHAOS_REPOS", 3) as usize,
        runners: 3,
        controllers: 2,
        agent: Duration::from_millis(env("BP_CHAOS_AGENT_MS", 3000)),
        lines: 12,
        lease: Duration::from_millis(env("BP_CHAOS_LEASE_MS", 4000)),
        db_outage: Duration::from_secs(3),
        faults: Fault::ALL.to_vec(),
        limit: Duration::from_secs(900),
        bins: (
            env!("CARGO_BIN_EXE_e2e-controller").into(),
            env!("CARGO_BIN_EXE_e2e-runner").into(),
        ),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(run(chaos.clone()));
    println!(
        "{} issues, {} repositories, 2 controller replicas, 3 runners; agent {:.1} s per attempt, lease {:.1} s\n",
        chaos.issues,
        chaos.repos,
        chaos.agent.as_secs_f64(),
        chaos.lease.as_secs_f64()
    );
    println!(
        "| fault | recovered in s | attempts lost | agent work lost s | stopped after heal s |"
    );
    println!("|---|---:|---:|---:|---:|");
    for f in &r.faults {
        println!(
            "| {:?} | {:.2} | {} | {:.1} | {} |",
            f.fault,
            f.recovered.as_secs_f64(),
            f.lost_attempts,
            f.lost_work.as_secs_f64(),
            f.stopped_after_heal
                .map_or("—".into(), |d| format!("{:.2}", d.as_secs_f64()))
        );
    }
    let merged = r.tasks.iter().filter(|t| t.1 == "merged").count();
    let (all, lost) = work(&r);
    println!(
        "\nmerged {merged} of {} in {:.1} s; agent work {:.1} s, of it lost {:.1} s ({:.1} %)",
        r.tasks.len(),
        r.wall.as_secs_f64(),
        all.as_secs_f64(),
        lost.as_secs_f64(),
        100.0 * lost.as_secs_f64() / all.as_secs_f64().max(0.001)
    );
    let missing: Vec<_> = Fault::ALL
        .iter()
        .filter(|f| !r.faults.iter().any(|g| g.fault == **f))
        .collect();
    if !missing.is_empty() {
        println!("faults that found no moment to strike: {missing:?}");
    }
    for w in r.sims.effects_not_once(&r.issues) {
        println!("not once: {w}");
    }
    for t in r.tasks.iter().filter(|t| t.1 != "merged") {
        println!("task {} {}: {}", t.0, t.1, t.3.clone().unwrap_or_default());
    }
}
