//! API benchmarks: (1) 500 concurrent SSE clients on `/api/events` — the time from a task change
//! (the committing statement returns) to each client receiving its delta; (2) the dashboard's
//! first load — the page, its script and stylesheet, then `/api/me`, `/api/settings` and the
//! task list (200 tasks) as the page requests them.
//!
//! `cargo bench -p controller --bench api` (`BP_SSE_CLIENTS` changes the client count).

use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::config::Config;
use controller::store::tasks::NewTask;
use controller::store::{HoldKind, Note};
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clients: usize = std::env::var("BP_SSE_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let db = pgembed::testing::cluster().await.fresh_database(&controller::store::MIGRATOR).await.unwrap();
        let store = controller::store::Store::connect(&db.url, 8).await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", http.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let server = controller::server::start(
            Config { database_url: Some(db.url.clone()), data_dir: dir.path().join("c"), ..Config::default() },
            controller::server::Listeners { http, grpc },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let hash = controller::http::auth::hash_password("bench password 1").unwrap();
        let user = store.create_user("bench", &hash, "admin").await.unwrap();
        let (_, token) = store.create_api_token(user.id, "bench").await.unwrap();
        let repo = store
            .add_repo(&controller::store::repos::NewRepo { name: "acme/bench".into(), clone_url: "https://example.invalid/x.git".into(), default_branch: "main".into() })
            .await
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..200 {
            let mut t = NewTask::for_issue(repo.id, 0, &format!("task {i}"), "body");
            t.issue_number = None;
            ids.push(store.create_task(&t).await.unwrap().id);
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // triage settles

        // (1) SSE fan-out.
        let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
        let target = ids[0];
        let arrivals: Arc<Mutex<Vec<(usize, usize, Instant)>>> = Arc::default();
        let mut readers = Vec::new();
        let connected = Arc::new(tokio::sync::Semaphore::new(0));
        for client in 0..clients {
            let (http, base, token, arrivals, connected) = (http.clone(), base.clone(), token.clone(), arrivals.clone(), connected.clone());
            readers.push(tokio::spawn(async move {
                let resp = http.get(format!("{base}/api/events")).bearer_auth(&token).send().await.unwrap();
                connected.add_permits(1);
                let mut body = resp.bytes_stream();
                let mut buf = String::new();
                let mut seen = 0usize;
                while let Some(chunk) = body.next().await {
                    let Ok(chunk) = chunk else { return };
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buf.find("\n\n") {
                        let frame: String = buf.drain(..end + 2).collect();
                        if frame.contains(&format!("\"id\":{target},")) {
                            arrivals.lock().await.push((client, seen, Instant::now()));
                            seen += 1;
                        }
                    }
                }
            }));
        }
        let _all = connected.acquire_many(clients as u32).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rounds = 10;
        let mut sent = Vec::new();
        for round in 0..rounds {
            let at = Instant::now();
            if round % 2 == 0 {
                store.hold(target, HoldKind::User, None, &Note::new("bench", "hold")).await.unwrap();
            } else {
                store.release(target, &Note::new("bench", "release")).await.unwrap();
            }
            sent.push(at);
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let got = arrivals.lock().await.clone();
        let mut lat: Vec<f64> = got
            .iter()
            .filter(|(_, n, _)| *n < rounds)
            .map(|(_, n, at)| at.duration_since(sent[*n]).as_secs_f64() * 1000.0)
            .collect();
        let expected = clients * rounds;
        let within = lat.iter().filter(|l| **l <= 1000.0).count();
        println!("SSE fan-out: {clients} clients × {rounds} changes = {expected} deliveries expected, {} received, {within} within 1 s", lat.len());
        println!(
            "  latency ms: p50 {:.1}  p99 {:.1}  max {:.1}",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0)
        );
        for r in readers {
            r.abort();
        }

        // (2) Dashboard first load.
        let mut loads = Vec::new();
        for _ in 0..20 {
            let fresh = reqwest::Client::new();
            let start = Instant::now();
            let page = fresh.get(format!("{base}/")).send().await.unwrap().text().await.unwrap();
            assert!(page.contains("Backporcher"));
            let (a, b) = tokio::join!(
                fresh.get(format!("{base}/app.js")).send(),
                fresh.get(format!("{base}/style.css")).send()
            );
            a.unwrap().bytes().await.unwrap();
            b.unwrap().bytes().await.unwrap();
            let (me, settings, tasks) = tokio::join!(
                fresh.get(format!("{base}/api/me")).bearer_auth(&token).send(),
                fresh.get(format!("{base}/api/settings")).bearer_auth(&token).send(),
                fresh.get(format!("{base}/api/tasks?limit=200")).bearer_auth(&token).send()
            );
            me.unwrap().bytes().await.unwrap();
            settings.unwrap().bytes().await.unwrap();
            let list = tasks.unwrap().bytes().await.unwrap();
            assert!(list.len() > 1000);
            loads.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        println!(
            "dashboard first load (page + script + style + me + settings + 200 tasks): p50 {:.1} ms  max {:.1} ms",
            pct(&mut loads, 0.5),
            pct(&mut loads, 1.0)
        );
        shutdown.cancel();
        let _ = server.stopped().await;
    });
}
