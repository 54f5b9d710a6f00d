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
        controllers: 1,
        model: false,
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

/// Two controller replicas on one database (each with its own pool, loops, gRPC and HTTP
/// listeners; the runners spread over both, the webhooks alternating between them), 20 issues:
/// every task merges, with one comment per milestone, one pull request and one merge commit per task,
/// and each task triaged in exactly one model call — counted at the simulators.
#[tokio::test(flavor = "multi_thread")]
async fn two_controller_replicas_do_everything_once() {
    let r = run(Fleet {
        issues: 20,
        repos: 3,
        runners: 4,
        stage_concurrency: 4,
        controllers: 2,
        model: true,
        limit: Duration::from_secs(300),
    })
    .await;
    assert!(r.stuck.is_empty(), "stuck: {:?}", r.stuck);
    assert!(
        r.ended_otherwise.is_empty(),
        "ended otherwise: {:?}",
        r.ended_otherwise
    );
    assert_eq!(r.merged, 20);
    let wrong = r.sims.effects_not_once(&r.issues);
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(
        r.sims.model.is_some(),
        "the model simulator counted the triage calls"
    );
}
