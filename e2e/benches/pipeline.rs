//! Label → merged: the time from a labelled issue's webhook to its merged PR, with the scripted
//! model (instant answers), instant CI, the real controller, PostgreSQL, a runner over mTLS, Docker
//! and the real Claude Code CLI. Prints where the time goes, phase by phase, as medians over the
//! runs (`BP_BENCH_RUNS`, default 5).
//!
//! `cargo bench -p e2e --bench pipeline`

use std::time::{Duration, Instant};

use controller::forge::labels;
use controller::store::Status;
use controller::store::repos::RepoSettings;
use e2e::full::{FullSystem, agent_script, says};

const PHASES: &[(&str, &str)] = &[
    ("new", "webhook → task (intake)"),
    ("queued", "triage (model call, dependencies)"),
    ("leased", "dispatch (claim over gRPC long-poll)"),
    ("running", "runner: checkout, sandbox start"),
    (
        "pushing",
        "runner: agent (real CLI), commit, bundle, upload",
    ),
    ("pr_open", "push bundle + open PR"),
    ("reviewing", "review stage pick-up"),
    ("ci_wait", "review (diff + model)"),
    ("merging", "CI check"),
    ("merged", "merge + branch delete"),
];

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if e2e::harness::skip_docker() {
        println!("BP_SKIP_DOCKER=1: the pipeline benchmark needs Docker; skipped");
        return;
    }
    let runs: usize = std::env::var("BP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let sys = FullSystem::start(
            "bench",
            &[("README.md", "# bench\n")],
            RepoSettings {
                approval_mode: Some("full-auto".into()),
                ..RepoSettings::default()
            },
        )
        .await;
        sys.gh.set_default_ci("success");
        let mut phases: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
        let mut totals = Vec::new();
        // The controller's calls come first: their prompts quote the issue text too.
        sys.model.add_script(says(
            "Classify this issue",
            &vec!["{\"model\": \"sonnet\"}"; runs],
        ));
        sys.model.add_script(says(
            "review this pull request",
            &vec!["Fine.\nVERDICT: APPROVE"; runs],
        ));
        for i in 0..runs {
            let mark = format!("MARK-BENCH-{i}");
            sys.model.add_script(agent_script(
                &mark,
                &format!("/workspace/notes/{i}.txt"),
                "done\n",
                "never asked",
                "",
            ));
            let started = Instant::now();
            let start_db: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
                .fetch_one(sys.c.store.pool())
                .await
                .unwrap();
            let number = sys
                .gh
                .open_issue(
                    &sys.name,
                    &format!("Note {i}"),
                    &format!("Write a note. {mark}"),
                    "alice",
                    &[labels::TRIGGER],
                )
                .await;
            let id = sys.task_of_issue(number).await;
            sys.wait_for(id, "the merge", Duration::from_secs(300), |t| {
                t.status == Status::Merged
            })
            .await;
            let total = started.elapsed().as_secs_f64();
            totals.push(total);
            let events = sys.c.store.timeline(id).await.unwrap();
            let mut prev = start_db;
            for (k, (status, _)) in PHASES.iter().enumerate() {
                if let Some(e) = events.iter().find(|e| e.to_status == *status) {
                    phases[k].push((e.at - prev).num_microseconds().unwrap_or(0) as f64 / 1e6);
                    prev = e.at;
                }
            }
            eprintln!("run {i}: label → merged {total:.2} s");
        }
        println!("label → merged, {runs} runs (medians, seconds):");
        let mut runner_time = 0.0;
        for (k, (status, what)) in PHASES.iter().enumerate() {
            if phases[k].is_empty() {
                continue;
            }
            let m = median(&mut phases[k]);
            if matches!(*status, "running" | "pushing") {
                runner_time += m;
            }
            println!("  {what:<50} {m:>7.3}");
        }
        let total = median(&mut totals);
        println!("  {:<50} {total:>7.3}", "total");
        println!(
            "  {:<50} {:>7.3}",
            "pipeline overhead (total − runner phases)",
            total - runner_time
        );
        sys.stop().await;
    });
}
