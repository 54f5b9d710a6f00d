//! The happy path and the fenced writes: a runner leases, reports, ships logs and a bundle, and
//! completes; duplicates are acknowledged, stale attempts refused.

use std::time::Duration;

use controller::store::Status;
use e2e::harness::{Options, TestController, enroll, spawn_runner};
use runner::task::{ExecResult, Lease, Outcome};
use tonic::Code;

use crate::executor;

#[tokio::test]
async fn a_runner_runs_tasks_end_to_end() {
    let c = TestController::start(Options::default()).await;
    let repo = c.repo("acme/widgets").await;
    let (id, dir) = enroll(&c, "r1", &[]).await;
    let exec = executor();
    let runner = spawn_runner(id.clone(), &dir, exec.clone(), 2);
    let ok = c.task(&repo, "bundle:the result").await;
    let failing = c.task(&repo, "fail").await;
    let logged = c.task(&repo, "logs:50").await;
    c.wait_status(ok.id, "pushing", Duration::from_secs(20))
        .await;
    c.wait_status(logged.id, "pushing", Duration::from_secs(20))
        .await;
    // The failing one is retried (agent budget) with model escalation, each run a new attempt.
    let store = c.store.clone();
    e2e::harness::eventually(
        Duration::from_secs(30),
        "the failing task to exhaust its retries",
        || {
            let store = store.clone();
            async move { store.task(failing.id).await.unwrap().status == Status::Failed }
        },
    )
    .await;
    let f = c.store.task(failing.id).await.unwrap();
    assert_eq!(f.agent_retries, 3);
    assert_eq!(f.model, "opus");
    assert_eq!(f.attempt, 4);

    let t = c.store.task(ok.id).await.unwrap();
    assert_eq!(t.cost_microusd, 42);
    let (sha, data) = c
        .store
        .bundle(ok.id, t.attempt)
        .await
        .unwrap()
        .expect("bundle stored");
    assert_eq!(data, b"the result");
    assert_eq!(sha.len(), 64);
    let events: Vec<String> = c
        .store
        .timeline(ok.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.to_status)
        .collect();
    assert_eq!(
        events,
        vec!["new", "queued", "leased", "running", "pushing"]
    );
    let logs = c.store.log_chunks(logged.id, 1).await.unwrap();
    assert_eq!(logs.len(), 50);
    assert_eq!(logs[49].2, b"line 49\n");
    assert_eq!(exec.runs().len(), 2 + 4, "one run per attempt");
    runner.stop().await.unwrap();
    c.stop().await;
}

/// A runner `name`, enrolled and said hello (capacity 1), talking to `c` by hand.
async fn hello(c: &TestController, name: &str) -> runner::client::Client {
    let (id, _) = enroll(c, name, &[]).await;
    let client = id.connect().unwrap();
    client
        .hello(&runner::client::HelloInfo {
            labels: vec![],
            capacity: 1,
            backends: vec![],
            boot_id: "x".into(),
            active: vec![],
        })
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn duplicate_completions_are_acknowledged_and_stale_attempts_refused() {
    let c = TestController::start(Options::default()).await;
    let repo = c.repo("acme/widgets").await;
    let client = hello(&c, "r1").await;
    let t = c.task(&repo, "sleep:1").await;
    let (a, _) = client.lease(Duration::from_secs(5)).await.unwrap();
    let a = a.expect("an assignment");
    assert_eq!(a.lease.task_id, t.id);
    let done = ExecResult::new(Outcome::Succeeded);
    assert!(
        !client.complete(&a.lease, &done).await.unwrap(),
        "first completion is new"
    );
    assert!(
        client.complete(&a.lease, &done).await.unwrap(),
        "second is a duplicate"
    );
    assert_eq!(c.store.task(t.id).await.unwrap().status, Status::Pushing);

    let stale = Lease {
        attempt: a.lease.attempt - 1,
        ..a.lease.clone()
    };
    let err = client.complete(&stale, &done).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err}");
    let wrong = Lease {
        token: uuid::Uuid::new_v4().to_string(),
        ..a.lease.clone()
    };
    let err = client
        .append_logs(&wrong, vec![(0, "stdout".into(), b"x".to_vec())])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err}");
    let err = client.upload_bundle(&wrong, b"bundle").await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err}");
    let bad = Lease {
        token: "not-a-uuid".into(),
        ..a.lease.clone()
    };
    let err = client.complete(&bad, &done).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    c.stop().await;
}

#[tokio::test]
async fn labels_decide_which_runner_gets_a_task() {
    let c = TestController::start(Options::default()).await;
    let repo = c.repo("acme/gpu").await;
    c.store
        .update_repo(
            repo.id,
            &controller::store::repos::RepoSettings {
                runner_labels: Some(vec!["gpu".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (plain, plain_dir) = enroll(&c, "plain", &["linux"]).await;
    let (gpu, gpu_dir) = enroll(&c, "gpu", &["linux", "gpu"]).await;
    let exec = executor();
    let r1 = spawn_runner(plain.clone(), &plain_dir, exec.clone(), 1);
    let t = c.task(&repo, "sleep:10").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        c.store.task(t.id).await.unwrap().status,
        Status::Queued,
        "the plain runner may not take it"
    );
    let r2 = spawn_runner(gpu.clone(), &gpu_dir, exec.clone(), 1);
    c.wait_status(t.id, "pushing", Duration::from_secs(10))
        .await;
    assert_eq!(
        c.store.task(t.id).await.unwrap().runner_id,
        Some(gpu.runner_id)
    );
    r1.stop().await.unwrap();
    r2.stop().await.unwrap();
    c.stop().await;
}

#[tokio::test]
async fn a_draining_runner_finishes_its_work_and_takes_no_more() {
    let c = TestController::start(Options::default()).await;
    let repo = c.repo("acme/widgets").await;
    let (id, dir) = enroll(&c, "r1", &[]).await;
    let runner = spawn_runner(id.clone(), &dir, executor(), 1);
    let first = c.task(&repo, "sleep:1500").await;
    c.wait_status(first.id, "running", Duration::from_secs(10))
        .await;
    c.store
        .set_runner_state(id.runner_id, "draining")
        .await
        .unwrap();
    let second = c.task(&repo, "sleep:10").await;
    c.wait_status(first.id, "pushing", Duration::from_secs(10))
        .await;
    // The daemon returns by itself once drained.
    tokio::time::timeout(Duration::from_secs(10), runner.handle)
        .await
        .expect("drained runner exits")
        .unwrap()
        .unwrap();
    assert_eq!(
        c.store.task(second.id).await.unwrap().status,
        Status::Queued
    );
    c.stop().await;
}

/// A task whose retry context grew past the message limit (a long history of CI logs) reaches
/// the runner trimmed, oldest entries first, with a note of what was left out; the runner does
/// not exit and goes on with the next task.
#[tokio::test]
async fn a_task_spec_over_the_message_limit_is_trimmed_and_the_runner_goes_on() {
    let c = TestController::start(Options::default()).await;
    let repo = c.repo("acme/big").await;
    let big = c.task(&repo, "context").await;
    // 40 entries of 512 KiB: 20 MiB, over the 16 MiB message limit.
    let entry = serde_json::json!({"kind": "ci", "error": "x".repeat(512 * 1024)});
    sqlx::query("UPDATE tasks SET retry_context = $2 WHERE id = $1")
        .bind(big.id)
        .bind(sqlx::types::Json(serde_json::Value::Array(vec![entry; 40])))
        .execute(c.store.pool())
        .await
        .unwrap();
    let after = c.task(&repo, "bundle:after").await;
    let (id, dir) = enroll(&c, "r-big", &[]).await;
    let runner = spawn_runner(id, &dir, executor(), 1);
    c.wait_status(big.id, "pushing", Duration::from_secs(30))
        .await;
    c.wait_status(after.id, "pushing", Duration::from_secs(30))
        .await;
    let t = c.store.task(big.id).await.unwrap();
    let log: String = c
        .store
        .log_chunks(big.id, t.attempt)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, _, data)| String::from_utf8_lossy(&data).into_owned())
        .collect();
    // 1 MiB holds one 512 KiB entry: the newest, after the note of the 39 left out.
    assert!(
        log.contains("retry context: 2 entries, first omitted"),
        "{log}"
    );
    runner.stop().await.unwrap();
}

/// A bundle over the controller's limit ends the attempt as the agent's failure, spending its
/// budget, instead of being dropped to run again for free; the task fails when the budget is spent.
#[tokio::test]
async fn an_oversized_bundle_spends_the_agent_budget_and_never_loops() {
    let c = TestController::start(Options::default()).await;
    let repo = c.repo("acme/huge").await;
    let huge = c.task(&repo, "bigbundle:65").await;
    let (id, dir) = enroll(&c, "r-huge", &[]).await;
    let exec = executor();
    let runner = spawn_runner(id, &dir, exec.clone(), 1);
    let t = c
        .wait_for(huge.id, "the task to fail", Duration::from_secs(120), |t| {
            t.status == Status::Failed
        })
        .await;
    assert_eq!(t.agent_retries, 3, "every attempt spent the agent budget");
    assert_eq!(t.lost_count, 0, "no lease was dropped");
    assert!(
        t.error
            .as_deref()
            .unwrap_or_default()
            .contains("refused the bundle"),
        "{:?}",
        t.error
    );
    assert_eq!(
        exec.runs().iter().filter(|r| r.0 == huge.id).count(),
        4,
        "one run per attempt"
    );
    runner.stop().await.unwrap();
}

/// BACKPORCHER_NAVIGATION_ENABLED reaches the runner with each lease: off on a controller that
/// turned it off, on by default.
#[tokio::test]
async fn the_navigation_switch_travels_with_the_lease() {
    for (enabled, want) in [(false, "navigation: off"), (true, "navigation: on")] {
        let c = TestController::start(Options {
            configure: e2e::harness::Configure(Some(std::sync::Arc::new(move |cfg| {
                cfg.navigation = enabled;
            }))),
            ..Options::default()
        })
        .await;
        let repo = c.repo("acme/nav").await;
        let t = c.task(&repo, "navigation").await;
        let (id, dir) = enroll(&c, "r-nav", &[]).await;
        let runner = spawn_runner(id, &dir, executor(), 1);
        c.wait_status(t.id, "pushing", Duration::from_secs(30))
            .await;
        let t = c.store.task(t.id).await.unwrap();
        let log: String = c
            .store
            .log_chunks(t.id, t.attempt)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, _, data)| String::from_utf8_lossy(&data).into_owned())
            .collect();
        assert!(log.contains(want), "{want}: {log}");
        runner.stop().await.unwrap();
        c.stop().await;
    }
}

/// A runner streams a bundle for a lease it does not hold, and keeps the stream open: refused at
/// the first chunk, nothing of it kept. For a lease it holds, one upload at a time.
#[tokio::test]
async fn a_bundle_upload_is_checked_at_its_first_chunk() {
    use futures::StreamExt as _;
    let c = TestController::start(Options {
        // Nothing heartbeats here: a lease long enough for the test under any load.
        lease: Duration::from_secs(120),
        ..Options::default()
    })
    .await;
    let repo = c.repo("acme/widgets").await;
    let client = hello(&c, "r1").await;
    c.task(&repo, "sleep:1").await;
    let (a, _) = client.lease(Duration::from_secs(5)).await.unwrap();
    let a = a.expect("an assignment");
    // One chunk, then a stream that never ends.
    let endless = |lease: &Lease| {
        let first = proto::BundleChunk {
            lease: Some(proto::LeaseKey {
                task_id: lease.task_id,
                attempt: lease.attempt,
                token: lease.token.clone(),
            }),
            data: vec![0u8; 1024 * 1024],
            sha256: String::new(),
        };
        futures::stream::iter([first]).chain(futures::stream::pending())
    };
    let wrong = Lease {
        token: uuid::Uuid::new_v4().to_string(),
        ..a.lease.clone()
    };
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        client.upload_bundle_chunks(endless(&wrong)),
    )
    .await
    .expect("refused without waiting for the rest of the stream")
    .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err}");

    // Its own lease: a second upload while the first is open is refused; once the first is
    // gone, an upload goes through.
    let held = {
        let client = client.clone();
        let stream = endless(&a.lease);
        tokio::spawn(async move { client.upload_bundle_chunks(stream).await })
    };
    // Let its first chunk (1 MiB) reach the controller before the second upload starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "the first upload is still open");
    let mut second = None;
    for _ in 0..100 {
        match client.upload_bundle(&a.lease, b"bundle").await {
            Err(e) if e.code() == Code::AlreadyExists => {
                second = Some(e);
                break;
            }
            // The first upload's chunk has not arrived yet.
            Ok(()) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let second = second.expect("a second upload of the lease was refused");
    assert!(
        second.message().contains("being uploaded already"),
        "{second}"
    );
    held.abort();
    let mut stored = false;
    for _ in 0..100 {
        if client.upload_bundle(&a.lease, b"bundle").await.is_ok() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stored,
        "the lease uploads again once the first upload is gone"
    );
    c.stop().await;
}

/// A runner holds at most one lease call waiting for work: a hostile runner that opens fifty finds
/// each ended, with nothing, by the next, and a queued task makes one claim for it instead of one
/// per call it opened (fifty before). Its last call still gets the task.
#[tokio::test]
async fn a_runner_that_opens_many_lease_calls_keeps_one_waiting() {
    // Calls may wait a minute here, so an ended call is told from one whose wait ran out.
    let c = TestController::start(Options {
        configure: e2e::harness::Configure(Some(std::sync::Arc::new(|c| {
            c.lease_wait = Duration::from_secs(60)
        }))),
        ..Options::default()
    })
    .await;
    let repo = c.repo("acme/widgets").await;
    let client = hello(&c, "r1").await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let client = client.clone();
        calls.spawn(async move { client.lease(Duration::from_secs(30)).await });
    }
    for _ in 0..49 {
        let answer = tokio::time::timeout(Duration::from_secs(10), calls.join_next())
            .await
            .expect("an ended call is answered long before its 30 s")
            .expect("a call")
            .expect("the call's task");
        let (assignment, drain) = answer.expect("an ended call is answered, not refused");
        assert!(assignment.is_none() && !drain);
    }
    let before = c.store.claim_batching().requests;
    let t = c.task(&repo, "sleep:1").await;
    let (assignment, _) = tokio::time::timeout(Duration::from_secs(10), calls.join_next())
        .await
        .expect("the waiting call is woken by the task")
        .expect("a call")
        .expect("the call's task")
        .expect("the lease");
    assert_eq!(
        assignment
            .expect("the waiting call gets the task")
            .lease
            .task_id,
        t.id
    );
    let made = c.store.claim_batching().requests - before;
    assert!(
        made <= 2,
        "one queued task made {made} claims for one runner"
    );
}
