//! A lost password is reset from the controller host's command line
//! (`backporcher-controller reset-password`): the new one logs in, the old one and the user's
//! sessions stop working, the reset is audited, and an unknown user is a clear error.

use std::time::Duration;

use controller::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::api::Api;

fn reset(url: &str, username: &str) -> std::process::Output {
    xcmd::Cmd::new(
        env!("CARGO_BIN_EXE_backporcher-controller"),
        std::env::temp_dir(),
    )
    .args([
        "reset-password",
        "--database-url",
        url,
        "--username",
        username,
    ])
    .to_std()
    .output()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_reset_from_the_command_line_replaces_the_old_one_and_its_sessions() {
    let (store, url) = crate::store_and_url().await;
    let server = crate::Serving::start(Config {
        database_url: Some(url.clone()),
        data_dir: tempfile::tempdir().unwrap().keep(),
        metrics_interval: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let base = format!("http://{}", server.addr);
    let old = controller::http::bootstrap_admin(&store, "root")
        .await
        .unwrap();
    let session = Api::login(&base, "root", &old).await;
    assert_eq!(
        session.call(Method::GET, "/api/me", None).await.0,
        StatusCode::OK
    );

    let out = reset(&url, "root");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        new.len() >= 20 && new != old,
        "a fresh generated password: {new}"
    );

    let (code, _) = session.call(Method::GET, "/api/me", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "the old session ended");
    let refused = reqwest::Client::new()
        .post(format!("{base}/api/login"))
        .json(&json!({"username": "root", "password": old}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "the old password"
    );
    Api::login(&base, "root", &new).await;
    let audit = store.audit_log(50, None).await.unwrap();
    assert!(
        audit.iter().any(|a| a.action == "reset_password"
            && a.target.as_deref() == Some("user:root")
            && a.outcome == "ok"),
        "{audit:?}"
    );

    let out = reset(&url, "nobody");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no user `nobody`"), "{said}");
}
