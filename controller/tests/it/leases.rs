//! Fenced runner writes, completion idempotency, the reaper, the restart grace and notifications.

use std::time::Duration;

use controller::store::claims::LeaseRef;
use controller::store::completion::{Completion, Outcome};
use controller::store::logs::MAX_LOG_CHUNK;
use controller::store::tasks::RetryPolicy;
use controller::store::wake::{Channel, Wake};
use controller::store::{Error, Status, TerminalReason};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{claim, eventually, expire_now, note, queued, repo, runner, store};

#[tokio::test]
async fn stale_tokens_and_attempts_are_refused_everywhere() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    queued(&store, &repo, "t").await;
    let (_, lease) = claim(&store, r).await;
    let wrong_token = LeaseRef {
        token: Uuid::new_v4(),
        ..lease
    };
    let old_attempt = LeaseRef {
        attempt: lease.attempt - 1,
        ..lease
    };
    // Another enrolled runner that learned the lease token cannot write under it.
    let other = runner(&store, "r-other").await;
    let other_runner = LeaseRef {
        runner_id: other,
        ..lease
    };
    let policy = RetryPolicy::default();
    for stale in [wrong_token, old_attempt, other_runner] {
        let e = store
            .renew(&stale, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::LeaseLost {
                    current: Status::Leased,
                    ..
                }
            ),
            "{e}"
        );
        let e = store
            .append_log(&stale, 0, "stdout", b"x")
            .await
            .unwrap_err();
        assert!(matches!(e, Error::LeaseLost { .. }), "{e}");
        let e = store.start_agent(&stale).await.unwrap_err();
        assert!(matches!(e, Error::LeaseLost { .. }), "{e}");
        let e = store
            .complete(&stale, &Completion::new(Outcome::Succeeded), &policy)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::LeaseLost { .. }), "{e}");
        let e = store.store_bundle(&stale, b"x", "s").await.unwrap_err();
        assert!(matches!(e, Error::LeaseLost { .. }), "{e}");
    }
    // A negative cost is refused.
    let mut negative = Completion::new(Outcome::Succeeded);
    negative.cost_microusd = -5;
    let e = store
        .complete(&lease, &negative, &policy)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    // The real lease still works after all that.
    store.renew(&lease, Duration::from_secs(60)).await.unwrap();
    store.start_agent(&lease).await.unwrap();
    store.store_bundle(&lease, b"bundle", "s").await.unwrap();
    let done = store
        .complete(&lease, &Completion::new(Outcome::Succeeded), &policy)
        .await
        .unwrap();
    assert_eq!(done.task.status, Status::Pushing);
    // Once completed, the attempt can neither replace its bundle nor add to its log.
    let e = store.store_bundle(&lease, b"other", "s").await.unwrap_err();
    assert!(matches!(e, Error::LeaseLost { .. }), "{e}");
    let e = store
        .append_log(&lease, 99, "stdout", b"late")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::LeaseLost { .. }), "{e}");
}

#[tokio::test]
async fn a_superseded_runner_is_fenced_out_after_the_task_is_leased_again() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r1 = runner(&store, "r1").await;
    let r2 = runner(&store, "r2").await;
    let t = queued(&store, &repo, "t").await;
    let (_, first) = claim(&store, r1).await;
    expire_now(&store, t.id).await;
    let reaped = store.reap_expired(100).await.unwrap();
    assert_eq!(reaped.len(), 1);
    let (_, second) = claim(&store, r2).await;
    assert_eq!(second.attempt, first.attempt + 1);
    let policy = RetryPolicy::default();
    let e = store
        .complete(&first, &Completion::new(Outcome::Succeeded), &policy)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LeaseLost {
                current: Status::Leased,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        store
            .append_log(&first, 0, "stdout", b"late")
            .await
            .is_err()
    );
    let done = store
        .complete(&second, &Completion::new(Outcome::Succeeded), &policy)
        .await
        .unwrap();
    assert_eq!(done.task.status, Status::Pushing);
    assert_eq!(done.task.runner_id, Some(r2));
}

#[tokio::test]
async fn completion_is_idempotent() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    queued(&store, &repo, "t").await;
    let (t, lease) = claim(&store, r).await;
    let policy = RetryPolicy::default();
    let mut c = Completion::new(Outcome::Succeeded);
    c.cost_microusd = 1500;
    c.head_sha = Some("abc123".into());
    let first = store.complete(&lease, &c, &policy).await.unwrap();
    assert!(!first.duplicate);
    let events = store.timeline(t.id).await.unwrap().len();
    for _ in 0..3 {
        let again = store.complete(&lease, &c, &policy).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.task.status, Status::Pushing);
    }
    let t = store.task(t.id).await.unwrap();
    assert_eq!(t.cost_microusd, 1500, "cost counted once");
    assert_eq!(
        store.timeline(t.id).await.unwrap().len(),
        events,
        "no extra timeline entries"
    );
}

#[tokio::test]
async fn a_duplicate_completion_of_an_earlier_attempt_is_acknowledged_not_applied() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    queued(&store, &repo, "t").await;
    let (_, first) = claim(&store, r).await;
    let policy = RetryPolicy::default();
    let failed = Completion {
        error: Some("exit 1".into()),
        ..Completion::new(Outcome::AgentFailed)
    };
    let out = store.complete(&first, &failed, &policy).await.unwrap();
    assert_eq!(out.task.status, Status::Queued);
    let (_, second) = claim(&store, r).await;
    let again = store.complete(&first, &failed, &policy).await.unwrap();
    assert!(
        again.duplicate,
        "the first attempt's completion is recognised"
    );
    let t = store.task(second.task_id).await.unwrap();
    assert_eq!(t.status, Status::Leased);
    assert_eq!(t.agent_retries, 1, "the retry was spent once");
}

#[tokio::test]
async fn log_chunks_are_fenced_idempotent_and_ordered() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    queued(&store, &repo, "t").await;
    let (t, lease) = claim(&store, r).await;
    for seq in [2_i64, 0, 1, 1, 2] {
        store
            .append_log(&lease, seq, "stdout", format!("line {seq}").as_bytes())
            .await
            .unwrap();
    }
    let chunks = store.log_chunks(t.id, lease.attempt).await.unwrap();
    let seqs: Vec<i64> = chunks.iter().map(|c| c.0).collect();
    assert_eq!(seqs, vec![0, 1, 2]);
    assert_eq!(chunks[1].2, b"line 1");
    assert!(
        !store.append_log(&lease, 1, "stdout", b"dup").await.unwrap(),
        "a resend is not new"
    );
    let big = vec![b'x'; MAX_LOG_CHUNK + 1];
    let e = store
        .append_log(&lease, 3, "stdout", &big)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("split it"), "{e}");
    let e = store
        .append_log(&lease, -1, "stdout", b"x")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)));
}

#[tokio::test]
async fn the_reaper_requeues_expired_leases_without_spending_a_retry_and_leaves_live_ones() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let a = queued(&store, &repo, "a").await;
    let b = queued(&store, &repo, "b").await;
    let (ca, _) = claim(&store, r).await;
    let (cb, lb) = claim(&store, r).await;
    assert_eq!((ca.id, cb.id), (a.id, b.id));
    expire_now(&store, a.id).await;
    let reaped = store.reap_expired(100).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].task_id, a.id);
    assert_eq!(reaped[0].status, Status::Queued);
    let a = store.task(a.id).await.unwrap();
    assert_eq!(a.status, Status::Queued);
    assert_eq!((a.agent_retries, a.ci_retries, a.review_retries), (0, 0, 0));
    assert_eq!(a.attempt, 1, "attempt counts claims, not failures");
    assert_eq!(a.lease_token, None);
    let last = store.timeline(a.id).await.unwrap().pop().unwrap();
    assert_eq!(last.reason, "lease_expired");
    assert_eq!(last.actor, "reaper");
    // b's lease is live and untouched.
    assert_eq!(store.task(b.id).await.unwrap().status, Status::Leased);
    store.renew(&lb, Duration::from_secs(60)).await.unwrap();
    assert_eq!(store.repo(repo.id).await.unwrap().active_tasks, 1);
}

#[tokio::test]
async fn the_reaper_loop_takes_back_a_lease_soon_after_it_expires() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let t = queued(&store, &repo, "t").await;
    let claimed = store
        .claim(&controller::store::claims::ClaimRequest {
            runner_id: r,
            labels: &[],
            lease: Duration::from_millis(500),
            capacity: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, t.id);
    let shutdown = CancellationToken::new();
    let ctx = controller::loops::LoopCtx::for_store(
        store.clone(),
        controller::config::Config {
            reaper_interval: Duration::from_secs(1),
            ..controller::config::Config::default()
        },
    );
    let reaper = tokio::spawn(controller::reaper::run(ctx, shutdown.clone()));
    eventually(
        Duration::from_secs(5),
        "the reaper to re-queue the task",
        || {
            let store = store.clone();
            async move { store.task(t.id).await.unwrap().status == Status::Queued }
        },
    )
    .await;
    shutdown.cancel();
    reaper.await.unwrap();
}

#[tokio::test]
async fn the_restart_grace_extends_live_leases_only() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let a = queued(&store, &repo, "a").await;
    queued(&store, &repo, "b").await;
    claim(&store, r).await;
    expire_now(&store, a.id).await;
    let n = store.grant_grace(Duration::from_secs(120)).await.unwrap();
    assert_eq!(n, 1);
    assert!(
        store.reap_expired(100).await.unwrap().is_empty(),
        "nothing expired after the grace"
    );
    let t = store.task(a.id).await.unwrap();
    assert!(t.lease_expires_at.unwrap() > chrono::Utc::now() + chrono::Duration::seconds(100));
}

#[tokio::test]
async fn renewals_report_a_pending_cancel() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    queued(&store, &repo, "t").await;
    let (t, lease) = claim(&store, r).await;
    assert!(
        !store
            .renew(&lease, Duration::from_secs(60))
            .await
            .unwrap()
            .cancel_requested
    );
    store.cancel(t.id, &note("cancel")).await.unwrap();
    assert!(
        store
            .renew(&lease, Duration::from_secs(60))
            .await
            .unwrap()
            .cancel_requested
    );
}

#[tokio::test]
async fn notifications_announce_queue_changes_and_cancels() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let mut waker = store
        .waker(&[Channel::Queue, Channel::Cancel])
        .await
        .unwrap();
    let t = queued(&store, &repo, "t").await;
    let wake = waker.wait(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        wake,
        Wake::Notified {
            channel: Channel::Queue,
            payload: repo.id.to_string()
        }
    );
    claim(&store, r).await;
    store.cancel(t.id, &note("cancel")).await.unwrap();
    let wake = waker.wait(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        wake,
        Wake::Notified {
            channel: Channel::Cancel,
            payload: t.id.to_string()
        }
    );
    store.pause("user:x").await.unwrap();
    store.resume().await.unwrap();
    let wake = waker.wait(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        wake,
        Wake::Notified {
            channel: Channel::Queue,
            payload: "resume".into()
        }
    );
    assert_eq!(
        waker.wait(Duration::from_millis(50)).await.unwrap(),
        Wake::Timeout
    );
}

#[tokio::test]
async fn a_runaway_log_is_capped_visibly_and_still_acknowledged() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    queued(&store, &repo, "t").await;
    let (t, lease) = claim(&store, r).await;
    let chunks: Vec<(i64, String, Vec<u8>)> = (0..10)
        .map(|i| (i, "stdout".to_string(), vec![b'x'; 100]))
        .collect();
    let cap = 450;
    let acked = store
        .append_logs_capped(&lease, &chunks, cap)
        .await
        .unwrap();
    assert_eq!(
        acked.len(),
        10,
        "everything acknowledged: the runner must not stall"
    );
    let more: Vec<(i64, String, Vec<u8>)> = (10..12)
        .map(|i| (i, "stdout".to_string(), vec![b'y'; 10]))
        .collect();
    store.append_logs_capped(&lease, &more, cap).await.unwrap();
    let stored = store.log_chunks(t.id, lease.attempt).await.unwrap();
    assert_eq!(
        stored.len(),
        4 + 2,
        "four 100-byte chunks fit, then two small ones still do"
    );
    assert_eq!(
        store.log_totals(t.id, lease.attempt).await.unwrap(),
        (420, 6)
    );
    assert_eq!(
        store.log_gaps(t.id, lease.attempt).await.unwrap(),
        vec![(4, 9)],
        "the dropped part is a visible gap"
    );
    // Resending stored chunks changes nothing.
    store
        .append_logs_capped(&lease, &chunks[..2], cap)
        .await
        .unwrap();
    assert_eq!(
        store.log_totals(t.id, lease.attempt).await.unwrap(),
        (420, 6)
    );
    // A runner that sends empty chunks by the million stores no row for them; one that names
    // its stream with megabytes (or anything but a short name) is refused, naming the chunk.
    let empty: Vec<(i64, String, Vec<u8>)> = (100..1100)
        .map(|i| (i, "stdout".to_string(), Vec::new()))
        .collect();
    assert_eq!(store.append_logs(&lease, &empty).await.unwrap().len(), 1000);
    assert_eq!(
        store.log_chunks(t.id, lease.attempt).await.unwrap().len(),
        6
    );
    // Tiny chunks stop at the cap in rows, whatever room the byte cap leaves.
    let tiny: Vec<(i64, String, Vec<u8>)> = (3000..3010)
        .map(|i| (i, "stdout".to_string(), b"z".to_vec()))
        .collect();
    let acked = store
        .append_logs_bounded(&lease, &tiny, 1 << 20, 9)
        .await
        .unwrap();
    assert_eq!(acked.len(), 10, "all acknowledged");
    assert_eq!(
        store.log_chunks(t.id, lease.attempt).await.unwrap().len(),
        9,
        "six stored before, three more fit in nine rows"
    );
    for name in [
        "x".repeat(1 << 20),
        String::new(),
        "agent\nforged line".into(),
    ] {
        let e = store
            .append_logs(&lease, &[(2000, name, b"data".to_vec())])
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("log chunk 2000 names its stream"),
            "{e}"
        );
    }
}

/// A task that loses its runner again and again (it may be what kills them) fails after
/// `max_lease_losses` losses in a row with a reason that says what to do, and other tasks are
/// claimed meanwhile; a completed attempt starts the count again.
#[tokio::test]
async fn a_task_that_keeps_losing_its_runner_fails_and_the_rest_runs() {
    let store = store().await;
    store.set_max_lease_losses(3).await.unwrap();
    let repo = repo(&store, "acme/loss").await;
    let r = runner(&store, "r1").await;
    let policy = RetryPolicy::default();
    // One completed (failed) attempt, then losses.
    let bad = queued(&store, &repo, "crashes its runner").await;
    let (_, lease) = claim(&store, r).await;
    expire_now(&store, bad.id).await;
    store.reap_expired(100).await.unwrap();
    let (_, lease2) = claim(&store, r).await;
    assert_eq!(lease2.task_id, bad.id);
    let _ = lease;
    let mut failed = Completion::new(Outcome::AgentFailed);
    failed.error = Some("agent exited 1".into());
    let t = store
        .complete(&lease2, &failed, &policy)
        .await
        .unwrap()
        .task;
    assert_eq!(
        (t.status, t.lost_count),
        (Status::Queued, 0),
        "a completion resets the count"
    );
    let other = queued(&store, &repo, "an ordinary task").await;
    for loss in 1..=3 {
        let (t, _) = claim(&store, r).await;
        assert_eq!(t.id, bad.id, "the bad task is at the head of the queue");
        if loss == 2 {
            // Its runner comes back with a new boot id: the lease is released as `runner_lost`.
            store.release_runner_leases(r, "runner:1").await.unwrap();
        } else {
            expire_now(&store, bad.id).await;
            store.reap_expired(100).await.unwrap();
        }
        let t = store.task(bad.id).await.unwrap();
        assert_eq!(t.lost_count, loss);
        if loss < 3 {
            assert_eq!(t.status, Status::Queued, "loss {loss} is free");
        } else {
            assert_eq!(t.status, Status::Failed);
            assert_eq!(t.terminal_reason.0, Some(TerminalReason::LeaseExpired));
            let error = t.error.unwrap_or_default();
            assert!(
                error.contains("lost its runner 3 times in a row") && error.contains("requeue"),
                "{error}"
            );
        }
    }
    // The agent's retry budget was not touched by the losses.
    assert_eq!(store.task(bad.id).await.unwrap().agent_retries, 1);
    let (t, _) = claim(&store, r).await;
    assert_eq!(t.id, other.id, "the rest of the queue runs");
    // A requeue starts over.
    let again = store
        .requeue(bad.id, &Default::default(), &note("requeue"))
        .await
        .unwrap();
    assert_eq!((again.status, again.lost_count), (Status::Queued, 0));
}

/// A task's budget spans its attempts: the next lease carries what the earlier attempts left,
/// and an attempt that spent the rest ends the task instead of queueing another for nothing.
#[tokio::test]
async fn a_task_budget_spans_its_attempts() {
    let store = store().await;
    let repo = repo(&store, "acme/budget").await;
    store
        .update_repo(
            repo.id,
            &controller::store::repos::RepoSettings {
                budget_task_microusd: Some(1_000_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = runner(&store, "r1").await;
    let policy = RetryPolicy::default();
    let prices = proto::prices::Prices::default();
    let t = queued(&store, &repo, "spends").await;
    let lease_of = |claimed: Option<(
        controller::store::Task,
        controller::store::claims::ClaimedRepo,
    )>| {
        let (task, repo) = claimed.expect("a task to claim");
        let spec = controller::grpc::convert::task_spec(&task, &repo, &prices);
        (LeaseRef::of(&task).unwrap(), spec)
    };
    let (lease, spec) = lease_of(store.claim_with_repo(&crate::claim_req(r)).await.unwrap());
    assert_eq!(spec.budget_microusd, 1_000_000);
    assert_eq!(
        spec.prices,
        prices.to_wire(),
        "the price table rides with the lease"
    );
    let mut failed = Completion::new(Outcome::AgentFailed);
    failed.error = Some("agent exited 1".into());
    failed.cost_microusd = 600_000;
    let after = store.complete(&lease, &failed, &policy).await.unwrap().task;
    assert_eq!(after.status, Status::Queued, "budget left: retried");
    let (lease, spec) = lease_of(store.claim_with_repo(&crate::claim_req(r)).await.unwrap());
    assert_eq!(spec.budget_microusd, 400_000, "only what is left");
    failed.cost_microusd = 400_000;
    let after = store.complete(&lease, &failed, &policy).await.unwrap().task;
    assert_eq!(
        after.status,
        Status::Failed,
        "no attempt runs on an empty budget"
    );
    assert_eq!(
        after.terminal_reason.0,
        Some(TerminalReason::BudgetExceeded)
    );
    let error = after.error.unwrap_or_default();
    assert!(
        error.contains("spent its budget") && error.contains("agent exited 1"),
        "{error}"
    );
    assert_eq!(
        after.agent_retries, 1,
        "the retry budget was not what ended it"
    );
    assert_eq!(store.task(t.id).await.unwrap().cost_microusd, 1_000_000);
}

/// Every task has a deadline from its first lease: past it, whatever it is doing, it fails as
/// `timed_out` saying so — unless it waits for a person.
#[tokio::test]
async fn a_task_past_its_deadline_fails_unless_a_person_holds_it() {
    let store = store().await;
    store
        .set_task_deadline(Duration::from_secs(60))
        .await
        .unwrap();
    let repo = repo(&store, "acme/deadline").await;
    let r = runner(&store, "r1").await;
    let running = queued(&store, &repo, "runs forever").await;
    let (_, lease) = claim(&store, r).await;
    let held = queued(&store, &repo, "held by a person").await;
    let (_, _held_lease) = claim(&store, r).await;
    let fresh = queued(&store, &repo, "never leased").await;
    assert!(
        store.fail_past_deadline(10).await.unwrap().is_empty(),
        "not yet"
    );
    sqlx::query("UPDATE tasks SET started_at = now() - interval '2 minutes' WHERE id = ANY($1)")
        .bind(vec![running.id, held.id])
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE tasks SET hold_kind = 'user', ev_seq = ev_seq + 1, ev_actor = 'test', ev_reason = 'hold' WHERE id = $1")
        .bind(held.id)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(
        store.fail_past_deadline(10).await.unwrap(),
        vec![running.id]
    );
    let t = store.task(running.id).await.unwrap();
    assert_eq!(
        (t.status, t.terminal_reason.0),
        (Status::Failed, Some(TerminalReason::TimedOut))
    );
    assert!(
        t.error.as_deref().unwrap_or_default().contains("deadline"),
        "{:?}",
        t.error
    );
    // Its runner's renewal finds the lease gone.
    assert!(store.renew(&lease, Duration::from_secs(30)).await.is_err());
    assert_eq!(store.task(held.id).await.unwrap().status, Status::Leased);
    assert_eq!(store.task(fresh.id).await.unwrap().status, Status::Queued);
}

/// What the runner service remembers of the registry (so a call costs no statement to learn who
/// is calling) is used only while the registry has not changed: a change of a runner's state or
/// certificate notifies every controller, which forgets what it remembered; before the
/// controller listens, nothing is remembered. A change that does not decide leases (a
/// heartbeat's last-seen time) does not make it forget.
#[tokio::test]
async fn the_remembered_registry_follows_every_change_that_matters() {
    use controller::fanout::Fanout;
    use controller::grpc::registry::RunnerCache;

    let store = store().await;
    let r = runner(&store, "r1").await;
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    store.set_runner_cert(r, "aa01", later).await.unwrap();
    let fanout = Fanout::new();
    let cache = RunnerCache::new(fanout.registry().clone());

    // Not listening: every read goes to the store, so even a change nobody announced is seen.
    assert_eq!(fanout.registry().current(), None);
    let first = cache.runner(&store, r).await.unwrap().last_seen_at;
    store.touch_runner(r).await.unwrap();
    assert_ne!(cache.runner(&store, r).await.unwrap().last_seen_at, first);

    let stop = CancellationToken::new();
    let listening = tokio::spawn(fanout.clone().run(store.clone(), stop.clone()));
    let registry = fanout.registry().clone();
    eventually(Duration::from_secs(10), "the controller to listen", || {
        let registry = registry.clone();
        async move { registry.current().is_some() }
    })
    .await;

    // Listening: remembered, so an unannounced change is not read again.
    let seen = cache.runner(&store, r).await.unwrap().last_seen_at;
    store.touch_runner(r).await.unwrap();
    assert_eq!(cache.runner(&store, r).await.unwrap().last_seen_at, seen);
    cache.authenticate(&store, r, "aa01").await.unwrap();

    // Each change that decides leases is heard and the row read again.
    store.set_runner_state(r, "draining").await.unwrap();
    eventually(Duration::from_secs(5), "the drain to be heard", || async {
        cache.runner(&store, r).await.unwrap().state == "draining"
    })
    .await;
    store.set_runner_cert(r, "bb02", later).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the old certificate to be refused",
        || async {
            matches!(
                cache.authenticate(&store, r, "aa01").await,
                Err(Error::CertificateSuperseded(_))
            )
        },
    )
    .await;
    cache.authenticate(&store, r, "bb02").await.unwrap();
    store.set_runner_state(r, "disabled").await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the disabled runner to be refused",
        || async {
            matches!(
                cache.authenticate(&store, r, "bb02").await,
                Err(Error::RunnerDisabled(_))
            )
        },
    )
    .await;
    stop.cancel();
    listening.await.unwrap();
}
