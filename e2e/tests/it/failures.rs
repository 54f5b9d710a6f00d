//! Runners, controllers and the database dying: kill -9 of a runner process mid-task, a
//! controller restart mid-task, PostgreSQL stopped for longer than a lease.

use std::time::{Duration, Instant};

use e2e::harness::{Options, TestController, enroll, spawn_runner};

use crate::executor;

fn runner_process(dir: &std::path::Path, runs: &std::path::Path) -> std::process::Child {
    xcmd::Cmd::new(env!("CARGO_BIN_EXE_e2e-runner"), dir)
        .arg(dir)
        .arg(runs)
        .arg("1")
        .env("RUST_LOG", "warn")
        .to_std()
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("runner process starts")
}

#[tokio::test]
async fn a_runner_killed_mid_task_loses_its_lease_and_another_runner_completes_it_once() {
    let lease = Duration::from_secs(3);
    let c = TestController::start(Options {
        lease,
        heartbeat: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let repo = c.repo("acme/widgets").await;
    let (_, dir_a) = enroll(&c, "a", &[]).await;
    let exec = executor();
    let mut a = runner_process(&dir_a, &exec.runs_file);
    let t = c.task(&repo, "sleep:4000").await;
    c.wait_status(t.id, "running", Duration::from_secs(20))
        .await;
    let first = c.store.task(t.id).await.unwrap();
    let e = exec.clone();
    e2e::harness::eventually(
        Duration::from_secs(10),
        "the work to start on a",
        move || {
            let e = e.clone();
            async move { !e.runs().is_empty() }
        },
    )
    .await;

    a.kill().expect("kill -9");
    let killed_at = Instant::now();
    a.wait().unwrap();
    c.wait_status(t.id, "queued", lease + Duration::from_secs(3))
        .await;
    let took_back = killed_at.elapsed();
    let last = c.store.timeline(t.id).await.unwrap().pop().unwrap();
    assert_eq!(last.reason, "lease_expired");
    assert!(
        took_back <= lease + Duration::from_secs(2),
        "re-queued {took_back:?} after the kill"
    );

    let (id_b, dir_b) = enroll(&c, "b", &[]).await;
    let b = spawn_runner(id_b.clone(), &dir_b, exec.clone(), 1);
    c.wait_status(t.id, "pushing", Duration::from_secs(20))
        .await;
    let done = c.store.task(t.id).await.unwrap();
    assert_eq!(done.attempt, first.attempt + 1);
    assert_eq!(done.runner_id, Some(id_b.runner_id));
    assert_eq!(done.agent_retries, 0, "a lost lease spends no retry");
    let results: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results WHERE task_id = $1")
        .bind(t.id)
        .fetch_one(c.store.pool())
        .await
        .unwrap();
    assert_eq!(results, 1, "completed exactly once");
    let runs = exec.runs();
    assert_eq!(runs.len(), 2, "ran on a, then on b: {runs:?}");
    assert_ne!(runs[0].2, runs[1].2, "two different processes");
    b.stop().await.unwrap();
    c.stop().await;
}

#[tokio::test]
async fn a_restarted_runner_gives_back_the_leases_of_its_previous_process_at_once() {
    let c = TestController::start(Options {
        lease: Duration::from_secs(30),
        ..Options::default()
    })
    .await;
    let repo = c.repo("acme/widgets").await;
    let (id, dir) = enroll(&c, "a", &[]).await;
    let exec = executor();
    let mut a = runner_process(&dir, &exec.runs_file);
    let t = c.task(&repo, "sleep:60000").await;
    c.wait_status(t.id, "running", Duration::from_secs(20))
        .await;
    a.kill().unwrap();
    a.wait().unwrap();
    // Same identity, new process: its hello releases the old lease long before the 30 s expiry.
    let started = Instant::now();
    let again = spawn_runner(id.clone(), &dir, exec.clone(), 1);
    let store = c.store.clone();
    e2e::harness::eventually(
        Duration::from_secs(10),
        "the old lease to be released",
        || {
            let store = store.clone();
            async move {
                store
                    .timeline(t.id)
                    .await
                    .unwrap()
                    .iter()
                    .any(|e| e.reason == "runner_lost")
            }
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    again.stop().await.unwrap();
    c.stop().await;
}

#[tokio::test]
async fn a_controller_restart_mid_task_keeps_the_lease_and_the_task_completes() {
    let c = TestController::start(Options {
        lease: Duration::from_secs(3),
        heartbeat: Duration::from_secs(1),
        restart_grace: Duration::from_secs(10),
        ..Options::default()
    })
    .await;
    let repo = c.repo("acme/widgets").await;
    let (id, dir) = enroll(&c, "r1", &[]).await;
    let runner = spawn_runner(id.clone(), &dir, executor(), 1);
    let t = c.task(&repo, "sleep:6000").await;
    c.wait_status(t.id, "running", Duration::from_secs(20))
        .await;
    let before = c.store.task(t.id).await.unwrap();

    let (db, grpc, http, opts) = c.stop().await;
    // Down for longer than a lease: only the restart grace keeps it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = TestController::start_again(db, grpc, http, opts).await;
    c.wait_status(t.id, "pushing", Duration::from_secs(20))
        .await;
    let after = c.store.task(t.id).await.unwrap();
    assert_eq!(
        after.attempt, before.attempt,
        "same lease, no second attempt"
    );
    assert!(
        !c.store
            .timeline(t.id)
            .await
            .unwrap()
            .iter()
            .any(|e| e.reason == "lease_expired")
    );
    runner.stop().await.unwrap();
    c.stop().await;
}

/// PostgreSQL goes away for longer than a lease while a task runs, then comes back: the runner
/// keeps working, the controller gives live leases the grace before it reaps anything, and the
/// task completes on the same attempt — nothing runs twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_longer_than_a_lease_costs_no_work() {
    let dir = e2e::harness::state_dir("pg-outage");
    let pg = |port| pgembed::ServerConfig {
        data_dir: dir.join("pg"),
        port,
        bin_dir: None,
        durable: false,
        password: None,
    };
    let server = pgembed::Server::start(&pg(None))
        .await
        .expect("PostgreSQL starts");
    let port = server.port();
    server.ensure_database("bp").await.unwrap();
    let c = TestController::start_on_database(
        server.url("bp"),
        Options {
            lease: Duration::from_secs(3),
            heartbeat: Duration::from_secs(1),
            restart_grace: Duration::from_secs(15),
            ..Options::default()
        },
    )
    .await;
    let repo = c.repo("acme/outage").await;
    let (id, rdir) = enroll(&c, "r-outage", &[]).await;
    let exec = executor();
    let runner = spawn_runner(id, &rdir, exec.clone(), 1);
    let t = c.task(&repo, "sleep:14000").await;
    c.wait_status(t.id, "running", Duration::from_secs(20))
        .await;

    // Down for three leases.
    server.stop().await.expect("PostgreSQL stops");
    tokio::time::sleep(Duration::from_secs(9)).await;
    let server = pgembed::Server::start(&pg(Some(port)))
        .await
        .expect("PostgreSQL starts again on its port");

    let done = c
        .wait_status(t.id, "pushing", Duration::from_secs(60))
        .await;
    assert_eq!(done.attempt, 1, "the same attempt completed");
    let timeline = c.store.timeline(t.id).await.unwrap();
    assert!(
        !timeline.iter().any(|e| e.reason == "lease_expired"),
        "no lease was taken back: {:?}",
        timeline.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    let runs = exec.runs().iter().filter(|r| r.0 == t.id).count();
    assert_eq!(runs, 1, "the work ran once");
    runner.stop().await.unwrap();
    c.stop().await;
    server.stop().await.unwrap();
}

/// A runner frozen (SIGSTOP) past its lease: the controller takes the task back and another
/// runner completes it; when the frozen one resumes, its attempt stops within a few heartbeats —
/// it does not go on working on a task it no longer holds — and nothing it reports is taken.
#[tokio::test]
async fn a_frozen_runner_resumed_after_its_lease_stops_its_work_and_reports_nothing() {
    let lease = Duration::from_secs(3);
    let c = TestController::start(Options {
        lease,
        heartbeat: Duration::from_secs(1),
        restart_grace: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let repo = c.repo("acme/widgets").await;
    let (_, dir_a) = enroll(&c, "a", &[]).await;
    let exec = executor();
    let mut a = runner_process(&dir_a, &exec.runs_file);
    let t = c.task(&repo, "sleep:12000").await;
    c.wait_status(t.id, "running", Duration::from_secs(20))
        .await;
    let e = exec.clone();
    e2e::harness::eventually(
        Duration::from_secs(10),
        "the work to start on a",
        move || {
            let e = e.clone();
            async move { !e.runs().is_empty() }
        },
    )
    .await;
    assert!(e2e::harness::signal(a.id(), "-STOP"));
    // Frozen past its lease: the task goes back to the queue and runner b takes it.
    c.wait_status(t.id, "queued", lease + Duration::from_secs(5))
        .await;
    let (id_b, dir_b) = enroll(&c, "b", &[]).await;
    let b = spawn_runner(id_b.clone(), &dir_b, exec.clone(), 1);
    c.wait_status(t.id, "running", Duration::from_secs(20))
        .await;
    assert!(e2e::harness::signal(a.id(), "-CONT"));
    let (stopped_after, outcome) = exec
        .wait_ended(
            a.id(),
            Duration::from_secs(10),
            "the resumed runner to stop its attempt",
        )
        .await;
    assert_eq!(outcome, "Canceled");
    assert!(
        stopped_after < Duration::from_secs(6),
        "the old attempt kept working {stopped_after:?} after the resume"
    );
    c.wait_status(t.id, "pushing", Duration::from_secs(30))
        .await;
    let done = c.store.task(t.id).await.unwrap();
    assert_eq!(done.runner_id, Some(id_b.runner_id));
    let results: Vec<(i32,)> =
        sqlx::query_as("SELECT attempt FROM task_results WHERE task_id = $1")
            .bind(t.id)
            .fetch_all(c.store.pool())
            .await
            .unwrap();
    assert_eq!(results, vec![(done.attempt,)], "only b's attempt reported");
    let _ = a.kill();
    let _ = a.wait();
    b.stop().await.unwrap();
    c.stop().await;
}

/// A runner that knows two replicas of its controller: the one it enrolled with stops, and the
/// runner goes on with the other — a task filed afterwards is leased and completed through it.
#[tokio::test]
async fn a_runner_fails_over_to_another_replica_when_its_controller_stops() {
    let opts = Options {
        lease: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
        ..Options::default()
    };
    let c1 = TestController::start(opts.clone()).await;
    let c2 = TestController::start_on_database(c1.db_url().to_owned(), opts).await;
    let repo = c1.repo("acme/widgets").await;
    let (mut id, dir) = enroll(&c1, "a", &[]).await;
    id.replicas = vec![c2.url()];
    let exec = executor();
    let r = spawn_runner(id.clone(), &dir, exec.clone(), 1);
    let first = c1.task(&repo, "sleep:100").await;
    c1.wait_status(first.id, "pushing", Duration::from_secs(20))
        .await;
    // The replica it enrolled with goes away for good; the other one serves it from now on.
    c1.stop().await;
    let second = c2.task(&repo, "sleep:100").await;
    let done = c2
        .wait_status(second.id, "pushing", Duration::from_secs(30))
        .await;
    assert_eq!(done.runner_id, Some(id.runner_id));
    let runs = exec.runs();
    assert!(runs.iter().any(|r| r.0 == second.id), "{runs:?}");
    r.stop().await.unwrap();
    c2.stop().await;
}
