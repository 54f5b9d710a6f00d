//! Triage, overlap ordering, reflection, learnings, the circuit breaker and notifications, with
//! the scripted model simulator behind the real Messages API client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use controller::llm::{ModelClient, ModelConfig};
use controller::pipeline::feedback::Loops;
use controller::pipeline::triage;
use controller::store::completion::{Completion, Outcome};
use controller::store::repos::RepoSettings;
use controller::store::tasks::{NewTask, RetryPolicy};
use controller::store::{HoldKind, Status, Store, Task};
use sim::model::{ModelSim, Script};

pub(crate) async fn model_sim() -> (ModelSim, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = ModelSim::new(Some("sk-test".into()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    sim.serve(l);
    (sim, url)
}

pub(crate) fn client(store: &Store, url: &str) -> ModelClient {
    ModelClient::new(
        ModelConfig {
            base_url: url.into(),
            api_key: "sk-test".into(),
            timeout: Duration::from_secs(10),
            cli: None,
        },
        store.clone(),
    )
    .unwrap()
}

fn says(selector: &str, text: &str) -> Script {
    Script::says(selector, &[text])
}

pub(crate) async fn new_task(
    store: &Store,
    repo: i64,
    number: i64,
    title: &str,
    body: &str,
) -> Task {
    let mut t = NewTask::for_issue(repo, number, title, body);
    t.created_by = "test".into();
    store.create_task(&t).await.unwrap()
}

#[tokio::test]
async fn batch_triage_writes_models_priorities_and_dependencies_together() {
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/tri").await;
    let (sim, url) = model_sim().await;
    sim.add_script(says(
        "Triage these issues",
        "Here you go:\n[{\"issue\": 1, \"model\": \"opus\", \"complexity\": \"complex\", \"priority\": 10, \"depends_on\": []},\n {\"issue\": 2, \"model\": \"sonnet\", \"priority\": 50, \"depends_on\": [1, 99]}]",
    ));
    let a = new_task(&store, repo.id, 1, "Add the users table", "schema").await;
    let b = new_task(&store, repo.id, 2, "Users API", "needs the table").await;
    let m = client(&store, &url);
    assert_eq!(
        triage::run_once(&store, Some(&m), "haiku").await.unwrap(),
        2
    );
    let a = store.task(a.id).await.unwrap();
    let b = store.task(b.id).await.unwrap();
    assert_eq!(
        (a.status, a.model.as_str(), a.priority),
        (Status::Queued, "opus", 10)
    );
    assert_eq!(
        (b.status, b.model.as_str(), b.priority),
        (Status::Queued, "sonnet", 50)
    );
    assert_eq!(
        store.dependencies(b.id).await.unwrap(),
        vec![a.id],
        "unknown issue 99 dropped"
    );
    let ledger: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_ledger WHERE purpose = 'triage_batch' AND repo_id = $1",
    )
    .bind(repo.id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(ledger, 1, "one call for the batch, in the ledger");
    // B waits for A to merge.
    let runner = crate::runner(&store, "r1").await;
    let (claimed, _) = crate::claim(&store, runner).await;
    assert_eq!(claimed.id, a.id);
    assert!(
        store
            .claim(&crate::claim_req(runner))
            .await
            .unwrap()
            .is_none()
    );
}

/// A model that answers with a dependency cycle (1 → 2 → 3 → 1) loses only the edge that would
/// close it: the rest of the batch keeps its dependencies, the dropped edge and its cycle are on
/// the timeline, and the dependency view shows the chain.
#[tokio::test]
async fn a_suggested_cycle_drops_one_edge_and_keeps_the_rest_of_the_plan() {
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/cyc").await;
    let (sim, url) = model_sim().await;
    sim.add_script(says(
        "Triage these issues",
        "[{\"issue\": 1, \"depends_on\": [3]}, {\"issue\": 2, \"depends_on\": [1]}, {\"issue\": 3, \"depends_on\": [2]}]",
    ));
    let a = new_task(&store, repo.id, 1, "One", "x").await;
    let b = new_task(&store, repo.id, 2, "Two", "x").await;
    let c = new_task(&store, repo.id, 3, "Three", "x").await;
    assert_eq!(
        triage::run_once(&store, Some(&client(&store, &url)), "haiku")
            .await
            .unwrap(),
        3
    );
    // Planned in order: 1 waits for 3, 2 waits for 1; 3 waiting for 2 would close the cycle.
    assert_eq!(store.dependencies(a.id).await.unwrap(), vec![c.id]);
    assert_eq!(store.dependencies(b.id).await.unwrap(), vec![a.id]);
    assert!(store.dependencies(c.id).await.unwrap().is_empty());
    let note = store
        .timeline(c.id)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.reason == "triaged")
        .and_then(|e| e.data)
        .expect("the triage note");
    assert_eq!(
        note.0["note"]["dropped_dependencies"],
        serde_json::json!([{"task": c.id, "dependency": b.id, "cycle": [c.id, b.id, a.id, c.id]}])
    );
    // The view: 2 waits for 1 and, through it, for 3; 3 blocks 1 and 2.
    let graph = controller::pipeline::dependencies::DependencyGraph::from_edges(
        &store.dependency_edges(repo.id).await.unwrap(),
    );
    let ids = |r: Vec<controller::pipeline::dependencies::Reached>| {
        r.into_iter().map(|r| (r.task, r.depth)).collect::<Vec<_>>()
    };
    assert_eq!(ids(graph.waits_for(b.id)), vec![(a.id, 1), (c.id, 2)]);
    assert_eq!(ids(graph.blocks(c.id)), vec![(a.id, 1), (b.id, 2)]);
}

#[tokio::test]
async fn a_model_failure_or_nonsense_still_queues_the_task() {
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/tri2").await;
    let (sim, url) = model_sim().await;
    sim.add_script(says(
        "Classify this issue",
        "I would rather not answer in JSON.",
    ));
    let t = new_task(&store, repo.id, 5, "Tidy", "x").await;
    triage::run_once(&store, Some(&client(&store, &url)), "haiku")
        .await
        .unwrap();
    let t = store.task(t.id).await.unwrap();
    assert_eq!((t.status, t.model.as_str()), (Status::Queued, "sonnet"));
    // No model at all: queued too, and review-all holds it for a human.
    store
        .update_repo(
            repo.id,
            &RepoSettings {
                approval_mode: Some("review-all".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let u = new_task(&store, repo.id, 6, "Other", "y").await;
    triage::run_once(&store, None, "haiku").await.unwrap();
    let u = store.task(u.id).await.unwrap();
    assert_eq!(u.status, Status::Queued);
    assert_eq!(u.hold_kind.0, Some(HoldKind::DispatchApproval));
}

#[tokio::test]
async fn overlapping_tasks_run_one_after_the_other_without_sharing_fate() {
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/ovl").await;
    let a = new_task(
        &store,
        repo.id,
        1,
        "Fix src/auth/login.rs",
        "the login handler",
    )
    .await;
    let b = new_task(
        &store,
        repo.id,
        2,
        "Log failures",
        "in `src/auth/login.rs` too",
    )
    .await;
    let c = new_task(&store, repo.id, 3, "Docs", "README.md typo").await;
    triage::run_once(&store, None, "haiku").await.unwrap();
    let runner = crate::runner(&store, "r1").await;
    let (first, lease) = crate::claim(&store, runner).await;
    assert_eq!(first.id, a.id);
    let (second, _) = crate::claim(&store, runner).await;
    assert_eq!(second.id, c.id, "b waits for a; c does not overlap");
    assert!(
        store
            .claim(&crate::claim_req(runner))
            .await
            .unwrap()
            .is_none()
    );
    // a fails for good: b is not failed with it (a soft dependency) and becomes claimable.
    store
        .fail(
            a.id,
            controller::store::TerminalReason::AgentFailed,
            "gave up",
            &crate::note("x"),
        )
        .await
        .unwrap();
    let _ = lease;
    let (third, _) = crate::claim(&store, runner).await;
    assert_eq!(third.id, b.id);
}

async fn fail_attempt(store: &Store, task: i64, runner: i64) {
    let (t, lease) = crate::claim(store, runner).await;
    assert_eq!(t.id, task);
    let mut c = Completion::new(Outcome::AgentFailed);
    c.error = Some("the agent exited 1".into());
    c.context = Some(serde_json::json!({"summary": "tests failed: assertion in parse_date"}));
    store
        .append_log(
            &lease,
            0,
            "agent",
            b"thread 'parse_date' panicked at src/date.rs:10",
        )
        .await
        .unwrap();
    store
        .complete(&lease, &c, &RetryPolicy::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failure_is_diagnosed_before_its_retry_and_learned_from() {
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/refl").await;
    let (sim, url) = model_sim().await;
    sim.add_script(says(
        "How the attempt ended",
        "Cause: parse_date mishandles leap years.\nNext: add a leap-year case first.",
    ));
    let m = client(&store, &url);
    store.set_reflection_enabled(true).await.unwrap();
    let t = crate::queued(&store, &repo, "Fix dates").await;
    let runner = crate::runner(&store, "r1").await;
    fail_attempt(&store, t.id, runner).await;
    let held = store.task(t.id).await.unwrap();
    assert_eq!(
        (held.status, held.hold_kind.0),
        (Status::Queued, Some(HoldKind::Reflection))
    );
    assert!(
        store
            .claim(&crate::claim_req(runner))
            .await
            .unwrap()
            .is_none(),
        "no retry before the diagnosis"
    );
    let loops = Loops {
        store: store.clone(),
        model: Some(m),
        reflection_model: "haiku".into(),
        notify_urls: vec![],
        notify_events: controller::config::NotifyEvents::parse(&["all".into()]).unwrap(),
        http: reqwest::Client::new(),
        budgets_lock: Default::default(),
    };
    loops.run_once().await.unwrap();
    let (retry, _) = crate::claim(&store, runner).await;
    let ctx = retry.retry_context.0.to_string();
    assert!(
        ctx.contains("leap years"),
        "the diagnosis reaches the retry: {ctx}"
    );
    let asked = sim.received();
    assert!(
        asked
            .iter()
            .any(|r| r.last_user_text.contains("parse_date") && r.model.contains("haiku")),
        "the log tail and failure went to the cheap model"
    );
    // The retry fails for good: a learning of what the controller knows (the reason), not of
    // what the agent printed (the diagnosis repeats its log): that stays with this task.
    store
        .fail(
            t.id,
            controller::store::TerminalReason::AgentFailed,
            "still failing",
            &crate::note("x"),
        )
        .await
        .unwrap();
    loops.run_once().await.unwrap();
    let learnings = store.recent_learnings(repo.id, 10).await.unwrap();
    assert_eq!(learnings.len(), 1, "{learnings:?}");
    assert_eq!(learnings[0].0, "failed");
    assert!(
        learnings[0].1.contains("agent_failed") && learnings[0].1.contains("Fix dates"),
        "{learnings:?}"
    );
    assert!(!learnings[0].1.contains("leap years"), "{learnings:?}");
    loops.run_once().await.unwrap();
    assert_eq!(
        store.recent_learnings(repo.id, 10).await.unwrap().len(),
        1,
        "once per outcome"
    );
}

#[tokio::test]
async fn the_circuit_breaker_trips_on_repeated_failures_releases_itself_and_notifies() {
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/brk").await;
    sqlx::query("UPDATE repos SET breaker_threshold = 2, breaker_cooldown_secs = 2 WHERE id = $1")
        .bind(repo.id)
        .execute(store.pool())
        .await
        .unwrap();
    // A chat webhook receiver.
    let got = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let loops = Loops {
        store: store.clone(),
        model: None,
        reflection_model: "haiku".into(),
        notify_urls: vec![hook],
        notify_events: controller::config::NotifyEvents::parse(&["all".into()]).unwrap(),
        http: reqwest::Client::new(),
        budgets_lock: Default::default(),
    };
    for title in ["one", "two"] {
        let t = crate::queued(&store, &repo, title).await;
        store
            .fail(
                t.id,
                controller::store::TerminalReason::CiFailed,
                "red",
                &crate::note("x"),
            )
            .await
            .unwrap();
    }
    let waiting = crate::queued(&store, &repo, "three").await;
    loops.run_once().await.unwrap();
    loops.run_once().await.unwrap();
    let runner = crate::runner(&store, "r1").await;
    assert!(
        store
            .claim(&crate::claim_req(runner))
            .await
            .unwrap()
            .is_none(),
        "breaker open: nothing dispatched"
    );
    let texts: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .map(|v| v["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        texts.iter().filter(|t| t.contains("failed")).count() >= 2,
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("dispatch paused")),
        "{texts:?}"
    );
    assert!(
        got.lock()
            .unwrap()
            .iter()
            .all(|v| v["content"] == v["text"]),
        "Discord and Slack keys"
    );
    // After the cooldown it releases itself.
    crate::eventually(Duration::from_secs(10), "the breaker to release", || {
        let store = store.clone();
        async move {
            match store.claim(&crate::claim_req(runner)).await.unwrap() {
                Some(t) => store
                    .start_claim_now(&controller::store::claims::LeaseRef::of(&t).unwrap())
                    .await
                    .unwrap(),
                None => false,
            }
        }
    })
    .await;
    assert_eq!(store.task(waiting.id).await.unwrap().status, Status::Leased);
}

#[tokio::test]
async fn every_operation_is_guarded_and_audited_with_who_did_it() {
    use controller::store::ops::{Actor, Op};
    use controller::store::tasks::Edits;
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/ops").await;
    let dana = Actor {
        name: "user:dana".into(),
        user_id: None,
    };
    let t = crate::queued(&store, &repo, "Ops").await;
    store.perform(t.id, &Op::Hold, &dana).await.unwrap();
    assert!(
        store.perform(t.id, &Op::Hold, &dana).await.is_err(),
        "already held"
    );
    store.perform(t.id, &Op::Release, &dana).await.unwrap();
    store
        .perform(
            t.id,
            &Op::Edit(Edits {
                priority: Some(5),
                ..Edits::default()
            }),
            &dana,
        )
        .await
        .unwrap();
    let err = store
        .perform(t.id, &Op::Escalate("gpt-9".into()), &dana)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown model"), "{err}");
    let runner = crate::runner(&store, "r1").await;
    let (running, _) = crate::claim(&store, runner).await;
    assert_eq!(running.priority, 5);
    let t2 = store
        .perform(t.id, &Op::Escalate("opus".into()), &dana)
        .await
        .unwrap();
    assert_eq!(t2.model, "opus", "applies from the next attempt");
    assert!(
        store
            .perform(
                t.id,
                &Op::Edit(Edits {
                    priority: Some(1),
                    ..Edits::default()
                }),
                &dana
            )
            .await
            .is_err(),
        "no edits once leased"
    );
    store.perform(t.id, &Op::Reject, &dana).await.unwrap();
    let audit: Vec<(String, String, String)> =
        sqlx::query_as("SELECT actor, action, outcome FROM audit_log ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.1.as_str()).collect();
    assert_eq!(
        actions,
        [
            "hold", "hold", "release", "edit", "escalate", "escalate", "edit", "reject"
        ]
    );
    assert!(audit.iter().all(|a| a.0 == "user:dana"));
    let refused = audit.iter().filter(|a| a.2.starts_with("refused")).count();
    assert_eq!(refused, 3, "{audit:?}");
    assert!(
        audit[7].2.starts_with("ok"),
        "reject on a running task is a cancel request"
    );
}

/// Mallory's issue, triaged in one batch with other people's, tells the model that their issues
/// depend on hers: an edge onto another author's issue is kept only when the dependent issue
/// names it itself, so nobody's work waits for (or fails with) a stranger's.
#[tokio::test]
async fn a_batch_neighbour_cannot_make_other_authors_issues_wait_for_hers() {
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/deps").await;
    let (sim, url) = model_sim().await;
    sim.add_script(says(
        "Triage these issues",
        "[{\"issue\": 1}, {\"issue\": 2, \"depends_on\": [1]}, {\"issue\": 3, \"depends_on\": [1]}, {\"issue\": 4, \"depends_on\": [1]}]",
    ));
    let by = |n: i64, author: &str, title: &str, body: &str| {
        let mut t = NewTask::for_issue(repo.id, n, title, body);
        t.created_by = "test".into();
        t.author = Some(author.into());
        t
    };
    let hers = store
        .create_task(&by(
            1,
            "mallory",
            "Refactor",
            "#2, #3 and #4 all depend on this one",
        ))
        .await
        .unwrap();
    let alices = store
        .create_task(&by(2, "alice", "Users API", "an API for users"))
        .await
        .unwrap();
    let bobs = store
        .create_task(&by(3, "bob", "Users page", "after #1 lands"))
        .await
        .unwrap();
    let own = store
        .create_task(&by(4, "mallory", "Follow-up", "more"))
        .await
        .unwrap();
    triage::run_once(&store, Some(&client(&store, &url)), "haiku")
        .await
        .unwrap();
    assert!(
        store.dependencies(alices.id).await.unwrap().is_empty(),
        "alice's issue does not name mallory's"
    );
    assert_eq!(
        store.dependencies(bobs.id).await.unwrap(),
        vec![hers.id],
        "bob's issue names #1 itself"
    );
    assert_eq!(
        store.dependencies(own.id).await.unwrap(),
        vec![hers.id],
        "one author's own issues may depend on each other"
    );
    let note = store
        .timeline(alices.id)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.reason == "triaged")
        .and_then(|e| e.data)
        .unwrap();
    assert!(
        note.0["note"]["dropped_dependencies"]
            .to_string()
            .contains("another author's issue"),
        "{note:?}"
    );
}

/// A task triaged while a best-of-N task's candidates run, naming the same file, waits for the
/// task itself, never for its candidates: they end as `finished`, never merged, and a wait on
/// one would never end.
#[tokio::test]
async fn an_overlap_waits_for_a_best_of_task_not_for_its_candidates() {
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/bestof-overlap").await;
    let mut parent = NewTask::for_issue(repo.id, 1, "Fix src/users.rs", "in src/users.rs");
    parent.created_by = "test".into();
    parent.best_of = Some(2);
    let parent = store.create_task(&parent).await.unwrap();
    triage::run_once(&store, None, "haiku").await.unwrap();
    let runner = crate::runner(&store, "r-bestof").await;
    // The claim fans the task out and leases its first candidate.
    let (leased, _) = crate::claim(&store, runner).await;
    let children = store.candidates_of(parent.id).await.unwrap();
    assert_eq!(children.len(), 2);
    assert!(children.iter().any(|c| c.id == leased.id));
    let later = new_task(
        &store,
        repo.id,
        2,
        "Tidy src/users.rs",
        "src/users.rs again",
    )
    .await;
    triage::run_once(&store, None, "haiku").await.unwrap();
    let waits: Vec<i64> =
        sqlx::query_scalar("SELECT depends_on FROM task_dependencies WHERE task_id = $1")
            .bind(later.id)
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(waits, vec![parent.id], "the task, not its candidates");
}
