//! Cancel, the failure cascade on every path, per-mode retry budgets, escalation, requeue, edits
//! and intake de-duplication.

use std::time::Duration;

use controller::store::completion::{Completion, Outcome};
use controller::store::tasks::{
    Advance, CancelOutcome, Edits, Failure, NewTask, RetryPolicy, Triage,
};
use controller::store::{Error, FailureMode, HoldKind, Status, Store, Task, TerminalReason};
use serde_json::json;

use crate::{
    claim, claim_req, expire_now, force_status, note, queued, queued_with, repo, runner, store,
};

#[tokio::test]
async fn cancel_during_a_run_never_resurrects_the_task() {
    let policy = RetryPolicy::default();
    // Whatever the runner reports after the cancel, the task ends canceled.
    for outcome in [
        Outcome::Succeeded,
        Outcome::AgentFailed,
        Outcome::VerifyFailed,
        Outcome::Abandoned,
        Outcome::Canceled,
    ] {
        let store = store().await;
        let repo = repo(&store, "acme/widgets").await;
        let r = runner(&store, "r1").await;
        let t = queued(&store, &repo, "t").await;
        let (_, lease) = claim(&store, r).await;
        store.start_agent(&lease).await.unwrap();
        let (out, task) = store.cancel(t.id, &note("cancel")).await.unwrap();
        assert_eq!(out, CancelOutcome::Requested);
        assert_eq!(
            task.status,
            Status::Running,
            "still running until the runner stops"
        );
        let done = store
            .complete(&lease, &Completion::new(outcome), &policy)
            .await
            .unwrap();
        assert_eq!(done.task.status, Status::Canceled, "{outcome:?}");
        assert_eq!(
            done.task.terminal_reason.0,
            Some(TerminalReason::CanceledByUser)
        );
        assert!(
            store.claim(&claim_req(r)).await.unwrap().is_none(),
            "{outcome:?}: never claimable again"
        );
        assert_eq!(store.repo(repo.id).await.unwrap().active_tasks, 0);
    }
}

#[tokio::test]
async fn a_canceled_task_whose_runner_vanished_is_canceled_by_the_reaper_not_requeued() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let t = queued(&store, &repo, "t").await;
    claim(&store, r).await;
    store.cancel(t.id, &note("cancel")).await.unwrap();
    expire_now(&store, t.id).await;
    let reaped = store.reap_expired(10).await.unwrap();
    assert_eq!(reaped[0].status, Status::Canceled);
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    // Only an explicit requeue brings it back.
    let back = store
        .requeue(t.id, &Edits::default(), &note("requeue"))
        .await
        .unwrap();
    assert_eq!(back.status, Status::Queued);
    assert_eq!(back.cancel_requested_at, None);
    claim(&store, r).await;
}

#[tokio::test]
async fn cancel_of_a_task_off_the_runner_is_immediate_and_later_steps_are_refused() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let t = queued(&store, &repo, "t").await;
    force_status(&store, t.id, Status::CiWait, r).await;
    let (out, task) = store.cancel(t.id, &note("cancel")).await.unwrap();
    assert_eq!(out, CancelOutcome::Canceled);
    assert_eq!(task.status, Status::Canceled);
    // The CI watcher finishing late cannot move it.
    let e = store
        .advance(t.id, &Advance::StartMerge, &note("ci green"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::IllegalTransition {
                current: Status::Canceled,
                ..
            }
        ),
        "{e}"
    );
    let f = Failure {
        mode: FailureMode::Ci,
        reason: None,
        error: "red".into(),
        context: None,
    };
    let e = store
        .retry_or_fail(t.id, &f, &RetryPolicy::default(), &note("ci red"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::IllegalTransition {
                current: Status::Canceled,
                ..
            }
        ),
        "{e}"
    );
    // Too late once the merge started.
    let m = queued(&store, &repo, "m").await;
    force_status(&store, m.id, Status::Merging, r).await;
    assert!(matches!(
        store.cancel(m.id, &note("cancel")).await.unwrap_err(),
        Error::IllegalTransition { .. }
    ));
}

/// Builds a chain root <- mid <- leaf (leaf depends on mid, mid on root).
async fn chain(store: &Store, repo: &controller::store::repos::Repo) -> (Task, Task, Task) {
    let root = queued(store, repo, "root").await;
    let mid = queued_with(
        store,
        repo,
        "mid",
        Triage {
            depends_on: vec![root.id],
            ..Default::default()
        },
    )
    .await;
    let leaf = queued_with(
        store,
        repo,
        "leaf",
        Triage {
            depends_on: vec![mid.id],
            ..Default::default()
        },
    )
    .await;
    (root, mid, leaf)
}

async fn assert_cascaded(store: &Store, root: i64, mid: i64, leaf: i64, path: &str) {
    let root = store.task(root).await.unwrap();
    assert!(
        matches!(root.status, Status::Failed | Status::Canceled),
        "{path}: root is {}",
        root.status
    );
    for id in [mid, leaf] {
        let t = store.task(id).await.unwrap();
        assert_eq!(
            t.status,
            Status::Failed,
            "{path}: dependent {id} is {}",
            t.status
        );
        assert_eq!(
            t.terminal_reason.0,
            Some(TerminalReason::DependencyFailed),
            "{path}"
        );
        let last = store.timeline(id).await.unwrap().pop().unwrap();
        assert_eq!(
            last.reason, "dependency_failed",
            "{path}: the cascade is on the timeline"
        );
    }
}

#[tokio::test]
async fn every_failure_path_cascades_to_dependents() {
    let zero = RetryPolicy {
        agent: 0,
        verify: 0,
        review: 0,
        ci: 0,
        conflict: 0,
        escalation: vec![],
        lease_losses: 3,
    };
    let paths = [
        "fail",
        "cancel_queued",
        "cancel_running_then_ack",
        "cancel_running_then_reaped",
        "agent_exhausted",
        "verify_exhausted",
        "timed_out",
        "budget_exceeded",
        "review_exhausted",
        "ci_exhausted",
        "conflict_exhausted",
    ];
    for path in paths {
        let store = store().await;
        let repo = repo(&store, "acme/widgets").await;
        let r = runner(&store, "r1").await;
        let (root, mid, leaf) = chain(&store, &repo).await;
        let runner_done = |o: Outcome| Completion {
            error: Some("x".into()),
            ..Completion::new(o)
        };
        match path {
            "fail" => {
                store
                    .fail(
                        root.id,
                        TerminalReason::PushRejected,
                        "bundle too big",
                        &note("fail"),
                    )
                    .await
                    .unwrap();
            }
            "cancel_queued" => {
                store.cancel(root.id, &note("cancel")).await.unwrap();
            }
            "cancel_running_then_ack" | "cancel_running_then_reaped" => {
                let (_, lease) = claim(&store, r).await;
                store.cancel(root.id, &note("cancel")).await.unwrap();
                assert_eq!(
                    store.task(mid.id).await.unwrap().status,
                    Status::Queued,
                    "not before the runner stops"
                );
                if path.ends_with("ack") {
                    store
                        .complete(&lease, &Completion::new(Outcome::Canceled), &zero)
                        .await
                        .unwrap();
                } else {
                    expire_now(&store, root.id).await;
                    store.reap_expired(10).await.unwrap();
                }
            }
            "agent_exhausted" | "verify_exhausted" | "timed_out" | "budget_exceeded" => {
                let (_, lease) = claim(&store, r).await;
                let o = match path {
                    "agent_exhausted" => Outcome::AgentFailed,
                    "verify_exhausted" => Outcome::VerifyFailed,
                    "timed_out" => Outcome::TimedOut,
                    _ => Outcome::BudgetExceeded,
                };
                // Over budget ends the task only when its own budget is spent (otherwise a
                // daily budget cut it short, and it waits for the day).
                let mut c = runner_done(o);
                if o == Outcome::BudgetExceeded {
                    c.cost_microusd = 10_000_000;
                }
                let done = store.complete(&lease, &c, &zero).await.unwrap();
                assert_eq!(done.task.status, Status::Failed, "{path}");
            }
            _ => {
                let (mode, at) = match path {
                    "review_exhausted" => (FailureMode::Review, Status::Reviewing),
                    "ci_exhausted" => (FailureMode::Ci, Status::CiWait),
                    _ => (FailureMode::Conflict, Status::Merging),
                };
                force_status(&store, root.id, at, r).await;
                let f = Failure {
                    mode,
                    reason: None,
                    error: "no".into(),
                    context: None,
                };
                let t = store
                    .retry_or_fail(root.id, &f, &zero, &note("fail"))
                    .await
                    .unwrap();
                assert_eq!(t.terminal_reason.0, Some(mode.exhausted_reason()), "{path}");
            }
        }
        assert_cascaded(&store, root.id, mid.id, leaf.id, path).await;
    }
}

#[tokio::test]
async fn a_dependent_on_a_runner_is_fenced_out_by_the_cascade() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let root = queued(&store, &repo, "root").await;
    let dep = queued_with(
        &store,
        &repo,
        "dep",
        Triage {
            depends_on: vec![root.id],
            ..Default::default()
        },
    )
    .await;
    // A user requeued the dependent by hand earlier and it runs (force it onto a runner).
    let dep = force_status(&store, dep.id, Status::Running, r).await;
    let lease = controller::store::claims::LeaseRef::of(&dep).unwrap();
    store
        .fail(root.id, TerminalReason::InternalError, "x", &note("fail"))
        .await
        .unwrap();
    let e = store
        .renew(&lease, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LeaseLost {
                current: Status::Failed,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(store.repo(repo.id).await.unwrap().active_tasks, 0);
}

#[tokio::test]
async fn each_failure_mode_spends_only_its_own_budget() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let policy = RetryPolicy {
        agent: 1,
        verify: 1,
        review: 1,
        ci: 2,
        conflict: 1,
        ..RetryPolicy::default()
    };
    let t = queued(&store, &repo, "t").await;
    // One agent failure: retried with escalation.
    let (_, lease) = claim(&store, r).await;
    let out = store
        .complete(
            &lease,
            &Completion {
                error: Some("exit 1".into()),
                ..Completion::new(Outcome::AgentFailed)
            },
            &policy,
        )
        .await
        .unwrap();
    assert_eq!(out.task.status, Status::Queued);
    assert_eq!(out.task.model, "opus", "sonnet escalates to opus");
    // A success, then two CI failures: the agent budget is untouched by them.
    let (_, lease) = claim(&store, r).await;
    store
        .complete(&lease, &Completion::new(Outcome::Succeeded), &policy)
        .await
        .unwrap();
    for round in 1..=2 {
        force_status(&store, t.id, Status::CiWait, r).await;
        let f = Failure {
            mode: FailureMode::Ci,
            reason: None,
            error: "red".into(),
            context: Some(json!({"log": format!("round {round}")})),
        };
        let t2 = store
            .retry_or_fail(t.id, &f, &policy, &note("ci red"))
            .await
            .unwrap();
        assert_eq!(t2.status, Status::Queued, "CI retry {round}");
        assert!(t2.resume_branch, "a CI retry continues the branch");
    }
    let t2 = store.task(t.id).await.unwrap();
    assert_eq!(
        (
            t2.agent_retries,
            t2.ci_retries,
            t2.review_retries,
            t2.verify_retries,
            t2.conflict_retries
        ),
        (1, 2, 0, 0, 0)
    );
    let ctx = t2.retry_context.0.as_array().unwrap();
    assert_eq!(ctx.len(), 2, "both CI logs are kept for the next prompt");
    assert_eq!(ctx[1]["detail"]["log"], "round 2");
    // The review budget is still whole: a rejection re-queues and drops the PR.
    force_status(&store, t.id, Status::Reviewing, r).await;
    sqlx::query("UPDATE tasks SET pr_number = 9, pr_url = 'u' WHERE id = $1")
        .bind(t.id)
        .execute(store.pool())
        .await
        .unwrap();
    let f = Failure {
        mode: FailureMode::Review,
        reason: None,
        error: "scope".into(),
        context: Some(json!("too broad")),
    };
    let t3 = store
        .retry_or_fail(t.id, &f, &policy, &note("reject"))
        .await
        .unwrap();
    assert_eq!(t3.status, Status::Queued);
    assert_eq!(t3.pr_number, None, "a rejected PR is not reused");
    assert!(!t3.resume_branch);
    // Now the third CI failure is over its own budget of 2.
    force_status(&store, t.id, Status::CiWait, r).await;
    let f = Failure {
        mode: FailureMode::Ci,
        reason: None,
        error: "red".into(),
        context: None,
    };
    let t4 = store
        .retry_or_fail(t.id, &f, &policy, &note("ci red"))
        .await
        .unwrap();
    assert_eq!(t4.status, Status::Failed);
    assert_eq!(t4.terminal_reason.0, Some(TerminalReason::CiFailed));
    assert_eq!(t4.error.as_deref(), Some("red"));
}

#[tokio::test]
async fn lease_loss_spends_no_budget_but_a_timeout_does() {
    let store = store().await;
    // Below the lease-loss bound (tested in `leases`), losses spend nothing.
    store.set_max_lease_losses(10).await.unwrap();
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let policy = RetryPolicy::default();
    let t = queued(&store, &repo, "t").await;
    for _ in 0..5 {
        claim(&store, r).await;
        expire_now(&store, t.id).await;
        store.reap_expired(10).await.unwrap();
    }
    let (_, lease) = claim(&store, r).await;
    store
        .complete(&lease, &Completion::new(Outcome::Abandoned), &policy)
        .await
        .unwrap();
    let after = store.task(t.id).await.unwrap();
    assert_eq!(after.agent_retries, 0);
    assert_eq!(after.attempt, 6);
    let (_, lease) = claim(&store, r).await;
    let out = store
        .complete(&lease, &Completion::new(Outcome::TimedOut), &policy)
        .await
        .unwrap();
    assert_eq!(out.task.agent_retries, 1);
}

#[tokio::test]
async fn requeue_resets_budgets_errors_holds_and_pr_but_not_the_attempt() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let zero = RetryPolicy {
        agent: 0,
        ..RetryPolicy::default()
    };
    let t = queued(&store, &repo, "t").await;
    store
        .hold(t.id, HoldKind::User, None, &note("hold"))
        .await
        .unwrap();
    store.release(t.id, &note("release")).await.unwrap();
    let (_, lease) = claim(&store, r).await;
    let failed = store
        .complete(
            &lease,
            &Completion {
                error: Some("boom".into()),
                ..Completion::new(Outcome::AgentFailed)
            },
            &zero,
        )
        .await
        .unwrap()
        .task;
    assert_eq!(failed.status, Status::Failed);
    let back = store
        .requeue(
            t.id,
            &Edits {
                model: Some("opus".into()),
                priority: Some(5),
                agent: None,
                prompt: Some("do it better".into()),
            },
            &note("requeue"),
        )
        .await
        .unwrap();
    assert_eq!(back.status, Status::Queued);
    assert_eq!(back.terminal_reason.0, None);
    assert_eq!(back.error, None);
    assert_eq!((back.agent_retries, back.ci_retries), (0, 0));
    assert_eq!(back.lease_token, None);
    assert_eq!(back.finished_at, None);
    assert_eq!(back.retry_context.0, json!([]));
    assert_eq!(back.model, "opus");
    assert_eq!(back.priority, 5);
    assert_eq!(back.prompt_override.as_deref(), Some("do it better"));
    let (again, _) = claim(&store, r).await;
    assert_eq!(
        again.attempt, 2,
        "attempts keep counting, so old leases stay fenced"
    );
    // Requeue is only for ended tasks.
    let e = store
        .requeue(t.id, &Edits::default(), &note("requeue"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::IllegalTransition {
                current: Status::Leased,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn requeue_of_a_task_whose_dependency_failed_is_refused_with_what_to_do() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let root = queued(&store, &repo, "root").await;
    let dep = queued_with(
        &store,
        &repo,
        "dep",
        Triage {
            depends_on: vec![root.id],
            ..Default::default()
        },
    )
    .await;
    store
        .fail(root.id, TerminalReason::InternalError, "x", &note("fail"))
        .await
        .unwrap();
    let e = store
        .requeue(dep.id, &Edits::default(), &note("requeue"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::DependencyFailed { dependency, .. } if dependency == root.id),
        "{e}"
    );
    assert!(e.to_string().contains("requeue that one first"));
    store
        .requeue(root.id, &Edits::default(), &note("requeue"))
        .await
        .unwrap();
    store
        .requeue(dep.id, &Edits::default(), &note("requeue"))
        .await
        .unwrap();
}

#[tokio::test]
async fn one_live_task_per_issue_and_a_new_one_after_it_ended() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let first = store
        .create_task(&NewTask::for_issue(
            repo.id,
            42,
            "Add health check",
            "GET /health",
        ))
        .await
        .unwrap();
    let e = store
        .create_task(&NewTask::for_issue(
            repo.id,
            42,
            "Add health check",
            "GET /health",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::DuplicateIssue { issue: 42, existing } if existing == first.id),
        "{e}"
    );
    store.cancel(first.id, &note("cancel")).await.unwrap();
    let second = store
        .create_task(&NewTask::for_issue(
            repo.id,
            42,
            "Add health check",
            "GET /health",
        ))
        .await
        .unwrap();
    // The canceled one cannot be requeued while the new one lives.
    let e = store
        .requeue(first.id, &Edits::default(), &note("requeue"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::DuplicateIssue { existing, .. } if existing == second.id),
        "{e}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_what_was_wrong() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let e = store
        .create_task(&NewTask::for_issue(repo.id, 1, "  ", ""))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("title or a body"), "{e}");
    let e = store
        .create_task(&NewTask::for_issue(9999, 1, "t", "b"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RepoNotFound(_)), "{e}");
    let e = store
        .add_repo(&controller::store::repos::NewRepo {
            name: "no-slash".into(),
            clone_url: "x".into(),
            default_branch: "main".into(),
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("owner/name"), "{e}");
    let e = store
        .update_repo(
            repo.id,
            &controller::store::repos::RepoSettings {
                egress_policy: Some("wide-open".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("gateway-only"), "{e}");
    let e = store
        .set_approval_mode("yolo", "user:test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("review-merge"), "{e}");
    let e = store.task(424242).await.unwrap_err();
    assert!(matches!(e, Error::TaskNotFound(424242)));
    let t = queued(&store, &repo, "t").await;
    let e = store
        .edit(
            t.id,
            &Edits {
                agent: None,
                prompt: Some(" ".into()),
                ..Default::default()
            },
            &note("edit"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)));
    let e = store
        .fail(t.id, TerminalReason::Succeeded, "x", &note("f"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)));
}

#[tokio::test]
async fn holds_do_not_stack_and_release_needs_a_hold() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let t = queued(&store, &repo, "t").await;
    let e = store.release(t.id, &note("release")).await.unwrap_err();
    assert!(matches!(e, Error::NotHeld(_)), "{e}");
    store
        .hold(t.id, HoldKind::User, None, &note("hold"))
        .await
        .unwrap();
    store
        .hold(t.id, HoldKind::User, None, &note("hold again"))
        .await
        .unwrap();
    let e = store
        .hold(t.id, HoldKind::DispatchApproval, None, &note("hold"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Held {
                kind: HoldKind::User,
                ..
            }
        ),
        "{e}"
    );
    let e = store
        .dispatch_now(t.id, &note("dispatch"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Held {
                kind: HoldKind::User,
                ..
            }
        ),
        "{e}"
    );
    let events: Vec<String> = store
        .timeline(t.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect();
    assert_eq!(events, vec!["created", "triaged", "hold", "hold again"]);
}

#[tokio::test]
async fn edits_apply_before_dispatch_only() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let t = queued(&store, &repo, "t").await;
    let e = store
        .edit(
            t.id,
            &Edits {
                model: Some("opus".into()),
                priority: Some(3),
                agent: None,
                prompt: Some("new".into()),
            },
            &note("edit"),
        )
        .await
        .unwrap();
    assert_eq!(
        (e.model.as_str(), e.priority, e.prompt_override.as_deref()),
        ("opus", 3, Some("new"))
    );
    claim(&store, r).await;
    let err = store
        .edit(
            t.id,
            &Edits {
                priority: Some(1),
                ..Default::default()
            },
            &note("edit"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::IllegalTransition {
                current: Status::Leased,
                ..
            }
        ),
        "{err}"
    );
}

/// Retention prunes by age in bounded batches: logs and bundles of tasks that ended long ago
/// (never of a task under way or recently ended), old webhook delivery ids and audit rows; a kind
/// kept forever is never touched.
#[tokio::test]
async fn retention_prunes_old_rows_in_bounded_batches_and_nothing_else() {
    use controller::store::retention::Retention;
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/retain").await;
    let runner = crate::runner(&store, "r1").await;
    let mut tasks = Vec::new();
    for title in ["old", "recent", "live"] {
        crate::queued(&store, &repo, title).await;
        let (t, lease) = crate::claim(&store, runner).await;
        for seq in 0..3 {
            store
                .append_log(&lease, seq, "agent", b"a line\n")
                .await
                .unwrap();
        }
        store.store_bundle(&lease, b"bundle", "00").await.unwrap();
        tasks.push((t.id, lease));
    }
    for (id, _) in &tasks[..2] {
        store
            .fail(
                *id,
                controller::store::TerminalReason::AgentFailed,
                "x",
                &crate::note("test"),
            )
            .await
            .unwrap();
    }
    sqlx::query("UPDATE tasks SET finished_at = now() - interval '40 days' WHERE id = $1")
        .bind(tasks[0].0)
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO webhook_deliveries (delivery_id, event, received_at) VALUES \
         ('old', 'issues', now() - interval '10 days'), ('new', 'issues', now())",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, outcome) VALUES \
         (now() - interval '400 days', 'a', 'old', 'ok'), (now(), 'a', 'new', 'ok')",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let count = |sql: &'static str, id: i64| {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(id)
                .fetch_one(store.pool())
                .await
                .unwrap()
        }
    };
    let logs = "SELECT count(*) FROM log_chunks WHERE task_id = $1";
    let bundles = "SELECT count(*) FROM task_bundles WHERE task_id = $1";
    // Logs kept forever: only the rest goes.
    let forever = Retention {
        logs: None,
        ..Retention::default()
    };
    let p = store.prune_batch(&forever, 2).await.unwrap();
    assert_eq!((p.logs, p.bundles, p.deliveries, p.audit), (0, 1, 1, 1));
    assert_eq!(count(logs, tasks[0].0).await, 3);
    // Batches are bounded: three old chunks take two batches of two.
    let keep = Retention::default();
    assert_eq!(store.prune_batch(&keep, 2).await.unwrap().logs, 2);
    assert_eq!(store.prune_batch(&keep, 2).await.unwrap().logs, 1);
    assert_eq!(store.prune_batch(&keep, 2).await.unwrap().total(), 0);
    assert_eq!(count(logs, tasks[0].0).await, 0);
    assert_eq!(count(bundles, tasks[0].0).await, 0);
    for (id, _) in &tasks[1..] {
        assert_eq!(count(logs, *id).await, 3, "task {id} keeps its log");
        assert_eq!(count(bundles, *id).await, 1, "task {id} keeps its bundle");
    }
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT delivery_id FROM webhook_deliveries UNION ALL SELECT action FROM audit_log ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(left, vec!["new", "new"]);
}
