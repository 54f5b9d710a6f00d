//! The merge queue against the GitHub simulator: changes that touch the same file merge one at a
//! time, each only after CI was green on its branch brought up to date with the default branch;
//! a true conflict goes back to its agent with the conflicting hunks and then merges; an
//! approval hold keeps the task's place; two controller replicas still merge one change of a
//! repository at a time; a repository that merges by rebase gets its branches rebased, not merged.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controller::pipeline::Pipeline;
use controller::store::ops::Actor;
use controller::store::repos::RepoSettings;
use controller::store::{Status, Store, Task};

use crate::forge::{Env, REPO, env, git, pipeline, run_attempt, task_at_pushing_commits};

const SHARED: &str = "src/shared.rs";

/// A file of 60 numbered lines: changes ten lines apart merge cleanly.
fn base_file() -> String {
    (1..=60).map(|i| format!("// line {i}\n")).collect()
}

/// The shared file as it is on main now, with line `line` replaced by `text`.
fn edited(env: &Env, line: usize, text: &str) -> String {
    let main = git(
        &env.sim.git_dir(REPO),
        &["show", &format!("refs/heads/main:{SHARED}")],
    );
    main.lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == line {
                format!("{text}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

async fn mode(env: &Env, mode: &str) {
    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                approval_mode: Some(mode.into()),
                // Merge commits: each one's second parent is the head that merged.
                merge_method: Some("merge".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

/// Instant green CI on every commit, recording each commit CI was asked about.
fn recorded_ci(env: &Env) -> Arc<Mutex<HashSet<String>>> {
    env.sim.set_default_ci("success");
    let asked = Arc::new(Mutex::new(HashSet::new()));
    let seen = asked.clone();
    env.sim.set_ci_rule(Arc::new(move |_, sha: &str| {
        seen.lock().unwrap().insert(sha.to_owned());
        None
    }));
    asked
}

/// Makes every waiting stage due again soon.
async fn hurry(store: &Store) {
    sqlx::query(
        "UPDATE tasks SET stage_due_at = LEAST(stage_due_at, now() + interval '30 milliseconds') \
         WHERE stage_due_at IS NOT NULL",
    )
    .execute(store.pool())
    .await
    .unwrap();
}

/// A new task for a new issue, carrying `files`, at `pushing`.
async fn task_with(env: &Env, title: &str, files: &[(&str, &str)]) -> Task {
    task_with_commits(env, title, &[files]).await
}

/// [`task_with`] whose run delivers a commit for each set of files.
async fn task_with_commits(env: &Env, title: &str, commits: &[&[(&str, &str)]]) -> Task {
    let n = env.sim.create_issue(REPO, title, "", "alice", &[]) as i64;
    task_at_pushing_commits(env, n, commits).await
}

/// The merge commits on main after `since`, oldest first, each as (first parent: main before
/// it, second parent: the head that merged).
fn merges_since(env: &Env, since: &str) -> Vec<(String, String)> {
    let dir = env.sim.git_dir(REPO);
    let list = git(
        &dir,
        &[
            "rev-list",
            "--reverse",
            "--first-parent",
            &format!("{since}..refs/heads/main"),
        ],
    );
    list.lines()
        .map(|m| {
            let p1 = git(&dir, &["rev-parse", &format!("{m}^1")]);
            let p2 = git(&dir, &["rev-parse", &format!("{m}^2")]);
            (p1, p2)
        })
        .collect()
}

/// Each merge on main since `since` merged a head that contained main as it was just before (it
/// was up to date: nothing merged beside it), and CI was asked about that very head.
fn assert_each_merge_up_to_date_and_tested(
    env: &Env,
    since: &str,
    asked: &Mutex<HashSet<String>>,
    count: usize,
) {
    let merges = merges_since(env, since);
    assert_eq!(merges.len(), count, "{count} merges, one after another");
    let dir = env.sim.git_dir(REPO);
    let asked = asked.lock().unwrap();
    for (before, head) in &merges {
        assert_eq!(
            &git(&dir, &["merge-base", before, head]),
            before,
            "the merged head {head} contains main as it was ({before})"
        );
        assert!(asked.contains(head), "CI ran on the merged head {head}");
    }
}

/// Whether every task merged; a task that ended any other way fails the test there.
fn all_merged(tasks: &[Task]) -> bool {
    for t in tasks {
        assert!(
            !t.status.is_terminal() || t.status == Status::Merged,
            "task {} ended {}: {:?}",
            t.id,
            t.status,
            t.error
        );
    }
    tasks.iter().all(|t| t.status == Status::Merged)
}

async fn reasons(store: &Store, id: i64) -> Vec<(String, serde_json::Value)> {
    store
        .timeline(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.reason, e.data.map(|d| d.0).unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn five_changes_to_one_file_merge_one_at_a_time_and_a_true_conflict_goes_back_to_its_agent() {
    let env = env().await;
    mode(&env, "full-auto").await;
    let asked = recorded_ci(&env);
    env.sim
        .push_commit(REPO, "main", &[(SHARED, &base_file())])
        .unwrap();
    let start = env.sim.branch_head(REPO, "main").unwrap();
    let p = pipeline(&env, vec![]);
    // Tasks 1-4 change lines 10, 20, 30, 40; task 5 changes line 10 as well: whichever of 1 and
    // 5 merges second conflicts for real.
    let mut ids = Vec::new();
    for k in 1..=5usize {
        let line = if k == 5 { 10 } else { k * 10 };
        let content = edited(&env, line, &format!("// changed by task {k}"));
        let t = task_with(&env, &format!("Change {k}"), &[(SHARED, &content)]).await;
        ids.push(t.id);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut conflicted: Option<Task> = None;
    let mut seen_queue = false;
    loop {
        p.run_due().await.unwrap();
        let tasks = env.store.tasks_by_id(&ids).await.unwrap();
        // Never two slot holders, whatever the moment.
        let queue = env.store.merge_queue(env.repo.id).await.unwrap();
        assert!(queue.iter().filter(|e| e.merging).count() <= 1, "{queue:?}");
        if queue.len() >= 3 {
            seen_queue = true;
            let places: Vec<i64> = queue.iter().map(|e| e.position).collect();
            assert_eq!(places, (1..=queue.len() as i64).collect::<Vec<_>>());
        }
        for t in &tasks {
            if t.status == Status::Queued && conflicted.is_none() {
                // The conflict went back to the agent: its next attempt starts from main now.
                conflicted = Some(t.clone());
                let fix = edited(&env, 55, &format!("// task {} again", t.id));
                run_attempt(&env, t.id, &[(SHARED, &fix)]).await;
            }
        }
        if all_merged(&tasks) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all merged: {:?}",
            tasks
                .iter()
                .map(|t| (t.id, t.status, t.error.clone()))
                .collect::<Vec<_>>()
        );
        hurry(&env.store).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(seen_queue, "the tasks waited in one queue");
    assert_each_merge_up_to_date_and_tested(&env, &start, &asked, 5);

    // The conflict: one retry, its context names the file and holds both sides of the hunk.
    let c = conflicted.expect("task 1 or task 5 conflicted");
    assert!(
        c.id == ids[0] || c.id == ids[4],
        "only 1 and 5 conflict: {}",
        c.id
    );
    assert_eq!(c.conflict_retries, 1);
    let ctx = &c.retry_context.0[0];
    assert_eq!(ctx["kind"], "conflict", "{ctx}");
    let file = &ctx["detail"]["conflicts"][0];
    assert_eq!(file["path"], SHARED, "{ctx}");
    let hunk = &file["hunks"][0];
    let (mine, other) = if c.id == ids[0] {
        ("task 1", "task 5")
    } else {
        ("task 5", "task 1")
    };
    assert!(
        hunk["ours"].as_str().unwrap().contains(mine),
        "ours is the task's side: {hunk}"
    );
    assert!(
        hunk["theirs"].as_str().unwrap().contains(other),
        "theirs is main's: {hunk}"
    );
    let left: Vec<_> = reasons(&env.store, c.id)
        .await
        .into_iter()
        .filter(|(r, _)| r == "merge_queue_left")
        .map(|(_, d)| d["why"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        left,
        ["conflict", "merged"],
        "left for the agent, then merged"
    );
    // Every task entered once per stay and left merged; the merged file has all five changes.
    for id in &ids {
        let r = reasons(&env.store, *id).await;
        assert!(r.iter().any(|(x, _)| x == "merge_queue_entered"), "{r:?}");
        assert_eq!(
            r.last().map(|(x, d)| (x.as_str(), d["why"].clone())),
            Some(("merge_queue_left", serde_json::json!("merged"))),
            "{r:?}"
        );
    }
    let main = git(
        &env.sim.git_dir(REPO),
        &["show", &format!("refs/heads/main:{SHARED}")],
    );
    for k in 1..=4 {
        let found = main.contains(&format!("changed by task {k}")) || (k == 1 && c.id == ids[0]);
        assert!(found, "task {k}'s change is on main: {main}");
    }
    assert!(main.contains(&format!("task {} again", c.id)), "{main}");
    assert!(env.store.merge_queue(env.repo.id).await.unwrap().is_empty());
}

/// Runs due stages until `done` holds (or fails the test).
async fn until(env: &Env, p: &Pipeline, what: &str, done: impl Fn(&[Task]) -> bool, ids: &[i64]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        p.run_due().await.unwrap();
        let tasks = env.store.tasks_by_id(ids).await.unwrap();
        if done(&tasks) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiting for {what}: {:?}",
            tasks
                .iter()
                .map(|t| (t.id, t.status, t.error.clone()))
                .collect::<Vec<_>>()
        );
        hurry(&env.store).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approval_hold_keeps_its_place_in_the_queue() {
    let env = env().await;
    mode(&env, "review-merge").await;
    let asked = recorded_ci(&env);
    let start = env.sim.branch_head(REPO, "main").unwrap();
    let p = pipeline(&env, vec![]);
    // A, B, C change different files; they become ready in that order.
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let t = task_with(
            &env,
            name,
            &[(&format!("src/{name}.rs"), "pub fn f() {}\n")],
        )
        .await;
        let id = t.id;
        until(
            &env,
            &p,
            "approval hold",
            |t| t[0].status == Status::ApprovalHold,
            &[id],
        )
        .await;
        ids.push(id);
    }
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let place = env.store.queue_entry(a).await.unwrap().unwrap();
    assert_eq!(
        (place.position, place.waiting_for()),
        (1, "approval"),
        "{place:?}"
    );
    let actor = Actor {
        name: "user:alice".into(),
        user_id: None,
    };
    // C is approved first: A and B wait for approval, so C merges now.
    env.store.approve(c, &actor).await.unwrap();
    until(
        &env,
        &p,
        "C merged",
        |t| t[0].status == Status::Merged,
        &[c],
    )
    .await;
    // Then B and A are approved (B first): A entered first, so A merges first.
    env.store.approve(b, &actor).await.unwrap();
    env.store.approve(a, &actor).await.unwrap();
    until(
        &env,
        &p,
        "A and B merged",
        |t| t.iter().all(|t| t.status == Status::Merged),
        &[a, b],
    )
    .await;
    let ta = env.store.task(a).await.unwrap();
    let tb = env.store.task(b).await.unwrap();
    assert!(
        ta.finished_at < tb.finished_at,
        "A kept its place ahead of B"
    );
    // A and B were brought up to date (main moved under them) and approved once only.
    assert_each_merge_up_to_date_and_tested(&env, &start, &asked, 3);
    for id in [a, b] {
        let r = reasons(&env.store, id).await;
        assert_eq!(
            r.iter().filter(|(x, _)| x == "approved").count(),
            1,
            "{r:?}"
        );
        assert!(r.iter().any(|(x, _)| x == "branch_updated"), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_merge_one_change_of_a_repository_at_a_time() {
    let env = env().await;
    mode(&env, "full-auto").await;
    let asked = recorded_ci(&env);
    let start = env.sim.branch_head(REPO, "main").unwrap();
    let p1 = pipeline(&env, vec![]);
    // A second controller: its own connection pool (its own replica id) and git cache.
    let mut p2 = pipeline(&env, vec![]);
    p2.store = Store::connect(&env.db_url, 10).await.unwrap();
    p2.pusher = controller::forge::git::Pusher::new(&env.dir.path().join("cache-2"));
    // Files of their own: nothing refreshes a task early, each is brought up to date at its
    // turn, by whichever replica holds the slot.
    let mut ids = Vec::new();
    for k in 1..=4usize {
        let path = format!("src/r{k}.rs");
        ids.push(
            task_with(&env, &format!("Change {k}"), &[(&path, "pub fn r() {}\n")])
                .await
                .id,
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (r1, r2) = tokio::join!(p1.run_due(), p2.run_due());
        r1.unwrap();
        r2.unwrap();
        let tasks = env.store.tasks_by_id(&ids).await.unwrap();
        if all_merged(&tasks) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not all merged");
        hurry(&env.store).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_each_merge_up_to_date_and_tested(&env, &start, &asked, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_that_merges_by_rebase_gets_its_branches_rebased_and_main_stays_linear() {
    let env = env().await;
    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                approval_mode: Some("full-auto".into()),
                merge_method: Some("rebase".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let asked = recorded_ci(&env);
    let start = env.sim.branch_head(REPO, "main").unwrap();
    let p = pipeline(&env, vec![]);
    // Each delivers two commits: whichever is rebased gets both replayed, in order, each keeping
    // its message.
    let a = task_with_commits(
        &env,
        "Change a",
        &[
            &[("src/a.rs", "pub fn a() {}\n")],
            &[("src/a2.rs", "pub fn a2() {}\n")],
        ],
    )
    .await;
    let b = task_with_commits(
        &env,
        "Change b",
        &[
            &[("src/b.rs", "pub fn b() {}\n")],
            &[("src/b2.rs", "pub fn b2() {}\n")],
        ],
    )
    .await;
    let ids = [a.id, b.id];
    until(
        &env,
        &p,
        "both merged",
        |ts| ts.iter().all(|t| t.status == Status::Merged),
        &ids,
    )
    .await;
    let dir = env.sim.git_dir(REPO);
    let merges = git(
        &dir,
        &["rev-list", "--merges", &format!("{start}..refs/heads/main")],
    );
    assert!(merges.is_empty(), "no merge commit on main: {merges}");
    for file in ["src/a.rs", "src/a2.rs", "src/b.rs", "src/b2.rs"] {
        git(
            &dir,
            &["cat-file", "-e", &format!("refs/heads/main:{file}")],
        );
    }
    // The second in line was made again on main after the first merged — one parent, main as
    // it was — and CI ran on that head before it merged.
    let mut rebased = Vec::new();
    for id in ids {
        for (reason, data) in reasons(&env.store, id).await {
            if reason == "branch_updated" {
                assert_eq!(data["how"], "rebased", "{data}");
                rebased.push(data["sha"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(
        rebased.len(),
        1,
        "one branch brought up to date: {rebased:?}"
    );
    let head = &rebased[0];
    // Both of the second in line's commits, one after the other on main as the first merge left
    // it, each with its own message and one parent.
    let messages = git(&dir, &["log", "--format=%s", "-n", "2", head]);
    assert_eq!(
        messages.lines().collect::<Vec<_>>(),
        ["agent change 2", "agent change"],
        "each commit replayed with its message"
    );
    for commit in [head.clone(), format!("{head}^")] {
        let parents = git(&dir, &["rev-list", "--parents", "-n", "1", &commit]);
        assert_eq!(
            parents.split_whitespace().count(),
            2,
            "a replayed commit has one parent: {parents}"
        );
    }
    let parent = git(&dir, &["rev-parse", &format!("{head}~2")]);
    assert_ne!(parent, start, "made on main after the first merge");
    let main_before = git(&dir, &["rev-parse", &format!("{head}~2")]);
    assert!(
        git(&dir, &["rev-list", "--first-parent", "refs/heads/main"])
            .lines()
            .any(|c| c == main_before),
        "replayed on main's history"
    );
    assert!(
        asked.lock().unwrap().contains(head),
        "CI ran on the rebased head"
    );
}

/// Someone pushes a commit onto a queued task's branch after its review (a collaborator, a bot,
/// another task's code running in CI with a writable token), and before the task's own stage
/// looks again. When a task that touches the same file merges, the queue brings that branch up to
/// date: the update must not carry the push into a head the controller vouches for. The task is
/// reviewed again instead, and the pushed file never reaches main on the old review.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_pushed_onto_a_queued_branch_is_not_carried_in_by_its_update() {
    let env = env().await;
    mode(&env, "review-merge").await;
    recorded_ci(&env);
    env.sim
        .push_commit(REPO, "main", &[(SHARED, &base_file())])
        .unwrap();
    let p = pipeline(&env, vec![]);
    let a = task_with(&env, "a", &[(SHARED, &edited(&env, 10, "// a"))])
        .await
        .id;
    let b = task_with(&env, "b", &[(SHARED, &edited(&env, 40, "// b"))])
        .await
        .id;
    until(
        &env,
        &p,
        "both waiting for approval",
        |t| t.iter().all(|t| t.status == Status::ApprovalHold),
        &[a, b],
    )
    .await;
    // B's own stage does not look again before A merges.
    sqlx::query("UPDATE tasks SET stage_due_at = now() + interval '1 hour' WHERE id = $1")
        .bind(b)
        .execute(env.store.pool())
        .await
        .unwrap();
    let branch = env.store.task(b).await.unwrap().branch.unwrap();
    env.sim
        .push_commit(REPO, &branch, &[("src/backdoor.rs", "pub fn open() {}\n")])
        .unwrap();
    let actor = Actor {
        name: "user:alice".into(),
        user_id: None,
    };
    env.store.approve(a, &actor).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while env.store.task(a).await.unwrap().status != Status::Merged {
        assert!(tokio::time::Instant::now() < deadline, "A never merged");
        p.run_due().await.unwrap();
        sqlx::query(
            "UPDATE tasks SET stage_due_at = LEAST(stage_due_at, now() + interval '30 milliseconds') \
             WHERE id = $1 AND stage_due_at IS NOT NULL",
        )
        .bind(a)
        .execute(env.store.pool())
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let r = reasons(&env.store, b).await;
    assert!(
        r.iter().any(|(x, _)| x == "head_moved_after_review"),
        "B is reviewed again: {r:?}"
    );
    assert!(
        !r.iter().any(|(x, _)| x == "branch_updated"),
        "B's branch was not brought up to date from the pushed commit: {r:?}"
    );
    let main = env.sim.branch_head(REPO, "main").unwrap();
    let tree = git(
        &env.sim.git_dir(REPO),
        &["ls-tree", "-r", "--name-only", &main],
    );
    assert!(!tree.contains("src/backdoor.rs"), "{tree}");
}
