//! The CI gate against the GitHub simulator (review M15): check runs, commit statuses, labelled
//! issues and issue events are read past their first page, a list cut at the page cap is never
//! green, and a pull request on which no check appears waits for a person unless the repository
//! opted in to merging without CI.

use std::time::Duration;

use controller::forge::{CheckState, CiVerdict, Forge, labels};
use controller::pipeline::Pipeline;
use controller::store::repos::RepoSettings;
use controller::store::{Status, Task};

use crate::forge::{Env, REPO, drive, env, intake_config, pipeline, sync, task_at_pushing};

/// A full-auto repository with the given no-checks policy and grace (`None`: as they are).
async fn full_auto(env: &Env, no_checks: Option<&str>, grace_secs: Option<i32>) {
    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                approval_mode: Some("full-auto".into()),
                no_checks: no_checks.map(str::to_owned),
                no_checks_grace_secs: grace_secs,
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

/// Runs due stages until the task leaves `from` (or fails the test).
async fn leave(env: &Env, p: &Pipeline, id: i64, from: Status) -> Task {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        p.run_due().await.unwrap();
        let t = env.store.task(id).await.unwrap();
        if t.status != from {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} stuck in {from}"
        );
        sqlx::query("UPDATE tasks SET stage_due_at = LEAST(stage_due_at, now() + interval '50 milliseconds') WHERE id = $1")
            .bind(id)
            .execute(env.store.pool())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` names `{prefix}-1…n` with outcome `ok`, except number `bad`, whose outcome is `failed`.
fn many(prefix: &str, n: usize, bad: usize, ok: &str, failed: &str) -> Vec<(String, String)> {
    (1..=n)
        .map(|i| {
            let outcome = if i == bad { failed } else { ok };
            (format!("{prefix}-{i}"), outcome.to_owned())
        })
        .collect()
}

fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// A full-auto task whose PR waits in `ci_wait`; its head commit.
async fn task_in_ci(env: &Env, p: &Pipeline) -> (Task, String) {
    full_auto(env, None, None).await;
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let task = task_at_pushing(env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let t = drive(env, p, task.id, Status::CiWait).await;
    let head = t.head_sha.clone().unwrap();
    (t, head)
}

/// After a red verdict the task is re-queued for a CI retry naming `failed`, and nothing merged.
fn assert_red(env: &Env, t: &Task, failed: &str) {
    assert_eq!(t.status, Status::Queued, "red CI re-queues: {:?}", t.error);
    assert_eq!(t.ci_retries, 1);
    let ctx = t.retry_context.0.to_string();
    assert!(ctx.contains(failed), "{ctx}");
    assert_eq!(
        env.sim.state_of(REPO, t.pr_number.unwrap() as u64),
        Some(("open".into(), false)),
        "nothing merged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_check_run_past_the_first_hundred_makes_ci_red() {
    let env = env().await;
    let p = pipeline(&env, vec![]);
    let (task, head) = task_in_ci(&env, &p).await;
    // 150 check runs; number 130 (on the second page) failed.
    let runs = many("job", 150, 130, "success", "failure");
    env.sim.set_check_runs(REPO, &head, &pairs(&runs));
    env.sim.set_statuses(REPO, &head, &[("ci/sim", "success")]);
    let t = leave(&env, &p, task.id, Status::CiWait).await;
    assert_red(&env, &t, "job-130");
    assert!(
        env.sim
            .requests()
            .iter()
            .any(|(_, path)| path.contains("/check-runs?") && path.ends_with("page=2")),
        "the second page was read"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_status_past_the_first_hundred_makes_ci_red() {
    let env = env().await;
    let p = pipeline(&env, vec![]);
    let (task, head) = task_in_ci(&env, &p).await;
    // No check runs; 120 commit statuses, number 110 failed.
    let statuses = many("ci/ctx", 120, 110, "success", "failure");
    env.sim.set_statuses(REPO, &head, &pairs(&statuses));
    let t = leave(&env, &p, task.id, Status::CiWait).await;
    assert_red(&env, &t, "ci/ctx-110");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_list_cut_at_the_page_cap_is_pending_never_green() {
    let env = env().await;
    let sha = env.sim.branch_head(REPO, "main").unwrap();
    // 1,050 passed check runs: more than the controller reads (10 pages of 100).
    let runs = many("job", 1050, 0, "success", "failure");
    env.sim.set_check_runs(REPO, &sha, &pairs(&runs));
    env.sim.set_statuses(REPO, &sha, &[("ci/sim", "success")]);
    let checks = env.forge.checks(REPO, &sha).await.unwrap();
    let cut: Vec<_> = checks
        .iter()
        .filter(|c| c.state == CheckState::Pending)
        .collect();
    assert_eq!(cut.len(), 1, "one pending check stands for the unread rest");
    assert!(cut[0].name.contains("not read"), "{}", cut[0].name);
    assert!(
        matches!(CiVerdict::of(checks, &[]), CiVerdict::Pending(_)),
        "a cut list is not green"
    );
    // Statuses past the cap likewise.
    let statuses = many("ci/ctx", 1001, 0, "success", "failure");
    env.sim.set_check_runs(REPO, &sha, &[("build", "success")]);
    env.sim.set_statuses(REPO, &sha, &pairs(&statuses));
    let checks = env.forge.checks(REPO, &sha).await.unwrap();
    assert!(
        matches!(CiVerdict::of(checks, &[]), CiVerdict::Pending(_)),
        "a cut status list is not green"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_poller_picks_up_every_labelled_issue_past_the_first_page() {
    let env = env().await;
    let numbers: Vec<u64> = (1..=130)
        .map(|i| {
            env.sim
                .create_issue(REPO, &format!("Issue {i}"), "", "alice", &[labels::TRIGGER])
        })
        .collect();
    let cfg = intake_config();
    let created = controller::intake::poller::poll_once(&env.store, env.forge.as_ref(), &cfg)
        .await
        .unwrap();
    assert_eq!(
        created.len(),
        numbers.len(),
        "every labelled issue is a task"
    );
    // A list of several pages is read whole again next time (one page's ETag says nothing of
    // the others), and makes no second task.
    assert_eq!(env.store.poll_etag(env.repo.id).await.unwrap(), None);
    let again = controller::intake::poller::poll_once(&env.store, env.forge.as_ref(), &cfg)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn who_labelled_an_issue_with_more_events_than_the_cap_is_unknown() {
    let env = env().await;
    let n = env
        .sim
        .create_issue(REPO, "Busy", "", "alice", &[labels::TRIGGER]);
    for _ in 0..120 {
        env.sim.label_issue(REPO, n, "noise", "alice").await;
    }
    assert_eq!(
        env.forge
            .label_actor(REPO, n as i64, labels::TRIGGER)
            .await
            .unwrap()
            .as_deref(),
        Some("alice"),
        "events over two pages are read"
    );
    for _ in 0..900 {
        env.sim.label_issue(REPO, n, "noise", "alice").await;
    }
    assert_eq!(
        env.forge
            .label_actor(REPO, n as i64, labels::TRIGGER)
            .await
            .unwrap(),
        None,
        "the latest events were not read: nobody is assumed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pr_without_checks_holds_for_a_person_by_default_and_says_why() {
    let env = env().await;
    assert_eq!(env.repo.no_checks, "hold", "the default policy");
    assert_eq!(env.repo.no_checks_grace_secs, 600, "the default grace");
    // Full-auto, default policy; the test does not wait ten minutes.
    full_auto(&env, None, Some(0)).await;
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let p = pipeline(&env, vec![]);
    let t = drive(&env, &p, task.id, Status::CiWait).await;
    let t = leave(&env, &p, t.id, Status::CiWait).await;
    assert_eq!(t.status, Status::ApprovalHold, "no merge without CI");
    let ev = env.store.timeline(task.id).await.unwrap();
    let last = ev.last().unwrap();
    assert_eq!(last.reason, "no_checks");
    let message = last.data.as_ref().unwrap().0["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("no CI check appeared"), "{message}");
    assert!(
        message.contains(&format!("backporcher approve {}", task.id)),
        "{message}"
    );
    sync(&env).await;
    let comments = env.sim.comments(REPO, n as u64);
    assert!(
        comments
            .iter()
            .any(|c| c.contains("no CI check appeared") && c.contains("backporcher approve")),
        "{comments:?}"
    );
    p.run_due().await.unwrap();
    assert_eq!(
        env.sim.state_of(REPO, t.pr_number.unwrap() as u64),
        Some(("open".into(), false)),
        "nothing merges by itself"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pr_without_checks_merges_after_the_grace_only_when_the_repository_opts_in() {
    let env = env().await;
    full_auto(&env, Some("merge"), Some(2)).await;
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let p = pipeline(&env, vec![]);
    let t = drive(&env, &p, task.id, Status::CiWait).await;
    p.run_due().await.unwrap();
    assert_eq!(
        env.store.task(task.id).await.unwrap().status,
        Status::CiWait,
        "within the grace it waits for checks"
    );
    let t = drive(&env, &p, t.id, Status::Merged).await;
    assert_eq!(
        env.sim.state_of(REPO, t.pr_number.unwrap() as u64),
        Some(("closed".into(), true))
    );
    let ev = env.store.timeline(task.id).await.unwrap();
    assert!(
        ev.iter().any(|e| e.reason == "no_checks_merge"),
        "the timeline says it merged without CI"
    );
    let waited = ev
        .iter()
        .find(|e| e.reason == "no_checks_merge")
        .unwrap()
        .at
        - ev.iter()
            .rev()
            // Entering `ci_wait` (not a note made while in it, such as the merge queue's).
            .find(|e| e.to_status == "ci_wait" && e.from_status.as_deref() != Some("ci_wait"))
            .unwrap()
            .at;
    assert!(waited >= chrono::Duration::seconds(2), "{waited}");
}
