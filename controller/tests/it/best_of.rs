//! Best-of-N against the real store, git and the GitHub simulator: candidates leased by different
//! runners, ranked when they end, only the winner pushed as the task's one PR; the cost cap
//! stopping the rest; cancel stopping every candidate; lease loss re-queuing a candidate; a
//! round where all fail following a single attempt's failure path.

use controller::store::claims::LeaseRef;
use controller::store::completion::{Completion, Outcome};
use controller::store::repos::RepoSettings;
use controller::store::tasks::{NewTask, RetryPolicy, Triage};
use controller::store::{Status, Store, Task, TerminalReason};
use serde_json::json;

use crate::forge::{REPO, env, make_bundle, pipeline};

/// A best-of-`n` task, triaged onto the queue.
async fn best_of_task(store: &Store, repo: i64, n: i32, title: &str) -> Task {
    let mut t = NewTask::for_issue(repo, 0, title, "add fn two");
    t.issue_number = None;
    t.best_of = Some(n);
    let task = store.create_task(&t).await.unwrap();
    store
        .triage(task.id, &Triage::default(), &crate::note("triaged"))
        .await
        .unwrap()
}

/// Claims as a fresh runner: the claim of the best-of-N task makes its candidates and hands out
/// the next one.
async fn claim_candidate(store: &Store, parent: i64) -> (Task, LeaseRef) {
    let runner = crate::runner(store, &format!("r-{}", uuid::Uuid::new_v4())).await;
    let (t, lease) = crate::claim(store, runner).await;
    assert_eq!(
        t.parent_id,
        Some(parent),
        "a candidate of the task is leased"
    );
    (t, lease)
}

/// A succeeded completion with `files` as its change and `data` as the runner's result data.
fn succeeded(branch: &str, head: String, data: serde_json::Value) -> Completion {
    let mut c = Completion::new(Outcome::Succeeded);
    c.branch = Some(branch.to_owned());
    c.head_sha = Some(head);
    c.data = Some(json!({"summary": "", "data": data}));
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn best_of_three_pushes_only_the_passing_candidate_with_the_smaller_diff() {
    let env = env().await;
    let parent = best_of_task(&env.store, env.repo.id, 3, "Add two").await;
    assert_eq!(parent.best_of, 3);
    let branch = parent.branch.clone().unwrap();

    // Three runners lease the three candidates; the task itself is on none.
    let mut leased = Vec::new();
    for _ in 0..3 {
        leased.push(claim_candidate(&env.store, parent.id).await);
    }
    let mut indexes: Vec<i32> = leased.iter().map(|(t, _)| t.candidate.unwrap()).collect();
    indexes.sort();
    assert_eq!(indexes, [1, 2, 3]);
    let p = env.store.task(parent.id).await.unwrap();
    assert_eq!(p.status, Status::Candidates);
    assert_eq!(p.lease_token, None);
    for (t, _) in &leased {
        assert_eq!(
            t.branch.as_deref(),
            Some(branch.as_str()),
            "candidates work on the task's branch"
        );
        assert_eq!(t.issue_number, None);
    }
    let rp = RetryPolicy::default();

    // 1: verify fails.
    let (_, l1) = &leased[0];
    let mut c = Completion::new(Outcome::VerifyFailed);
    c.error = Some("tests fail".into());
    let done = env.store.complete(l1, &c, &rp).await.unwrap();
    assert_eq!(done.task.status, Status::Finished);
    assert_eq!(
        done.task.terminal_reason.0,
        Some(TerminalReason::VerifyFailed)
    );
    assert_eq!(
        env.store.task(parent.id).await.unwrap().status,
        Status::Candidates,
        "one failure does not end the task"
    );

    // 2: passes with a larger diff.
    let big: String = (0..40)
        .map(|i| format!("pub fn f{i}() -> u32 {{ {i} }}\n"))
        .collect();
    let (_, l2) = &leased[1];
    let (bundle, head_big) = make_bundle(&env, &branch, &[("src/lib.rs", &big)]);
    env.store.store_bundle(l2, &bundle, "sha").await.unwrap();
    let c = succeeded(
        &branch,
        head_big.clone(),
        json!({"insertions": 40, "deletions": 1}),
    );
    env.store.complete(l2, &c, &rp).await.unwrap();
    assert_eq!(
        env.store.task(parent.id).await.unwrap().status,
        Status::Candidates
    );

    // 3: passes with a smaller diff and its blast radius fully covered.
    let (_, l3) = &leased[2];
    let (bundle, head_small) = make_bundle(
        &env,
        &branch,
        &[(
            "src/lib.rs",
            "pub fn one() -> u32 { 1 }\npub fn two() -> u32 { 2 }\n",
        )],
    );
    env.store.store_bundle(l3, &bundle, "sha").await.unwrap();
    let c = succeeded(
        &branch,
        head_small.clone(),
        json!({"insertions": 1, "deletions": 0, "coverage": 1.0}),
    );
    let done = env.store.complete(l3, &c, &rp).await.unwrap();
    assert_eq!(done.task.status, Status::Finished);
    assert_eq!(
        env.store.task(parent.id).await.unwrap().status,
        Status::Pushing,
        "all ended: ranked and pushed"
    );

    // The push stage ranks and pushes the winner: one PR, the small diff's head.
    let pl = pipeline(&env, vec![]);
    let t = crate::forge::drive(&env, &pl, parent.id, Status::PrOpen).await;
    assert!(t.pr_number.is_some());
    assert_eq!(t.head_sha.as_deref(), Some(head_small.as_str()));
    assert_eq!(
        env.sim.branch_head(REPO, &branch).as_deref(),
        Some(head_small.as_str())
    );
    let prs = env
        .sim
        .requests()
        .into_iter()
        .filter(|(m, path)| m == "POST" && path.ends_with("/pulls"))
        .count();
    assert_eq!(prs, 1, "only the winner opens a PR");
    for (c, _) in &leased {
        let c = env.store.task(c.id).await.unwrap();
        assert_eq!(c.pr_number, None, "a candidate never has a PR of its own");
        assert_eq!(c.status, Status::Finished);
    }

    // The ranking record: every candidate's inputs, rank and why it lost.
    let r = env
        .store
        .ranking(parent.id, t.attempt)
        .await
        .unwrap()
        .expect("a ranking");
    let (_, l3) = &leased[2];
    assert_eq!(r.winner, Some(l3.task_id));
    assert!(
        r.reviewer.starts_with("scored 2 finalists"),
        "{}",
        r.reviewer
    );
    // The reviewer approved both finalists: the diff decided.
    let entries = r.entries.0.as_array().unwrap().clone();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["task_id"], l3.task_id);
    assert_eq!(entries[0]["coverage"], 1.0);
    assert!(
        entries[1]["reason"]
            .as_str()
            .unwrap()
            .contains("larger diff (41 lines"),
        "{entries:?}"
    );
    assert!(
        entries[2]["reason"]
            .as_str()
            .unwrap()
            .contains("verify_failed"),
        "{entries:?}"
    );
    assert!(r.rank_micros >= 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cost_cap_stops_the_other_candidates_and_the_finished_one_is_ranked() {
    let env = env().await;
    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                budget_task_microusd: Some(3_000_000),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
    let parent = best_of_task(&env.store, env.repo.id, 3, "Add two").await;
    let branch = parent.branch.clone().unwrap();
    let mut leased = Vec::new();
    for _ in 0..3 {
        leased.push(claim_candidate(&env.store, parent.id).await);
    }
    // Each candidate was granted its share: the three grants together are the task's budget.
    let granted: i64 = {
        let mut sum = 0;
        for (t, _) in &leased {
            let g: i64 = sqlx::query_scalar("SELECT granted_microusd FROM tasks WHERE id = $1")
                .bind(t.id)
                .fetch_one(env.store.pool())
                .await
                .unwrap();
            sum += g;
        }
        sum
    };
    assert_eq!(granted, 3_000_000);

    // The first finishes having spent the whole budget (more than its share, as reported).
    let (_, l1) = &leased[0];
    let (bundle, head) = make_bundle(&env, &branch, &[("src/two.rs", "pub fn two() {}\n")]);
    env.store.store_bundle(l1, &bundle, "sha").await.unwrap();
    let mut c = succeeded(&branch, head, json!({"insertions": 1, "deletions": 0}));
    c.cost_microusd = 3_000_000;
    env.store
        .complete(l1, &c, &RetryPolicy::default())
        .await
        .unwrap();

    // The cap is crossed: the task goes on to rank what finished and the others are told to stop.
    let p = env.store.task(parent.id).await.unwrap();
    assert_eq!(p.status, Status::Pushing);
    assert_eq!(p.cost_microusd, 3_000_000);
    for (t, lease) in &leased[1..] {
        let r = env
            .store
            .renew(lease, std::time::Duration::from_secs(60))
            .await
            .unwrap();
        assert!(r.cancel_requested, "candidate {} is told to stop", t.id);
        // The runner stops and reports it.
        let done = env
            .store
            .complete(
                lease,
                &Completion::new(Outcome::Canceled),
                &RetryPolicy::default(),
            )
            .await
            .unwrap();
        assert_eq!(done.task.status, Status::Finished);
        assert_eq!(
            done.task.terminal_reason.0,
            Some(TerminalReason::CanceledByUser)
        );
    }
    let events: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM task_events WHERE task_id = $1 ORDER BY id")
            .bind(parent.id)
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert!(events.contains(&"cost_cap".to_owned()), "{events:?}");
    let t = crate::forge::drive(&env, &pipeline(&env, vec![]), parent.id, Status::PrOpen).await;
    let r = env
        .store
        .ranking(parent.id, t.attempt)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.winner, Some(leased[0].1.task_id));
    assert!(r.reviewer.starts_with("not consulted"), "{}", r.reviewer);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_of_the_task_cancels_every_candidate() {
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/cancel").await;
    let parent = best_of_task(&store, repo.id, 3, "Add two").await;
    // Two candidates on runners, one still queued.
    let (a, la) = claim_candidate(&store, parent.id).await;
    let (b, lb) = claim_candidate(&store, parent.id).await;
    let (outcome, p) = store
        .cancel(parent.id, &crate::note("cancel"))
        .await
        .unwrap();
    assert_eq!(outcome, controller::store::tasks::CancelOutcome::Canceled);
    assert_eq!(p.status, Status::Canceled);
    let all = store.candidates_of(parent.id).await.unwrap();
    assert_eq!(all.len(), 3);
    for c in &all {
        if c.id == a.id || c.id == b.id {
            assert!(
                c.cancel_requested_at.is_some(),
                "candidate {} on a runner is asked to stop",
                c.id
            );
            assert!(c.status.is_active());
        } else {
            assert_eq!(
                c.status,
                Status::Finished,
                "the queued candidate ends at once"
            );
            assert_eq!(c.terminal_reason.0, Some(TerminalReason::CanceledByUser));
        }
    }
    // Nothing of the task is claimable any more.
    let r = crate::runner(&store, "late").await;
    assert!(store.claim(&crate::claim_req(r)).await.unwrap().is_none());
    // The runners' heartbeats say cancel; completions end the candidates, not the task again.
    for l in [&la, &lb] {
        assert!(
            store
                .renew(l, std::time::Duration::from_secs(60))
                .await
                .unwrap()
                .cancel_requested
        );
        let done = store
            .complete(
                l,
                &Completion::new(Outcome::Canceled),
                &RetryPolicy::default(),
            )
            .await
            .unwrap();
        assert_eq!(done.task.status, Status::Finished);
    }
    assert_eq!(
        store.task(parent.id).await.unwrap().status,
        Status::Canceled
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_candidate_lease_requeues_the_candidate_and_all_failing_retries_the_task() {
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/lost").await;
    let parent = best_of_task(&store, repo.id, 2, "Add two").await;
    let (a, la) = claim_candidate(&store, parent.id).await;
    let (_, lb) = claim_candidate(&store, parent.id).await;

    // a's runner goes silent: the reaper puts a back on the queue, the task waits on.
    crate::expire_now(&store, a.id).await;
    let reaped = store.reap_expired(10).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].status, Status::Queued);
    assert!(
        store
            .settle_candidates(&RetryPolicy::default(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.task(parent.id).await.unwrap().status,
        Status::Candidates
    );
    // The old lease is fenced off.
    assert!(
        store
            .renew(&la, std::time::Duration::from_secs(60))
            .await
            .is_err()
    );
    let (a2, la2) = claim_candidate(&store, parent.id).await;
    assert_eq!(a2.id, a.id);
    assert_eq!(a2.attempt, a.attempt + 1);

    // Both fail: the task follows a single attempt's failure path (a retry, a new round).
    let rp = RetryPolicy::default();
    store
        .complete(&lb, &Completion::new(Outcome::AgentFailed), &rp)
        .await
        .unwrap();
    assert_eq!(
        store.task(parent.id).await.unwrap().status,
        Status::Candidates
    );
    store
        .complete(&la2, &Completion::new(Outcome::AgentFailed), &rp)
        .await
        .unwrap();
    let p = store.task(parent.id).await.unwrap();
    assert_eq!(p.status, Status::Queued, "{:?}", p.error);
    assert_eq!(p.agent_retries, 1);
    assert!(p.error.unwrap().contains("no candidate of 2 succeeded"));
    // The next claim starts a new round with fresh candidates.
    // (The failure's reflection hold is lifted here; its diagnosis is tested elsewhere.)
    sqlx::query("UPDATE tasks SET hold_kind = NULL, hold_until = NULL, ev_seq = ev_seq + 1, ev_reason = 'test' WHERE id = $1")
        .bind(parent.id)
        .execute(store.pool())
        .await
        .unwrap();
    let (c, _) = claim_candidate(&store, parent.id).await;
    assert_ne!(c.id, a.id);
    assert_eq!(store.candidates_of(parent.id).await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn best_of_one_is_a_single_attempt_and_a_repository_setting_applies() {
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/one").await;
    let t = crate::queued(&store, &repo, "plain").await;
    assert_eq!(t.best_of, 1);
    let r = crate::runner(&store, "r").await;
    let (claimed, _) = crate::claim(&store, r).await;
    assert_eq!(claimed.id, t.id, "N=1 leases the task itself");
    assert!(store.candidates_of(t.id).await.unwrap().is_empty());

    store
        .update_repo(
            repo.id,
            &RepoSettings {
                best_of: Some(2),
                best_of_models: Some(vec!["opus".into(), "haiku".into()]),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
    let t = crate::queued(&store, &repo, "two").await;
    assert_eq!(t.best_of, 2);
    let (c1, _) = claim_candidate(&store, t.id).await;
    let (c2, _) = claim_candidate(&store, t.id).await;
    let mut models = vec![c1.model, c2.model];
    models.sort();
    assert_eq!(
        models,
        ["haiku", "opus"],
        "candidates cycle through the repository's models"
    );
    // Out of range is refused with what to do.
    let e = store
        .update_repo(
            repo.id,
            &RepoSettings {
                best_of: Some(9),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("between 1 and 5"), "{e}");
}
