//! Operator parity over HTTP and in the store: `PATCH /api/settings` (roles, audit with old →
//! new, the notification webhook and its event filter), the default model for new tasks, and the
//! reference's approve / release semantics with refusals that name the hold and its command.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use controller::config::{Config, NotifyEvents};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::api::Api;

/// A chat webhook that records what it receives; returns its URL and the texts.
async fn chat_hook() -> (String, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .unwrap()
                    .push(v["text"].as_str().unwrap_or_default().to_owned());
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, got)
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_change_at_run_time_by_role_audited_and_announced_through_the_filter() {
    let (store, url) = crate::store_and_url().await;
    let (hook, got) = chat_hook().await;
    let server = crate::Serving::start(Config {
        database_url: Some(url),
        data_dir: tempfile::tempdir().unwrap().keep(),
        notify_urls: vec![hook],
        notify_events: NotifyEvents::parse(&["settings".into(), "paused".into()]).unwrap(),
        default_model: "haiku".into(),
        ..Config::default()
    })
    .await;
    let base = format!("http://{}", server.addr);
    let password = controller::http::bootstrap_admin(&store, "root")
        .await
        .unwrap();
    for (name, role) in [("olga", "operator"), ("vic", "viewer")] {
        let hash = controller::http::auth::hash_password("a long password 1").unwrap();
        store.create_user(name, &hash, role).await.unwrap();
    }
    let admin = Api::login(&base, "root", &password).await;
    let olga = Api::login(&base, "olga", "a long password 1").await;
    let vic = Api::login(&base, "vic", "a long password 1").await;
    let anon = Api::new(&base);

    // A merged-task notification is filtered out (not in settings,paused); it is queued first, so
    // once later ones arrive it was dropped, not delayed.
    store
        .enqueue_notification("merged", None, "[acme/x] task 1 merged")
        .await
        .unwrap();

    // Who may change what: the approval mode needs an admin, the pause an operator.
    let patch = |mode: Value| Some(mode);
    let (code, _) = anon
        .call(
            Method::PATCH,
            "/api/settings",
            patch(json!({"paused": true})),
        )
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, body) = vic
        .call(
            Method::PATCH,
            "/api/settings",
            patch(json!({"paused": true})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let (code, body) = olga
        .call(
            Method::PATCH,
            "/api/settings",
            patch(json!({"approval_mode": "full-auto", "paused": true})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("admin"),
        "{body}"
    );
    let st = store.settings().await.unwrap();
    assert_eq!(
        (st.approval_mode.as_str(), st.queue_paused),
        ("review-merge", false),
        "a refused patch changes nothing, not even its allowed half"
    );
    let (code, body) = admin
        .call(
            Method::PATCH,
            "/api/settings",
            patch(json!({"approval_mode": "yolo"})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("review-merge"),
        "{body}"
    );
    let (code, body) = admin
        .call(Method::PATCH, "/api/settings", patch(json!({})))
        .await;
    // A patch that names nothing (or only nulls) changes nothing and says how things are.
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, same) = admin
        .call(
            Method::PATCH,
            "/api/settings",
            patch(json!({"approval_mode": null, "paused": null})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{same}");
    assert_eq!(same, body);
    let (code, body) = admin
        .call(
            Method::PATCH,
            "/api/settings",
            patch(json!({"colour": "blue"})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");

    let (code, body) = olga
        .call(
            Method::PATCH,
            "/api/settings",
            patch(json!({"paused": true})),
        )
        .await;
    assert_eq!(
        (code, &body),
        (
            StatusCode::OK,
            &json!({"paused": true, "approval_mode": "review-merge", "github": false})
        )
    );
    let (code, body) = admin
        .call(
            Method::PATCH,
            "/api/settings",
            patch(json!({"approval_mode": "full-auto", "paused": false})),
        )
        .await;
    assert_eq!(
        (code, &body),
        (
            StatusCode::OK,
            &json!({"paused": false, "approval_mode": "full-auto", "github": false})
        )
    );
    let (_, body) = vic.call(Method::GET, "/api/settings", None).await;
    assert_eq!(
        body,
        json!({"paused": false, "approval_mode": "full-auto", "github": false})
    );
    let st = store.settings().await.unwrap();
    assert_eq!(st.approval_mode_by.as_deref(), Some("user:root"));

    // Audited: who, old → new; refusals too.
    let rows: Vec<(String, String, String, Option<Value>)> = sqlx::query_as(
        "SELECT actor, action, outcome, data FROM audit_log \
         WHERE action IN ('set_approval_mode', 'pause', 'resume') ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let ok: Vec<_> = rows.iter().filter(|r| r.2 == "ok").collect();
    assert_eq!(
        ok.iter()
            .map(|r| (r.0.as_str(), r.1.as_str(), r.3.clone().unwrap()))
            .collect::<Vec<_>>(),
        vec![
            ("user:olga", "pause", json!({"old": false, "new": true})),
            (
                "user:root",
                "set_approval_mode",
                json!({"old": "review-merge", "new": "full-auto"})
            ),
            ("user:root", "resume", json!({"old": true, "new": false})),
        ],
        "{rows:?}"
    );
    for (who, action) in [
        ("user:vic", "pause"),
        ("user:olga", "set_approval_mode"),
        ("user:root", "set_approval_mode"),
    ] {
        assert!(
            rows.iter()
                .any(|r| r.0 == who && r.1 == action && r.2.starts_with("refused")),
            "{who} {action} refused and audited: {rows:?}"
        );
    }

    // Announced to the webhook, through the filter.
    crate::eventually(Duration::from_secs(10), "the announcements", || {
        let got = got.clone();
        async move { got.lock().unwrap().len() >= 3 }
    })
    .await;
    let texts = got.lock().unwrap().clone();
    assert_eq!(
        texts,
        vec![
            "dispatch paused by olga".to_owned(),
            "approval mode review-merge → full-auto (by root)".to_owned(),
            "dispatch resumed by root".to_owned(),
        ]
    );

    // New tasks start with the configured default model; one chosen explicitly wins.
    admin
        .call(
            Method::POST,
            "/api/repos",
            Some(json!({"name": "acme/par"})),
        )
        .await;
    let (code, t) = olga
        .call(
            Method::POST,
            "/api/tasks",
            Some(json!({"repo": "acme/par", "title": "t", "prompt": "p"})),
        )
        .await;
    assert_eq!(
        (code, t["model"].as_str()),
        (StatusCode::OK, Some("haiku")),
        "{t}"
    );
    let (_, t) = olga
        .call(
            Method::POST,
            "/api/tasks",
            Some(json!({"repo": "acme/par", "title": "t2", "prompt": "p", "model": "opus"})),
        )
        .await;
    assert_eq!(t["model"], "opus");
    server.stop().await;
}

/// `approve` clears a hold that awaits approval, `release` a user hold only; each refusal names
/// the hold and the command that clears it.
#[tokio::test]
async fn approve_clears_approval_holds_and_release_user_holds() {
    use controller::store::HoldKind;
    use controller::store::ops::{Actor, Op};
    let store = crate::store().await;
    let repo = crate::repo(&store, "acme/holds").await;
    let ann = Actor {
        name: "user:ann".into(),
        user_id: None,
    };
    let t = crate::queued(&store, &repo, "waits for approval").await;
    store
        .hold(
            t.id,
            HoldKind::DispatchApproval,
            None,
            &crate::note("review-all"),
        )
        .await
        .unwrap();
    let e = store.perform(t.id, &Op::Release, &ann).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("dispatch_approval hold, which release does not clear")
            && e.to_string()
                .contains(&format!("`backporcher approve {}`", t.id)),
        "{e}"
    );
    let e = store.perform(t.id, &Op::Hold, &ann).await.unwrap_err();
    assert!(e.to_string().contains("backporcher approve"), "{e}");
    let done = store.perform(t.id, &Op::Approve, &ann).await.unwrap();
    assert_eq!(done.hold_kind.0, None);

    store.perform(t.id, &Op::Hold, &ann).await.unwrap();
    let e = store.perform(t.id, &Op::Approve, &ann).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("waits for no approval; it has a user hold")
            && e.to_string()
                .contains(&format!("`backporcher release {}`", t.id)),
        "{e}"
    );
    let done = store.perform(t.id, &Op::Release, &ann).await.unwrap();
    assert_eq!(done.hold_kind.0, None);

    // A self-releasing hold: release says so.
    store
        .hold(t.id, HoldKind::Budget, None, &crate::note("budget"))
        .await
        .unwrap();
    let e = store.perform(t.id, &Op::Release, &ann).await.unwrap_err();
    assert!(e.to_string().contains("budget is used up"), "{e}");
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE actor = 'user:ann' AND outcome LIKE 'refused:%'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(refused, 4, "every refusal is audited");
}
