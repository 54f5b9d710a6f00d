//! History at scale: what the dashboard's first load, `/api/stats`, a claim and `/metrics` cost
//! on the store when the database holds a long history, against the same calls on an empty one.
//!
//! Two fresh databases: one with only a small queue, one with the same queue plus `--tasks` ended
//! tasks (merged and failed, spread over the last year, each with its timeline, a usage row and
//! a result) and `--log-mb` of log chunks over the newest of them. Each call is timed `--samples`
//! times on each; the table gives medians and the ratio. The calls are the store's, as the HTTP
//! handlers make them: the first load is `/api/me`'s user, `/api/tasks?limit=200`, `/api/stats`
//! (totals, cost by model, today's budget, 14 days by day, the 14-day window — served again until
//! a task ends, so one sample in 15 computes it), `/api/runners`, `/api/repos` and
//! `/api/settings`; `/metrics` is its background computation. Run:
//! `cargo bench -p controller --bench history -- [--tasks 1000000] [--log-mb 2048] [--samples 15]`.

use std::time::{Duration, Instant};

use controller::store::claims::ClaimRequest;
use controller::store::tasks::TaskFilter;
use controller::store::{MIGRATOR, Store};

struct Args {
    tasks: i64,
    log_mb: i64,
    samples: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        tasks: 1_000_000,
        log_mb: 2048,
        samples: 15,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--tasks" => args.tasks = value().parse().expect("--tasks takes a number"),
            "--log-mb" => args.log_mb = value().parse().expect("--log-mb takes a number"),
            "--samples" => args.samples = value().parse().expect("--samples takes a number"),
            "--bench" => {}
            other => panic!("unknown argument {other}; use --tasks, --log-mb, --samples"),
        }
    }
    args
}

/// A fresh database with one repository, one runner and a queue of `queued` tasks.
async fn fresh(queued: i64) -> (Store, i64) {
    let url = pgembed::testing::cluster()
        .await
        .fresh_database(&MIGRATOR)
        .await
        .expect("database")
        .url;
    let store = Store::connect(&url, 4).await.expect("connect");
    let repo = store
        .add_repo(&controller::store::repos::NewRepo {
            name: "bench/history".into(),
            clone_url: "https://example.invalid/h.git".into(),
            default_branch: "main".into(),
        })
        .await
        .expect("repo");
    let runner = store
        .register_runner("bench", &[], 1000)
        .await
        .expect("runner")
        .id;
    sqlx::query(
        "INSERT INTO tasks (repo_id, source, issue_title, status, ev_actor, ev_reason) \
         SELECT $1, 'api', 'queued ' || g, 'queued', 'bench', 'created' FROM generate_series(1, $2) g",
    )
    .bind(repo.id)
    .bind(queued)
    .execute(store.pool())
    .await
    .expect("queue");
    (store, runner)
}

/// Adds `tasks` ended tasks with their timelines, usage and results, and `log_mb` of log chunks.
/// Triggers are off while seeding (a replica session), so the rows are written as the finished
/// history would be, not replayed through the lifecycle.
async fn seed_history(store: &Store, tasks: i64, log_mb: i64) {
    let t0 = Instant::now();
    let mut conn = store.pool().acquire().await.expect("connection");
    for sql in [
        "SET session_replication_role = replica",
        "INSERT INTO tasks (repo_id, source, issue_title, status, terminal_reason, attempt, \
               cost_microusd, created_at, started_at, finished_at, updated_at) \
             SELECT (SELECT min(id) FROM repos), 'api', 'ended ' || g, \
               CASE WHEN g % 5 = 0 THEN 'failed' ELSE 'merged' END, \
               CASE WHEN g % 5 = 0 THEN 'ci_failed' ELSE 'succeeded' END, 1, 40000 + g % 9000, \
               now() - make_interval(secs => (g * 31536000.0 / $1)::float8), \
               now() - make_interval(secs => (g * 31536000.0 / $1)::float8 - 60), \
               now() - make_interval(secs => (g * 31536000.0 / $1)::float8 - 900), \
               now() - make_interval(secs => (g * 31536000.0 / $1)::float8 - 900) \
             FROM generate_series(1, $1) g",
    ] {
        sqlx::query(sql)
            .bind(tasks)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    for sql in [
        "INSERT INTO task_events (task_id, actor, from_status, to_status, reason, attempt, at) \
         SELECT id, 'bench', s.f, s.t, s.r, 1, finished_at - s.back \
         FROM tasks, (VALUES ('queued', 'leased', 'claimed', interval '14 minutes'), \
                             ('ci_wait', 'merged', 'merged', interval '0')) AS s(f, t, r, back) \
         WHERE terminal_reason IS NOT NULL",
        "INSERT INTO usage_ledger (at, task_id, repo_id, purpose, model, input_tokens, output_tokens, cost_microusd) \
         SELECT finished_at, id, repo_id, 'agent', CASE WHEN id % 3 = 0 THEN 'opus' ELSE 'sonnet' END, \
                20000, 2000, cost_microusd FROM tasks WHERE terminal_reason IS NOT NULL",
        "INSERT INTO task_results (task_id, attempt, lease_token, outcome, received_at) \
         SELECT id, 1, gen_random_uuid(), 'Succeeded', finished_at FROM tasks WHERE terminal_reason IS NOT NULL",
    ] {
        sqlx::query(sql)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // Logs: 64 KiB chunks, 16 per task, over the newest ended tasks.
    let chunks = log_mb * 16;
    sqlx::query(
        "INSERT INTO log_chunks (task_id, attempt, seq, stream, data) \
         SELECT t.id, 1, s, 'stdout', convert_to(repeat(md5(t.id::text || s), 2048), 'UTF8') \
         FROM (SELECT id FROM tasks WHERE terminal_reason IS NOT NULL ORDER BY finished_at DESC LIMIT $1) t, \
              generate_series(0, 15) s",
    )
    .bind(chunks / 16)
    .execute(&mut *conn)
    .await
    .expect("logs");
    sqlx::query("SET session_replication_role = origin")
        .execute(&mut *conn)
        .await
        .expect("triggers back");
    // The rollups the triggers would have kept (migration 0023), as after any bulk load.
    sqlx::query("SELECT stat_rollups_rebuild()")
        .execute(&mut *conn)
        .await
        .expect("rollups");
    drop(conn);
    sqlx::query("VACUUM ANALYZE")
        .execute(store.pool())
        .await
        .expect("analyze");
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
            .fetch_one(store.pool())
            .await
            .expect("size");
    println!(
        "seeded {tasks} ended tasks and {log_mb} MiB of logs in {:.0} s; database {size}\n",
        t0.elapsed().as_secs_f64()
    );
}

/// Median time of `samples` runs of each call.
async fn measure(store: &Store, runner: i64, samples: usize) -> Vec<(&'static str, Duration)> {
    let mut out = Vec::new();
    macro_rules! time {
        ($name:expr, $body:expr) => {{
            let mut t = Vec::new();
            for _ in 0..samples {
                let t0 = Instant::now();
                $body;
                t.push(t0.elapsed());
            }
            t.sort();
            out.push(($name, t[t.len() / 2]));
        }};
    }
    time!("dashboard first load", {
        store.users().await.expect("users");
        store
            .list_tasks(&TaskFilter {
                status: None,
                repo: None,
                live: false,
                limit: 200,
                before: None,
            })
            .await
            .expect("tasks");
        store.stats(None).await.expect("stats");
        store.cost_by_model(None).await.expect("cost");
        store.fleet_day().await.expect("day");
        store.stats_by_day(14).await.expect("by day");
        store.window_stats(14, None).await.expect("window");
        store.runners().await.expect("runners");
        store.repos().await.expect("repos");
        store.settings().await.expect("settings");
    });
    time!("/api/stats", {
        store.stats(None).await.expect("stats");
        store.cost_by_model(None).await.expect("cost");
        store.fleet_day().await.expect("day");
        store.stats_by_day(14).await.expect("by day");
        store.window_stats(14, None).await.expect("window");
    });
    time!("a claim", {
        store
            .claim(&ClaimRequest {
                runner_id: runner,
                labels: &[],
                lease: Duration::from_secs(60),
                capacity: None,
            })
            .await
            .expect("claim")
            .expect("a queued task");
    });
    time!("/metrics computation", {
        store.metrics().await.expect("metrics");
    });
    out
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = parse_args();
    let queue = 4 * args.samples as i64 + 100;
    let (empty, empty_runner) = fresh(queue).await;
    sqlx::query("ANALYZE").execute(empty.pool()).await.unwrap();
    let before = measure(&empty, empty_runner, args.samples).await;
    let (full, full_runner) = fresh(queue).await;
    seed_history(&full, args.tasks, args.log_mb).await;
    let after = measure(&full, full_runner, args.samples).await;
    println!("| call | empty ms | with history ms | ratio |");
    println!("|---|---:|---:|---:|");
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        println!(
            "| {name} | {:.2} | {:.2} | {:.1}× |",
            a.as_secs_f64() * 1000.0,
            b.as_secs_f64() * 1000.0,
            b.as_secs_f64() / a.as_secs_f64().max(1e-9)
        );
    }
}
