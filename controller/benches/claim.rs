//! Claim throughput and latency straight on the store.
//!
//! For each concurrency level, a fresh database gets `--tasks` queued tasks spread over
//! `--repos` repositories (with `--durable`, on a server with fsync on); that many claimers (each a runner of its own, as a Tokio task with a pooled connection)
//! claim until the queue is empty. Prints claims per second and p50/p99/max claim latency as a
//! Markdown table. Run: `cargo bench -p controller --bench claim -- [--tasks N] [--repos N]
//! [--claimers 1,8,32] [--durable]`. Uses the private PostgreSQL of `pgembed::testing` (or `DATABASE_URL`).

use std::time::{Duration, Instant};

use controller::store::claims::ClaimRequest;
use controller::store::{MIGRATOR, Store};

struct Args {
    tasks: i64,
    repos: i64,
    claimers: Vec<usize>,
    durable: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        tasks: 10_000,
        repos: 1,
        claimers: vec![1, 8, 32],
        durable: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--tasks" => args.tasks = value().parse().expect("--tasks takes a number"),
            "--repos" => args.repos = value().parse().expect("--repos takes a number"),
            "--claimers" => {
                args.claimers = value()
                    .split(',')
                    .map(|s| s.parse().expect("--claimers takes numbers like 1,8,32"))
                    .collect()
            }
            "--durable" => args.durable = true,
            "--bench" => {}
            other => panic!("unknown argument {other}; use --tasks, --repos, --claimers"),
        }
    }
    args
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = parse_args();
    // --durable: a server with fsync and synchronous commit on, like production.
    let dir = std::env::temp_dir().join(format!("bp-bench-{}", std::process::id()));
    let durable = match args.durable {
        true => Some(
            pgembed::Server::start(&pgembed::ServerConfig {
                data_dir: dir.join("pg"),
                port: None,
                bin_dir: None,
                durable: true,
                password: None,
            })
            .await
            .expect("durable server"),
        ),
        false => None,
    };
    println!("durable (fsync, synchronous_commit): {}\n", args.durable);
    println!("| claimers | tasks | repos | claims/s | p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.claimers {
        let url = match &durable {
            Some(server) => {
                let name = format!("bench_{n}");
                server.ensure_database(&name).await.expect("database");
                let url = server.url(&name);
                Store::connect(&url, 1)
                    .await
                    .expect("connect")
                    .migrate()
                    .await
                    .expect("migrate");
                url
            }
            None => {
                pgembed::testing::cluster()
                    .await
                    .fresh_database(&MIGRATOR)
                    .await
                    .expect("database")
                    .url
            }
        };
        let store = Store::connect(&url, (n as u32) + 2).await.expect("connect");
        seed(&store, args.repos, args.tasks).await;
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let store = store.clone();
            // Each claimer is its own runner, as in a fleet.
            let runner = store
                .register_runner(&format!("bench-{i}"), &[], 1000)
                .await
                .expect("runner")
                .id;
            set.spawn(async move {
                let req = ClaimRequest {
                    runner_id: runner,
                    labels: &[],
                    lease: Duration::from_secs(60),
                    capacity: None,
                };
                let mut lat = Vec::new();
                loop {
                    let t0 = Instant::now();
                    let got = store.claim(&req).await.expect("claim");
                    if got.is_none() {
                        break;
                    }
                    lat.push(t0.elapsed());
                }
                lat
            });
        }
        let mut lat: Vec<Duration> = Vec::new();
        while let Some(l) = set.join_next().await {
            lat.extend(l.expect("claimer"));
        }
        let wall = start.elapsed();
        assert_eq!(
            lat.len() as i64,
            args.tasks,
            "every task claimed exactly once"
        );
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
        println!(
            "| {n} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            args.tasks,
            args.repos,
            lat.len() as f64 / wall.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            lat.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
        );
        store.pool().close().await;
    }
    if let Some(server) = durable {
        server.stop().await.expect("stop");
        let _ = std::fs::remove_dir_all(dir);
    }
}

async fn seed(store: &Store, repos: i64, tasks: i64) {
    let mut ids = Vec::new();
    for i in 0..repos {
        let repo = store
            .add_repo(&controller::store::repos::NewRepo {
                name: format!("bench/r{i}"),
                clone_url: "https://example.invalid/r.git".into(),
                default_branch: "main".into(),
            })
            .await
            .expect("repo");
        ids.push(repo.id);
    }
    sqlx::query(
        "INSERT INTO tasks (repo_id, source, issue_title, status, priority, ev_actor, ev_reason) \
         SELECT ($1::bigint[])[1 + (g % array_length($1::bigint[], 1))], 'api', 'bench ' || g, 'queued', \
                100 + (g % 7), 'bench', 'created' \
         FROM generate_series(1, $2) g",
    )
    .bind(&ids)
    .bind(tasks)
    .execute(store.pool())
    .await
    .expect("seed");
    sqlx::query("ANALYZE tasks")
        .execute(store.pool())
        .await
        .expect("analyze");
}
