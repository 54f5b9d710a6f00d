//! Runner protocol benchmarks: claims over gRPC with many runners, controller CPU with a large
//! heartbeating fleet, and the memory of an idle runner process.
//!
//! `cargo bench -p e2e --bench grpc -- [--runners 200] [--tasks 10000] [--fleet 1000]
//! [--heartbeat 10] [--window 30] [--parts leases,heartbeats,idle]`. Prints Markdown tables.

use std::time::{Duration, Instant};

use e2e::harness::{Options, TestController, quick_identity};
use futures::StreamExt;
use runner::client::{Client, HelloInfo};

struct Args {
    runners: usize,
    tasks: i64,
    fleet: usize,
    heartbeat: u64,
    window: u64,
    parts: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        runners: 200,
        tasks: 10_000,
        fleet: 1000,
        heartbeat: 10,
        window: 30,
        parts: vec!["leases".into(), "heartbeats".into(), "idle".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--runners" => a.runners = v().parse().expect("number"),
            "--tasks" => a.tasks = v().parse().expect("number"),
            "--fleet" => a.fleet = v().parse().expect("number"),
            "--heartbeat" => a.heartbeat = v().parse().expect("seconds"),
            "--window" => a.window = v().parse().expect("seconds"),
            "--parts" => {
                a.parts = v().split(',').map(str::to_owned).collect();
                for p in &a.parts {
                    assert!(
                        ["leases", "heartbeats", "idle"].contains(&p.as_str()),
                        "unknown part {p}; use leases, heartbeats, idle"
                    );
                }
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn hello(boot: &str) -> HelloInfo {
    HelloInfo {
        labels: vec![],
        capacity: 100_000,
        backends: vec![],
        boot_id: boot.into(),
        active: vec![],
    }
}

/// Puts `n` queued tasks in the bench's repository, after clearing what the previous round left
/// (its tasks stay leased for the bench's long lease): every round starts from the state the
/// goal names — `n` queued tasks and no runner holding anything. Left in place, the earlier
/// rounds' 30,000 leases (150 per runner, each counted against the runner's capacity at every
/// claim) went with a backlog in the last round's first seconds: p99 at half load 130–200 ms,
/// against 7 ms from a clean start.
async fn seed(c: &TestController, n: i64) {
    let repo = match c.store.repo_by_name("bench/r").await {
        Ok(r) => r,
        Err(_) => c.repo("bench/r").await,
    };
    sqlx::query("DELETE FROM tasks")
        .execute(c.store.pool())
        .await
        .expect("clear the previous round");
    sqlx::query("VACUUM tasks")
        .execute(c.store.pool())
        .await
        .expect("vacuum");
    sqlx::query(
        "INSERT INTO tasks (repo_id, source, issue_title, status, priority, ev_actor, ev_reason) \
         SELECT $1, 'api', 'sleep:1', 'queued', 100 + (g % 7), 'bench', 'created' FROM generate_series(1, $2) g",
    )
    .bind(repo.id)
    .bind(n)
    .execute(c.store.pool())
    .await
    .expect("seed");
    sqlx::query("ANALYZE tasks")
        .execute(c.store.pool())
        .await
        .expect("analyze");
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state is [0]; utime [11], stime [12].
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    let part = |p: &str| a.parts.iter().any(|x| x == p);
    if part("leases") {
        claims(&a).await;
    }
    if part("heartbeats") {
        heartbeats(&a).await;
    }
    if part("idle") {
        idle_runner().await;
    }
}

async fn claims(a: &Args) {
    let c = TestController::start(Options {
        lease: Duration::from_secs(600),
        heartbeat: Duration::from_secs(200),
        ..Options::default()
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..a.runners {
        let id = quick_identity(&c, &format!("bench-{i}"), 100_000).await;
        let client = id.connect().expect("client");
        client
            .hello(&hello(&format!("boot-{i}")))
            .await
            .expect("hello");
        clients.push(client);
    }
    println!(
        "## Lease over gRPC (mTLS), {} runners, {} queued tasks\n",
        a.runners, a.tasks
    );
    println!("| load | leases/s | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|");
    // Saturation: every runner asks again as soon as it got an answer.
    seed(&c, a.tasks).await;
    let saturated = lease_round(&clients, a.tasks, None, "saturated (closed loop)").await;
    // Paced: the fleet together asks 2,000 times a second, each runner on its own schedule.
    seed(&c, a.tasks).await;
    lease_round(&clients, a.tasks, Some(2000.0), "paced at 2,000/s").await;
    seed(&c, a.tasks).await;
    lease_round(&clients, a.tasks, Some(1000.0), "paced at 1,000/s").await;
    // The goal's load: half of what this fleet and this server reach saturated.
    seed(&c, a.tasks).await;
    let half = (saturated / 2.0).round();
    lease_round(
        &clients,
        a.tasks,
        Some(half),
        &format!("paced at half the saturated rate ({half:.0}/s)"),
    )
    .await;
    println!();
    c.stop().await;
}

/// One round of leases over the whole queue; prints its row and returns the leases per second.
async fn lease_round(clients: &[Client], tasks: i64, rate: Option<f64>, label: &str) -> f64 {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let n = clients.len();
    for (i, client) in clients.iter().cloned().enumerate() {
        let period = rate.map(|r| Duration::from_secs_f64(n as f64 / r));
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut next = Instant::now()
                + period
                    .map(|p| p.mul_f64(i as f64 / n as f64))
                    .unwrap_or_default();
            loop {
                if let Some(p) = period {
                    tokio::time::sleep_until(next.into()).await;
                    next += p;
                }
                let t0 = Instant::now();
                match client.lease(Duration::ZERO).await.expect("lease") {
                    (Some(_), _) => lat.push(t0.elapsed()),
                    (None, _) => break,
                }
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(l) = set.join_next().await {
        lat.extend(l.expect("client"));
    }
    let wall = start.elapsed();
    assert_eq!(lat.len() as i64, tasks, "every task leased once");
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    let rate = lat.len() as f64 / wall.as_secs_f64();
    println!(
        "| {label} | {rate:.0} | {:.2} | {:.2} | {:.2} |",
        p(0.5),
        p(0.99),
        p(1.0)
    );
    rate
}

async fn heartbeats(a: &Args) {
    e2e::harness::init();
    let db = pgembed::testing::cluster()
        .await
        .fresh_database(&controller::store::MIGRATOR)
        .await
        .expect("db");
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = std::env::temp_dir();
    let mut child = xcmd::Cmd::new(env!("CARGO_BIN_EXE_e2e-controller"), &dir)
        .arg(&db.url)
        .arg(grpc.to_string())
        .arg(http.to_string())
        .arg(a.heartbeat.to_string())
        .env("RUST_LOG", "warn")
        .to_std()
        .spawn()
        .expect("controller process");
    let store = controller::store::Store::connect(&db.url, 4)
        .await
        .expect("store");
    loop {
        let ready: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pki_ca)")
            .fetch_one(store.pool())
            .await
            .unwrap_or(false);
        if ready && tokio::net::TcpStream::connect(grpc).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A controller handle for the helpers (same database, its own ports, not used for traffic).
    let helper = TestController::attach(store.clone(), grpc);
    seed(&helper, a.fleet as i64).await;
    let mut sessions = tokio::task::JoinSet::new();
    let connect_start = Instant::now();
    for i in 0..a.fleet {
        let id = quick_identity(&helper, &format!("fleet-{i}"), 1).await;
        let client = id.connect().expect("client");
        client
            .hello(&hello(&format!("boot-{i}")))
            .await
            .expect("hello");
        let (assignment, _) = client.lease(Duration::ZERO).await.expect("lease");
        let lease = assignment.map(|a| a.lease);
        let period = Duration::from_secs(a.heartbeat);
        // Spread the fleet over the period, as independent hosts would be.
        let offset = period.mul_f64(i as f64 / a.fleet as f64);
        sessions.spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let mut down = Box::pin(client.session(rx).await.expect("session"));
            tokio::time::sleep(offset).await;
            let mut seq = 0;
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                seq += 1;
                if tx
                    .send((seq, lease.iter().cloned().collect(), 0))
                    .await
                    .is_err()
                {
                    return;
                }
                if down.next().await.is_none() {
                    return;
                }
            }
        });
    }
    println!(
        "## Controller CPU with {} runners heartbeating every {} s (each holding one lease)\n",
        a.fleet, a.heartbeat
    );
    println!(
        "fleet connected in {:.1} s",
        connect_start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(a.heartbeat)).await;
    let ticks_per_s = 100.0; // USER_HZ
    let t0 = cpu_ticks(child.id());
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.window)).await;
    let used = (cpu_ticks(child.id()) - t0) as f64 / ticks_per_s;
    let wall = w0.elapsed().as_secs_f64();
    // A lease the runner never started is a claim (`task_claims`); one it started is on the
    // task row. Both count, and only while unexpired: renewals kept them.
    let renewed: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM tasks WHERE status IN ('leased', 'running', 'verifying') \
           AND lease_expires_at > now()) \
         + (SELECT count(*) FROM task_claims WHERE expires_at > now())",
    )
    .fetch_one(store.pool())
    .await
    .unwrap_or(0);
    println!(
        "\n| window s | controller CPU s | % of one core | controller RSS MiB | live leases |\n|---:|---:|---:|---:|---:|"
    );
    println!(
        "| {:.0} | {:.2} | {:.1} | {:.0} | {} |\n",
        wall,
        used,
        100.0 * used / wall,
        rss_kib(child.id()) as f64 / 1024.0,
        renewed
    );
    sessions.abort_all();
    let _ = child.kill();
    let _ = child.wait();
}

async fn idle_runner() {
    let c = TestController::start(Options::default()).await;
    let (_, dir) = e2e::harness::enroll(&c, "idle", &[]).await;
    let runs = dir.join("runs.txt");
    let mut child = xcmd::Cmd::new(env!("CARGO_BIN_EXE_e2e-runner"), &dir)
        .arg(&dir)
        .arg(&runs)
        .arg("4")
        .env("RUST_LOG", "warn")
        .to_std()
        .spawn()
        .expect("runner process");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = rss_kib(child.id());
    println!("## Idle runner process (connected, session open, long-polling)\n");
    println!("| RSS MiB |\n|---:|\n| {:.1} |", rss as f64 / 1024.0);
    let _ = child.kill();
    let _ = child.wait();
    c.stop().await;
}
