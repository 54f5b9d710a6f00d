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
    store.pool().close().await;
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
