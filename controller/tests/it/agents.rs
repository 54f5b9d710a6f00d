//! The agent backend a task runs with: the repository's setting, an issue label, the API's task
//! fields; claims only to runners that offer it; and the fallback to the other backend when the
//! model API rate-limited the attempt, on the timeline, only where the repository allows it.

use std::time::Duration;

use controller::config::Config;
use controller::store::completion::{Completion, Outcome};
use controller::store::repos::RepoSettings;
use controller::store::runners::HelloInfo;
use controller::store::tasks::{Edits, RetryPolicy};
use controller::store::{Status, Store};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::api::Api;
use crate::{claim, claim_req, note, queued, repo, runner};

fn labels(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_label_wins_over_the_repositorys_backend() {
    use controller::intake::agent_for;
    assert_eq!(agent_for(&labels(&["backporcher"]), "claude"), "claude");
    assert_eq!(agent_for(&labels(&["backporcher"]), "codex"), "codex");
    assert_eq!(
        agent_for(&labels(&["backporcher", "codex"]), "claude"),
        "codex"
    );
    assert_eq!(
        agent_for(&labels(&["claude", "backporcher"]), "codex"),
        "claude"
    );
    assert_eq!(agent_for(&labels(&["codex", "claude"]), "claude"), "codex");
    assert_eq!(
        agent_for(&labels(&["codex-review"]), "claude"),
        "claude",
        "whole labels only"
    );
}

/// Says hello for `runner` offering `backends`.
async fn offers(store: &Store, runner: i64, backends: &[&str]) {
    store
        .runner_hello(
            runner,
            &HelloInfo {
                boot_id: &format!("boot-{runner}-{}", backends.join("-")),
                labels: &[],
                capacity: 4,
                backends: &labels(backends),
                version: env!("CARGO_PKG_VERSION"),
                hostname: "test",
            },
        )
        .await
        .expect("hello");
}

#[tokio::test]
async fn the_repositorys_backend_is_checked_and_a_codex_task_goes_only_to_a_runner_with_codex() {
    let store = crate::store().await;
    let r = repo(&store, "acme/agents").await;
    assert_eq!((r.agent.as_str(), r.agent_fallback), ("claude", false));
    let err = store
        .update_repo(
            r.id,
            &RepoSettings {
                agent: Some("gemini".into()),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("agent backend `gemini`"), "{err}");
    let r = store
        .update_repo(
            r.id,
            &RepoSettings {
                agent: Some("codex".into()),
                agent_fallback: Some(true),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((r.agent.as_str(), r.agent_fallback), ("codex", true));

    let t = queued(&store, &r, "a codex task").await;
    let t = store
        .edit(
            t.id,
            &Edits {
                agent: Some("codex".into()),
                ..Edits::default()
            },
            &note("edit"),
        )
        .await
        .unwrap();
    assert_eq!(t.agent, "codex");
    let bad = store
        .edit(
            t.id,
            &Edits {
                agent: Some("gpt".into()),
                ..Edits::default()
            },
            &note("edit"),
        )
        .await
        .unwrap_err();
    assert!(
        bad.to_string().contains("not one of: claude, codex"),
        "{bad}"
    );

    // A runner with Claude Code only does not take it; one that offers Codex does.
    let claude_only = runner(&store, "claude-only").await;
    offers(&store, claude_only, &["claude"]).await;
    assert!(
        store
            .claim(&claim_req(claude_only))
            .await
            .unwrap()
            .is_none(),
        "a codex task is not leased to a runner without codex"
    );
    let both = runner(&store, "both").await;
    offers(&store, both, &["claude", "codex"]).await;
    let (leased, _) = claim(&store, both).await;
    assert_eq!((leased.id, leased.agent.as_str()), (t.id, "codex"));
    // A Claude task goes to any runner, one that reported no backends included.
    let c = queued(&store, &r, "a claude task").await;
    assert_eq!(c.agent, "claude", "made without the repository's setting");
    let silent = runner(&store, "silent").await;
    let (leased, _) = claim(&store, silent).await;
    assert_eq!(leased.id, c.id);
}

/// Retries enough for every failure a test makes.
fn policy() -> RetryPolicy {
    RetryPolicy {
        agent: 10,
        ..RetryPolicy::default()
    }
}

/// Claims the next task, and completes it as an agent failure the model API rate-limited.
async fn rate_limited(store: &Store, runner: i64) -> controller::store::Task {
    let (_, lease) = claim(store, runner).await;
    let failed = Completion {
        error: Some("rate limited by the model API: 429".into()),
        data: Some(json!({"summary": "", "data": {"rate_limited": true}})),
        ..Completion::new(Outcome::AgentFailed)
    };
    store
        .complete(&lease, &failed, &policy())
        .await
        .unwrap()
        .task
}

#[tokio::test]
async fn a_rate_limited_task_falls_back_to_the_other_backend_only_where_the_repository_allows() {
    let store = crate::store().await;
    let both = runner(&store, "both").await;
    offers(&store, both, &["claude", "codex"]).await;

    // Not allowed (the default): the task retries on the same backend.
    let strict = repo(&store, "acme/strict").await;
    let t = queued(&store, &strict, "stays").await;
    let back = rate_limited(&store, both).await;
    assert_eq!(
        (back.id, back.status, back.agent.as_str()),
        (t.id, Status::Queued, "claude")
    );
    let events = store.timeline(t.id).await.unwrap();
    assert!(!events.iter().any(|e| e.reason == "agent_fallback"));
    store.cancel(t.id, &note("cancel")).await.unwrap();

    // Allowed: claude → codex, and a later rate limit on codex → claude, each on the timeline.
    let lenient = repo(&store, "acme/lenient").await;
    store
        .update_repo(
            lenient.id,
            &RepoSettings {
                agent_fallback: Some(true),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
    let t = queued(&store, &lenient, "moves").await;
    let back = rate_limited(&store, both).await;
    assert_eq!(
        (back.id, back.status, back.agent.as_str()),
        (t.id, Status::Queued, "codex")
    );
    // A failure that is not a rate limit changes nothing.
    let released = release_reflection(&store, t.id).await;
    assert_eq!(released.agent, "codex");
    let (_, lease) = claim(&store, both).await;
    let plain = store
        .complete(
            &lease,
            &Completion {
                error: Some("exit 1".into()),
                data: Some(json!({"summary": "", "data": {"rate_limited": false}})),
                ..Completion::new(Outcome::AgentFailed)
            },
            &policy(),
        )
        .await
        .unwrap()
        .task;
    assert_eq!(plain.agent, "codex");
    release_reflection(&store, t.id).await;
    let again = rate_limited(&store, both).await;
    assert_eq!(again.agent, "claude");
    let moves: Vec<_> = store
        .timeline(t.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.reason == "agent_fallback")
        .map(|e| e.data.map(|d| d.0).unwrap_or_default())
        .collect();
    assert_eq!(
        moves,
        vec![
            json!({"from": "claude", "to": "codex", "why": "rate_limited"}),
            json!({"from": "codex", "to": "claude", "why": "rate_limited"}),
        ]
    );
}

/// Lets a re-queued task be claimed again at once (its reflection hold released).
async fn release_reflection(store: &Store, id: i64) -> controller::store::Task {
    sqlx::query("UPDATE tasks SET hold_kind = NULL, hold_until = NULL, ev_seq = ev_seq + 1, ev_actor = 'test', ev_reason = 'released' WHERE id = $1")
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
    store.task(id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_takes_a_backend_per_task_and_per_repository() {
    let (store, url) = crate::store_and_url().await;
    let server = crate::Serving::start(Config {
        database_url: Some(url),
        data_dir: tempfile::tempdir().unwrap().keep(),
        metrics_interval: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let base = format!("http://{}", server.addr);
    let password = controller::http::bootstrap_admin(&store, "root")
        .await
        .unwrap();
    let admin = Api::login(&base, "root", &password).await;
    let r = repo(&store, "acme/api-agents").await;
    let (code, body) = admin
        .call(
            Method::PATCH,
            &format!("/api/repos/{}", r.id),
            Some(json!({"agent": "codex", "agent_fallback": true})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["settings"]["agent"], "codex");
    assert_eq!(body["settings"]["agent_fallback"], true);
    let (code, body) = admin
        .call(
            Method::PATCH,
            &format!("/api/repos/{}", r.id),
            Some(json!({"agent": "gemini"})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");

    // A task without a backend takes the repository's; one with a backend keeps it.
    let (code, body) = admin
        .call(
            Method::POST,
            "/api/tasks",
            Some(json!({"repo": "acme/api-agents", "title": "t1", "prompt": "p"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["agent"], "codex");
    let (code, body) = admin
        .call(
            Method::POST,
            "/api/tasks",
            Some(
                json!({"repo": "acme/api-agents", "title": "t2", "prompt": "p", "agent": "claude"}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["agent"], "claude");
    let id = body["id"].as_i64().unwrap();
    let (code, body) = admin
        .call(
            Method::POST,
            "/api/tasks",
            Some(
                json!({"repo": "acme/api-agents", "title": "t3", "prompt": "p", "agent": "gemini"}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("claude or codex"),
        "{body}"
    );
    // Edited before it starts.
    let (code, body) = admin
        .call(
            Method::POST,
            &format!("/api/tasks/{id}/edit"),
            Some(json!({"agent": "codex"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["agent"], "codex");
    server.stop().await;
}
