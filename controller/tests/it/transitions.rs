//! Every step against every status: legal ones succeed and land where the step table says, illegal
//! ones are refused with the current status, and nothing changes on a refusal.

use controller::store::claims::LeaseRef;
use controller::store::completion::{Completion, Outcome};
use controller::store::lifecycle::{self, Step};
use controller::store::tasks::{Advance, Edits, Failure, RetryPolicy, Triage};
use controller::store::{Error, FailureMode, HoldKind, Status, Store, Task, TerminalReason};
use serde_json::json;

use crate::{force_status, note, queued, repo, runner, store};

/// An operation under test: the step it is checked against, and how to run it.
#[derive(Clone, Copy, Debug)]
enum Op {
    Triage,
    StartAgent,
    StartVerify,
    Complete,
    Advance(fn() -> Advance),
    Retry(FailureMode),
    Reopen,
    Requeue,
    Cancel,
    Fail,
}

impl Op {
    fn step(self) -> Step {
        match self {
            Op::Triage => lifecycle::TRIAGE,
            Op::StartAgent => lifecycle::START_AGENT,
            Op::StartVerify => lifecycle::START_VERIFY,
            Op::Complete => lifecycle::COMPLETE,
            Op::Advance(a) => a().step(),
            Op::Retry(m) => lifecycle::retry_step(m),
            Op::Reopen => lifecycle::REOPEN,
            Op::Requeue => lifecycle::REQUEUE,
            Op::Cancel => lifecycle::CANCEL,
            Op::Fail => lifecycle::FAIL,
        }
    }

    async fn run(self, store: &Store, task: &Task) -> Result<Task, Error> {
        let lease = LeaseRef {
            task_id: task.id,
            attempt: task.attempt,
            token: task.lease_token.unwrap_or_default(),
            runner_id: task.runner_id.unwrap_or_default(),
        };
        let policy = RetryPolicy::default();
        match self {
            Op::Triage => store.triage(task.id, &Triage::default(), &note("t")).await,
            Op::StartAgent => store.start_agent(&lease).await,
            Op::StartVerify => store.start_verify(&lease).await,
            Op::Complete => store
                .complete(&lease, &Completion::new(Outcome::Succeeded), &policy)
                .await
                .map(|c| c.task),
            Op::Advance(a) => store.advance(task.id, &a(), &note("t")).await,
            Op::Retry(mode) => {
                let f = Failure {
                    mode,
                    reason: None,
                    error: "boom".into(),
                    context: None,
                };
                store.retry_or_fail(task.id, &f, &policy, &note("t")).await
            }
            Op::Reopen => {
                store
                    .reopen(task.id, &json!({"comments": ["again"]}), &note("t"))
                    .await
            }
            Op::Requeue => store.requeue(task.id, &Edits::default(), &note("t")).await,
            Op::Cancel => store.cancel(task.id, &note("t")).await.map(|(_, t)| t),
            Op::Fail => {
                store
                    .fail(task.id, TerminalReason::InternalError, "x", &note("t"))
                    .await
            }
        }
    }
}

fn ops() -> Vec<Op> {
    vec![
        Op::Triage,
        Op::StartAgent,
        Op::StartVerify,
        Op::Complete,
        Op::Advance(|| Advance::PrOpened {
            number: 7,
            url: "https://pr/7".into(),
        }),
        Op::Advance(|| Advance::StartReview),
        Op::Advance(|| Advance::ReviewApproved),
        Op::Advance(|| Advance::ReviewDeferred),
        Op::Advance(|| Advance::AwaitApproval),
        Op::Advance(|| Advance::StartMerge),
        Op::Advance(|| Advance::MergeDeferred),
        Op::Advance(|| Advance::Merged),
        Op::Retry(FailureMode::Review),
        Op::Retry(FailureMode::Ci),
        Op::Retry(FailureMode::Conflict),
        Op::Reopen,
        Op::Requeue,
        Op::Cancel,
        Op::Fail,
    ]
}

#[tokio::test]
async fn every_step_from_every_status() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let runner = runner(&store, "r1").await;
    let mut checked = 0;
    for op in ops() {
        let step = op.step();
        for &status in Status::ALL {
            let task = queued(&store, &repo, &format!("{op:?} from {status}")).await;
            let task = if status == Status::New {
                // A fresh `new` task: create without triage.
                let mut t = controller::store::tasks::NewTask::for_issue(repo.id, 0, "n", "b");
                t.issue_number = None;
                store.create_task(&t).await.unwrap()
            } else {
                force_status(&store, task.id, status, runner).await
            };
            let events_before = store.timeline(task.id).await.unwrap().len();
            let result = op.run(&store, &task).await;
            let legal = step.from.contains(&status);
            match (&result, legal) {
                (Ok(after), true) => {
                    let expected: &[Status] = match op {
                        // Cancel of a task on a runner only records the request.
                        Op::Cancel if status.is_active() => &[status],
                        _ => &[step.to],
                    };
                    assert!(
                        expected.contains(&after.status),
                        "{op:?} from {status}: landed in {}, expected {expected:?}",
                        after.status
                    );
                    assert!(lifecycle::is_legal(status, after.status) || after.status == status);
                    let events = store.timeline(task.id).await.unwrap();
                    assert_eq!(
                        events.len(),
                        events_before + 1,
                        "{op:?} from {status}: one timeline entry"
                    );
                    let last = events.last().unwrap();
                    assert_eq!(last.from_status.as_deref(), Some(status.as_str()));
                    assert_eq!(last.to_status, after.status.as_str());
                }
                (Err(e), false) => {
                    match e {
                        Error::IllegalTransition { current, .. } => assert_eq!(*current, status),
                        // Runner writes on a task that holds no lease are stale writes.
                        Error::LeaseLost { current, .. } => {
                            assert_eq!(*current, status);
                            assert!(!status.is_active(), "{op:?} from {status}: lease was valid");
                        }
                        other => panic!("{op:?} from {status}: unexpected error {other}"),
                    }
                    let after = store.task(task.id).await.unwrap();
                    assert_eq!(after.status, status, "a refused step changes nothing");
                    assert_eq!(store.timeline(task.id).await.unwrap().len(), events_before);
                }
                (Ok(after), false) => panic!(
                    "{op:?} from {status} should be refused, went to {}",
                    after.status
                ),
                (Err(e), true) => panic!("{op:?} from {status} should succeed: {e}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ops().len() * Status::ALL.len());
}

#[tokio::test]
async fn start_merge_is_refused_while_held() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let runner = runner(&store, "r1").await;
    let t = queued(&store, &repo, "held merge").await;
    force_status(&store, t.id, Status::ApprovalHold, runner).await;
    store
        .hold(t.id, HoldKind::User, None, &note("hold"))
        .await
        .unwrap();
    let err = store
        .advance(t.id, &Advance::StartMerge, &note("approve"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Held {
                kind: HoldKind::User,
                ..
            }
        ),
        "{err}"
    );
    store.release(t.id, &note("release")).await.unwrap();
    let t = store
        .advance(t.id, &Advance::StartMerge, &note("approve"))
        .await
        .unwrap();
    assert_eq!(t.status, Status::Merging);
}

#[tokio::test]
async fn a_status_change_without_a_timeline_entry_is_refused_by_the_database() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let t = queued(&store, &repo, "raw").await;
    let err = sqlx::query(
        "UPDATE tasks SET status = 'failed', terminal_reason = 'agent_failed' WHERE id = $1",
    )
    .bind(t.id)
    .execute(store.pool())
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("without a timeline entry"),
        "{err}"
    );
}

#[tokio::test]
async fn the_step_table_and_is_legal_agree() {
    for step in lifecycle::STEPS {
        for from in step.from {
            assert!(
                lifecycle::is_legal(*from, step.to),
                "{} {from}->{}",
                step.name,
                step.to
            );
        }
    }
    assert!(
        lifecycle::is_legal(Status::Merged, Status::Queued),
        "the post-merge guard re-queues a reverted merge"
    );
    assert!(!lifecycle::is_legal(Status::Merged, Status::Running));
    assert!(!lifecycle::is_legal(Status::Canceled, Status::Running));
    assert!(
        lifecycle::is_legal(Status::Running, Status::Queued),
        "lease expiry re-queues"
    );
}
