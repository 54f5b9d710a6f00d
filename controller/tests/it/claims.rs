//! Claim: order, gates (holds, pause, dependencies, labels, per-repo cap, disabled repos) and
//! many concurrent claimers.

use std::collections::HashSet;
use std::time::Duration;

use controller::store::claims::ClaimRequest;
use controller::store::completion::{Completion, Outcome};
use controller::store::repos::RepoSettings;
use controller::store::tasks::{RetryPolicy, Triage};
use controller::store::{HoldKind, RunnerId, Status, Store};

use crate::{claim, claim_req, force_status, note, queued, queued_with, repo, runner, store};

#[tokio::test]
async fn claims_follow_priority_then_age() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let old_low = queued_with(
        &store,
        &repo,
        "old low",
        Triage {
            priority: Some(200),
            ..Default::default()
        },
    )
    .await;
    let a = queued(&store, &repo, "a").await;
    let b = queued(&store, &repo, "b").await;
    let urgent = queued_with(
        &store,
        &repo,
        "urgent",
        Triage {
            priority: Some(1),
            ..Default::default()
        },
    )
    .await;
    let order: Vec<i64> = [
        claim(&store, r).await,
        claim(&store, r).await,
        claim(&store, r).await,
        claim(&store, r).await,
    ]
    .iter()
    .map(|(t, _)| t.id)
    .collect();
    assert_eq!(order, vec![urgent.id, a.id, b.id, old_low.id]);
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
}

#[tokio::test]
async fn a_claim_returns_a_fresh_lease_and_counts_the_attempt() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    queued(&store, &repo, "t").await;
    let (t, lease) = claim(&store, r).await;
    assert_eq!(t.status, Status::Leased);
    assert_eq!(t.attempt, 1);
    assert_eq!(t.runner_id, Some(r));
    assert!(t.lease_expires_at.is_some());
    assert_eq!(store.repo(repo.id).await.unwrap().active_tasks, 1);
    // Giving it up re-queues; the next claim is attempt 2 with another token.
    store
        .complete(
            &lease,
            &Completion::new(Outcome::Abandoned),
            &RetryPolicy::default(),
        )
        .await
        .unwrap();
    assert_eq!(store.repo(repo.id).await.unwrap().active_tasks, 0);
    let (t2, lease2) = claim(&store, r).await;
    assert_eq!(t2.id, t.id);
    assert_eq!(t2.attempt, 2);
    assert_ne!(lease2.token, lease.token);
}

#[tokio::test]
async fn holds_block_claims_until_released() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let t = queued_with(
        &store,
        &repo,
        "needs approval",
        Triage {
            hold: Some(HoldKind::DispatchApproval),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        t.hold_kind.0,
        Some(HoldKind::DispatchApproval),
        "review-all hold set in the same statement"
    );
    let u = queued(&store, &repo, "user held").await;
    store
        .hold(u.id, HoldKind::User, None, &note("hold"))
        .await
        .unwrap();
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    store.release(u.id, &note("release")).await.unwrap();
    assert_eq!(claim(&store, r).await.0.id, u.id);
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    store.dispatch_now(t.id, &note("approve")).await.unwrap();
    assert_eq!(claim(&store, r).await.0.id, t.id);
}

#[tokio::test]
async fn a_circuit_breaker_hold_releases_itself_at_its_time() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let t = queued(&store, &repo, "tripped").await;
    let until = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    store
        .hold(
            t.id,
            HoldKind::CircuitBreaker,
            Some(until),
            &note("breaker"),
        )
        .await
        .unwrap();
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (claimed, _) = claim(&store, r).await;
    assert_eq!(claimed.id, t.id);
    assert_eq!(
        claimed.hold_kind.0, None,
        "the expired hold is cleared by the claim"
    );
}

#[tokio::test]
async fn pause_stops_claims_and_resume_restarts_them() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    queued(&store, &repo, "t").await;
    let s = store.pause("user:ops").await.unwrap();
    assert!(s.queue_paused);
    assert_eq!(s.paused_by.as_deref(), Some("user:ops"));
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    store.resume().await.unwrap();
    claim(&store, r).await;
}

#[tokio::test]
async fn dependencies_gate_claims_until_every_one_merged() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let a = queued(&store, &repo, "a").await;
    let b = queued(&store, &repo, "b").await;
    let c = queued_with(
        &store,
        &repo,
        "c",
        Triage {
            depends_on: vec![a.id, b.id],
            priority: Some(0),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(store.dependencies(c.id).await.unwrap(), vec![a.id, b.id]);
    // c has the best priority but waits: a and b come first.
    let first = claim(&store, r).await.0.id;
    let second = claim(&store, r).await.0.id;
    assert_eq!(HashSet::from([first, second]), HashSet::from([a.id, b.id]));
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    force_status(&store, a.id, Status::Merged, r).await;
    assert!(
        store.claim(&claim_req(r)).await.unwrap().is_none(),
        "b has not merged yet"
    );
    force_status(&store, b.id, Status::Merged, r).await;
    assert_eq!(claim(&store, r).await.0.id, c.id);
}

#[tokio::test]
async fn dependency_cycles_are_refused_and_the_batch_writes_nothing() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let new_task = |title: &str| {
        let mut nt = controller::store::tasks::NewTask::for_issue(repo.id, 0, title, "x");
        nt.issue_number = None;
        nt
    };
    let x = store.create_task(&new_task("x")).await.unwrap();
    let y = store.create_task(&new_task("y")).await.unwrap();
    let err = store
        .triage_batch(
            &[
                (
                    x.id,
                    Triage {
                        depends_on: vec![y.id],
                        ..Default::default()
                    },
                ),
                (
                    y.id,
                    Triage {
                        depends_on: vec![x.id],
                        ..Default::default()
                    },
                ),
            ],
            &note("plan"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, controller::store::Error::DependencyCycle { .. }),
        "{err}"
    );
    for id in [x.id, y.id] {
        assert_eq!(
            store.task(id).await.unwrap().status,
            Status::New,
            "nothing of the batch was written"
        );
        assert!(store.dependencies(id).await.unwrap().is_empty());
    }
    let err = store
        .triage(
            x.id,
            &Triage {
                depends_on: vec![x.id],
                ..Default::default()
            },
            &note("plan"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, controller::store::Error::DependencyCycle { .. }),
        "{err}"
    );
    // The same batch without the back edge goes through, dependencies and all.
    let out = store
        .triage_batch(
            &[
                (
                    x.id,
                    Triage {
                        depends_on: vec![y.id],
                        ..Default::default()
                    },
                ),
                (y.id, Triage::default()),
            ],
            &note("plan"),
        )
        .await
        .unwrap();
    assert!(out.iter().all(|t| t.status == Status::Queued));
    assert_eq!(store.dependencies(x.id).await.unwrap(), vec![y.id]);
}

#[tokio::test]
async fn runner_labels_must_cover_the_task_labels() {
    let store = store().await;
    let repo = repo(&store, "acme/gpu").await;
    require_labels(&store, &repo, &["gpu"]).await;
    let r = runner(&store, "r1").await;
    let t = queued(&store, &repo, "needs gpu").await;
    assert_eq!(t.required_labels, vec!["gpu".to_string()]);
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    let labels = vec!["linux".to_string(), "gpu".to_string()];
    let got = store
        .claim(&ClaimRequest {
            runner_id: r,
            labels: &labels,
            lease: Duration::from_secs(60),
            capacity: None,
        })
        .await
        .unwrap()
        .expect("a gpu runner gets it");
    assert_eq!(got.id, t.id);
}

#[tokio::test]
async fn disabled_repositories_are_not_dispatched() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    queued(&store, &repo, "t").await;
    store
        .update_repo(
            repo.id,
            &RepoSettings {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    store
        .update_repo(
            repo.id,
            &RepoSettings {
                enabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    claim(&store, r).await;
}

#[tokio::test]
async fn the_per_repo_cap_holds_and_frees_slots_as_leases_end() {
    let store = store().await;
    let capped = repo(&store, "acme/capped").await;
    let other = repo(&store, "acme/other").await;
    store
        .update_repo(
            capped.id,
            &RepoSettings {
                max_concurrency: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = runner(&store, "r1").await;
    for i in 0..4 {
        queued_with(
            &store,
            &capped,
            &format!("c{i}"),
            Triage {
                priority: Some(1),
                ..Default::default()
            },
        )
        .await;
    }
    let o = queued(&store, &other, "other").await;
    let (c1, l1) = claim(&store, r).await;
    let (c2, _) = claim(&store, r).await;
    assert_eq!((c1.repo_id, c2.repo_id), (capped.id, capped.id));
    // The cap is reached: the next claim skips to the other repository.
    assert_eq!(claim(&store, r).await.0.id, o.id);
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    // A lease ending frees a slot.
    store
        .complete(
            &l1,
            &Completion::new(Outcome::Succeeded),
            &RetryPolicy::default(),
        )
        .await
        .unwrap();
    assert_eq!(claim(&store, r).await.0.repo_id, capped.id);
    assert_eq!(store.repo(capped.id).await.unwrap().active_tasks, 2);
    // Removing the cap lets the rest go.
    store
        .update_repo(
            capped.id,
            &RepoSettings {
                max_concurrency: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    claim(&store, r).await;
}

#[tokio::test]
async fn the_per_repo_cap_holds_under_concurrent_claimers() {
    let store = store().await;
    let capped = repo(&store, "acme/capped").await;
    store
        .update_repo(
            capped.id,
            &RepoSettings {
                max_concurrency: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = runner(&store, "r1").await;
    for i in 0..40 {
        queued(&store, &capped, &format!("c{i}")).await;
    }
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = store.clone();
        set.spawn(async move { store.claim(&claim_req(r)).await.unwrap().is_some() });
    }
    let mut won = 0;
    while let Some(ok) = set.join_next().await {
        won += usize::from(ok.unwrap());
    }
    assert_eq!(won, 3, "exactly the cap");
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM task_claims")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(active, 3);
    assert_eq!(store.repo(capped.id).await.unwrap().active_tasks, 3);
}

#[tokio::test]
async fn eight_concurrent_claimers_over_ten_thousand_rows_never_double_claim() {
    let store = store().await;
    let repos = [repo(&store, "acme/a").await, repo(&store, "acme/b").await];
    let r = runner(&store, "r1").await;
    seed_queued(&store, &[repos[0].id, repos[1].id], 10_000).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        set.spawn(async move {
            let mut mine = Vec::new();
            while let Some(t) = store.claim(&claim_req(r)).await.unwrap() {
                mine.push(t.id);
            }
            mine
        });
    }
    let mut all = Vec::new();
    let mut per_claimer = Vec::new();
    while let Some(ids) = set.join_next().await {
        let ids = ids.unwrap();
        per_claimer.push(ids.len());
        all.extend(ids);
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 10_000, "every row claimed");
    assert_eq!(unique.len(), 10_000, "no row claimed twice");
    assert!(
        per_claimer.iter().all(|n| *n > 0),
        "all claimers made progress: {per_claimer:?}"
    );
    // Each task holds one claim, of its first attempt, and none is left in the queue.
    let (unclaimed, queued): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tasks t WHERE NOT EXISTS \
                  (SELECT 1 FROM task_claims c WHERE c.task_id = t.id AND c.attempt = 1)), \
                (SELECT count(*) FROM task_queue)",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((unclaimed, queued), (0, 0));
}

/// Makes every task of `repo` need a runner with `labels`.
async fn require_labels(store: &Store, repo: &controller::store::repos::Repo, labels: &[&str]) {
    store
        .update_repo(
            repo.id,
            &RepoSettings {
                runner_labels: Some(labels.iter().map(|l| l.to_string()).collect()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

/// Inserts `n` queued tasks round-robin over `repos` in one statement (through the trigger).
pub async fn seed_queued(store: &Store, repos: &[i64], n: i64) {
    sqlx::query(
        "INSERT INTO tasks (repo_id, source, issue_title, status, priority, ev_actor, ev_reason) \
         SELECT ($1::bigint[])[1 + (g % array_length($1::bigint[], 1))], 'api', 'seed ' || g, 'queued', \
                100 + (g % 7), 'seed', 'created' \
         FROM generate_series(1, $2) g",
    )
    .bind(repos)
    .bind(n)
    .execute(store.pool())
    .await
    .unwrap();
    // What autovacuum does soon after a bulk load; the claim plan relies on statistics.
    sqlx::query("ANALYZE tasks")
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn canceled_and_merged_tasks_are_never_claimed() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    let a = queued(&store, &repo, "a").await;
    let b = queued(&store, &repo, "b").await;
    store.cancel(a.id, &note("cancel")).await.unwrap();
    force_status(&store, b.id, Status::Merged, r).await;
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
}

#[tokio::test]
async fn a_gated_head_of_the_queue_does_not_hide_eligible_work_behind_it() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    // 300 urgent tasks, all held: more than the claim's fast-path window.
    seed_queued(&store, &[repo.id], 300).await;
    sqlx::query("UPDATE tasks SET priority = 0, hold_kind = 'user', ev_seq = ev_seq + 1, ev_actor = 'test', ev_reason = 'hold'")
        .execute(store.pool())
        .await
        .unwrap();
    let behind = queued(&store, &repo, "eligible, behind the held ones").await;
    let (t, _) = claim(&store, r).await;
    assert_eq!(t.id, behind.id);
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
}

#[tokio::test]
async fn a_runner_never_holds_more_leases_than_its_capacity() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    for i in 0..3 {
        queued(&store, &repo, &format!("t{i}")).await;
    }
    let req = ClaimRequest {
        runner_id: r,
        labels: &[],
        lease: Duration::from_secs(60),
        capacity: Some(2),
    };
    assert!(store.claim(&req).await.unwrap().is_some());
    let (second, lease) = {
        let t = store.claim(&req).await.unwrap().expect("second slot");
        let l = controller::store::claims::LeaseRef::of(&t).unwrap();
        (t, l)
    };
    assert!(
        store.claim(&req).await.unwrap().is_none(),
        "capacity 2 reached"
    );
    assert_eq!(store.runner_lease_count(r).await.unwrap(), 2);
    store
        .complete(
            &lease,
            &Completion::new(Outcome::Succeeded),
            &RetryPolicy::default(),
        )
        .await
        .unwrap();
    let _ = second;
    assert!(
        store.claim(&req).await.unwrap().is_some(),
        "a finished lease frees a slot"
    );
}

/// Daily budgets hold: a repository whose daily budget covers one task's grant dispatches one;
/// the second waits on a visible `budget` hold saying what was spent and when it clears, and
/// runs once the budget is raised, granted only what is left. The controller's own calls count.
#[tokio::test]
async fn a_daily_budget_dispatches_what_it_covers_and_holds_the_rest_visibly() {
    let store = store().await;
    store.set_fleet_budgets(1_000_000, None).await.unwrap();
    let repo = repo(&store, "acme/daily").await;
    let daily = |d: i64| RepoSettings {
        budget_daily_microusd: Some(d),
        ..Default::default()
    };
    store.update_repo(repo.id, &daily(1_000_000)).await.unwrap();
    let r = runner(&store, "r1").await;
    let first = queued(&store, &repo, "first").await;
    let second = queued(&store, &repo, "second").await;
    let (t, claimed) = store.claim_with_repo(&claim_req(r)).await.unwrap().unwrap();
    assert_eq!(t.id, first.id);
    assert_eq!(
        claimed.grant_microusd, 1_000_000,
        "the whole task budget fits today"
    );
    assert!(
        store.claim(&claim_req(r)).await.unwrap().is_none(),
        "the running attempt holds all of today's budget"
    );
    let day = store.repo_day(repo.id).await.unwrap();
    assert_eq!(
        (day.granted_microusd, day.left_microusd()),
        (1_000_000, Some(0))
    );
    // The sweep makes the wait visible.
    let (held, _) = store.sweep_budget_holds().await.unwrap();
    assert_eq!(held, vec![second.id]);
    let waiting = store.task(second.id).await.unwrap();
    assert_eq!(waiting.hold_kind.0, Some(HoldKind::Budget));
    let clears = waiting.hold_until.expect("clears at the day boundary");
    assert_eq!(
        clears,
        controller::store::budgets::next_day_boundary(chrono::Utc::now())
    );
    let timeline = store.timeline(second.id).await.unwrap();
    let hold = timeline.iter().find(|e| e.reason == "budget_hold").unwrap();
    let note = hold.data.as_ref().unwrap()["note"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        note.contains("daily budget of $1.00") && note.contains("or when the budget is raised"),
        "{note}"
    );
    // The first attempt spends 0.6 of its grant; the controller's review call spends 0.1.
    let mut done = Completion::new(Outcome::Succeeded);
    done.cost_microusd = 600_000;
    let lease = controller::store::claims::LeaseRef::of(&t).unwrap();
    store
        .complete(&lease, &done, &RetryPolicy::default())
        .await
        .unwrap();
    store
        .record_usage(Some(first.id), None, "review", "sonnet", 1000, 100, 100_000)
        .await
        .unwrap();
    let day = store.repo_day(repo.id).await.unwrap();
    assert_eq!(
        (
            day.spent_microusd,
            day.granted_microusd,
            day.left_microusd()
        ),
        (700_000, 0, Some(300_000)),
        "the grant came back; agent and controller spend count"
    );
    // Something is left, so the hold goes and the second runs on what is left.
    let (_, released) = store.sweep_budget_holds().await.unwrap();
    assert_eq!(released, vec![second.id]);
    let (t2, claimed) = store.claim_with_repo(&claim_req(r)).await.unwrap().unwrap();
    assert_eq!(t2.id, second.id);
    assert_eq!(
        claimed.grant_microusd, 300_000,
        "granted only what is left today"
    );
    // Its runner's gateway stops it at the grant: the attempt ends over budget, and since
    // the task's own budget has room, it waits for the day instead of failing.
    let mut over = Completion::new(Outcome::BudgetExceeded);
    over.cost_microusd = 300_000;
    let lease = controller::store::claims::LeaseRef::of(&t2).unwrap();
    let after = store
        .complete(&lease, &over, &RetryPolicy::default())
        .await
        .unwrap()
        .task;
    assert_eq!(after.status, Status::Queued);
    let (held, _) = store.sweep_budget_holds().await.unwrap();
    assert_eq!(held, vec![second.id], "back on the budget hold");
    // Raising the budget releases it at once.
    store.update_repo(repo.id, &daily(2_000_000)).await.unwrap();
    let (_, released) = store.sweep_budget_holds().await.unwrap();
    assert_eq!(released, vec![second.id]);
    let (t3, claimed) = store.claim_with_repo(&claim_req(r)).await.unwrap().unwrap();
    assert_eq!(t3.id, second.id);
    assert_eq!(
        claimed.grant_microusd, 700_000,
        "its own budget is what is left now"
    );
}

/// The fleet's daily budget binds every repository, and concurrent claims cannot together
/// grant more than is left of it.
#[tokio::test]
async fn the_fleet_daily_budget_binds_every_repository_under_concurrent_claims() {
    let store = store().await;
    store
        .set_fleet_budgets(1_000_000, Some(3_500_000))
        .await
        .unwrap();
    let mut runners = Vec::new();
    for i in 0..4 {
        let repo = repo(&store, &format!("acme/fleet{i}")).await;
        for n in 0..3 {
            queued(&store, &repo, &format!("task {n}")).await;
        }
        runners.push(runner(&store, &format!("r{i}")).await);
    }
    let mut claims = Vec::new();
    for r in runners {
        let store = store.clone();
        claims.push(tokio::spawn(async move {
            let mut granted = Vec::new();
            while let Some((_, repo)) = store.claim_with_repo(&claim_req(r)).await.unwrap() {
                granted.push(repo.grant_microusd);
            }
            granted
        }));
    }
    let mut granted = Vec::new();
    for c in claims {
        granted.extend(c.await.unwrap());
    }
    granted.sort();
    assert_eq!(
        granted.iter().sum::<i64>(),
        3_500_000,
        "exactly the fleet's day is granted: {granted:?}"
    );
    assert_eq!(
        granted.len(),
        4,
        "three whole grants and what was left: {granted:?}"
    );
    assert_eq!(granted[0], 500_000);
    let fleet = store.fleet_day().await.unwrap();
    assert_eq!(fleet.left_microusd(), Some(0));
    let (held, _) = store.sweep_budget_holds().await.unwrap();
    assert_eq!(held.len(), 8, "every queued task of every repository waits");
}

/// Sets `repo`'s concurrency cap (`0`: none).
async fn set_cap(store: &Store, repo: i64, cap: i32) {
    store
        .update_repo(
            repo,
            &RepoSettings {
                max_concurrency: Some(cap),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

/// Active tasks of `repo` (claims not started yet among them), and how many of them hold a slot.
async fn active_and_slotted(store: &Store, repo: i64) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM tasks WHERE repo_id = $1 AND status IN ('leased', 'running', 'verifying')) \
                + (SELECT count(*) FROM task_claims WHERE repo_id = $1), \
                (SELECT count(*) FROM repo_slots WHERE repo_id = $1 AND task_id IS NOT NULL)",
    )
    .bind(repo)
    .fetch_one(store.pool())
    .await
    .unwrap()
}

async fn succeed(store: &Store, lease: &controller::store::claims::LeaseRef) {
    store
        .complete(
            lease,
            &Completion::new(Outcome::Succeeded),
            &RetryPolicy::default(),
        )
        .await
        .unwrap();
}

/// 32 claimers work through 60 tasks of a repository capped at 3, each completing what it
/// claimed: never more than 3 run at once (counted in the database right after each claim and
/// in-process between claim and completion), and completions open slots until all are done.
#[tokio::test]
async fn the_cap_is_exact_under_32_concurrent_claimers_and_reopens_as_leases_end() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    let store = store().await;
    let capped = repo(&store, "acme/capped").await;
    set_cap(&store, capped.id, 3).await;
    let r = runner(&store, "r1").await;
    seed_queued(&store, &[capped.id], 60).await;
    let running = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicI64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (store, running, most, done) =
            (store.clone(), running.clone(), most.clone(), done.clone());
        set.spawn(async move {
            let mut mine = 0;
            while done.load(Ordering::SeqCst) < 60 {
                let Some(t) = store.claim(&claim_req(r)).await.unwrap() else {
                    tokio::task::yield_now().await;
                    continue;
                };
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let (active, slotted) = active_and_slotted(&store, t.repo_id).await;
                assert!(active <= 3, "{active} active under a cap of 3");
                assert_eq!(active, slotted, "every active task holds a slot");
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
                succeed(
                    &store,
                    &controller::store::claims::LeaseRef::of(&t).unwrap(),
                )
                .await;
                done.fetch_add(1, Ordering::SeqCst);
                mine += 1;
            }
            mine
        });
    }
    let mut total = 0;
    while let Some(n) = set.join_next().await {
        total += n.unwrap();
    }
    assert_eq!(total, 60, "every task claimed once");
    assert!(most.load(Ordering::SeqCst) <= 3);
    assert_eq!(active_and_slotted(&store, capped.id).await, (0, 0));
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM repo_slots WHERE repo_id = $1")
        .bind(capped.id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(slots, 3, "the slots are the cap's");
}

/// A repository without a daily budget is claimed from, and its leases end, while another
/// transaction holds its row for writing: with a cap (slots) and without one. (`FOR NO KEY
/// UPDATE`, what any writer of the row holds; a lease end's foreign-key check on the task's
/// repository takes a key-share lock, which only `FOR UPDATE` or a key change would block.)
#[tokio::test]
async fn claims_without_a_daily_budget_do_not_lock_the_repository_row() {
    let store = store().await;
    let free = repo(&store, "acme/free").await;
    let capped = repo(&store, "acme/capped").await;
    set_cap(&store, capped.id, 2).await;
    let r = runner(&store, "r1").await;
    for repo in [&free, &capped] {
        queued(&store, repo, "a").await;
        queued(&store, repo, "b").await;
    }
    let mut holder = store.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM repos WHERE id = ANY($1) FOR NO KEY UPDATE")
        .bind(vec![free.id, capped.id])
        .execute(&mut *holder)
        .await
        .unwrap();
    let claims = async {
        let mut leases = Vec::new();
        for _ in 0..4 {
            leases.push(claim(&store, r).await.1);
        }
        leases
    };
    let leases = tokio::time::timeout(Duration::from_secs(20), claims)
        .await
        .expect("claims did not wait for the locked repository rows");
    let ends = async {
        for lease in &leases {
            succeed(&store, lease).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), ends)
        .await
        .expect("lease ends did not wait for the locked repository rows");
    holder.rollback().await.unwrap();
    assert_eq!(active_and_slotted(&store, capped.id).await, (0, 0));
}

/// Lowering the cap below what runs stops claims until the repository is below the new cap; a
/// cap set where none was counts what already runs; raising it opens slots at once.
#[tokio::test]
async fn changing_the_cap_counts_what_runs_and_holds_until_below() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    for i in 0..10 {
        queued(&store, &repo, &format!("t{i}")).await;
    }
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(claim(&store, r).await.1);
    }
    // A cap of 1 set while 3 run: no claim until fewer than 1 run.
    set_cap(&store, repo.id, 1).await;
    assert_eq!(active_and_slotted(&store, repo.id).await, (3, 3));
    assert_eq!(store.repo(repo.id).await.unwrap().active_tasks, 3);
    for lease in leases.drain(..) {
        assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
        succeed(&store, &lease).await;
    }
    leases.push(claim(&store, r).await.1);
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    // Raised to 3: two more at once, then none.
    set_cap(&store, repo.id, 3).await;
    leases.push(claim(&store, r).await.1);
    leases.push(claim(&store, r).await.1);
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    // Lowered to 2 while 3 run: the first lease to end (whichever slot it held) leaves 2,
    // still no claim; the next leaves 1, and one claim goes through.
    set_cap(&store, repo.id, 2).await;
    succeed(&store, &leases.remove(1)).await;
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    assert_eq!(active_and_slotted(&store, repo.id).await, (2, 2));
    succeed(&store, &leases.remove(0)).await;
    leases.push(claim(&store, r).await.1);
    assert!(store.claim(&claim_req(r)).await.unwrap().is_none());
    assert_eq!(active_and_slotted(&store, repo.id).await, (2, 2));
    // Removed: no slots, claims go on.
    set_cap(&store, repo.id, 0).await;
    assert_eq!(active_and_slotted(&store, repo.id).await, (2, 0));
    claim(&store, r).await;
    assert_eq!(store.repo(repo.id).await.unwrap().active_tasks, 3);
}

/// A cap set while many claims are under way: every claim that went through before the change
/// holds a slot afterwards (none slips past the count), and from then on the cap is exact.
#[tokio::test]
async fn a_cap_set_during_concurrent_claims_counts_every_claim_that_went_through() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    seed_queued(&store, &[repo.id], 400).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = store.clone();
        set.spawn(async move {
            let mut leases = Vec::new();
            while let Some(t) = store.claim(&claim_req(r)).await.unwrap() {
                leases.push(controller::store::claims::LeaseRef::of(&t).unwrap());
            }
            leases
        });
    }
    // Let some claims through, then cap the repository under way.
    loop {
        let (active, _) = active_and_slotted(&store, repo.id).await;
        if active >= 20 {
            break;
        }
        tokio::task::yield_now().await;
    }
    set_cap(&store, repo.id, 5).await;
    let mut leases = Vec::new();
    while let Some(l) = set.join_next().await {
        leases.extend(l.unwrap());
    }
    let (active, slotted) = active_and_slotted(&store, repo.id).await;
    assert_eq!(active, leases.len() as i64);
    assert!((20..400).contains(&active), "{active}");
    assert_eq!(
        slotted, active,
        "every claim that went through holds a slot"
    );
    // All end; then exactly the cap is claimed, by 16 at once.
    for lease in &leases {
        succeed(&store, lease).await;
    }
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = store.clone();
        set.spawn(async move { store.claim(&claim_req(r)).await.unwrap().is_some() });
    }
    let mut won = 0;
    while let Some(ok) = set.join_next().await {
        won += usize::from(ok.unwrap());
    }
    assert_eq!(won, 5, "exactly the cap");
}

/// A repository's daily budget binds concurrent claims (here with a cap too, so a claim takes a
/// slot and the grant together or neither), and a budget set while attempts run counts what
/// they hold.
#[tokio::test]
async fn a_repository_daily_budget_binds_concurrent_claims_and_counts_running_attempts() {
    let store = store().await;
    store.set_fleet_budgets(1_000_000, None).await.unwrap();
    let repo = repo(&store, "acme/daily").await;
    let r = runner(&store, "r1").await;
    seed_queued(&store, &[repo.id], 40).await;
    // Two attempts run before any daily budget is set.
    let (_, first) = claim(&store, r).await;
    claim(&store, r).await;
    store
        .update_repo(
            repo.id,
            &RepoSettings {
                budget_daily_microusd: Some(5_500_000),
                max_concurrency: Some(30),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let day = store.repo_day(repo.id).await.unwrap();
    assert_eq!(
        day.granted_microusd, 2_000_000,
        "the running attempts count"
    );
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = store.clone();
        set.spawn(async move {
            let mut granted = Vec::new();
            while let Some((_, repo)) = store.claim_with_repo(&claim_req(r)).await.unwrap() {
                granted.push(repo.grant_microusd);
            }
            granted
        });
    }
    let mut granted = Vec::new();
    while let Some(g) = set.join_next().await {
        granted.extend(g.unwrap());
    }
    granted.sort();
    assert_eq!(
        granted,
        vec![500_000, 1_000_000, 1_000_000, 1_000_000],
        "exactly what was left of the day"
    );
    let day = store.repo_day(repo.id).await.unwrap();
    assert_eq!(
        (day.granted_microusd, day.left_microusd()),
        (5_500_000, Some(0))
    );
    assert_eq!(active_and_slotted(&store, repo.id).await, (6, 6));
    // A lease ending returns its grant.
    succeed(&store, &first).await;
    let day = store.repo_day(repo.id).await.unwrap();
    assert_eq!(day.granted_microusd, 4_500_000);
}

/// A runner draining or disabled a moment ago claims nothing, whatever its caller remembered of
/// the registry: the claim reads the runner's state itself.
#[tokio::test]
async fn a_draining_or_disabled_runner_claims_nothing() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let r = runner(&store, "r1").await;
    queued(&store, &repo, "t").await;
    for state in ["draining", "disabled"] {
        store.set_runner_state(r, state).await.unwrap();
        assert!(
            store.claim(&claim_req(r)).await.unwrap().is_none(),
            "a {state} runner claimed"
        );
    }
    store.set_runner_state(r, "active").await.unwrap();
    assert!(store.claim(&claim_req(r)).await.unwrap().is_some());
}

/// The claim itself carries what the lease hands the runner besides the task: its repository's
/// setup secrets (no other repository's) and its last ten learnings, newest first — so a lease
/// costs no statement after the claim. The claimed repository's `Debug` never shows a value.
#[tokio::test]
async fn a_claim_carries_the_setup_secrets_and_the_last_ten_learnings() {
    let store = store().await;
    let repo = repo(&store, "acme/widgets").await;
    let other = crate::repo(&store, "acme/other").await;
    let r = runner(&store, "r1").await;
    store
        .set_repo_secret(repo.id, "B_TOKEN", "value-of-b-0123")
        .await
        .unwrap();
    store
        .set_repo_secret(repo.id, "A_TOKEN", "value-of-a-0123")
        .await
        .unwrap();
    store
        .set_repo_secret(other.id, "C_TOKEN", "value-of-c-0123")
        .await
        .unwrap();
    for i in 0..12 {
        store
            .add_learning(repo.id, None, "merged", &format!("lesson {i}"))
            .await
            .unwrap();
    }
    store
        .add_learning(other.id, None, "failed", "not this one")
        .await
        .unwrap();
    queued(&store, &repo, "t").await;
    let (_, claimed) = store
        .claim_with_repo(&claim_req(r))
        .await
        .unwrap()
        .expect("claimed");
    let secrets: Vec<(&str, &str)> = claimed.secrets().collect();
    assert_eq!(
        secrets,
        vec![
            ("A_TOKEN", "value-of-a-0123"),
            ("B_TOKEN", "value-of-b-0123")
        ]
    );
    let want: Vec<String> = (2..12)
        .rev()
        .map(|i| format!("[merged] lesson {i}"))
        .collect();
    assert_eq!(claimed.learnings, want);
    let shown = format!("{claimed:?}");
    assert!(shown.contains("A_TOKEN"), "{shown}");
    assert!(
        !shown.contains("value-of-"),
        "a secret value in Debug: {shown}"
    );
}

/// The store's connections run without PostgreSQL's JIT compiler, whatever the server's default:
/// a sweep whose estimate crosses `jit_above_cost` compiled its plan for over a second of CPU
/// while the claims on the same cores waited. Checked on several connections of the pool.
#[tokio::test]
async fn every_connection_of_the_store_runs_without_jit() {
    let store = crate::store().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = store.pool().acquire().await.unwrap();
        let jit: String = sqlx::query_scalar("SHOW jit")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(jit, "off");
        held.push(conn);
    }
    // The server itself still has its default: the setting is the store's, not the test's.
    let server: String = sqlx::query_scalar("SELECT boot_val FROM pg_settings WHERE name = 'jit'")
        .fetch_one(&mut *held[0])
        .await
        .unwrap();
    assert_eq!(server, "on");
}

/// Claims that arrive together are made by one statement, and each keeps its own rules: the
/// most urgent task goes to the first runner that may take it, a task needing a label to the
/// runner that has it (not to an earlier one without), a runner at its capacity gets nothing
/// more (its second claim of the batch counts its first), a disabled runner nothing at all.
#[tokio::test]
async fn claims_that_arrive_together_are_made_by_one_statement_each_by_its_own_rules() {
    let store = store().await;
    let gpu = repo(&store, "acme/gpu").await;
    require_labels(&store, &gpu, &["gpu"]).await;
    let plain = repo(&store, "acme/plain").await;
    let needs_gpu = queued(&store, &gpu, "needs a gpu, oldest").await;
    let older = queued(&store, &plain, "plain, older").await;
    let urgent = queued(&store, &plain, "plain, urgent").await;
    sqlx::query("UPDATE tasks SET priority = 10 WHERE id = $1")
        .bind(urgent.id)
        .execute(store.pool())
        .await
        .unwrap();
    let _spare = queued(&store, &plain, "plain, newest").await;
    let (first, disabled, with_gpu, one_lease) = (
        runner(&store, "first").await,
        runner(&store, "disabled").await,
        runner(&store, "with-gpu").await,
        runner(&store, "one-lease").await,
    );
    store.set_runner_state(disabled, "disabled").await.unwrap();
    let gpu_labels = vec!["gpu".to_string()];
    let before = store.claim_batching();
    // The test's runtime runs on one thread: every claim below is queued before the first
    // statement starts.
    let asks: Vec<(RunnerId, Vec<String>, Option<i32>)> = vec![
        (first, vec![], None),
        (disabled, vec![], None),
        (with_gpu, gpu_labels.clone(), None),
        (one_lease, vec![], Some(1)),
        (one_lease, vec![], Some(1)),
    ];
    let mut set = tokio::task::JoinSet::new();
    for (i, (runner_id, labels, capacity)) in asks.into_iter().enumerate() {
        let store = store.clone();
        set.spawn(async move {
            let req = ClaimRequest {
                runner_id,
                labels: &labels,
                lease: Duration::from_secs(60),
                capacity,
            };
            (
                i,
                store
                    .claim(&req)
                    .await
                    .unwrap()
                    .map(|t| (t.id, t.runner_id)),
            )
        });
    }
    let mut got = [None; 5];
    while let Some(r) = set.join_next().await {
        let (i, t) = r.unwrap();
        got[i] = t;
    }
    assert_eq!(
        got[0],
        Some((urgent.id, Some(first))),
        "the most urgent to the first"
    );
    assert_eq!(got[1], None, "a disabled runner claims nothing");
    assert_eq!(
        got[2],
        Some((needs_gpu.id, Some(with_gpu))),
        "the gpu task to the gpu runner"
    );
    assert_eq!(got[3], Some((older.id, Some(one_lease))));
    assert_eq!(
        got[4], None,
        "the runner's capacity counts its claim in the same batch"
    );
    let after = store.claim_batching();
    assert_eq!(
        (
            after.statements - before.statements,
            after.requests - before.requests
        ),
        (1, 5),
        "five claims, one statement"
    );
}

/// A runner's count of its leases (the claim's capacity check) reads that runner's leases alone,
/// whatever the statistics say. Taken over a fresh backlog — nothing leased, every `runner_id`
/// NULL — they once made the cached plan read every live lease of the fleet at each count and
/// throw away the other runners' (migration 0042): a claim's cost grew with the fleet's leases.
#[tokio::test]
async fn a_runners_lease_count_reads_its_own_leases_whatever_the_statistics_say() {
    let store = store().await;
    let backlog = repo(&store, "acme/backlog").await;
    // The statistics are taken now, before any lease.
    seed_queued(&store, &[backlog.id], 1_000).await;
    let mut runners = Vec::new();
    for i in 0..10 {
        let r = store
            .register_runner(&format!("fleet-{i}"), &[], 1_000)
            .await
            .unwrap();
        runners.push(r.id);
    }
    for _ in 0..40 {
        for &runner_id in &runners {
            let req = ClaimRequest {
                runner_id,
                labels: &[],
                lease: Duration::from_secs(600),
                capacity: Some(1_000),
            };
            let t = store.claim(&req).await.unwrap().unwrap();
            let lease = controller::store::claims::LeaseRef::of(&t).unwrap();
            assert!(store.start_claim_now(&lease).await.unwrap());
        }
    }
    // 400 live leases, 40 each. The count is the claim's own (its text in `claim_batch`, the
    // runner as a parameter), planned generically as the PL/pgSQL function caches it.
    let claim = include_str!("../../../migrations/0046_claim_queue.sql");
    let at = claim
        .find("SELECT count(*) FROM tasks h")
        .expect("the claim counts a runner's leases");
    let end = at + claim[at..].find("))").expect("the count's end") + 1;
    let count = claim[at..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("k.runner", "$1");
    assert!(count.ends_with("'verifying')"), "{count}");
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PREPARE runner_leases(bigint) AS {count}"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    // The runner's id is a number of ours: the statement is safe to build.
    let explain = format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE runner_leases({})",
        runners[3]
    );
    let sqlx::types::Json(plan): sqlx::types::Json<serde_json::Value> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    // Whatever the plan's shape (an index scan, a bitmap scan), every index it reads is the one
    // by runner, it discards no row, and the count is the runner's.
    let mut nodes = vec![&plan[0]["Plan"]];
    let (mut indexes, mut discarded) = (Vec::new(), 0);
    while let Some(node) = nodes.pop() {
        indexes.extend(node.get("Index Name").and_then(|v| v.as_str()));
        discarded += node
            .get("Rows Removed by Filter")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        nodes.extend(
            node.get("Plans")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten(),
        );
    }
    assert_eq!(indexes, ["tasks_runner"], "{plan:#}");
    assert_eq!(
        discarded, 0,
        "the count read other runners' leases: {plan:#}"
    );
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXECUTE runner_leases({})",
        runners[3]
    )))
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(count, 40);
}

/// Claims one task for `r` with a lease of `lease`, without starting it: the task row stays
/// `queued` and the claim holds the slot and the grant.
async fn claim_only(
    store: &Store,
    r: RunnerId,
    lease: Duration,
) -> (controller::store::Task, controller::store::claims::LeaseRef) {
    let t = store
        .claim(&ClaimRequest {
            runner_id: r,
            labels: &[],
            lease,
            capacity: None,
        })
        .await
        .unwrap()
        .expect("a task to claim");
    let lease = controller::store::claims::LeaseRef::of(&t).unwrap();
    (t, lease)
}

/// A capped repository with a daily budget and two queued tasks.
async fn capped_and_budgeted(store: &Store) -> (controller::store::repos::Repo, RunnerId) {
    store.set_fleet_budgets(1_000_000, None).await.unwrap();
    let repo = repo(store, "acme/claims").await;
    store
        .update_repo(
            repo.id,
            &RepoSettings {
                max_concurrency: Some(1),
                budget_daily_microusd: Some(10_000_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    queued(store, &repo, "first").await;
    queued(store, &repo, "second").await;
    (repo.clone(), runner(store, "r1").await)
}

/// What the repository holds for running attempts: (active counted with claims, slots taken,
/// granted today).
async fn held(store: &Store, repo: i64) -> (i64, i64, i64) {
    let (active, slotted) = active_and_slotted(store, repo).await;
    (
        active,
        slotted,
        store.repo_day(repo).await.unwrap().granted_microusd,
    )
}

/// A claim leaves the task row alone until the runner's first report starts it: the row stays
/// `queued` (out of the queue), the claim holds the slot and the grant, and the start turns the
/// row into the lease the claim returned, with its `claimed` timeline entry.
#[tokio::test]
async fn a_claim_is_a_narrow_row_until_its_runner_starts_it() {
    let store = store().await;
    let (repo, r) = capped_and_budgeted(&store).await;
    let (t, lease) = claim_only(&store, r, Duration::from_secs(60)).await;
    assert_eq!(t.status, Status::Leased, "the runner is told its lease");
    let row = store.task(t.id).await.unwrap();
    assert_eq!(
        (row.status, row.attempt, row.lease_token),
        (Status::Queued, 0, None)
    );
    assert_eq!(held(&store, repo.id).await, (1, 1, 1_000_000));
    assert!(
        store.claim(&claim_req(r)).await.unwrap().is_none(),
        "the claim holds the repository's one slot"
    );
    assert_eq!(store.runner_lease_count(r).await.unwrap(), 1);
    // Grants recounted when a budget changes count the claim's; the restart grace extends it.
    store
        .update_repo(
            repo.id,
            &RepoSettings {
                budget_daily_microusd: Some(20_000_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store
        .set_fleet_budgets(1_000_000, Some(50_000_000))
        .await
        .unwrap();
    assert_eq!(held(&store, repo.id).await, (1, 1, 1_000_000));
    assert_eq!(store.fleet_day().await.unwrap().granted_microusd, 1_000_000);
    assert_eq!(
        store.grant_grace(Duration::from_secs(600)).await.unwrap(),
        1
    );
    let graced: bool = sqlx::query_scalar(
        "SELECT expires_at > now() + interval '300 seconds' FROM task_claims WHERE task_id = $1",
    )
    .bind(t.id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(graced, "the restart grace extends a claim not yet started");
    let started = store.start_agent(&lease).await.unwrap();
    assert_eq!(started.status, Status::Running);
    assert_eq!(
        (started.attempt, started.lease_token, started.runner_id),
        (t.attempt, t.lease_token, t.runner_id)
    );
    let reasons: Vec<String> = store
        .timeline(t.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect();
    assert!(
        reasons.ends_with(&["claimed".to_string(), "start_agent".to_string()]),
        "{reasons:?}"
    );
    assert_eq!(held(&store, repo.id).await, (1, 1, 1_000_000));
    assert_eq!(store.runner_lease_count(r).await.unwrap(), 1);
}

/// From the runner's side: a claim it never started lapses at its expiry — slot and grant come
/// back, the task is claimed again under the same attempt number — and the stale claim can
/// neither start, renew, log nor complete afterwards.
#[tokio::test]
async fn a_claim_never_started_lapses_and_its_runner_cannot_use_it_after() {
    let store = store().await;
    let (repo, r) = capped_and_budgeted(&store).await;
    let (t, stale) = claim_only(&store, r, Duration::from_millis(10)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let reaped = store.reap_expired(100).await.unwrap();
    assert_eq!(
        reaped
            .iter()
            .map(|x| (x.task_id, x.status))
            .collect::<Vec<_>>(),
        vec![(t.id, Status::Queued)]
    );
    assert_eq!(held(&store, repo.id).await, (0, 0, 0));
    let r2 = runner(&store, "r2").await;
    let (again, fresh) = claim(&store, r2).await;
    assert_eq!(again.id, t.id, "the task keeps its place in the queue");
    assert_eq!(again.attempt, t.attempt, "nothing ran: no attempt is spent");
    assert_ne!(fresh.token, stale.token);
    let e = store.start_agent(&stale).await.unwrap_err();
    assert!(
        matches!(e, controller::store::Error::LeaseLost { .. }),
        "{e}"
    );
    assert!(store.renew(&stale, Duration::from_secs(60)).await.is_err());
    assert!(
        store
            .append_log(&stale, 0, "stdout", b"late")
            .await
            .is_err()
    );
    assert!(
        store
            .complete(
                &stale,
                &Completion::new(Outcome::Succeeded),
                &RetryPolicy::default()
            )
            .await
            .is_err()
    );
    // The new holder is untouched by all that.
    let now = store.task(t.id).await.unwrap();
    assert_eq!(
        (now.status, now.runner_id, now.lease_token),
        (Status::Leased, Some(r2), Some(fresh.token))
    );
}

/// From another runner's side: a claim cannot be started, renewed or completed with a token it
/// does not hold or by a runner it was not made for.
#[tokio::test]
async fn a_claim_starts_only_for_its_own_runner_and_token() {
    let store = store().await;
    let repo = repo(&store, "acme/fence").await;
    queued(&store, &repo, "t").await;
    let r = runner(&store, "r1").await;
    let thief = runner(&store, "thief").await;
    let (t, lease) = claim_only(&store, r, Duration::from_secs(60)).await;
    for stolen in [
        controller::store::claims::LeaseRef {
            runner_id: thief,
            ..lease
        },
        controller::store::claims::LeaseRef {
            token: uuid::Uuid::new_v4(),
            ..lease
        },
        controller::store::claims::LeaseRef {
            attempt: lease.attempt + 1,
            ..lease
        },
    ] {
        assert!(!store.start_claim_now(&stolen).await.unwrap());
        assert!(store.start_agent(&stolen).await.is_err());
        assert!(store.renew(&stolen, Duration::from_secs(60)).await.is_err());
        assert!(
            store
                .complete(
                    &stolen,
                    &Completion::new(Outcome::Succeeded),
                    &RetryPolicy::default()
                )
                .await
                .is_err()
        );
    }
    assert_eq!(store.task(t.id).await.unwrap().status, Status::Queued);
    // The owner renews the claim (before its first report) and starts it.
    let renewed = store.renew(&lease, Duration::from_secs(600)).await.unwrap();
    assert!(renewed.expires_at > chrono::Utc::now() + chrono::Duration::seconds(300));
    let many = store
        .renew_many(r, &[lease], Duration::from_secs(600))
        .await
        .unwrap();
    assert!(many[0].1.is_some(), "a claim renews in a batch too");
    assert_eq!(
        store.start_agent(&lease).await.unwrap().status,
        Status::Running
    );
}

/// A claim not yet started goes with its task: canceled, the task ends and the slot and grant
/// come back; held, the task stays queued and held, and the claim's start is refused.
#[tokio::test]
async fn a_cancel_or_a_hold_takes_a_claim_not_yet_started_with_it() {
    let store = store().await;
    let (repo, r) = capped_and_budgeted(&store).await;
    let (t, lease) = claim_only(&store, r, Duration::from_secs(60)).await;
    let (_, canceled) = store.cancel(t.id, &note("not needed")).await.unwrap();
    assert_eq!(canceled.status, Status::Canceled);
    assert_eq!(held(&store, repo.id).await, (0, 0, 0));
    assert!(store.start_agent(&lease).await.is_err());

    let (t, lease) = claim_only(&store, r, Duration::from_secs(60)).await;
    store
        .hold(t.id, HoldKind::User, None, &note("wait"))
        .await
        .unwrap();
    assert_eq!(held(&store, repo.id).await, (0, 0, 0));
    assert!(store.start_agent(&lease).await.is_err());
    let row = store.task(t.id).await.unwrap();
    assert_eq!(
        (row.status, row.hold_kind.0),
        (Status::Queued, Some(HoldKind::User))
    );
    assert!(
        store.claim(&claim_req(r)).await.unwrap().is_none(),
        "a held task is not claimed"
    );
}

/// A runner that is disabled loses its claims as well as its leases.
#[tokio::test]
async fn disabling_a_runner_takes_back_its_claims() {
    let store = store().await;
    let (repo, r) = capped_and_budgeted(&store).await;
    let (t, lease) = claim_only(&store, r, Duration::from_secs(600)).await;
    let (_, released) = store.set_runner_state(r, "disabled").await.unwrap();
    assert_eq!(
        released.iter().map(|x| x.task_id).collect::<Vec<_>>(),
        vec![t.id]
    );
    assert_eq!(held(&store, repo.id).await, (0, 0, 0));
    assert!(store.start_agent(&lease).await.is_err());
    let r2 = runner(&store, "r2").await;
    assert_eq!(claim(&store, r2).await.0.id, t.id);
}

/// A task deleted by hand (an operator's SQL, a bench's reset) takes its claim with it: the
/// runner's capacity, the slot and the grant come back at once, not at the claim's expiry.
#[tokio::test]
async fn a_deleted_task_takes_its_claim_with_it() {
    let store = store().await;
    let (repo, r) = capped_and_budgeted(&store).await;
    let (t, _) = claim_only(&store, r, Duration::from_secs(600)).await;
    assert_eq!(store.runner_lease_count(r).await.unwrap(), 1);
    sqlx::query("DELETE FROM tasks WHERE id = $1")
        .bind(t.id)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.runner_lease_count(r).await.unwrap(), 0);
    assert_eq!(held(&store, repo.id).await, (0, 0, 0));
    let (next, _) = claim(&store, r).await;
    assert_ne!(next.id, t.id);
}

/// The task a claim hands its runner is the task the claim's start writes: the claim is laid
/// over the task row by the controller, and what it lays must be what `claim_start` writes
/// (the status, the attempt, the lease, the runner, holds cleared, a gated task's plan run).
#[tokio::test]
async fn the_task_a_claim_returns_is_the_task_its_start_writes() {
    let store = store().await;
    let repo = repo(&store, "acme/overlay").await;
    store
        .update_repo(
            repo.id,
            &RepoSettings {
                plan_gate: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = runner(&store, "r1").await;
    let t = queued(&store, &repo, "tripped once").await;
    let until = chrono::Utc::now() + chrono::Duration::milliseconds(50);
    store
        .hold(
            t.id,
            HoldKind::CircuitBreaker,
            Some(until),
            &note("breaker"),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (told, lease) = claim_only(&store, r, Duration::from_secs(60)).await;
    assert_eq!(told.id, t.id);
    assert!(told.planning(), "a gated task's first run plans");
    assert!(store.start_claim_now(&lease).await.unwrap());
    let written = store.task(t.id).await.unwrap();
    let fields = |t: &controller::store::Task| {
        let mut v = serde_json::to_value(t).unwrap();
        v.as_object_mut().unwrap().remove("updated_at");
        v
    };
    assert_eq!(fields(&told), fields(&written));
    assert_eq!(
        (written.status, written.hold_kind.0, written.runner_id),
        (Status::Leased, None, Some(r))
    );
}

/// A transaction that claims commits durably even on a server whose commits are asynchronous
/// (`off` is raised to `local`), and a stricter setting is never lowered.
#[tokio::test]
async fn a_claim_commits_durably_where_commits_are_asynchronous() {
    let store = store().await;
    let repo = repo(&store, "acme/durable").await;
    let r = runner(&store, "r1").await;
    queued(&store, &repo, "t").await;
    for (set, after) in [("off", "local"), ("remote_apply", "remote_apply")] {
        let mut tx = store.pool().begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL synchronous_commit = {set}"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        let claimed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM claim_batch(ARRAY[$1]::bigint[], '[[]]', ARRAY[NULL]::int[], ARRAY[60]::float8[]) \
             WHERE NOT b_lost",
        )
        .bind(r)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(claimed, 1);
        let now: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(now, after, "synchronous_commit was {set}");
        tx.rollback().await.unwrap();
    }
}

/// The claim statement as `pg_stat_activity` shows it (the last statement of a backend).
const CLAIM_ACTIVITY: &str = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
     AND pid <> pg_backend_pid() AND query LIKE 'WITH b AS MATERIALIZED (SELECT * FROM claim_batch%'";

/// Claims run on the connections the claims keep (two at most), not on the pool's in turn — each
/// pooled connection would plan the claim again after every `ANALYZE` of the tasks, and each
/// claim would first pay the pool's liveness round trip. The store still closes with them kept.
#[tokio::test]
async fn claims_run_on_the_connections_they_keep_and_the_store_still_closes() {
    let store = store().await;
    let repo = repo(&store, "acme/kept").await;
    let r = runner(&store, "r1").await;
    for i in 0..12 {
        queued(&store, &repo, &format!("t{i}")).await;
    }
    // Several idle connections in the pool, as a busy controller has.
    let held: Vec<_> = futures::future::join_all((0..8).map(|_| store.pool().acquire())).await;
    drop(held);
    for _ in 0..12 {
        claim(&store, r).await;
    }
    let backends: Vec<i32> = sqlx::query_scalar(CLAIM_ACTIVITY)
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert!(
        (1..=2).contains(&backends.len()),
        "twelve claims one after another ran on {} backends: {backends:?}",
        backends.len()
    );
    tokio::time::timeout(Duration::from_secs(10), store.close())
        .await
        .expect("the store closes though the claims keep connections");
}

/// A kept claim connection the server ended (a restart, an operator's `pg_terminate_backend`) is
/// let go and replaced. A claim made at once on it fails, with an error and nothing taken; the
/// next is made. One idle for over a second is checked before use and replaced without a failed
/// claim.
#[tokio::test]
async fn a_kept_claim_connection_the_server_ended_is_replaced() {
    let store = store().await;
    let repo = repo(&store, "acme/kept").await;
    let r = runner(&store, "r1").await;
    for i in 0..4 {
        queued(&store, &repo, &format!("t{i}")).await;
    }
    let end_claim_backends = || async {
        let ended: Vec<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT pg_terminate_backend(pid, 5000) FROM ({CLAIM_ACTIVITY}) a"
        )))
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert!(!ended.is_empty() && ended.iter().all(|e| *e), "{ended:?}");
    };
    // Before the claim that keeps the connection: at least as long ago as it was kept.
    let at = std::time::Instant::now();
    claim(&store, r).await;
    end_claim_backends().await;
    let first = store.claim(&claim_req(r)).await;
    let mut made = 1;
    match first {
        Err(_) => {}
        // The check's second passed on a slow machine: the ended connection was replaced first.
        Ok(Some(_)) if at.elapsed() >= Duration::from_secs(1) => made += 1,
        other => panic!("a claim on the ended connection cannot have been made: {other:?}"),
    }
    // A broken connection kept would fail this one too.
    claim(&store, r).await;
    made += 1;
    end_claim_backends().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    claim(&store, r).await;
    made += 1;
    let mut left = 0;
    while store.claim(&claim_req(r)).await.unwrap().is_some() {
        left += 1;
    }
    assert_eq!(
        made + left,
        4,
        "every task claimed once, none by the failed claim"
    );
}

/// A small pool keeps its connections for everything else: claims keep at most a quarter of the
/// pool, so in a pool of two (an admin command's) they keep none and both can be taken at once
/// after a claim.
#[tokio::test]
async fn claims_keep_no_connection_of_a_pool_of_two() {
    let (big, url) = crate::store_and_url().await;
    let repo = repo(&big, "acme/small").await;
    let r = runner(&big, "r1").await;
    queued(&big, &repo, "t").await;
    let store = Store::connect(&url, 2).await.unwrap();
    store.claim(&claim_req(r)).await.unwrap().expect("a task");
    let both = tokio::time::timeout(
        Duration::from_secs(5),
        futures::future::try_join(store.pool().acquire(), store.pool().acquire()),
    )
    .await;
    assert!(
        matches!(both, Ok(Ok(_))),
        "the claim kept a connection of a pool of two"
    );
}
