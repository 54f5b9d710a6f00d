//! Best-of-3 against a single attempt: wall time from the task's creation until its result is
//! ready to push (`pushing`: for best-of-3, all three candidates ended and the round settled),
//! with three in-process runners over mTLS and the scripted executor working `BP_BENCH_WORK_MS`
//! (default 2000) per attempt; then the controller's time to rank a round (reading the
//! candidates, ranking, recording the ranking — the reviewer's model calls excluded, they are
//! the model's time). Medians over `BP_BENCH_RUNS` (default 5) runs.
//!
//! `cargo bench -p e2e --bench best_of`

use std::time::{Duration, Instant};

use controller::pipeline::rank;
use controller::store::Status;
use controller::store::repos::RepoSettings;
use e2e::executor::ScriptExecutor;
use e2e::harness::{Options, TestController, enroll, spawn_runner, state_dir};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runs = env_num("BP_BENCH_RUNS", 5) as usize;
    let work_ms = env_num("BP_BENCH_WORK_MS", 2000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        e2e::harness::init();
        let c = TestController::start(Options {
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            ..Options::default()
        })
        .await;
        let single = c.repo("bench/single").await;
        let best = c.repo("bench/best").await;
        c.store
            .update_repo(
                best.id,
                &RepoSettings {
                    best_of: Some(3),
                    ..RepoSettings::default()
                },
            )
            .await
            .unwrap();
        let exec = ScriptExecutor::new(state_dir("bench-runs").join("runs.txt"));
        let mut runners = Vec::new();
        for name in ["r1", "r2", "r3"] {
            let (id, dir) = enroll(&c, name, &[]).await;
            runners.push(spawn_runner(id, &dir, exec.clone(), 1));
        }
        let script = format!("sleep:{work_ms}");
        let (mut one, mut three, mut ranks) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            for (repo, out) in [(&single, &mut one), (&best, &mut three)] {
                let started = Instant::now();
                let t = c.task(repo, &script).await;
                c.wait_for(t.id, "its result", Duration::from_secs(120), |t| {
                    !matches!(
                        t.status,
                        Status::Queued
                            | Status::Leased
                            | Status::Running
                            | Status::Verifying
                            | Status::Candidates
                    )
                })
                .await;
                out.push(started.elapsed().as_secs_f64());
                if t.best_of > 1 {
                    // The controller's ranking of this round, as the push stage does it.
                    let t = c.store.task(t.id).await.unwrap();
                    let t0 = Instant::now();
                    let runs = c.store.candidate_runs(t.id, t.attempt).await.unwrap();
                    let cands: Vec<rank::Candidate> = runs
                        .iter()
                        .map(|r| rank::Candidate {
                            task_id: r.task_id,
                            candidate: r.candidate,
                            model: r.model.clone(),
                            outcome: r.terminal_reason.clone().unwrap_or_default(),
                            has_bundle: true,
                            diff_lines: Some(i64::from(r.candidate)),
                            cost_microusd: r.cost_microusd,
                            ..rank::Candidate::default()
                        })
                        .collect();
                    let d = rank::decide(&cands);
                    c.store
                        .record_ranking(
                            &t,
                            d.winner.expect("a winner"),
                            "bench",
                            &serde_json::json!(d.entries),
                            0,
                        )
                        .await
                        .unwrap();
                    ranks.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            eprintln!(
                "run {i}: single {:.3} s, best-of-3 {:.3} s",
                one[i], three[i]
            );
        }
        let (m1, m3) = (median(&mut one), median(&mut three));
        println!("best-of-3 vs a single attempt, {runs} runs, {work_ms} ms of work per attempt, 3 runners (medians):");
        println!("  {:<44} {m1:>8.3} s", "single attempt: created → result ready");
        println!("  {:<44} {m3:>8.3} s", "best-of-3: created → round settled");
        println!("  {:<44} {:>8.3}", "overhead (best-of-3 / single)", m3 / m1);
        println!(
            "  {:<44} {:>8.3} ms",
            "controller time to rank a round of 3",
            median(&mut ranks)
        );
        for r in runners {
            r.stop().await.unwrap();
        }
        c.stop().await;
    });
}
