//! Every answer and webhook payload the GitHub simulator sends decodes into octocrab's models of
//! GitHub's REST API — the models the controller's forge decodes into — so the simulator cannot
//! drift from the real API's shapes while the tests keep passing.

use octocrab::models;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::forge::{REPO, TOKEN};

/// Sends a request to the simulator and decodes its answer as `T`, failing with the request,
/// the decode error and the body.
async fn call<T: DeserializeOwned>(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> T {
    let mut req = reqwest::Client::new()
        .request(method.clone(), format!("{base}{path}"))
        .header("authorization", format!("token {TOKEN}"))
        .header("accept", "application/vnd.github+json");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    decode(&format!("{method} {path}"), &text)
}

fn decode<T: DeserializeOwned>(what: &str, text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| {
        panic!(
            "{what} does not decode into {}: {e}\n{text}",
            std::any::type_name::<T>()
        )
    })
}

#[tokio::test]
async fn every_simulator_answer_decodes_into_the_models_of_the_real_api() {
    use reqwest::Method;
    let env = crate::forge::env().await;
    let (sim, base) = (&env.sim, env.base.as_str());
    // Deliveries are recorded even when nobody listens.
    sim.set_webhook("http://127.0.0.1:9/hook", "s");
    let n = sim
        .open_issue(REPO, "Add two", "please", "alice", &["backporcher"])
        .await;
    sim.label_issue(REPO, n, "urgent", "alice").await;
    sim.edit_issue(REPO, n, "please, now", "alice").await;

    let _: models::Repository = call(base, Method::GET, &format!("/repos/{REPO}"), None).await;
    let _: Vec<models::issues::Issue> = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/issues?labels=backporcher&state=open"),
        None,
    )
    .await;
    let issue: models::issues::Issue = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/issues/{n}"),
        None,
    )
    .await;
    assert_eq!(issue.number, n);
    assert_eq!(issue.user.login, "alice");
    let events: Vec<models::IssueEvent> = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/issues/{n}/events?per_page=100"),
        None,
    )
    .await;
    assert!(!events.is_empty());
    let _: Vec<models::Label> = call(
        base,
        Method::POST,
        &format!("/repos/{REPO}/issues/{n}/labels"),
        Some(json!({"labels": ["in-progress"]})),
    )
    .await;
    let _: Vec<models::Label> = call(
        base,
        Method::DELETE,
        &format!("/repos/{REPO}/issues/{n}/labels/in-progress"),
        None,
    )
    .await;
    let _: models::issues::Comment = call(
        base,
        Method::POST,
        &format!("/repos/{REPO}/issues/{n}/comments"),
        Some(json!({"body": "on it"})),
    )
    .await;
    sim.user_comment(REPO, n, "alice", "thanks").await;
    let _: Vec<models::issues::Comment> = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/issues/{n}/comments"),
        None,
    )
    .await;

    // A pull request from a branch with one commit, its CI, a review and the merge.
    sim::kit::git(&sim.git_dir(REPO), &["branch", "feature", "main"]);
    let head = sim
        .push_commit(REPO, "feature", &[("src/two.rs", "pub fn two() {}\n")])
        .unwrap();
    let pr: models::pulls::PullRequest = call(
        base,
        Method::POST,
        &format!("/repos/{REPO}/pulls"),
        Some(json!({"title": "Add two", "body": "Closes #1", "head": "feature", "base": "main"})),
    )
    .await;
    assert_eq!(pr.head.sha, head);
    let p = pr.number;
    let _: Vec<models::pulls::PullRequest> = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/pulls?head=acme:feature&state=open"),
        None,
    )
    .await;
    let got: models::pulls::PullRequest =
        call(base, Method::GET, &format!("/repos/{REPO}/pulls/{p}"), None).await;
    assert_eq!(got.mergeable, Some(true));
    let _: models::pulls::PullRequest = call(
        base,
        Method::PATCH,
        &format!("/repos/{REPO}/pulls/{p}"),
        Some(json!({"title": "Add two()"})),
    )
    .await;
    sim.fail_ci(REPO, &head, "error[E0425]: cannot find value");
    let status: models::CombinedStatus = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/commits/{head}/status"),
        None,
    )
    .await;
    assert_eq!(status.statuses.len(), 1);
    let runs: models::checks::ListCheckRuns = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/commits/{head}/check-runs?per_page=100"),
        None,
    )
    .await;
    assert_eq!(runs.check_runs.len(), 1);
    sim.set_ci(REPO, &head, "success");
    let _: models::checks::ListCheckRuns = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/commits/{head}/check-runs"),
        None,
    )
    .await;
    let review = sim
        .submit_review(REPO, p, "bob", "A few things", &["rename this", "and this"])
        .await;
    let _: Vec<models::pulls::Review> = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/pulls/{p}/reviews"),
        None,
    )
    .await;
    let one: models::pulls::Review = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/pulls/{p}/reviews/{review}"),
        None,
    )
    .await;
    assert_eq!(one.user.map(|u| u.login).as_deref(), Some("bob"));
    let comments: Vec<models::pulls::ReviewComment> = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/pulls/{p}/reviews/{review}/comments?per_page=100"),
        None,
    )
    .await;
    assert_eq!(comments.len(), 2);
    let _: Vec<models::pulls::Comment> = call(
        base,
        Method::GET,
        &format!("/repos/{REPO}/pulls/{p}/comments"),
        None,
    )
    .await;
    let merged: models::pulls::Merge = call(
        base,
        Method::PUT,
        &format!("/repos/{REPO}/pulls/{p}/merge"),
        Some(json!({"sha": head, "merge_method": "squash"})),
    )
    .await;
    assert!(merged.merged && merged.sha.is_some());
    let closed: models::pulls::PullRequest =
        call(base, Method::GET, &format!("/repos/{REPO}/pulls/{p}"), None).await;
    assert_eq!(closed.merged, Some(true));
    let _: models::issues::Issue = call(
        base,
        Method::PATCH,
        &format!("/repos/{REPO}/issues/{n}"),
        Some(json!({"state": "closed", "state_reason": "completed"})),
    )
    .await;

    // Every webhook payload: its objects are the REST objects.
    let deliveries = sim.deliveries();
    let kinds: std::collections::BTreeSet<&str> = deliveries
        .iter()
        .filter_map(|d| d["event"].as_str())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "issue_comment",
            "issues",
            "pull_request",
            "pull_request_review"
        ]
    );
    for d in &deliveries {
        let what = format!("the {} delivery", d["event"]);
        let p = &d["payload"];
        let _: models::Author = decode(&what, &p["sender"].to_string());
        let _: models::Repository = decode(&what, &p["repository"].to_string());
        if !p["issue"].is_null() {
            let _: models::issues::Issue = decode(&what, &p["issue"].to_string());
        }
        if !p["pull_request"].is_null() {
            let _: models::pulls::PullRequest = decode(&what, &p["pull_request"].to_string());
        }
        if !p["comment"].is_null() {
            let _: models::issues::Comment = decode(&what, &p["comment"].to_string());
        }
        if !p["review"].is_null() {
            let _: models::pulls::Review = decode(&what, &p["review"].to_string());
        }
        if !p["label"].is_null() {
            let _: models::Label = decode(&what, &p["label"].to_string());
        }
        // And the controller's intake reads every one of them.
        let decoded = controller::intake::webhook::decode(
            d["event"].as_str().unwrap(),
            p.to_string().as_bytes(),
        );
        assert!(decoded.is_ok(), "{what}: {decoded:?}");
    }
}

/// An answer without a field GitHub always sends is an error naming the request, never an
/// issue numbered 0 or a pull request without a URL.
#[tokio::test]
async fn a_missing_field_is_a_decode_error_naming_the_request() {
    use axum::routing::get;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = axum::Router::new()
        .route(
            "/repos/acme/widgets/issues",
            get(|| async { axum::Json(json!([{"title": "no number", "state": "open"}])) }),
        )
        .route(
            "/repos/acme/widgets/pulls/{n}",
            get(|| async { axum::Json(json!({"id": 1, "title": "no head"})) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let forge = controller::forge::github::GitHub::new(
        controller::forge::github::GitHubConfig::with_token(&base, TOKEN),
    )
    .unwrap();
    use controller::forge::{Forge, ForgeError};
    let err = forge
        .labelled_issues("acme/widgets", "backporcher", None)
        .await
        .unwrap_err();
    match &err {
        ForgeError::Decode { path, message } => {
            assert!(path.contains("/repos/acme/widgets/issues"), "{path}");
            assert!(message.contains("missing field"), "{message}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let err = forge.pull("acme/widgets", 7).await.unwrap_err();
    assert!(
        matches!(&err, ForgeError::Decode { path, .. } if path.ends_with("/pulls/7")),
        "{err:?}"
    );
}
