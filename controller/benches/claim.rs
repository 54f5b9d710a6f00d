//! Claim throughput and latency straight on the store.
//!
//! For each concurrency level, a fresh database gets `--tasks` queued tasks spread over
//! `--repos` repositories (with `--durable`, on a server with fsync on); that many claimers
//! (each a runner of its own, as a Tokio task claiming through one store) claim until the queue
//! is empty. Prints claims per second, p50/p99/max claim latency and how
//! many claims each statement made (the store gathers the claims that arrive together) as a
//! Markdown table, and beside it the floor: what PostgreSQL itself does with the bare
//! `UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1)` on a queue of the same size,
//! driven by `pgbench` with as many clients, on the same server in the same run (the median of
//! three runs) — and our rate as a share of it. Run: `cargo bench -p controller --bench claim -- [--tasks N] [--repos N]
//! [--claimers 1,8,32] [--durable]`. Uses the private PostgreSQL of `pgembed::testing` (or `DATABASE_URL`).

use std::time::{Duration, Instant};

use controller::store::claims::ClaimRequest;
use controller::store::{MIGRATOR, Store};

/// Runs of the floor in each level; its median is reported.
const FLOOR_RUNS: usize = 3;

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
    println!(
        "| claimers | tasks | repos | claims/s | p50 ms | p99 ms | max ms | claims a statement | floor claims/s | share |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
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
        let batching = store.claim_batching();
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
        let after = store.claim_batching();
        let per_statement = (after.requests - batching.requests) as f64
            / (after.statements - batching.statements).max(1) as f64;
        assert_eq!(
            lat.len() as i64,
            args.tasks,
            "every task claimed exactly once"
        );
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
        let rate = lat.len() as f64 / wall.as_secs_f64();
        // The floor's run is short and this machine's speed drifts: the median of three runs.
        let mut floors = Vec::new();
        for _ in 0..FLOOR_RUNS {
            floors.extend(floor(&store, &url, n, args.tasks).await);
        }
        floors.sort_by(f64::total_cmp);
        let floor = floors.get(floors.len() / 2).copied();
        println!(
            "| {n} | {} | {} | {rate:.0} | {:.2} | {:.2} | {:.2} | {per_statement:.1} | {} | {} |",
            args.tasks,
            args.repos,
            pct(0.50),
            pct(0.99),
            lat.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
            floor.map_or("—".into(), |f| format!("{f:.0}")),
            floor.map_or("—".into(), |f| format!("{:.0} %", 100.0 * rate / f)),
        );
        store.close().await;
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

/// The floor: the bare claim statement on a queue of `tasks` rows, `clients` pgbench clients on
/// the same server, until the queue is empty; transactions per second (`None` without pgbench).
async fn floor(store: &Store, url: &str, clients: usize, tasks: i64) -> Option<f64> {
    let pgbench = ["/usr/bin/pgbench"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .chain(
            std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|d| d.path().join("bin/pgbench")),
        )
        .find(|p| p.exists())?;
    for sql in [
        "DROP TABLE IF EXISTS floor_queue",
        "CREATE TABLE floor_queue (id bigserial PRIMARY KEY, status text NOT NULL, claimed_by int)",
        "CREATE INDEX floor_queued ON floor_queue (id) WHERE status = 'queued'",
    ] {
        sqlx::query(sql).execute(store.pool()).await.ok()?;
    }
    sqlx::query("INSERT INTO floor_queue (status) SELECT 'queued' FROM generate_series(1, $1)")
        .bind(tasks)
        .execute(store.pool())
        .await
        .ok()?;
    sqlx::query("VACUUM ANALYZE floor_queue")
        .execute(store.pool())
        .await
        .ok()?;
    let dir = tempfile_dir();
    let script = dir.join("claim.sql");
    std::fs::write(
        &script,
        "UPDATE floor_queue SET status = 'leased', claimed_by = :client_id \
         WHERE id = (SELECT id FROM floor_queue WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED);\n",
    )
    .ok()?;
    let per_client = (tasks as usize / clients).max(1);
    let out = xcmd::Cmd::new(&pgbench, &dir)
        .args(["-n", "-f"])
        .arg(&script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-t",
            &per_client.to_string(),
            url,
        ])
        .to_std()
        .output()
        .ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bp-floor-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).expect("a scratch directory");
    d
}
