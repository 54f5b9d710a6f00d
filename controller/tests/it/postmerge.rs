//! The post-merge guard against the GitHub simulator: a merge that turns the default branch's CI
//! red is reverted by a pull request (merged by the guard in full-auto, held for a person
//! otherwise) and its task re-queued with the failed check's log; of two merges in the window only
//! the guilty one is reverted; a red that was red before is not blamed; a window that ends with
//! CI pending is `unknown` and reverts nothing. Real git, real pull requests, the real store.

use std::time::Duration;

use controller::forge::git::Pusher;
use controller::forge::labels;
use controller::pipeline::Pipeline;
use controller::pipeline::guard::Guard;
use controller::store::guard::MergeGuard;
use controller::store::repos::RepoSettings;
use controller::store::{Status, Task};

use crate::forge::{Env, REPO, drive, env, git, pipeline, sync, task_at_pushing};

const LOG: &str = "error[E0425]: cannot find function `three` in this scope";

/// A full-auto repository whose commits' CI is green unless a test says otherwise.
async fn setup() -> (Env, Pipeline, Guard) {
    let env = env().await;
    env.sim.set_default_ci("success");
    mode(&env, "full-auto").await;
    let p = pipeline(&env, vec![]);
    let guard = Guard {
        store: env.store.clone(),
        forge: env.forge.clone(),
        pusher: Pusher::new(&env.dir.path().join("guard")),
    };
    (env, p, guard)
}

async fn mode(env: &Env, mode: &str) {
    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                approval_mode: Some(mode.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

/// A task for a new issue, run and merged in full-auto; the task and its merge commit.
async fn merged(env: &Env, p: &Pipeline, files: &[(&str, &str)]) -> (Task, String) {
    let n = env
        .sim
        .create_issue(REPO, "Add a function", "", "alice", &[labels::TRIGGER]) as i64;
    let task = task_at_pushing(env, n, files).await;
    let t = drive(env, p, task.id, Status::Merged).await;
    let sha = env.sim.branch_head(REPO, "main").unwrap();
    let timeline = env.store.timeline(t.id).await.unwrap();
    let recorded = timeline
        .iter()
        .rev()
        .find(|e| e.reason == "merged")
        .and_then(|e| e.data.as_ref())
        .and_then(|d| d.0["sha"].as_str().map(str::to_owned));
    assert_eq!(
        recorded.as_deref(),
        Some(sha.as_str()),
        "the merge commit is on the timeline"
    );
    (t, sha)
}

/// Passes of the guard until `done` holds for the task's latest guard (or fails the test).
async fn guard_until(
    env: &Env,
    guard: &Guard,
    task: i64,
    what: &str,
    done: impl Fn(&MergeGuard) -> bool,
) -> MergeGuard {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        guard.pass().await.unwrap();
        let latest = env
            .store
            .task_guards(task)
            .await
            .unwrap()
            .into_iter()
            .next();
        if let Some(g) = latest.as_ref().filter(|g| done(g)) {
            return g.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {task}'s guard never became {what}: {latest:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reasons(timeline: &[controller::store::lifecycle::TaskEvent]) -> Vec<&str> {
    timeline.iter().map(|e| e.reason.as_str()).collect()
}

fn pull_creations(env: &Env) -> usize {
    env.sim
        .requests()
        .iter()
        .filter(|(m, path)| m == "POST" && path.ends_with("/pulls"))
        .count()
}

fn file_on_main(env: &Env, path: &str) -> Option<String> {
    let dir = env.sim.git_dir(REPO);
    let main = env.sim.branch_head(REPO, "main").unwrap();
    let listed = git(&dir, &["ls-tree", "--name-only", "-r", &main]);
    listed
        .lines()
        .any(|l| l == path)
        .then(|| git(&dir, &["show", &format!("{main}:{path}")]))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_merge_that_turns_main_red_is_reverted_and_its_task_requeued_with_the_log() {
    let (env, p, guard) = setup().await;
    let (task, sha) = merged(&env, &p, &[("src/three.rs", "pub fn three() {}\n")]).await;
    // Its PR's CI was green; main's CI on the merge commit is red.
    env.sim.fail_ci(REPO, &sha, LOG);
    let before = pull_creations(&env);

    let g = guard_until(&env, &guard, task.id, "reverted and merged", |g| {
        g.revert_state.as_deref() == Some("merged")
    })
    .await;
    assert_eq!(g.state, "reverted");
    assert_eq!(g.merge_sha, sha);
    assert_eq!(
        g.revert_branch.as_deref(),
        Some(&*format!("backporcher/revert-{}", task.id))
    );
    let revert_pr = g.revert_pr_number.unwrap() as u64;
    assert_eq!(
        env.sim.state_of(REPO, revert_pr),
        Some(("closed".into(), true)),
        "the revert merged"
    );
    assert_eq!(
        file_on_main(&env, "src/three.rs"),
        None,
        "the change is gone from main"
    );
    assert!(
        file_on_main(&env, "src/lib.rs").is_some(),
        "nothing else is"
    );
    assert_eq!(pull_creations(&env), before + 1, "one revert PR");

    // The task is back in the queue, from a fresh base, with the regression's log.
    let t = env.store.task(task.id).await.unwrap();
    assert_eq!(t.status, Status::Queued, "{:?}", t.error);
    assert!(!t.resume_branch);
    assert_eq!(t.pr_number, None);
    let ctx = t.retry_context.0.to_string();
    assert!(
        ctx.contains("regression") && ctx.contains("cannot find function"),
        "{ctx}"
    );
    let timeline = env.store.timeline(task.id).await.unwrap();
    let r = reasons(&timeline);
    for want in [
        "guard_watching",
        "guard_guilty",
        "guard_revert_pushed",
        "guard_revert_opened",
        "guard_reverted",
        "guard_revert_merged",
    ] {
        assert!(r.contains(&want), "{want} missing from {r:?}");
    }
    let requeue = timeline
        .iter()
        .find(|e| e.reason == "guard_reverted")
        .unwrap();
    assert_eq!(
        (requeue.from_status.as_deref(), requeue.to_status.as_str()),
        (Some("merged"), "queued")
    );

    // The notification webhook's outbox and the issue are told.
    let outbox: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, text FROM notify_outbox WHERE task_id = $1 AND kind = 'reverted'",
    )
    .bind(task.id)
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert!(outbox[0].1.contains("reverted"), "{outbox:?}");
    sync(&env).await;
    let issue = task.issue_number.unwrap() as u64;
    let comments = env.sim.comments(REPO, issue);
    assert!(
        comments
            .iter()
            .any(|c| c.contains("turned CI on `main` red")
                && c.contains(&format!("/pull/{revert_pr}"))),
        "{comments:?}"
    );
    let l = env.sim.labels(REPO, issue);
    assert!(
        l.contains(&labels::IN_PROGRESS.to_owned()) && !l.contains(&labels::DONE.to_owned()),
        "{l:?}"
    );

    // A pass that runs again opens no second revert PR and requeues nothing twice.
    guard.pass().await.unwrap();
    assert_eq!(pull_creations(&env), before + 1);
    let events = env.store.timeline(task.id).await.unwrap();
    assert_eq!(
        reasons(&events)
            .iter()
            .filter(|r| **r == "guard_reverted")
            .count(),
        1,
        "requeued once"
    );
    assert_eq!(
        env.store.task(task.id).await.unwrap().status,
        Status::Queued
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_pass_finds_the_revert_pr_it_opened() {
    let (env, p, guard) = setup().await;
    let (task, sha) = merged(&env, &p, &[("src/three.rs", "pub fn three() {}\n")]).await;
    // The repository now wants a person to approve merges: the revert waits for one too.
    mode(&env, "review-merge").await;
    env.sim.fail_ci(REPO, &sha, LOG);
    let g = guard_until(&env, &guard, task.id, "reverted", |g| g.state == "reverted").await;
    assert_eq!(
        g.revert_state.as_deref(),
        Some("awaiting_approval"),
        "a person merges the revert"
    );
    let revert_pr = g.revert_pr_number.unwrap();
    assert_eq!(
        env.sim.state_of(REPO, revert_pr as u64),
        Some(("open".into(), false))
    );
    let creations = pull_creations(&env);

    // The record of the PR is lost (a replica died after opening it): the next pass finds the
    // PR by the key in its body and opens none.
    sqlx::query("UPDATE merge_guards SET state = 'guilty', revert_pr_number = NULL, revert_pr_url = NULL, revert_state = NULL WHERE id = $1")
        .bind(g.id)
        .execute(env.store.pool())
        .await
        .unwrap();
    let g = guard_until(&env, &guard, task.id, "reverted again", |g| {
        g.state == "reverted"
    })
    .await;
    assert_eq!(g.revert_pr_number, Some(revert_pr), "the same revert PR");
    assert_eq!(pull_creations(&env), creations, "no second revert PR");
    guard.pass().await.unwrap();
    assert_eq!(pull_creations(&env), creations);
    let events = env.store.timeline(task.id).await.unwrap();
    assert_eq!(
        reasons(&events)
            .iter()
            .filter(|r| **r == "guard_reverted")
            .count(),
        1,
        "requeued once"
    );
    assert_eq!(
        env.sim.state_of(REPO, revert_pr as u64),
        Some(("open".into(), false)),
        "not merged without a person"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_merges_in_the_window_only_the_guilty_second_is_reverted() {
    let (env, p, guard) = setup().await;
    let (first, first_sha) = merged(&env, &p, &[("src/three.rs", "pub fn three() {}\n")]).await;
    let (second, second_sha) = merged(&env, &p, &[("src/four.rs", "pub fn four() {}\n")]).await;
    assert_ne!(first_sha, second_sha);
    // CI skipped the first merge commit (a later push cancelled it); the second one is red.
    env.sim.set_check_runs(REPO, &first_sha, &[]);
    env.sim.set_statuses(REPO, &first_sha, &[]);
    env.sim.fail_ci(REPO, &second_sha, LOG);

    // The second is red, but the commit before it (the first merge) has no verdict: the first
    // is bisected — a probe branch at its commit so CI runs there — and the second waits.
    let g1 = guard_until(&env, &guard, first.id, "probed", |g| {
        g.probe_branch.is_some()
    })
    .await;
    assert_eq!(
        g1.probe_branch.as_deref(),
        Some(&*format!("backporcher/guard-{}", first.id))
    );
    assert_eq!(
        env.sim
            .branch_head(REPO, &format!("backporcher/guard-{}", first.id)),
        Some(first_sha.clone()),
        "the probe branch points at the first merge"
    );
    guard.pass().await.unwrap();
    assert_eq!(
        env.store.task_guards(second.id).await.unwrap()[0].state,
        "watching"
    );
    // CI ran on the probe: green.
    env.sim.set_ci(REPO, &first_sha, "success");
    let g2 = guard_until(&env, &guard, second.id, "reverted", |g| {
        g.revert_state.as_deref() == Some("merged")
    })
    .await;
    assert_eq!(g2.merge_sha, second_sha);
    let g1 = env.store.task_guards(first.id).await.unwrap().remove(0);
    assert_eq!(
        (g1.state.as_str(), g1.reason.as_deref()),
        ("clean", Some("green"))
    );
    assert_eq!(g1.revert_pr_number, None, "the first merge is not reverted");
    assert_eq!(
        env.store.task(first.id).await.unwrap().status,
        Status::Merged
    );
    assert_eq!(
        env.store.task(second.id).await.unwrap().status,
        Status::Queued
    );
    assert!(
        file_on_main(&env, "src/three.rs").is_some(),
        "the first change stays"
    );
    assert_eq!(
        file_on_main(&env, "src/four.rs"),
        None,
        "the second is reverted"
    );
    assert_eq!(
        env.sim
            .branch_head(REPO, &format!("backporcher/guard-{}", first.id)),
        None,
        "the probe branch is removed"
    );
    let reverted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM merge_guards WHERE state = 'reverted'")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(reverted, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_red_that_was_red_before_the_merge_is_not_blamed() {
    let (env, p, guard) = setup().await;
    // main is red before the merge.
    let before = env.sim.branch_head(REPO, "main").unwrap();
    env.sim
        .fail_ci(REPO, &before, "flaky: the integration job times out");
    let (task, sha) = merged(&env, &p, &[("src/three.rs", "pub fn three() {}\n")]).await;
    env.sim
        .fail_ci(REPO, &sha, "flaky: the integration job times out");
    let g = guard_until(&env, &guard, task.id, "ended", |g| g.state != "watching").await;
    assert_eq!(
        (g.state.as_str(), g.reason.as_deref()),
        ("clean", Some("red_before"))
    );
    assert_eq!(g.revert_pr_number, None);
    assert_eq!(
        env.store.task(task.id).await.unwrap().status,
        Status::Merged
    );
    assert!(file_on_main(&env, "src/three.rs").is_some());
    let r = reasons(&env.store.timeline(task.id).await.unwrap()).join(",");
    assert!(r.contains("guard_red_before"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_that_ends_with_ci_pending_is_unknown_and_reverts_nothing() {
    let (env, p, guard) = setup().await;
    let (task, sha) = merged(&env, &p, &[("src/three.rs", "pub fn three() {}\n")]).await;
    env.sim.set_ci(REPO, &sha, "pending");
    let g = guard_until(&env, &guard, task.id, "watching", |g| g.state == "watching").await;
    guard.pass().await.unwrap();
    assert_eq!(
        env.store.task_guards(task.id).await.unwrap()[0].state,
        "watching",
        "pending waits"
    );
    // The window ends.
    sqlx::query("UPDATE merge_guards SET deadline = now() WHERE id = $1")
        .bind(g.id)
        .execute(env.store.pool())
        .await
        .unwrap();
    let g = guard_until(&env, &guard, task.id, "ended", |g| g.state != "watching").await;
    assert_eq!(
        (g.state.as_str(), g.reason.as_deref()),
        ("unknown", Some("window_ended"))
    );
    // CI turning red afterwards changes nothing: it is no longer watched.
    env.sim.fail_ci(REPO, &sha, LOG);
    guard.pass().await.unwrap();
    assert_eq!(
        env.store.task_guards(task.id).await.unwrap()[0].state,
        "unknown"
    );
    assert_eq!(
        env.store.task(task.id).await.unwrap().status,
        Status::Merged
    );
    assert!(file_on_main(&env, "src/three.rs").is_some());
    let r = reasons(&env.store.timeline(task.id).await.unwrap()).join(",");
    assert!(r.contains("guard_window_ended"), "{r}");
    assert!(!r.contains("guard_guilty"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guard_window_out_of_range_is_refused_and_zero_turns_the_guard_off() {
    let (env, p, guard) = setup().await;
    for bad in [
        RepoSettings {
            guard_window_secs: Some(7 * 24 * 3600 + 1),
            ..Default::default()
        },
        RepoSettings {
            guard_window_commits: Some(201),
            ..Default::default()
        },
        RepoSettings {
            guard_window_secs: Some(-1),
            ..Default::default()
        },
    ] {
        let e = env.store.update_repo(env.repo.id, &bad).await.unwrap_err();
        assert!(e.to_string().contains("guard window"), "{e}");
    }
    let r = env
        .store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                guard_window_secs: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((r.guard_window_secs, r.guard_window_commits), (0, 10));
    let (task, sha) = merged(&env, &p, &[("src/three.rs", "pub fn three() {}\n")]).await;
    env.sim.fail_ci(REPO, &sha, LOG);
    assert!(!guard.pass().await.unwrap(), "nothing watched");
    assert!(env.store.task_guards(task.id).await.unwrap().is_empty());
    assert_eq!(
        env.store.task(task.id).await.unwrap().status,
        Status::Merged
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_reverted_a_second_time_fails() {
    let (env, p, guard) = setup().await;
    let (task, sha) = merged(&env, &p, &[("src/three.rs", "pub fn three() {}\n")]).await;
    // An earlier merge of the same task was reverted already.
    sqlx::query(
        "INSERT INTO merge_guards (task_id, repo_id, merge_sha, state, reason, merged_at, deadline, \
         window_commits, revert_state, revert_pr_number, requeued) \
         VALUES ($1, $2, 'earlier', 'reverted', 'red', now() - interval '1 day', now() - interval '1 day', 10, 'merged', 99, true)",
    )
    .bind(task.id)
    .bind(env.repo.id)
    .execute(env.store.pool())
    .await
    .unwrap();
    env.sim.fail_ci(REPO, &sha, LOG);
    let g = guard_until(&env, &guard, task.id, "reverted", |g| g.requeued).await;
    assert_eq!(g.merge_sha, sha);
    let t = env.store.task(task.id).await.unwrap();
    assert_eq!(t.status, Status::Failed);
    assert!(
        t.error
            .as_deref()
            .unwrap_or_default()
            .contains("reverted 2 times"),
        "{:?}",
        t.error
    );
    let r = reasons(&env.store.timeline(task.id).await.unwrap()).join(",");
    assert!(r.contains("reverted_too_often"), "{r}");
}

/// A step that keeps failing is not tried for ever: each failure is on the timeline, and at the
/// bound the watch ends as `unknown` (`step_failed`), no longer worked on.
#[tokio::test(flavor = "multi_thread")]
async fn a_guard_step_that_keeps_failing_ends_the_watch_at_the_bound() {
    let (env, p, guard) = setup().await;
    let (task, sha) = merged(&env, &p, &[("src/four.rs", "pub fn four() {}\n")]).await;
    env.sim.set_ci(REPO, &sha, "pending");
    let g = guard_until(&env, &guard, task.id, "watching", |g| g.state == "watching").await;
    let bound = controller::store::guard::MAX_GUARD_ERRORS;
    for i in 1..bound {
        assert!(
            !env.store.guard_step_failed(&g, "refused").await.unwrap(),
            "failure {i} of {bound} ended the watch"
        );
    }
    assert!(env.store.guard_step_failed(&g, "refused").await.unwrap());
    let g = env.store.task_guards(task.id).await.unwrap().remove(0);
    assert_eq!(
        (g.state.as_str(), g.reason.as_deref()),
        ("unknown", Some("step_failed"))
    );
    // Ended: a further failure changes nothing and adds nothing to the timeline.
    assert!(env.store.guard_step_failed(&g, "refused").await.unwrap());
    let timeline = env.store.timeline(task.id).await.unwrap();
    let r = reasons(&timeline);
    assert_eq!(
        r.iter().filter(|x| **x == "guard_step_failed").count(),
        bound as usize
    );
}

/// The merged change's own code, running in main's CI with a writable token, plants a commit on
/// the revert branch before the guard makes its revert — a backdoor, with the revert's marker
/// line copied — and fails main's CI so the guard reverts. The guard makes its own revert
/// instead, and what merges is that revert: the planted file never reaches main.
#[tokio::test(flavor = "multi_thread")]
async fn a_revert_branch_planted_before_the_revert_is_replaced_not_merged() {
    let (env, p, guard) = setup().await;
    let (task, sha) = merged(&env, &p, &[("src/three.rs", "pub fn three() {}\n")]).await;
    let work = env.dir.path().join("planted");
    git(
        env.dir.path(),
        &[
            "clone",
            "--quiet",
            &env.sim.git_dir(REPO).to_string_lossy(),
            &work.to_string_lossy(),
        ],
    );
    let branch = format!("backporcher/revert-{}", task.id);
    git(&work, &["checkout", "--quiet", "-b", &branch]);
    std::fs::write(work.join("src/backdoor.rs"), "pub fn open() {}\n").unwrap();
    git(&work, &["add", "-A"]);
    let message = format!(
        "Revert \"Add a function\"\n\n{}\n",
        controller::forge::revert::revert_marker(&sha)
    );
    git(
        &work,
        &[
            "-c",
            "user.name=ci",
            "-c",
            "user.email=ci@localhost",
            "commit",
            "--quiet",
            "-m",
            &message,
        ],
    );
    let planted = git(&work, &["rev-parse", "HEAD"]);
    git(
        &work,
        &[
            "push",
            "--quiet",
            "origin",
            &format!("HEAD:refs/heads/{branch}"),
        ],
    );

    env.sim.fail_ci(REPO, &sha, LOG);
    let g = guard_until(&env, &guard, task.id, "reverted and merged", |g| {
        g.revert_state.as_deref() == Some("merged")
    })
    .await;
    assert_ne!(
        g.revert_sha.as_deref(),
        Some(planted.as_str()),
        "the planted commit was not adopted"
    );
    assert_eq!(
        file_on_main(&env, "src/backdoor.rs"),
        None,
        "the planted file never merged"
    );
    assert_eq!(
        file_on_main(&env, "src/three.rs"),
        None,
        "the change was reverted"
    );
}

/// Someone pushes onto the revert branch after the guard opened its PR (while its CI runs): the
/// guard merges only the revert it made, so the PR is left to a person (`moved`), and the pushed
/// file never reaches main.
#[tokio::test(flavor = "multi_thread")]
async fn a_revert_pr_whose_head_moved_is_left_to_a_person() {
    let (env, p, guard) = setup().await;
    let (task, sha) = merged(&env, &p, &[("src/three.rs", "pub fn three() {}\n")]).await;
    env.sim.fail_ci(REPO, &sha, LOG);
    // The pass that opens the revert PR does not merge it yet: the push lands in between.
    let g = guard_until(&env, &guard, task.id, "reverted, its PR open", |g| {
        g.revert_pr_number.is_some() && g.revert_state.as_deref() == Some("open")
    })
    .await;
    env.sim
        .push_commit(
            REPO,
            g.revert_branch.as_deref().unwrap(),
            &[("src/backdoor.rs", "pub fn open() {}\n")],
        )
        .unwrap();
    let g = guard_until(&env, &guard, task.id, "left to a person", |g| {
        g.revert_state.as_deref() == Some("moved")
    })
    .await;
    assert_eq!(g.state, "reverted");
    assert_eq!(file_on_main(&env, "src/backdoor.rs"), None);
    assert!(
        !env.sim
            .state_of(REPO, g.revert_pr_number.unwrap() as u64)
            .unwrap()
            .1,
        "the revert PR was not merged"
    );
}
