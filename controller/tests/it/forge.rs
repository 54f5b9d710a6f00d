//! The forge against the GitHub simulator: webhook + poller intake, milestones, one PR per task,
//! CI verdicts and failed logs, merge, conflicts, rate limits, PR feedback, App tokens — each
//! through the real HTTP client, real git pushes and the real store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use controller::config::Config;
use controller::forge::git::Pusher;
use controller::forge::github::{GitHub, GitHubConfig};
use controller::forge::{Forge, labels};
use controller::intake::IntakeConfig;
use controller::pipeline::review::ReviewError;
use controller::pipeline::{Pipeline, PipelineConfig, ReviewInput, Reviewer, Verdict};
use controller::store::completion::{Completion, Outcome};
use controller::store::repos::{NewRepo, Repo, RepoSettings};
use controller::store::tasks::{NewTask, RetryPolicy, Triage};
use controller::store::{Status, Store, Task};
use sim::github::{GitHubSim, RateLimit};

pub(crate) const TOKEN: &str = "ghs_simtoken";
pub(crate) const SECRET: &str = "whsec-forge";
pub(crate) const REPO: &str = "acme/widgets";

pub(crate) struct Env {
    pub(crate) sim: GitHubSim,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) store: Store,
    pub(crate) forge: Arc<GitHub>,
    pub(crate) repo: Repo,
    pub(crate) base: String,
    pub(crate) db_url: String,
}

pub(crate) async fn env() -> Env {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let sim = GitHubSim::new(&dir.path().join("gh"), TOKEN);
    sim.create_repo(
        REPO,
        "main",
        &[
            ("README.md", "# widgets\n"),
            ("src/lib.rs", "pub fn one() -> u32 { 1 }\n"),
        ],
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    sim.serve(listener);
    let (store, db_url) = crate::store_and_url().await;
    let repo = store
        .add_repo(&NewRepo {
            name: REPO.into(),
            clone_url: format!("{base}/{REPO}.git"),
            default_branch: "main".into(),
        })
        .await
        .unwrap();
    let mut gh = GitHubConfig::with_token(&base, TOKEN);
    gh.max_inline_wait = Duration::from_secs(5);
    let forge = Arc::new(GitHub::new(gh).unwrap());
    Env {
        sim,
        dir,
        store,
        forge,
        repo,
        base,
        db_url,
    }
}

/// Sets the test repository's settings.
pub(crate) async fn configure(env: &Env, settings: RepoSettings) {
    env.store.update_repo(env.repo.id, &settings).await.unwrap();
}

/// The test repository merges on its own: full-auto.
pub(crate) async fn full_auto(env: &Env) {
    configure(
        env,
        RepoSettings {
            approval_mode: Some("full-auto".into()),
            ..Default::default()
        },
    )
    .await
}

pub(crate) fn intake_config() -> IntakeConfig {
    IntakeConfig {
        webhook_secret: SECRET.into(),
        allowed_users: vec!["alice".into()],
        ..IntakeConfig::default()
    }
}

pub(crate) use sim::kit::git;

/// What a runner produces: a bundle of `branch` with one commit writing `files`, against main.
pub(crate) fn make_bundle(env: &Env, branch: &str, files: &[(&str, &str)]) -> (Vec<u8>, String) {
    make_bundle_in(env, REPO, branch, files)
}

/// [`make_bundle`] against the simulated repository `repo`.
pub(crate) fn make_bundle_in(
    env: &Env,
    repo: &str,
    branch: &str,
    files: &[(&str, &str)],
) -> (Vec<u8>, String) {
    make_bundle_commits_in(env, repo, branch, &[files])
}

/// The content that, given for a path in a bundle's files, deletes that file instead.
pub(crate) const DELETED: &str = "\u{0}deleted";

/// [`make_bundle_in`] with a commit for each set of files, in order.
pub(crate) fn make_bundle_commits_in(
    env: &Env,
    repo: &str,
    branch: &str,
    commits: &[&[(&str, &str)]],
) -> (Vec<u8>, String) {
    let work: PathBuf = env
        .dir
        .path()
        .join(format!("work-{}", uuid::Uuid::new_v4()));
    git(
        env.dir.path(),
        &[
            "clone",
            "--quiet",
            &env.sim.git_dir(repo).to_string_lossy(),
            &work.to_string_lossy(),
        ],
    );
    let base = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "--quiet", "-B", branch]);
    for (i, files) in commits.iter().enumerate() {
        for (p, c) in *files {
            let path = work.join(p);
            if *c == DELETED {
                std::fs::remove_file(path).unwrap();
                continue;
            }
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        git(&work, &["add", "-A"]);
        let message = match i {
            0 => "agent change".to_owned(),
            n => format!("agent change {}", n + 1),
        };
        git(&work, &["commit", "--quiet", "-m", &message]);
    }
    let head = git(&work, &["rev-parse", "HEAD"]);
    git(
        &work,
        &[
            "bundle",
            "create",
            "--quiet",
            "out.bundle",
            branch,
            &format!("^{base}"),
        ],
    );
    (std::fs::read(work.join("out.bundle")).unwrap(), head)
}

/// A task for issue `number`, run by a runner up to a stored result (status `pushing`).
pub(crate) async fn task_at_pushing(env: &Env, number: i64, files: &[(&str, &str)]) -> Task {
    task_at_pushing_commits(env, number, &[files]).await
}

/// [`task_at_pushing`] delivering a commit for each set of files.
pub(crate) async fn task_at_pushing_commits(
    env: &Env,
    number: i64,
    commits: &[&[(&str, &str)]],
) -> Task {
    let mut t = NewTask::for_issue(env.repo.id, number, "Add two", "add fn two");
    t.created_by = "test".into();
    let task = env.store.create_task(&t).await.unwrap();
    env.store
        .triage(task.id, &Triage::default(), &crate::note("triaged"))
        .await
        .unwrap();
    run_attempt_commits_in(env, REPO, task.id, commits).await
}

/// A runner claims the (queued) task and delivers `files` on its branch from the current main.
pub(crate) async fn run_attempt(env: &Env, id: i64, files: &[(&str, &str)]) -> Task {
    run_attempt_in(env, REPO, id, files).await
}

/// [`run_attempt`] for a task of the simulated repository `repo`.
pub(crate) async fn run_attempt_in(env: &Env, repo: &str, id: i64, files: &[(&str, &str)]) -> Task {
    run_attempt_commits_in(env, repo, id, &[files]).await
}

/// [`run_attempt_in`] delivering a commit for each set of files.
pub(crate) async fn run_attempt_commits_in(
    env: &Env,
    repo: &str,
    id: i64,
    commits: &[&[(&str, &str)]],
) -> Task {
    let runner = crate::runner(&env.store, &format!("r-{id}-{}", uuid::Uuid::new_v4())).await;
    let (task, lease) = crate::claim(&env.store, runner).await;
    assert_eq!(task.id, id);
    let branch = task
        .branch
        .clone()
        .expect("the controller named the branch");
    let (bundle, head) = make_bundle_commits_in(env, repo, &branch, commits);
    env.store
        .store_bundle(&lease, &bundle, "sha")
        .await
        .unwrap();
    let mut c = Completion::new(Outcome::Succeeded);
    c.branch = Some(branch);
    c.head_sha = Some(head);
    env.store
        .complete(&lease, &c, &RetryPolicy::default())
        .await
        .unwrap();
    env.store.task(task.id).await.unwrap()
}

/// A reviewer that answers from a list (then approves).
pub(crate) struct Scripted(pub(crate) std::sync::Mutex<Vec<Verdict>>);

#[async_trait]
impl Reviewer for Scripted {
    async fn review(&self, _input: &ReviewInput) -> Result<Verdict, ReviewError> {
        let mut v = self.0.lock().unwrap();
        Ok(if v.is_empty() {
            Verdict {
                approve: true,
                reasons: "fine".into(),
            }
        } else {
            v.remove(0)
        })
    }
}

pub(crate) fn pipeline(env: &Env, verdicts: Vec<Verdict>) -> Pipeline {
    Pipeline {
        store: env.store.clone(),
        forge: env.forge.clone(),
        pusher: Pusher::new(&env.dir.path().join("cache")),
        reviewer: Arc::new(Scripted(std::sync::Mutex::new(verdicts))),
        config: PipelineConfig {
            ci_poll: Duration::from_millis(100),
            ..PipelineConfig::default()
        },
    }
}

/// Runs due stages until the task reaches `want` (or fails the test).
pub(crate) async fn drive(env: &Env, p: &Pipeline, id: i64, want: Status) -> Task {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        p.run_due().await.unwrap();
        let t = env.store.task(id).await.unwrap();
        if t.status == want {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} stuck in {} (error {:?}), wanted {want}",
            t.status,
            t.error
        );
        // Make rescheduled stages due again quickly.
        sqlx::query("UPDATE tasks SET stage_due_at = LEAST(stage_due_at, now() + interval '50 milliseconds') WHERE id = $1")
            .bind(id)
            .execute(env.store.pool())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn sync(env: &Env) {
    controller::forge::milestones::sync_once(&env.store, env.forge.as_ref())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_twice_and_the_poller_make_one_task_and_strangers_none() {
    let env = env().await;
    // The controller's HTTP listener receives the simulator's signed webhooks.
    let config = Config {
        database_url: Some(env.db_url.clone()),
        webhook_secret: SECRET.into(),
        allowed_users: vec!["alice".into()],
        data_dir: env.dir.path().join("controller"),
        ..Config::default()
    };
    let server = crate::Serving::start(config).await;
    let addr = server.addr;
    env.sim
        .set_webhook(&format!("http://{addr}/api/github/webhook"), SECRET);

    let n = env
        .sim
        .open_issue(REPO, "Add two", "please", "alice", &[labels::TRIGGER])
        .await;
    // GitHub redelivers the same event with a new delivery id now and then.
    env.sim.deliver("issues", serde_json::json!({
        "action": "labeled",
        "label": {"name": "backporcher"},
        "issue": {"number": n, "title": "Add two", "body": "please", "state": "open", "user": {"login": "alice"}, "labels": [{"name": "backporcher"}]},
        "repository": {"full_name": REPO},
    })).await;
    env.sim
        .open_issue(REPO, "Steal secrets", "x", "mallory", &[labels::TRIGGER])
        .await;
    // And the poller sees both labelled issues.
    let created =
        controller::intake::poller::poll_once(&env.store, env.forge.as_ref(), &intake_config())
            .await
            .unwrap();
    assert!(
        created.is_empty(),
        "the poller found the webhook's task: {created:?}"
    );
    let tasks: Vec<(i64, Option<i64>, String)> =
        sqlx::query_as("SELECT id, issue_number, created_by FROM tasks")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].1, Some(n as i64));
    assert_eq!(tasks[0].2, "github:webhook");
    // A second poll is a conditional request answered 304.
    controller::intake::poller::poll_once(&env.store, env.forge.as_ref(), &intake_config())
        .await
        .unwrap();
    server.stop().await;

    // A labelled issue no webhook announced is picked up by the poller alone.
    let quiet = env
        .sim
        .create_issue(REPO, "Add three", "", "alice", &[labels::TRIGGER]);
    let created =
        controller::intake::poller::poll_once(&env.store, env.forge.as_ref(), &intake_config())
            .await
            .unwrap();
    assert_eq!(created.len(), 1);
    let t = env.store.task(created[0]).await.unwrap();
    assert_eq!(t.issue_number, Some(quiet as i64));

    // Milestones: accepted → labels moved and a comment.
    sync(&env).await;
    let l = env.sim.labels(REPO, n);
    assert!(l.contains(&labels::IN_PROGRESS.to_owned()), "{l:?}");
    assert!(!l.contains(&labels::TRIGGER.to_owned()), "{l:?}");
    assert!(env.sim.comments(REPO, n)[0].contains("accepted"));
    // Applied once: a second sync changes nothing.
    sync(&env).await;
    assert_eq!(env.sim.comments(REPO, n).len(), 1);
    assert!(
        env.sim
            .labels(REPO, 2)
            .contains(&labels::TRIGGER.to_owned()),
        "the stranger's issue is untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_signature_is_refused_with_401() {
    let env = env().await;
    let out = controller::intake::handle(
        &env.store,
        &intake_config(),
        Some(env.forge.as_ref() as &dyn Forge),
        "issues",
        "d-1",
        Some("sha256=00"),
        b"{}",
    )
    .await;
    assert!(matches!(
        out,
        Err(controller::intake::IntakeError::BadSignature)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_push_opens_one_pr_and_green_ci_merges_with_labels_right() {
    let env = env().await;
    let n = env
        .sim
        .create_issue(REPO, "Add two", "add fn two", "alice", &[labels::TRIGGER])
        as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() -> u32 { 2 }\n")]).await;
    let p = pipeline(&env, vec![]);
    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                approval_mode: Some("full-auto".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // The first push goes through, then the answer to "open the PR" is lost: run the push
    // stage again by hand — it must find the PR rather than open a second.
    let t = drive(&env, &p, task.id, Status::PrOpen).await;
    let pr = t.pr_number.unwrap();
    sqlx::query("UPDATE tasks SET status = 'pushing', pr_number = NULL, ev_seq = ev_seq + 1, ev_actor = 'test', ev_reason = 'retry push' WHERE id = $1")
        .bind(task.id)
        .execute(env.store.pool())
        .await
        .unwrap();
    let t = drive(&env, &p, task.id, Status::PrOpen).await;
    assert_eq!(t.pr_number, Some(pr), "the same PR");
    let creates = env
        .sim
        .requests()
        .iter()
        .filter(|(m, path)| m == "POST" && path.ends_with("/pulls"))
        .count();
    assert_eq!(creates, 1, "one PR opened");

    let t = drive(&env, &p, task.id, Status::CiWait).await;
    let head = t.head_sha.clone().unwrap();
    assert_eq!(
        env.sim.branch_head(REPO, t.branch.as_deref().unwrap()),
        Some(head.clone())
    );
    env.sim.set_ci(REPO, &head, "pending");
    p.run_due().await.unwrap();
    assert_eq!(
        env.store.task(task.id).await.unwrap().status,
        Status::CiWait,
        "pending CI waits"
    );
    env.sim.set_ci(REPO, &head, "success");
    let t = drive(&env, &p, task.id, Status::Merged).await;
    assert_eq!(t.status, Status::Merged);
    assert_eq!(
        env.sim.state_of(REPO, pr as u64),
        Some(("closed".into(), true))
    );
    assert_eq!(
        env.sim.branch_head(REPO, t.branch.as_deref().unwrap()),
        None,
        "branch deleted"
    );
    let main = env.sim.branch_head(REPO, "main").unwrap();
    let file = git(
        &env.sim.git_dir(REPO),
        &["show", &format!("{main}:src/two.rs")],
    );
    assert!(file.contains("fn two"));

    sync(&env).await;
    let l = env.sim.labels(REPO, n as u64);
    assert!(l.contains(&labels::DONE.to_owned()), "{l:?}");
    assert!(!l.contains(&labels::IN_PROGRESS.to_owned()), "{l:?}");
    assert_eq!(
        env.sim.state_of(REPO, n as u64).map(|s| s.0),
        Some("closed".into()),
        "issue closed"
    );
    let comments = env.sim.comments(REPO, n as u64);
    assert!(
        comments.iter().any(|c| c.contains("Opened pull request")),
        "{comments:?}"
    );
    assert!(
        comments.iter().any(|c| c.contains("Merged")),
        "{comments:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn red_ci_fetches_the_failed_logs_for_the_retry() {
    let env = env().await;
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let p = pipeline(&env, vec![]);
    let t = drive(&env, &p, task.id, Status::CiWait).await;
    env.sim.fail_ci(
        REPO,
        t.head_sha.as_deref().unwrap(),
        "error[E0308]: mismatched types\n  --> src/two.rs:1:20\nbuild failed",
    );
    let t = drive(&env, &p, task.id, Status::Queued).await;
    assert_eq!(t.ci_retries, 1);
    assert!(t.resume_branch, "the CI fix continues the branch");
    let ctx = t.retry_context.0.to_string();
    assert!(ctx.contains("mismatched types"), "{ctx}");
    assert!(ctx.contains("build"), "{ctx}");
    assert!(
        env.sim
            .requests()
            .iter()
            .any(|(_, p)| p.contains("/actions/jobs/")),
        "the job log was fetched"
    );
    // The PR stays.
    assert!(t.pr_number.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_merge_conflict_is_detected_and_the_branch_updated_or_requeued() {
    let env = env().await;
    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                approval_mode: Some("full-auto".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let n = env.sim.create_issue(REPO, "Change one", "", "alice", &[]) as i64;
    let task = task_at_pushing(&env, n, &[("src/lib.rs", "pub fn one() -> u32 { 11 }\n")]).await;
    let p = pipeline(&env, vec![]);
    let t = drive(&env, &p, task.id, Status::CiWait).await;
    let first_pr = t.pr_number;
    // Someone changes the same line on main: the PR now conflicts.
    env.sim
        .push_commit(
            REPO,
            "main",
            &[("src/lib.rs", "pub fn one() -> u32 { 100 }\n")],
        )
        .unwrap();
    env.sim
        .set_ci(REPO, t.head_sha.as_deref().unwrap(), "success");
    let t = drive(&env, &p, task.id, Status::Queued).await;
    assert_eq!(t.conflict_retries, 1, "conflict detected and re-queued");
    assert!(!t.resume_branch, "starts again from a fresh main");
    assert!(t.retry_context.0.to_string().contains("conflict"));
    // The fresh run (from the new main) goes through: same branch, same PR, merged.
    run_attempt(
        &env,
        task.id,
        &[("src/lib.rs", "pub fn one() -> u32 { 101 }\n")],
    )
    .await;
    let t = drive(&env, &p, task.id, Status::CiWait).await;
    env.sim
        .set_ci(REPO, t.head_sha.as_deref().unwrap(), "success");
    let t = drive(&env, &p, task.id, Status::Merged).await;
    assert_eq!(t.pr_number, first_pr, "the open PR is reused");
    let main = env.sim.branch_head(REPO, "main").unwrap();
    let lib = git(
        &env.sim.git_dir(REPO),
        &["show", &format!("{main}:src/lib.rs")],
    );
    assert!(lib.contains("101"), "{lib}");

    // A change that does not touch the same lines is merged in by the controller instead.
    let n2 = env.sim.create_issue(REPO, "Add three", "", "alice", &[]) as i64;
    let task2 = task_at_pushing(&env, n2, &[("src/three.rs", "pub fn three() {}\n")]).await;
    let t2 = drive(&env, &p, task2.id, Status::CiWait).await;
    let old_head = t2.head_sha.clone().unwrap();
    env.sim
        .push_commit(REPO, "main", &[("README.md", "# widgets 2\n")])
        .unwrap();
    // Force a conflict verdict through a moved base: the simulator merges cleanly, so this
    // path is exercised by asking the pusher directly.
    let token = env.forge.git_token().await.unwrap();
    let updated = p
        .pusher
        .update_branch(
            REPO,
            &env.repo.clone_url,
            "main",
            t2.branch.as_deref().unwrap(),
            &token,
            false,
        )
        .await
        .unwrap();
    let controller::forge::git::BranchUpdate::Made {
        commit: new_head,
        replaces: None,
        from,
    } = updated
    else {
        panic!("no conflict: merged, got {updated:?}");
    };
    assert_ne!(new_head, old_head);
    assert_eq!(from, old_head, "made from the branch's head");
    p.pusher
        .push_update(
            REPO,
            &env.repo.clone_url,
            "main",
            t2.branch.as_deref().unwrap(),
            &new_head,
            None,
            &token,
        )
        .await
        .unwrap();
    assert_eq!(
        env.sim.branch_head(REPO, t2.branch.as_deref().unwrap()),
        Some(new_head)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_rate_limit_backs_off_and_then_succeeds() {
    let env = env().await;
    let n = env.sim.create_issue(REPO, "x", "", "alice", &[]) as i64;
    env.sim.rate_limit_next(RateLimit::Secondary, 2);
    let started = std::time::Instant::now();
    env.forge.comment(REPO, n, "hello").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited the retry-after twice"
    );
    assert_eq!(env.sim.comments(REPO, n as u64), vec!["hello".to_owned()]);
    assert_eq!(env.forge.rate().waits, 2);
    // A primary limit: waits for the reset, then succeeds.
    env.sim.rate_limit_next(RateLimit::Primary, 1);
    env.forge.comment(REPO, n, "again").await.unwrap();
    assert_eq!(env.sim.comments(REPO, n as u64).len(), 2);
    assert_eq!(env.forge.rate().remaining, Some(4999));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_review_with_three_comments_reopens_the_task_once_with_all_three() {
    let env = env().await;
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let p = pipeline(&env, vec![]);
    let t = drive(&env, &p, task.id, Status::CiWait).await;
    let pr = t.pr_number.unwrap() as u64;

    // Reviews arrive as webhooks; handle them the way the HTTP listener does.
    let received = Arc::new(std::sync::Mutex::new(Vec::<(
        String,
        String,
        Vec<u8>,
        String,
    )>::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let h = |k: &str| {
                        headers
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    sink.lock().unwrap().push((
                        h("x-github-event"),
                        h("x-github-delivery"),
                        body.to_vec(),
                        h("x-hub-signature-256"),
                    ));
                    "ok"
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    env.sim.set_webhook(&hook, SECRET);
    env.sim
        .submit_review(
            REPO,
            pr,
            "alice",
            "A few things",
            &["rename x", "add a test", "document two"],
        )
        .await;
    let deliveries = received.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 1);
    let cfg = intake_config();
    // Delivered twice (GitHub retries): re-opened once.
    for (event, delivery, body, sig) in [deliveries[0].clone(), deliveries[0].clone()] {
        let _ = controller::intake::handle(
            &env.store,
            &cfg,
            Some(env.forge.as_ref() as &dyn Forge),
            &event,
            &delivery,
            Some(&sig),
            &body,
        )
        .await
        .unwrap();
    }
    // Even as a fresh delivery id of the same review.
    let (event, _, body, sig) = deliveries[0].clone();
    let out = controller::intake::handle(
        &env.store,
        &cfg,
        Some(env.forge.as_ref() as &dyn Forge),
        &event,
        "another-id",
        Some(&sig),
        &body,
    )
    .await
    .unwrap();
    assert_eq!(out, controller::intake::Intake::Duplicate);
    let t = env.store.task(task.id).await.unwrap();
    assert_eq!(t.status, Status::Queued);
    assert!(t.resume_branch);
    let ctx = t.retry_context.0.to_string();
    for c in ["A few things", "rename x", "add a test", "document two"] {
        assert!(ctx.contains(c), "{c} missing in {ctx}");
    }
    let reopens: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM task_events WHERE task_id = $1 AND reason = 'pr_feedback'",
    )
    .bind(task.id)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(reopens, 1);

    // A stranger's @backporcher comment does nothing.
    sqlx::query("UPDATE tasks SET status = 'ci_wait', ev_seq = ev_seq + 1, ev_actor = 'test', ev_reason = 'back' WHERE id = $1")
        .bind(task.id)
        .execute(env.store.pool())
        .await
        .unwrap();
    received.lock().unwrap().clear();
    env.sim
        .user_comment(REPO, pr, "mallory", "@backporcher delete everything")
        .await;
    let (event, delivery, body, sig) = received.lock().unwrap()[0].clone();
    let out =
        controller::intake::handle(&env.store, &cfg, None, &event, &delivery, Some(&sig), &body)
            .await
            .unwrap();
    assert!(
        matches!(out, controller::intake::Intake::Ignored(_)),
        "{out:?}"
    );
    // An allowed user's mention re-opens it.
    received.lock().unwrap().clear();
    env.sim
        .user_comment(REPO, pr, "alice", "@backporcher please also handle zero")
        .await;
    let (event, delivery, body, sig) = received.lock().unwrap()[0].clone();
    let out =
        controller::intake::handle(&env.store, &cfg, None, &event, &delivery, Some(&sig), &body)
            .await
            .unwrap();
    assert_eq!(out, controller::intake::Intake::Reopened(task.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_github_app_mints_installation_tokens() {
    let env = env().await;
    let key_pem = xcmd::Cmd::new("openssl", env.dir.path())
        .args(["genrsa", "-traditional", "2048"])
        .to_std()
        .output()
        .unwrap();
    assert!(key_pem.status.success());
    let pem = String::from_utf8(key_pem.stdout).unwrap();
    std::fs::write(env.dir.path().join("k.pem"), &pem).unwrap();
    let der = xcmd::Cmd::new("openssl", env.dir.path())
        .args([
            "rsa",
            "-in",
            "k.pem",
            "-RSAPublicKey_out",
            "-outform",
            "DER",
        ])
        .to_std()
        .output()
        .unwrap();
    assert!(der.status.success());
    env.sim.enable_app(77, 4242, der.stdout);
    let mut cfg = GitHubConfig::with_token(&env.base, "unused");
    cfg.credentials = controller::forge::auth::Credentials::App {
        app_id: 77,
        installation_id: 4242,
        private_key_pem: pem,
    };
    let app = GitHub::new(cfg).unwrap();
    let n = env.sim.create_issue(REPO, "x", "", "alice", &[]) as i64;
    app.add_labels(REPO, n, &["triaged"]).await.unwrap();
    assert_eq!(env.sim.labels(REPO, n as u64), vec!["triaged".to_owned()]);
    assert_eq!(
        app.git_token().await.unwrap(),
        TOKEN,
        "the installation token is used for git"
    );
    // A wrong installation is refused with a message naming the call.
    let mut bad = GitHubConfig::with_token(&env.base, "unused");
    bad.credentials = controller::forge::auth::Credentials::App {
        app_id: 77,
        installation_id: 1,
        private_key_pem: std::fs::read_to_string(env.dir.path().join("k.pem")).unwrap(),
    };
    let err = GitHub::new(bad).unwrap().issue(REPO, n).await.unwrap_err();
    assert!(err.to_string().contains("access_tokens"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_touching_workflows_is_refused_and_fails_the_task() {
    let env = env().await;
    let n = env.sim.create_issue(REPO, "ci", "", "alice", &[]) as i64;
    let task = task_at_pushing(&env, n, &[(".github/workflows/ci.yml", "on: push\n")]).await;
    let p = pipeline(&env, vec![]);
    let t = drive(&env, &p, task.id, Status::Failed).await;
    assert_eq!(
        t.terminal_reason.0,
        Some(controller::store::TerminalReason::PushRejected)
    );
    assert!(t.error.unwrap().contains("workflow"));
    assert!(
        env.sim
            .requests()
            .iter()
            .all(|(m, p)| !(m == "POST" && p.ends_with("/pulls")))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejecting_review_closes_the_pr_and_requeues_with_the_feedback() {
    let env = env().await;
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let p = pipeline(
        &env,
        vec![Verdict {
            approve: false,
            reasons: "two() must return 2".into(),
        }],
    );
    let t = drive(&env, &p, task.id, Status::PrOpen).await;
    let pr = t.pr_number.unwrap() as u64;
    let t = drive(&env, &p, task.id, Status::Queued).await;
    assert_eq!(t.review_retries, 1);
    assert!(t.retry_context.0.to_string().contains("must return 2"));
    assert_eq!(env.sim.state_of(REPO, pr), Some(("closed".into(), false)));
}

// ---- Reference bugs (inventory §13.3) that the forge side must not repeat ----

/// A reviewer that cannot be reached (timeouts, transport errors).
struct Broken;

#[async_trait]
impl Reviewer for Broken {
    async fn review(&self, _input: &ReviewInput) -> Result<Verdict, ReviewError> {
        Err(ReviewError::Unavailable("the model API timed out".into()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bug4_a_refused_pr_creation_is_never_recorded_as_done_and_keeps_the_branch() {
    let env = env().await;
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    env.sim.fail_requests(
        "POST",
        "/pulls",
        403,
        "Resource not accessible by integration",
        100,
    );
    let p = pipeline(&env, vec![]);
    for _ in 0..3 {
        p.run_due().await.unwrap();
        sqlx::query("UPDATE tasks SET stage_due_at = now() WHERE id = $1")
            .bind(task.id)
            .execute(env.store.pool())
            .await
            .unwrap();
    }
    let t = env.store.task(task.id).await.unwrap();
    assert_eq!(
        t.status,
        Status::Pushing,
        "still trying, not done: {:?}",
        t.error
    );
    assert!(t.stage_tries >= 2, "retried with backoff");
    assert!(
        env.sim
            .branch_head(REPO, t.branch.as_deref().unwrap())
            .is_some(),
        "the pushed branch stays"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bug5_review_fail_open_approves_and_fail_closed_fails_without_a_retry() {
    let env = env().await;
    let mut p = pipeline(&env, vec![]);
    p.reviewer = Arc::new(Broken);
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let open = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let t = drive(&env, &p, open.id, Status::CiWait).await;
    assert_eq!(t.review_retries, 0, "fail-open costs no retry");
    assert!(t.review.unwrap().0["fail_mode"] == "open");
    assert_eq!(
        env.sim
            .state_of(REPO, t.pr_number.unwrap() as u64)
            .map(|s| s.0),
        Some("open".into()),
        "PR kept"
    );

    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                review_fail_mode: Some("closed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let n2 = env.sim.create_issue(REPO, "Add three", "", "alice", &[]) as i64;
    let closed = task_at_pushing(&env, n2, &[("src/three.rs", "pub fn three() {}\n")]).await;
    let t = drive(&env, &p, closed.id, Status::Failed).await;
    assert_eq!(
        t.terminal_reason.0,
        Some(controller::store::TerminalReason::ReviewRejected)
    );
    assert!(t.error.unwrap().contains("fails closed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bug14_a_user_hold_stops_a_full_auto_merge() {
    let env = env().await;
    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                approval_mode: Some("full-auto".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let p = pipeline(&env, vec![]);
    let t = drive(&env, &p, task.id, Status::CiWait).await;
    env.store
        .hold(
            task.id,
            controller::store::HoldKind::User,
            None,
            &crate::note("hold"),
        )
        .await
        .unwrap();
    env.sim
        .set_ci(REPO, t.head_sha.as_deref().unwrap(), "success");
    p.run_due().await.unwrap();
    let t = env.store.task(task.id).await.unwrap();
    assert_eq!(t.status, Status::CiWait, "held: no merge");
    assert_eq!(
        env.sim.state_of(REPO, t.pr_number.unwrap() as u64),
        Some(("open".into(), false))
    );
    // Released: the next look merges.
    env.store
        .release(task.id, &crate::note("release"))
        .await
        .unwrap();
    sqlx::query("UPDATE tasks SET stage_due_at = now(), stage_lease_until = NULL WHERE id = $1")
        .bind(task.id)
        .execute(env.store.pool())
        .await
        .unwrap();
    drive(&env, &p, task.id, Status::Merged).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bug16_17_relabelling_a_failed_issue_retries_it_and_cancel_does_not_respawn() {
    let env = env().await;
    let cfg = intake_config();
    let n = env
        .sim
        .create_issue(REPO, "Add two", "", "alice", &[labels::TRIGGER]);
    let created = controller::intake::poller::poll_once(&env.store, env.forge.as_ref(), &cfg)
        .await
        .unwrap();
    assert_eq!(created.len(), 1);
    sync(&env).await;
    // Cancel: the trigger label is not put back, so nothing respawns it.
    env.store
        .cancel(created[0], &crate::note("cancel"))
        .await
        .unwrap();
    sync(&env).await;
    let l = env.sim.labels(REPO, n);
    assert!(
        !l.contains(&labels::TRIGGER.to_owned()) && !l.contains(&labels::IN_PROGRESS.to_owned()),
        "{l:?}"
    );
    assert!(
        controller::intake::poller::poll_once(&env.store, env.forge.as_ref(), &cfg)
            .await
            .unwrap()
            .is_empty()
    );
    // A human re-adds the label: a fresh task.
    env.sim.label_issue(REPO, n, labels::TRIGGER, "alice").await;
    let again = controller::intake::poller::poll_once(&env.store, env.forge.as_ref(), &cfg)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    // It fails; the failure comment says how to retry, and re-adding the label does retry.
    env.store
        .fail(
            again[0],
            controller::store::TerminalReason::AgentFailed,
            "gave up",
            &crate::note("x"),
        )
        .await
        .unwrap();
    sync(&env).await;
    assert!(env.sim.labels(REPO, n).contains(&labels::FAILED.to_owned()));
    assert!(
        env.sim
            .comments(REPO, n)
            .iter()
            .any(|c| c.contains("re-add the `backporcher` label"))
    );
    env.sim.label_issue(REPO, n, labels::TRIGGER, "alice").await;
    let third = controller::intake::poller::poll_once(&env.store, env.forge.as_ref(), &cfg)
        .await
        .unwrap();
    assert_eq!(third.len(), 1, "the relabelled failed issue is retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn bug22_logs_come_from_the_pr_head_and_no_checks_follows_the_policy() {
    let env = env().await;
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let p = pipeline(&env, vec![]);
    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                no_checks: Some("hold".into()),
                no_checks_grace_secs: Some(0),
                approval_mode: Some("full-auto".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // An old failure on main's commit must not count for the PR's head.
    let main = env.sim.branch_head(REPO, "main").unwrap();
    env.sim.fail_ci(REPO, &main, "an old failure");
    let t = drive(&env, &p, task.id, Status::ApprovalHold).await;
    assert!(t.retry_context.0.to_string().find("old failure").is_none());
    let ev = env.store.timeline(task.id).await.unwrap();
    assert_eq!(
        ev.last().unwrap().reason,
        "no_checks",
        "full-auto does not merge without CI when the policy says hold"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_leaves_nothing_half_done_on_github() {
    let env = env().await;
    let n = env
        .sim
        .create_issue(REPO, "Add two", "", "alice", &[labels::TRIGGER]) as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let p = pipeline(&env, vec![]);
    let t = drive(&env, &p, task.id, Status::CiWait).await;
    let (pr, branch) = (t.pr_number.unwrap() as u64, t.branch.clone().unwrap());
    sync(&env).await;
    env.store
        .cancel(task.id, &crate::note("cancel"))
        .await
        .unwrap();
    p.run_due().await.unwrap();
    sync(&env).await;
    assert_eq!(
        env.sim.state_of(REPO, pr),
        Some(("closed".into(), false)),
        "PR closed, not merged"
    );
    assert_eq!(env.sim.branch_head(REPO, &branch), None, "branch deleted");
    let l = env.sim.labels(REPO, n as u64);
    assert!(
        !l.contains(&labels::IN_PROGRESS.to_owned()) && !l.contains(&labels::TRIGGER.to_owned()),
        "{l:?}"
    );
    assert_eq!(
        env.store.task(task.id).await.unwrap().status,
        Status::Canceled
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn review_merge_holds_after_green_ci_until_a_human_approves() {
    let env = env().await;
    let n = env
        .sim
        .create_issue(REPO, "Add two", "", "alice", &[labels::TRIGGER]) as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let p = pipeline(&env, vec![]);
    let t = drive(&env, &p, task.id, Status::CiWait).await;
    env.sim
        .set_ci(REPO, t.head_sha.as_deref().unwrap(), "success");
    let t = drive(&env, &p, task.id, Status::ApprovalHold).await;
    sync(&env).await;
    assert!(
        env.sim
            .comments(REPO, n as u64)
            .iter()
            .any(|c| c.contains("waits for a human"))
    );
    p.run_due().await.unwrap();
    assert_eq!(
        env.sim.state_of(REPO, t.pr_number.unwrap() as u64),
        Some(("open".into(), false)),
        "nothing merges by itself"
    );
    let who = controller::store::ops::Actor {
        name: "user:carol".into(),
        user_id: None,
    };
    env.store.approve(task.id, &who).await.unwrap();
    let t = drive(&env, &p, task.id, Status::Merged).await;
    assert_eq!(
        env.sim.state_of(REPO, t.pr_number.unwrap() as u64),
        Some(("closed".into(), true))
    );
    // A second approve is refused and audited too.
    assert!(env.store.approve(task.id, &who).await.is_err());
    let audit: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, outcome FROM audit_log WHERE action = 'approve' ORDER BY id")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0], ("user:carol".to_owned(), "ok".to_owned()));
    assert!(audit[1].1.starts_with("refused"), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn github_trouble_before_a_review_delays_it_instead_of_failing_closed() {
    let env = env().await;
    env.store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                review_fail_mode: Some("closed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let p = pipeline(&env, vec![]);
    drive(&env, &p, task.id, Status::PrOpen).await;
    // The diff cannot be fetched once: the review waits rather than failing the task.
    env.sim
        .fail_requests("GET", "/info/refs", 503, "unavailable", 1);
    p.run_due().await.unwrap();
    let t = env.store.task(task.id).await.unwrap();
    assert_eq!(t.status, Status::PrOpen, "{:?}", t.error);
    assert_eq!(t.stage_tries, 1);
    assert!(t.review.is_none(), "no review happened");
    let t = drive(&env, &p, task.id, Status::CiWait).await;
    assert_eq!(t.review.unwrap().0["approve"], true);
}

/// A reviewer that holds the review of a diff naming `slow_file` until released, counting them.
struct Gate {
    slow_file: &'static str,
    reviews: std::sync::atomic::AtomicUsize,
    open: tokio::sync::Notify,
}

#[async_trait]
impl Reviewer for Gate {
    async fn review(&self, input: &ReviewInput) -> Result<Verdict, ReviewError> {
        if input.diff.contains(self.slow_file) {
            self.reviews
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.open.notified().await;
        }
        Ok(Verdict {
            approve: true,
            reasons: "fine".into(),
        })
    }
}

/// The stage worker refills free slots: a stage that keeps failing on a permanent 4xx fails its
/// task after the configured tries, with the error and what to do, and a slow review holds up
/// neither the other repository's stages nor its own (and is never taken up twice while it runs).
#[tokio::test(flavor = "multi_thread")]
async fn stages_are_bounded_and_one_slow_or_failing_stage_holds_up_no_other() {
    let env = env().await;
    env.sim.set_default_ci("success");
    env.sim
        .create_repo("acme/gadgets", "main", &[("README.md", "# gadgets\n")])
        .unwrap();
    let gadgets = env
        .store
        .add_repo(&NewRepo {
            name: "acme/gadgets".into(),
            clone_url: format!("{}/acme/gadgets.git", env.base),
            default_branch: "main".into(),
        })
        .await
        .unwrap();
    for repo in [env.repo.id, gadgets.id] {
        env.store
            .update_repo(
                repo,
                &RepoSettings {
                    approval_mode: Some("full-auto".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    // The App may not open pull requests in gadgets: a permanent refusal, every time.
    env.sim.fail_requests(
        "POST",
        "/repos/acme/gadgets/pulls",
        403,
        "Resource not accessible by integration",
        1000,
    );
    let mut t = NewTask::for_issue(gadgets.id, 1, "Add a gadget", "add it");
    t.created_by = "test".into();
    let stuck = env.store.create_task(&t).await.unwrap();
    env.store
        .triage(stuck.id, &Triage::default(), &crate::note("triaged"))
        .await
        .unwrap();
    run_attempt_in(&env, "acme/gadgets", stuck.id, &[("g.rs", "// g\n")]).await;
    let n = env
        .sim
        .create_issue(REPO, "Slow review", "x", "alice", &[labels::TRIGGER]) as i64;
    let slow = task_at_pushing(&env, n, &[("src/slow.rs", "// slow\n")]).await;
    let n = env
        .sim
        .create_issue(REPO, "Quick one", "y", "alice", &[labels::TRIGGER]) as i64;
    let quick = task_at_pushing(&env, n, &[("src/quick.rs", "// quick\n")]).await;

    let gate = Arc::new(Gate {
        slow_file: "src/slow.rs",
        reviews: Default::default(),
        open: tokio::sync::Notify::new(),
    });
    let mut p = pipeline(&env, vec![]);
    p.reviewer = gate.clone();
    p.config.concurrency = 2;
    p.config.stage_error_tries = 3;
    p.config.stage_retry_base = Duration::from_millis(50);
    p.config.stage_lease = Duration::from_secs(3);
    p.config.sweep = Duration::from_millis(50);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = {
        let (p, shutdown) = (p.clone(), shutdown.clone());
        tokio::spawn(async move { p.work(Arc::new(tokio::sync::Notify::new()), shutdown).await })
    };
    let settled = |id: i64, want: Status| {
        let store = env.store.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let t = store.task(id).await.unwrap();
                if t.status == want {
                    return t;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "task {id} is {} ({:?}), not {want}",
                    t.status,
                    t.error
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // While the slow review runs (one of the two slots), the rest goes on in the other.
    let failed = settled(stuck.id, Status::Failed).await;
    let merged = settled(quick.id, Status::Merged).await;
    assert_eq!(merged.status, Status::Merged);
    assert_eq!(
        failed.terminal_reason.0,
        Some(controller::store::TerminalReason::InternalError)
    );
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("failed 3 times")
            && error.contains("Resource not accessible by integration")
            && error.contains("requeue"),
        "{error}"
    );
    let creates = env
        .sim
        .requests()
        .iter()
        .filter(|(m, path)| m == "POST" && path.ends_with("/acme/gadgets/pulls"))
        .count();
    assert_eq!(creates, 3, "bounded: three tries");
    // The slow review outlived its stage lease (3 s) without being taken up again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        env.store.task(slow.id).await.unwrap().status,
        Status::Reviewing
    );
    assert_eq!(
        gate.reviews.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one review at a time"
    );
    let restarted = env
        .store
        .timeline(slow.id)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.reason == "review_restarted")
        .count();
    assert_eq!(restarted, 0);
    gate.open.notify_one();
    settled(slow.id, Status::Merged).await;
    shutdown.cancel();
    worker.await.unwrap();
}

/// A transient failure that never clears (GitHub answering 502 to opening the PR) is tried
/// `stage_transient_tries` times, then fails the task saying so; waiting on CI is not a try.
#[tokio::test(flavor = "multi_thread")]
async fn a_transient_failure_that_never_clears_fails_the_task_after_its_tries() {
    let env = env().await;
    let n = env
        .sim
        .create_issue(REPO, "Add two", "add fn two", "alice", &[labels::TRIGGER])
        as i64;
    let task = task_at_pushing(&env, n, &[("src/two.rs", "pub fn two() -> u32 { 2 }\n")]).await;
    env.sim.fail_requests(
        "POST",
        "/repos/acme/widgets/pulls",
        502,
        "Bad gateway",
        1000,
    );
    let mut p = pipeline(&env, vec![]);
    p.config.stage_transient_tries = 4;
    for _ in 0..10 {
        sqlx::query("UPDATE tasks SET stage_due_at = now() WHERE id = $1")
            .bind(task.id)
            .execute(env.store.pool())
            .await
            .unwrap();
        p.run_due().await.unwrap();
        if env.store.task(task.id).await.unwrap().status == Status::Failed {
            break;
        }
    }
    let t = env.store.task(task.id).await.unwrap();
    assert_eq!(t.status, Status::Failed);
    let error = t.error.unwrap_or_default();
    assert!(
        error.contains("pushing stage failed 4 times") && error.contains("requeue"),
        "{error}"
    );
    let creates = env
        .sim
        .requests()
        .iter()
        .filter(|(m, path)| m == "POST" && path.ends_with("/pulls"))
        .count();
    // Four stage tries, each a call the client itself tries four times on a 5xx.
    assert_eq!(creates, 16);
}

/// Paths the repository's `.backporcher.toml` (on its default branch) protects are never pushed:
/// a change touching one is refused before anything reaches GitHub, naming the file and the rule.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_to_a_protected_path_is_refused_at_push() {
    let env = env().await;
    env.sim
        .create_repo(
            "acme/guarded",
            "main",
            &[
                ("README.md", "# guarded\n"),
                (
                    ".backporcher.toml",
                    "protected_paths = [\"migrations/**\", \"*.lock\"]\n",
                ),
            ],
        )
        .unwrap();
    let repo = env
        .store
        .add_repo(&NewRepo {
            name: "acme/guarded".into(),
            clone_url: format!("{}/acme/guarded.git", env.base),
            default_branch: "main".into(),
        })
        .await
        .unwrap();
    let mut t = NewTask::for_issue(repo.id, 1, "Drop a table", "x");
    t.created_by = "test".into();
    let task = env.store.create_task(&t).await.unwrap();
    env.store
        .triage(task.id, &Triage::default(), &crate::note("triaged"))
        .await
        .unwrap();
    let done = run_attempt_in(
        &env,
        "acme/guarded",
        task.id,
        &[
            ("src/ok.rs", "// fine\n"),
            ("migrations/0001.sql", "drop table x;\n"),
        ],
    )
    .await;
    let p = pipeline(&env, vec![]);
    let t = drive(&env, &p, task.id, Status::Failed).await;
    assert_eq!(
        t.terminal_reason.0,
        Some(controller::store::TerminalReason::PushRejected)
    );
    let error = t.error.unwrap_or_default();
    assert!(
        error.contains("`migrations/0001.sql`") && error.contains("migrations/**"),
        "{error}"
    );
    assert_eq!(
        env.sim
            .branch_head("acme/guarded", done.branch.as_deref().unwrap()),
        None,
        "nothing was pushed"
    );
}

/// Moving a protected file out of its protected place (git would show the pair as one rename,
/// naming only the new path) is a change to the protected path too.
#[tokio::test(flavor = "multi_thread")]
async fn a_protected_file_moved_away_is_refused_at_push() {
    let env = env().await;
    let migration = "create table accounts (id int);\n".repeat(20);
    env.sim
        .create_repo(
            "acme/moved",
            "main",
            &[
                ("README.md", "# moved\n"),
                (
                    ".backporcher.toml",
                    "protected_paths = [\"migrations/**\"]\n",
                ),
                ("migrations/0001.sql", &migration),
            ],
        )
        .unwrap();
    let repo = env
        .store
        .add_repo(&NewRepo {
            name: "acme/moved".into(),
            clone_url: format!("{}/acme/moved.git", env.base),
            default_branch: "main".into(),
        })
        .await
        .unwrap();
    let mut t = NewTask::for_issue(repo.id, 1, "Tidy the tree", "x");
    t.created_by = "test".into();
    let task = env.store.create_task(&t).await.unwrap();
    env.store
        .triage(task.id, &Triage::default(), &crate::note("triaged"))
        .await
        .unwrap();
    // One line changed: similar enough for git to call it a rename.
    let moved = migration.replacen("accounts", "accounts_v2", 1);
    let done = run_attempt_in(
        &env,
        "acme/moved",
        task.id,
        &[
            ("migrations/0001.sql", DELETED),
            ("archive/0001.sql", &moved),
        ],
    )
    .await;
    let p = pipeline(&env, vec![]);
    let t = drive(&env, &p, task.id, Status::Failed).await;
    let error = t.error.unwrap_or_default();
    assert!(error.contains("`migrations/0001.sql`"), "{error}");
    assert_eq!(
        env.sim
            .branch_head("acme/moved", done.branch.as_deref().unwrap()),
        None,
        "nothing was pushed"
    );
}
