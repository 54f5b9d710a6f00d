//! The REST API through the controller's HTTP listener: sessions with CSRF, API tokens, roles
//! (a viewer's approve is 403 and audited), login rate limiting, every endpoint, live task events
//! over SSE, and the OpenAPI document.

use std::time::Duration;

use controller::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub(crate) struct Api {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
    csrf: Option<String>,
    token: Option<String>,
}

impl Api {
    pub(crate) fn new(base: &str) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::new(),
            cookie: None,
            csrf: None,
            token: None,
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        if let Some(c) = &self.csrf {
            req = req.header("x-csrf-token", c);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub(crate) async fn login(base: &str, user: &str, password: &str) -> Api {
        let mut api = Api::new(base);
        let resp = api
            .http
            .post(format!("{base}/api/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "login {user}");
        let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        api.cookie = Some(cookie.split(';').next().unwrap().to_owned());
        let me: Value = resp.json().await.unwrap();
        api.csrf = me["csrf_token"].as_str().map(str::to_owned);
        api
    }
}

pub(crate) async fn start() -> (String, controller::store::Store, crate::Serving) {
    let (store, url) = crate::store_and_url().await;
    let server = crate::Serving::start(Config {
        database_url: Some(url),
        data_dir: tempfile::tempdir().unwrap().keep(),
        metrics_interval: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    (format!("http://{}", server.addr), store, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_csrf_tokens_and_every_endpoint() {
    let (base, store, server) = start().await;
    let password = controller::http::bootstrap_admin(&store, "root")
        .await
        .unwrap();
    assert!(
        controller::http::bootstrap_admin(&store, "again")
            .await
            .is_err(),
        "only once"
    );
    let anon = Api::new(&base);
    let (code, body) = anon.call(Method::GET, "/api/tasks", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"].as_str().unwrap().contains("log in"),
        "{body}"
    );

    let mut admin = Api::login(&base, "root", &password).await;
    // A mutating call without the CSRF token is refused even with a valid session.
    let csrf = admin.csrf.take();
    let (code, body) = admin.call(Method::POST, "/api/pause", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body["message"].as_str().unwrap().contains("CSRF"));
    admin.csrf = csrf;

    for (user, role) in [("olga", "operator"), ("vic", "viewer")] {
        let (code, body) = admin
            .call(
                Method::POST,
                "/api/users",
                Some(json!({"username": user, "password": "a long password 1", "role": role})),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    let (code, body) = admin
        .call(
            Method::POST,
            "/api/users",
            Some(json!({"username": "x", "password": "short", "role": "viewer"})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("12 characters"));

    // Repositories.
    let (code, repo) = admin
        .call(
            Method::POST,
            "/api/repos",
            Some(json!({"name": "acme/api"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{repo}");
    let repo_id = repo["id"].as_i64().unwrap();
    let (code, repo) = admin
        .call(Method::PATCH, &format!("/api/repos/{repo_id}"), Some(json!({"verify_command": "make test", "approval_mode": "review-all", "merge_method": "rebase"})))
        .await;
    assert_eq!(code, StatusCode::OK, "{repo}");
    assert_eq!(repo["settings"]["merge_method"], "rebase");
    let (code, body) = admin
        .call(
            Method::PATCH,
            &format!("/api/repos/{repo_id}"),
            Some(json!({"egress_policy": "everywhere"})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("none, gateway-only, open"),
        "{body}"
    );

    // The operator creates a task; the viewer may look but not act.
    let olga = Api::login(&base, "olga", "a long password 1").await;
    let vic = Api::login(&base, "vic", "a long password 1").await;
    let (code, body) = vic
        .call(
            Method::POST,
            "/api/repos",
            Some(json!({"name": "acme/nope"})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    // Setup-only secrets: admins set them, anyone may see their names only through admins, and
    // no answer or audit row ever carries a value.
    let secret_path = format!("/api/repos/{repo_id}/secrets/REGISTRY_TOKEN");
    let (code, body) = vic
        .call(
            Method::PUT,
            &secret_path,
            Some(json!({"value": "tok-viewer-1234"})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let (code, body) = admin
        .call(Method::PUT, &secret_path, Some(json!({"value": "short"})))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("12 to 65,536"),
        "{body}"
    );
    let (code, body) = admin
        .call(
            Method::PUT,
            &format!("/api/repos/{repo_id}/secrets/bad-name"),
            Some(json!({"value": "a-long-enough-value"})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let (code, body) = admin
        .call(
            Method::PUT,
            &secret_path,
            Some(json!({"value": "tok-registry-5678"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, listed) = admin
        .call(Method::GET, &format!("/api/repos/{repo_id}/secrets"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(listed[0]["name"], "REGISTRY_TOKEN");
    assert!(!listed.to_string().contains("tok-registry"), "{listed}");
    let (_, audit) = admin.call(Method::GET, "/api/audit", None).await;
    assert!(audit.to_string().contains("set_secret"), "{audit}");
    assert!(!audit.to_string().contains("tok-registry"), "{audit}");
    // Without a GitHub connection no issue can be opened: a conflict with how the controller
    // is set up (not a malformed request), and nothing is created.
    let (code, body) = olga
        .call(Method::POST, "/api/tasks", Some(json!({"repo": "acme/api", "title": "Add a route", "prompt": "GET /ping returns pong", "open_issue": true})))
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("without `open_issue`"),
        "{body}"
    );
    let (code, task) = olga
        .call(Method::POST, "/api/tasks", Some(json!({"repo": "acme/api", "title": "Add a route", "prompt": "GET /ping returns pong"})))
        .await;
    assert_eq!(code, StatusCode::OK, "{task}");
    let id = task["id"].as_i64().unwrap();
    // review-all: triage queues it with a dispatch hold.
    crate::eventually(Duration::from_secs(10), "triage", || {
        let store = store.clone();
        async move { store.task(id).await.unwrap().status == controller::store::Status::Queued }
    })
    .await;
    let (code, body) = vic
        .call(Method::POST, &format!("/api/tasks/{id}/approve"), None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let (code, t) = olga
        .call(Method::POST, &format!("/api/tasks/{id}/approve"), None)
        .await;
    assert_eq!(code, StatusCode::OK, "{t}");
    assert_eq!(t["hold"], Value::Null, "dispatch approved");
    let (code, t) = olga
        .call(
            Method::POST,
            &format!("/api/tasks/{id}/edit"),
            Some(json!({"priority": 7, "model": "opus"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{t}");
    assert_eq!(
        (t["priority"].as_i64(), t["model"].as_str()),
        (Some(7), Some("opus"))
    );
    let (code, body) = olga
        .call(Method::POST, &format!("/api/tasks/{id}/frobnicate"), None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body["message"].as_str().unwrap().contains("approve, hold"));
    let (code, list) = vic
        .call(Method::GET, "/api/tasks?live=true&repo=acme/api", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (code, body) = vic
        .call(Method::GET, "/api/tasks?status=sleeping", None)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("queued"),
        "{body}"
    );
    let (code, detail) = vic
        .call(Method::GET, &format!("/api/tasks/{id}"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let reasons: Vec<&str> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.contains(&"approved") && reasons.contains(&"edit"),
        "{reasons:?}"
    );
    assert_eq!(detail["body"], "GET /ping returns pong");
    let (code, deps) = vic
        .call(Method::GET, &format!("/api/tasks/{id}/dependencies"), None)
        .await;
    assert_eq!(
        (code, deps),
        (
            StatusCode::OK,
            json!({"task": id, "waits_for": [], "blocks": []})
        )
    );
    // A second task waiting for it: each side of the edge shows in the view.
    let repo_id = store.task(id).await.unwrap().repo_id;
    let mut second = controller::store::tasks::NewTask::for_issue(repo_id, 0, "Use the route", "x");
    second.issue_number = None;
    let second = store.create_task(&second).await.unwrap().id;
    sqlx::query("INSERT INTO task_dependencies (task_id, depends_on) VALUES ($1, $2)")
        .bind(second)
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
    let (_, deps) = vic
        .call(
            Method::GET,
            &format!("/api/tasks/{second}/dependencies"),
            None,
        )
        .await;
    assert_eq!(deps["waits_for"][0]["id"], id);
    assert_eq!(deps["waits_for"][0]["title"], "Add a route");
    assert_eq!(deps["waits_for"][0]["depth"], 1);
    assert_eq!(deps["waits_for"][0]["hard"], true);
    let (_, deps) = vic
        .call(Method::GET, &format!("/api/tasks/{id}/dependencies"), None)
        .await;
    assert_eq!(deps["blocks"][0]["id"], second, "{deps}");
    let (code, logs) = vic
        .call(Method::GET, &format!("/api/tasks/{id}/logs"), None)
        .await;
    assert_eq!((code, logs), (StatusCode::OK, json!([])));
    let (code, _) = vic.call(Method::GET, "/api/tasks/999999", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // Switches, runners, stats, learnings, audit.
    let (code, st) = olga.call(Method::POST, "/api/pause", None).await;
    assert_eq!((code, st["paused"].as_bool()), (StatusCode::OK, Some(true)));
    let (code, st) = olga.call(Method::POST, "/api/resume", None).await;
    assert_eq!(
        (code, st["paused"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    let (code, _) = vic.call(Method::POST, "/api/pause", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, ticket) = admin
        .call(
            Method::POST,
            "/api/runners/tokens",
            Some(json!({"labels": ["gpu"]})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{ticket}");
    assert!(ticket["ticket"].as_str().unwrap().contains('@'));
    let (code, _) = olga
        .call(Method::POST, "/api/runners/tokens", Some(json!({})))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, runners) = vic.call(Method::GET, "/api/runners", None).await;
    assert_eq!((code, runners), (StatusCode::OK, json!([])));
    // One task merged today with some spending: it shows in the totals and in today's row.
    let done = crate::queued(&store, &store.repo(repo_id).await.unwrap(), "done").await;
    let r = crate::runner(&store, "stats-runner").await;
    crate::force_status(&store, done.id, controller::store::Status::Merged, r).await;
    store
        .record_usage(
            Some(done.id),
            None,
            "review",
            "claude-sonnet-4-5",
            0,
            0,
            250_000,
        )
        .await
        .unwrap();
    let (code, stats) = vic.call(Method::GET, "/api/stats?days=3", None).await;
    assert_eq!(code, StatusCode::OK, "{stats}");
    // Live: two, since the dependency view above added a second task.
    assert_eq!(
        (stats["live"].as_i64(), stats["merged"].as_i64()),
        (Some(2), Some(1)),
        "{stats}"
    );
    assert_eq!(stats["success_rate"], 1.0);
    let days = stats["by_day"].as_array().unwrap();
    assert_eq!(days.len(), 3);
    let today = days.last().unwrap();
    assert_eq!(
        (
            today["repo"].as_str(),
            today["merged"].as_i64(),
            today["cost_microusd"].as_i64()
        ),
        (Some("acme/api"), Some(1), Some(250_000)),
        "{stats}"
    );
    assert_eq!(days[0]["merged"], 0);
    // What a merged PR cost, overall and per model, and today's spend against the budget.
    assert_eq!(stats["cost_per_merged_microusd"], 250_000.0, "{stats}");
    assert_eq!(
        stats["by_model"],
        json!([{"model": "claude-sonnet-4-5", "cost_microusd": 250_000, "per_merged_microusd": 250_000.0}])
    );
    assert_eq!(stats["budget_today"]["spent_microusd"], 250_000, "{stats}");
    // The next computation of the metrics says the same.
    crate::eventually(
        Duration::from_secs(10),
        "the metrics to show the cost",
        || {
            let base = vic.base.clone();
            async move {
                let metrics = reqwest::get(format!("{base}/metrics"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                metrics.contains(
                    "backporcher_cost_per_merged_pr_usd{model=\"claude-sonnet-4-5\"} 0.25",
                ) && metrics
                    .contains("backporcher_budget_today_usd{scope=\"fleet\",kind=\"spent\"} 0.25")
            }
        },
    )
    .await;
    // The merged task leaves a learning (written by the controller's feedback loop).
    let mut learned = json!([]);
    for _ in 0..100 {
        let (code, l) = vic
            .call(
                Method::GET,
                &format!("/api/repos/{repo_id}/learnings"),
                None,
            )
            .await;
        assert_eq!(code, StatusCode::OK);
        learned = l;
        if learned.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(learned[0]["outcome"], "merged", "{learned}");
    assert!(
        learned[0]["summary"].as_str().unwrap().contains("\"done\""),
        "{learned}"
    );
    let (code, _) = vic.call(Method::GET, "/api/audit", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, audit) = admin.call(Method::GET, "/api/audit?limit=500", None).await;
    assert_eq!(code, StatusCode::OK);
    let refused_viewer_approve = audit.as_array().unwrap().iter().any(|a| {
        a["actor"] == "user:vic"
            && a["action"] == "approve"
            && a["outcome"].as_str().unwrap().starts_with("refused")
    });
    assert!(
        refused_viewer_approve,
        "the viewer's approve is audited: {audit}"
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["actor"] == "user:olga" && a["action"] == "edit" && a["outcome"] == "ok")
    );

    // API tokens: for scripts, without CSRF; revoked → 401.
    let (code, tok) = vic
        .call(Method::POST, "/api/tokens", Some(json!({"name": "laptop"})))
        .await;
    assert_eq!(code, StatusCode::OK, "{tok}");
    let mut script = Api::new(&base);
    script.token = tok["secret"].as_str().map(str::to_owned);
    let (code, me) = script.call(Method::GET, "/api/me", None).await;
    assert_eq!(
        (code, me["username"].as_str()),
        (StatusCode::OK, Some("vic"))
    );
    let (code, _) = script
        .call(Method::POST, &format!("/api/tasks/{id}/hold"), None)
        .await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "a viewer's token is still a viewer"
    );
    let (code, _) = vic
        .call(Method::DELETE, &format!("/api/tokens/{}", tok["id"]), None)
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = script.call(Method::GET, "/api/me", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);

    // Disabling a user ends their sessions.
    let vic_id = me["id"].as_i64().unwrap();
    let (code, _) = admin
        .call(
            Method::PATCH,
            &format!("/api/users/{vic_id}"),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = vic.call(Method::GET, "/api/tasks", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);

    // Logins are rate-limited per user name.
    let bad = Api::new(&base);
    for _ in 0..5 {
        let (code, _) = bad
            .call(
                Method::POST,
                "/api/login",
                Some(json!({"username": "olga", "password": "wrong"})),
            )
            .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
    }
    let (code, body) = bad
        .call(
            Method::POST,
            "/api/login",
            Some(json!({"username": "olga", "password": "a long password 1"})),
        )
        .await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{body}");

    // Logout ends the session.
    let (code, _) = admin.call(Method::POST, "/api/logout", None).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = admin.call(Method::GET, "/api/me", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn task_changes_arrive_over_sse_and_the_openapi_document_lists_every_route() {
    let (base, store, server) = start().await;
    let password = controller::http::bootstrap_admin(&store, "root")
        .await
        .unwrap();
    let admin = Api::login(&base, "root", &password).await;
    let (_, repo) = admin
        .call(
            Method::POST,
            "/api/repos",
            Some(json!({"name": "acme/sse"})),
        )
        .await;
    assert!(repo["id"].is_i64());
    // Subscribe, then create a task: its creation and triage arrive as deltas.
    let resp = admin
        .http
        .get(format!("{base}/api/events"))
        .header("cookie", admin.cookie.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let (code, task) = admin
        .call(
            Method::POST,
            "/api/tasks",
            Some(json!({"repo": "acme/sse", "title": "Live", "prompt": "watch me"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let id = task["id"].as_i64().unwrap();
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        use futures::StreamExt;
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains(&format!("\"id\":{id}")) && seen.contains("\"status\":\"queued\"") {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no delta for task {id}: {seen}");
    assert!(seen.contains("event: task"));

    // A claim, once its runner starts it (which sends no NOTIFY), reaches the live view within
    // a fraction of a second.
    let runner = store.register_runner("sse-r", &[], 1).await.unwrap().id;
    let claimed = store
        .claim(&controller::store::claims::ClaimRequest {
            runner_id: runner,
            labels: &[],
            lease: Duration::from_secs(60),
            capacity: None,
        })
        .await
        .unwrap()
        .expect("the queued task is claimed");
    assert_eq!(claimed.id, id);
    assert!(
        store
            .start_claim_now(&controller::store::claims::LeaseRef::of(&claimed).unwrap())
            .await
            .unwrap()
    );
    let at = std::time::Instant::now();
    seen.clear();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        use futures::StreamExt;
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains(&format!("\"id\":{id}")) && seen.contains("\"status\":\"leased\"") {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no delta for the claim of task {id}: {seen}");
    assert!(
        at.elapsed() < Duration::from_secs(2),
        "the claim reached the live view after {:?}",
        at.elapsed()
    );

    let (code, doc) = Api::new(&base)
        .call(Method::GET, "/api/openapi.json", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for r in controller::http::routes::routes() {
        let (method, path) = (r.op.method, r.op.path);
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
        // Every documented route is served: it answers something other than 404/405 for a
        // request with made-up path parameters (401/403/404-with-JSON are fine).
        let concrete = path
            .replace("{id}", "1")
            .replace("{action}", "hold")
            .replace("{state}", "drain");
        let m: Method = method.to_uppercase().parse().unwrap();
        let resp = reqwest::Client::new()
            .request(m, format!("{base}{concrete}"))
            .send()
            .await
            .unwrap();
        assert_ne!(
            resp.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        if resp.status() == StatusCode::NOT_FOUND {
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            assert!(v["error"].is_string(), "{method} {path} is not routed");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_page_and_follow_until_the_attempt_ends_and_bad_bodies_get_json_errors() {
    let (base, store, server) = start().await;
    let password = controller::http::bootstrap_admin(&store, "root")
        .await
        .unwrap();
    let admin = Api::login(&base, "root", &password).await;
    let (code, body) = admin
        .call(Method::POST, "/api/repos", Some(json!({"nom": "x"})))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("openapi"),
        "{body}"
    );
    let repo = crate::repo(&store, "acme/logs").await;
    let task = crate::queued(&store, &repo, "Logs").await;
    let runner = crate::runner(&store, "r1").await;
    let (_, lease) = crate::claim(&store, runner).await;
    store
        .append_log(&lease, 0, "agent", b"first line\n")
        .await
        .unwrap();
    let (code, logs) = admin
        .call(Method::GET, &format!("/api/tasks/{}/logs", task.id), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(logs[0]["text"], "first line\n");
    let resp = admin
        .http
        .get(format!("{base}/api/tasks/{}/logs/stream", task.id))
        .header("cookie", admin.cookie.clone().unwrap())
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let store2 = store.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        store2
            .append_log(&lease, 1, "agent", b"second line\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        store2
            .complete(
                &lease,
                &controller::store::completion::Completion::new(
                    controller::store::completion::Outcome::AgentFailed,
                ),
                &controller::store::tasks::RetryPolicy::default(),
            )
            .await
            .unwrap();
    });
    let mut seen = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        use futures::StreamExt;
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("event: end") {
                return;
            }
        }
    })
    .await;
    writer.await.unwrap();
    assert!(ended.is_ok(), "the stream did not end: {seen}");
    let first = seen.find("first line").expect("the existing log");
    let second = seen
        .find("second line")
        .expect("the line written while following");
    assert!(first < second);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_metrics_report_the_fleet() {
    const TOKEN: &str = "metrics-token-0123456789";
    let (store, url) = crate::store_and_url().await;
    let server = crate::Serving::start(Config {
        database_url: Some(url),
        data_dir: tempfile::tempdir().unwrap().keep(),
        metrics_interval: Duration::from_millis(300),
        metrics_token: Some(TOKEN.into()),
        ..Config::default()
    })
    .await;
    let base = format!("http://{}", server.addr);
    let scrape = |base: String| async move {
        reqwest::Client::new()
            .get(format!("{base}/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // Without the token (or with another) a scrape is refused, saying what it needs.
    for auth in [None, Some("Bearer wrong-token")] {
        let mut req = reqwest::Client::new().get(format!("{base}/metrics"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.text().await.unwrap().contains("metrics token"));
    }
    let repo = crate::repo(&store, "acme/metrics").await;
    let mut gpu = api_task(repo.id, "needs a gpu");
    gpu.required_labels = Some(vec!["gpu".into()]);
    store.create_task(&gpu).await.unwrap();
    crate::queued(&store, &repo, "plain one").await;
    let runner = crate::runner(&store, "r1").await;
    crate::claim(&store, runner).await;
    store
        .record_usage(
            None,
            Some(repo.id),
            "review",
            "claude-sonnet-4-5",
            1000,
            100,
            4500,
        )
        .await
        .unwrap();
    crate::eventually(
        Duration::from_secs(10),
        "the gpu task to be triaged",
        || {
            let base = base.clone();
            async move {
                scrape(base)
                    .await
                    .contains("backporcher_queue_depth{labels=\"gpu\"} 1")
            }
        },
    )
    .await;
    let text = scrape(base.clone()).await;
    for want in [
        "# TYPE backporcher_metrics_age_seconds gauge",
        "# TYPE backporcher_queue_depth gauge",
        "backporcher_tasks{status=\"leased\"} 1",
        "backporcher_schedule_to_start_seconds_count 1",
        "backporcher_cost_usd_total{purpose=\"review\",model=\"claude-sonnet-4-5\"} 0.0045",
        "backporcher_runners{state=\"active\"} 1",
        "backporcher_expired_leases_total 0",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
    // Scrapes read the last computation: a change shows at the next one, not at the next scrape.
    let mut second = api_task(repo.id, "second gpu task");
    second.required_labels = Some(vec!["gpu".into()]);
    store.create_task(&second).await.unwrap();
    crate::eventually(Duration::from_secs(10), "the next computation", || {
        let base = base.clone();
        async move {
            scrape(base)
                .await
                .contains("backporcher_queue_depth{labels=\"gpu\"} 2")
        }
    })
    .await;
    server.stop().await;
}

/// A scrape costs no database work: it reads the last computation (with an interval of an hour,
/// a task created after the first computation does not show).
#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_reads_the_last_computation() {
    let (store, url) = crate::store_and_url().await;
    let server = crate::Serving::start(Config {
        database_url: Some(url),
        data_dir: tempfile::tempdir().unwrap().keep(),
        metrics_interval: Duration::from_secs(3600),
        ..Config::default()
    })
    .await;
    let base = format!("http://{}", server.addr);
    let scrape = || async {
        let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
        (r.status(), r.text().await.unwrap())
    };
    crate::eventually(Duration::from_secs(10), "the first computation", || async {
        scrape().await.0 == StatusCode::OK
    })
    .await;
    let repo = crate::repo(&store, "acme/cached").await;
    crate::queued(&store, &repo, "after the computation").await;
    let (code, text) = scrape().await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        !text.contains("backporcher_tasks{status=\"queued\"}"),
        "computed at the scrape: {text}"
    );
    assert!(text.contains("backporcher_metrics_age_seconds"), "{text}");
    server.stop().await;
}

/// A task created without an issue.
fn api_task(repo: i64, title: &str) -> controller::store::tasks::NewTask {
    let mut t = controller::store::tasks::NewTask::for_issue(repo, 0, title, "x");
    t.issue_number = None;
    t
}

/// The environment view: the repository's settings beside what its own files declare, as the
/// latest task's runner reported them (stored by the completion, shown as sent — the text is the
/// repository's, so the dashboard renders it as text), each task keeping its own; an oversized
/// report is replaced by a note saying so.
#[tokio::test(flavor = "multi_thread")]
async fn a_repositorys_environment_shows_its_settings_beside_what_its_files_declare() {
    let (base, store, server) = start().await;
    let password = controller::http::bootstrap_admin(&store, "root")
        .await
        .unwrap();
    let admin = Api::login(&base, "root", &password).await;
    let repo = crate::repo(&store, "acme/env").await;
    let (code, body) = admin
        .call(
            Method::PATCH,
            &format!("/api/repos/{}", repo.id),
            Some(json!({"env_image": "backporcher-env-rust:latest", "env_setup": ["cargo fetch"], "verify_command": "cargo test"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let path = format!("/api/repos/{}/environment", repo.id);
    let (code, env) = admin.call(Method::GET, &path, None).await;
    assert_eq!(code, StatusCode::OK, "{env}");
    assert_eq!(env["settings"]["image"], "backporcher-env-rust:latest");
    assert_eq!(env["settings"]["setup"], json!(["cargo fetch"]));
    assert!(env["seen"].is_null(), "no task has run: {env}");

    let report = json!({
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "source": "the repository's settings",
        "files": [{"path": ".backporcher.toml", "image": "backporcher-env-python:latest",
                   "setup": ["pip install -e ."], "env": {}, "setup_network": true, "secrets": [],
                   "verify": "pytest", "protected_paths": ["migrations/**"]}],
        "image": "backporcher-env-rust:latest", "snapshot": "backporcher-env:0123456789abcdef",
        "setup": "reused", "verify": "cargo test", "verify_from": "the repository's settings",
        "protected_paths": ["migrations/**"],
        "notes": [".backporcher.toml: overridden <img src=x onerror=alert(1)>"],
    });
    let runner = crate::runner(&store, "r1").await;
    let complete = |report: Value| {
        let store = store.clone();
        let repo = repo.clone();
        async move {
            let task = crate::queued(&store, &repo, "Env").await;
            let (claimed, lease) = crate::claim(&store, runner).await;
            assert_eq!(claimed.id, task.id);
            let mut done = controller::store::completion::Completion::new(
                controller::store::completion::Outcome::SetupFailed,
            );
            done.data = Some(json!({"summary": "", "data": {"environment": report}}));
            store
                .complete(
                    &lease,
                    &done,
                    &controller::store::tasks::RetryPolicy::default(),
                )
                .await
                .unwrap();
            task.id
        }
    };
    let first = complete(report.clone()).await;
    let viewer_password = "a long password 1";
    let (code, _) = admin
        .call(
            Method::POST,
            "/api/users",
            Some(json!({"username": "vera", "password": viewer_password, "role": "viewer"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let vera = Api::login(&base, "vera", viewer_password).await;
    let (code, env) = vera.call(Method::GET, &path, None).await;
    assert_eq!(code, StatusCode::OK, "a viewer may look: {env}");
    assert_eq!(env["seen"]["task"], first);
    assert_eq!(env["seen"]["report"], report, "kept as sent");
    let (_, detail) = vera
        .call(Method::GET, &format!("/api/tasks/{first}"), None)
        .await;
    assert_eq!(detail["environment"], report);

    // A report past the bound is not kept; the view says so; the first task keeps its own.
    let huge = json!({"source": "x", "notes": ["n".repeat(100_000)]});
    let second = complete(huge).await;
    let (_, env) = vera.call(Method::GET, &path, None).await;
    assert_eq!(env["seen"]["task"], second);
    assert!(
        env["seen"]["report"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("larger than")),
        "{env}"
    );
    let (_, detail) = vera
        .call(Method::GET, &format!("/api/tasks/{first}"), None)
        .await;
    assert_eq!(detail["environment"], report);
    let (code, body) = vera
        .call(Method::GET, "/api/repos/9999/environment", None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_activity_view_shows_each_stage_the_controllers_agents_and_the_runners() {
    let (base, store, server) = start().await;
    let password = controller::http::bootstrap_admin(&store, "root")
        .await
        .unwrap();
    let admin = Api::login(&base, "root", &password).await;
    let (code, _) = admin
        .call(
            Method::POST,
            "/api/users",
            Some(json!({"username": "vic", "password": "a viewer's password", "role": "viewer"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let viewer = Api::login(&base, "vic", "a viewer's password").await;
    let repo = crate::repo(&store, "acme/now").await;
    let runner = crate::runner(&store, "r1").await;
    let idle = crate::runner(&store, "r2").await;
    // On a runner.
    let running = crate::queued(&store, &repo, "On a runner").await;
    let (_, lease) = crate::claim(&store, runner).await;
    assert_eq!(lease.task_id, running.id);
    store
        .append_log(&lease, 0, "agent", b"{\"type\":\"system\"}\n")
        .await
        .unwrap();
    // Being triaged: a live claim (another replica's, so this controller's triage loop leaves
    // it alone).
    let new = |title: &'static str| {
        let store = store.clone();
        let repo = repo.id;
        async move {
            let mut t = controller::store::tasks::NewTask::for_issue(repo, 0, title, "body");
            t.issue_number = None;
            store.create_task(&t).await.unwrap().id
        }
    };
    let triaging = new("Being triaged").await;
    sqlx::query(
        "INSERT INTO work_claims (kind, key, holder, until) VALUES ('triage', $1, gen_random_uuid(), now() + interval '30 seconds')",
    )
    .bind(triaging)
    .execute(store.pool())
    .await
    .unwrap();
    // Under review, its stage held by a controller worker; the review call recorded.
    let reviewed = crate::queued(&store, &repo, "Under review").await;
    crate::force_status(
        &store,
        reviewed.id,
        controller::store::Status::Reviewing,
        runner,
    )
    .await;
    sqlx::query(
        "UPDATE tasks SET stage_lease_until = now() + interval '1 minute', stage_lease_holder = gen_random_uuid() WHERE id = $1",
    )
    .bind(reviewed.id)
    .execute(store.pool())
    .await
    .unwrap();
    store
        .record_usage(
            Some(reviewed.id),
            None,
            "review",
            "claude-haiku",
            100,
            10,
            1_234,
        )
        .await
        .unwrap();
    // Held for reflection, which another replica is doing (its claim keeps this controller's
    // loop away).
    let reflecting = crate::queued(&store, &repo, "Reflected on").await;
    sqlx::query(
        "INSERT INTO work_claims (kind, key, holder, until) VALUES ('reflection', $1, gen_random_uuid(), now() + interval '30 seconds')",
    )
    .bind(reflecting.id)
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "UPDATE tasks SET hold_kind = 'reflection', hold_until = now() + interval '1 minute', \
         ev_seq = ev_seq + 1, ev_actor = 'test', ev_reason = 'forced' WHERE id = $1",
    )
    .bind(reflecting.id)
    .execute(store.pool())
    .await
    .unwrap();
    // Ended: not live.
    let done = crate::queued(&store, &repo, "Done").await;
    crate::force_status(&store, done.id, controller::store::Status::Merged, runner).await;

    let (code, a) = viewer.call(Method::GET, "/api/activity", None).await;
    assert_eq!(code, StatusCode::OK, "{a}");
    let task = |id: i64| {
        a["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(task(running.id)["status"], "leased");
    assert_eq!(task(running.id)["worked_by"], "runner");
    assert_eq!(task(running.id)["runner_id"], runner);
    assert_eq!(task(triaging)["worked_by"], "triage");
    assert_eq!(task(reviewed.id)["worked_by"], "review");
    assert_eq!(task(reflecting.id)["hold"], "reflection");
    assert_eq!(task(done.id), Value::Null, "ended tasks are not live");
    // `since` is when the task entered its status (the leased event), not its last update.
    let leased_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT max(at) FROM task_events WHERE task_id = $1 AND to_status = 'leased'",
    )
    .bind(running.id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    let since: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(task(running.id)["since"].clone()).unwrap();
    assert_eq!(since, leased_at);
    let agent = |name: &str| {
        a["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(agent("triage")["working"], json!([triaging]));
    assert_eq!(agent("review")["working"], json!([reviewed.id]));
    assert_eq!(agent("review")["last_call"]["model"], "claude-haiku");
    assert_eq!(agent("review")["last_call"]["task"], reviewed.id);
    assert_eq!(agent("review")["calls_last_hour"], 1);
    assert_eq!(agent("reflection")["working"], json!([reflecting.id]));
    assert_eq!(task(reflecting.id)["worked_by"], "reflection");
    assert_eq!(agent("reflection")["last_call"], Value::Null);
    let runners = a["runners"].as_array().unwrap();
    let of = |id: i64| runners.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(of(runner)["tasks"], json!([running.id]));
    assert_eq!(of(idle)["tasks"], json!([]));

    // The task panel's cost breakdown and timed log lines.
    let (_, detail) = viewer
        .call(Method::GET, &format!("/api/tasks/{}", reviewed.id), None)
        .await;
    assert_eq!(detail["usage"][0]["purpose"], "review");
    assert_eq!(detail["usage"][0]["cost_microusd"], 1_234);
    let (_, logs) = viewer
        .call(
            Method::GET,
            &format!("/api/tasks/{}/logs", running.id),
            None,
        )
        .await;
    assert!(logs[0]["at"].is_string(), "{logs}");

    // Nobody else.
    let (code, _) = Api::new(&base)
        .call(Method::GET, "/api/activity", None)
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    // The stats carry the window.
    let (_, stats) = viewer.call(Method::GET, "/api/stats?days=7", None).await;
    let all = stats["window"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["by"] == "all")
        .cloned()
        .unwrap();
    assert_eq!(all["merged"], 1);
    server.stop().await;
}
