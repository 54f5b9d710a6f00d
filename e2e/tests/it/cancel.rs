//! Cancellation reaches the runner through the session stream, and through the heartbeat reply
//! when the stream was down when it was asked for.

use std::time::{Duration, Instant};

use controller::store::{Note, Status, Store};
use e2e::harness::{Options, TestController, enroll, spawn_runner};

use crate::executor;

#[tokio::test]
async fn a_cancel_reaches_the_runner_within_five_seconds_through_the_stream() {
    // Heartbeats every 10 s: only the pushed message can be this fast.
    let c = TestController::start(Options {
        lease: Duration::from_secs(30),
        heartbeat: Duration::from_secs(10),
        ..Options::default()
    })
    .await;
    let repo = c.repo("acme/widgets").await;
    let (id, dir) = enroll(&c, "r1", &[]).await;
    let runner = spawn_runner(id, &dir, executor(), 1);
    let t = c.task(&repo, "forever").await;
    c.wait_status(t.id, "running", Duration::from_secs(20))
        .await;
    // Let the first heartbeat pass so the next one is 10 s away.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    c.store
        .cancel(t.id, &Note::new("user:ops", "cancel"))
        .await
        .unwrap();
    c.wait_status(t.id, "canceled", Duration::from_secs(5))
        .await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "canceled after {took:?}");
    let last = c.store.timeline(t.id).await.unwrap().pop().unwrap();
    assert!(
        last.actor.starts_with("runner:"),
        "the runner reported it: {last:?}"
    );
    runner.stop().await.unwrap();
    c.stop().await;
}

#[tokio::test]
async fn a_cancel_asked_while_the_controller_was_away_arrives_in_the_next_heartbeat_reply() {
    let c = TestController::start(Options {
        lease: Duration::from_secs(6),
        heartbeat: Duration::from_secs(1),
        restart_grace: Duration::from_secs(20),
        ..Options::default()
    })
    .await;
    let repo = c.repo("acme/widgets").await;
    let (id, dir) = enroll(&c, "r1", &[]).await;
    let runner = spawn_runner(id, &dir, executor(), 1);
    let t = c.task(&repo, "forever").await;
    c.wait_status(t.id, "running", Duration::from_secs(20))
        .await;
    let (db, grpc, http, opts) = c.stop().await;
    // The controller is down (no stream); a user cancels through another replica's database.
    let store = Store::connect(&db, 2).await.unwrap();
    store
        .cancel(t.id, &Note::new("user:ops", "cancel"))
        .await
        .unwrap();
    assert_eq!(store.task(t.id).await.unwrap().status, Status::Running);
    store.close().await;
    let c = TestController::start_again(db, grpc, http, opts).await;
    let back = Instant::now();
    c.wait_status(t.id, "canceled", Duration::from_secs(10))
        .await;
    assert!(
        back.elapsed() < Duration::from_secs(8),
        "canceled {:?} after the controller came back",
        back.elapsed()
    );
    runner.stop().await.unwrap();
    c.stop().await;
}

#[tokio::test]
async fn canceling_a_best_of_three_task_stops_its_candidates_on_three_runners() {
    let c = TestController::start(Options {
        lease: Duration::from_secs(30),
        heartbeat: Duration::from_secs(10),
        ..Options::default()
    })
    .await;
    let repo = c.repo("acme/widgets").await;
    c.store
        .update_repo(
            repo.id,
            &controller::store::repos::RepoSettings {
                best_of: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut runners = Vec::new();
    for name in ["r1", "r2", "r3"] {
        let (id, dir) = enroll(&c, name, &[]).await;
        runners.push(spawn_runner(id, &dir, executor(), 1));
    }
    let t = c.task(&repo, "forever").await;
    assert_eq!(t.best_of, 3);
    // Each runner works on one candidate.
    e2e::harness::eventually(
        Duration::from_secs(20),
        "three candidates running",
        || async {
            let all = c.store.candidates_of(t.id).await.unwrap();
            let running: std::collections::HashSet<_> = all
                .iter()
                .filter(|x| x.status == Status::Running)
                .filter_map(|x| x.runner_id)
                .collect();
            running.len() == 3
        },
    )
    .await;
    let candidates = c.store.candidates_of(t.id).await.unwrap();
    assert_eq!(candidates.len(), 3);
    c.store
        .cancel(t.id, &Note::new("user:ops", "cancel"))
        .await
        .unwrap();
    assert_eq!(c.store.task(t.id).await.unwrap().status, Status::Canceled);
    // Pushed down the session streams (heartbeats are 10 s away): every candidate stops.
    for x in &candidates {
        let done = c
            .wait_status(x.id, "finished", Duration::from_secs(5))
            .await;
        assert_eq!(
            done.terminal_reason.0,
            Some(controller::store::TerminalReason::CanceledByUser)
        );
    }
    for r in runners {
        r.stop().await.unwrap();
    }
    c.stop().await;
}
