//! Logs survive a controller outage: spooled on the runner, resent, stored once, in order.

use std::time::Duration;

use e2e::harness::{Options, TestController, enroll, spawn_runner};

use crate::executor;

#[tokio::test]
async fn ten_thousand_lines_across_a_controller_outage_arrive_complete_and_in_order() {
    let c = TestController::start(Options {
        lease: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
        restart_grace: Duration::from_secs(20),
        ..Options::default()
    })
    .await;
    let repo = c.repo("acme/widgets").await;
    let (id, dir) = enroll(&c, "r1", &[]).await;
    let runner = spawn_runner(id, &dir, executor(), 1);
    let t = c.task(&repo, "logs:10000:5000").await;
    c.wait_status(t.id, "running", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (db, grpc, http, opts) = c.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = TestController::start_again(db, grpc, http, opts).await;
    c.wait_status(t.id, "pushing", Duration::from_secs(30))
        .await;

    let task = c.store.task(t.id).await.unwrap();
    let chunks = c.store.log_chunks(t.id, task.attempt).await.unwrap();
    let text: String = chunks
        .iter()
        .map(|(_, _, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    let expected: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(text.len(), expected.len());
    assert!(text == expected, "every line, once, in order");
    assert!(
        c.store
            .log_gaps(t.id, task.attempt)
            .await
            .unwrap()
            .is_empty()
    );
    runner.stop().await.unwrap();
    c.stop().await;
}

#[tokio::test]
async fn a_forced_gap_in_a_log_is_visible() {
    let c = TestController::start(Options::default()).await;
    let repo = c.repo("acme/widgets").await;
    let t = c.task(&repo, "sleep:1").await;
    let runner_id = c.store.register_runner("manual", &[], 1).await.unwrap().id;
    let claimed = c
        .store
        .claim(&controller::store::claims::ClaimRequest {
            runner_id,
            labels: &[],
            lease: Duration::from_secs(60),
            capacity: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, t.id);
    let lease = controller::store::claims::LeaseRef::of(&claimed).unwrap();
    for seq in [0, 1, 2, 5, 9] {
        c.store
            .append_log(&lease, seq, "stdout", b"x")
            .await
            .unwrap();
    }
    assert_eq!(
        c.store.log_gaps(t.id, lease.attempt).await.unwrap(),
        vec![(3, 4), (6, 8)]
    );
    c.stop().await;
}
