//! The fleet benchmark's short form: every labelled issue across several repositories and
//! runners ends merged, none stuck, none failed (real controller, PostgreSQL, mTLS runners, the
//! GitHub simulator with real git and merges).

use std::time::Duration;

use e2e::fleet::{Fleet, run};

#[tokio::test(flavor = "multi_thread")]
async fn every_issue_of_a_busy_fleet_ends_merged() {
    let r = run(Fleet {
        issues: 30,
        repos: 3,
        runners: 4,
        stage_concurrency: 8,
        limit: Duration::from_secs(240),
    })
    .await;
    assert!(r.stuck.is_empty(), "stuck: {:?}", r.stuck);
    assert!(
        r.ended_otherwise.is_empty(),
        "ended otherwise: {:?}",
        r.ended_otherwise
    );
    assert_eq!(r.merged, 30);
}
