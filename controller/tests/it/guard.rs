//! The API's bounds from the attacker's side, over HTTP against a live controller: concurrent
//! wrong-password logins cannot pass the limit, a locked window expires, an attacker's address
//! cannot lock a user out from another, `X-Forwarded-For` counts only from a trusted proxy,
//! unknown and disabled users cost one password check like real ones (counted, not timed), log
//! pages return exactly the window asked for, a user past the log stream cap is refused, and an
//! admin cannot disable or demote themselves.

use std::net::IpAddr;
use std::time::Duration;

use controller::config::Config;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn start(trusted_proxies: Vec<IpAddr>) -> (String, controller::store::Store, crate::Serving) {
    let (store, url) = crate::store_and_url().await;
    let server = crate::Serving::start(Config {
        database_url: Some(url),
        data_dir: tempfile::tempdir().unwrap().keep(),
        metrics_interval: Duration::from_millis(100),
        trusted_proxies,
        ..Config::default()
    })
    .await;
    (format!("http://{}", server.addr), store, server)
}

/// A client whose connections come from `from` (any 127/8 address reaches the loopback).
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn login(http: &reqwest::Client, base: &str, user: &str, password: &str) -> StatusCode {
    http.post(format!("{base}/api/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

/// An admin's bearer token (minted through a session).
async fn admin_token(base: &str, store: &controller::store::Store) -> String {
    let password = controller::http::bootstrap_admin(store, "root")
        .await
        .unwrap();
    let http = client_from("127.0.0.250");
    let resp = http
        .post(format!("{base}/api/login"))
        .json(&json!({"username": "root", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let me: Value = resp.json().await.unwrap();
    let tok: Value = http
        .post(format!("{base}/api/tokens"))
        .header("cookie", cookie.split(';').next().unwrap())
        .header("x-csrf-token", me["csrf_token"].as_str().unwrap())
        .json(&json!({"name": "tests"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tok["secret"].as_str().unwrap().to_owned()
}

async fn add_user(base: &str, token: &str, name: &str, password: &str, role: &str) -> i64 {
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/users"))
        .bearer_auth(token)
        .json(&json!({"username": name, "password": password, "role": role}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

/// `backporcher_password_checks_total` from `/metrics` (waits for the first computation).
async fn password_checks(base: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
        if resp.status() == StatusCode::OK {
            let text = resp.text().await.unwrap();
            return text
                .lines()
                .find_map(|l| l.strip_prefix("backporcher_password_checks_total "))
                .expect("the password check counter is exported")
                .parse()
                .unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/metrics never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn audit(base: &str, token: &str) -> Vec<Value> {
    reqwest::Client::new()
        .get(format!("{base}/api/audit"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_wrong_logins_pass_the_limit_five_times_and_the_window_expires() {
    let (base, store, server) = start(Vec::new()).await;
    let token = admin_token(&base, &store).await;
    add_user(&base, &token, "olga", "a long password 1", "operator").await;
    let before = password_checks(&base).await;

    let attacker = client_from("127.0.0.2");
    let tries = (0..50).map(|_| login(&attacker, &base, "olga", "wrong guess"));
    let codes = futures::future::join_all(tries).await;
    let count = |code: StatusCode| codes.iter().filter(|c| **c == code).count();
    let (refused, limited) = (
        count(StatusCode::UNAUTHORIZED),
        count(StatusCode::TOO_MANY_REQUESTS),
    );
    // Five pass the limit; of those, any that found every hashing slot taken for too long were
    // told to retry (503) instead of queueing, and checked nothing.
    let busy = count(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((refused + busy, limited), (5, 45), "{codes:?}");
    assert_eq!(
        password_checks(&base).await - before,
        refused as u64,
        "only the attempts within the limit checked a password"
    );
    // Even the right password is refused from the attacker's address within the window…
    assert_eq!(
        login(&attacker, &base, "olga", "a long password 1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // …but not from olga's own: the attacker cannot lock her out from everywhere.
    assert_eq!(
        login(
            &client_from("127.0.0.3"),
            &base,
            "olga",
            "a long password 1"
        )
        .await,
        StatusCode::OK
    );
    let rows = audit(&base, &token).await;
    let limited_rows = rows
        .iter()
        .filter(|r| r["outcome"] == "refused: rate limited" && r["target"] == "user:olga")
        .count();
    assert_eq!(limited_rows, 46, "every refusal is audited");
    assert!(
        rows.iter()
            .any(|r| r["actor"] == "anonymous@127.0.0.2"
                && r["outcome"] == "refused: bad credentials"),
        "the audit names the address"
    );

    // The window expires: once it is over, the attacker's address may try again (and olga logs in).
    sqlx::query("UPDATE login_limits SET window_start = window_start - interval '6 minutes'")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(
        login(&attacker, &base, "olga", "a long password 1").await,
        StatusCode::OK
    );

    // One address may not spray many user names either: past 30 failures in a window it is
    // refused whatever the name, before any password is checked.
    let sprayer = client_from("127.0.0.4");
    for i in 0..30 {
        let code = login(&sprayer, &base, &format!("guess{i}"), "wrong guess").await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let checks = password_checks(&base).await;
    assert_eq!(
        login(&sprayer, &base, "someone-else", "wrong guess").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(password_checks(&base).await, checks);
    // A user name longer than any can be is refused at once (and never reaches the audit log).
    let long = "x".repeat(10_000);
    assert_eq!(
        login(&client_from("127.0.0.5"), &base, &long, "x").await,
        StatusCode::BAD_REQUEST
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_addresses_count_only_through_a_trusted_proxy() {
    let (base, store, server) = start(vec!["127.0.0.9".parse().unwrap()]).await;
    let token = admin_token(&base, &store).await;
    add_user(&base, &token, "olga", "a long password 1", "operator").await;
    let wrong = |http: reqwest::Client, xff: &'static str| {
        let base = base.clone();
        async move {
            http.post(format!("{base}/api/login"))
                .header("x-forwarded-for", xff)
                .json(&json!({"username": "olga", "password": "wrong guess"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // A client that is no proxy cannot pick a fresh address per attempt with the header.
    let attacker = client_from("127.0.0.2");
    let spoofed = [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
        "198.51.100.5",
        "198.51.100.6",
    ];
    let mut codes = Vec::new();
    for xff in spoofed {
        codes.push(wrong(attacker.clone(), xff).await);
    }
    assert_eq!(
        codes.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{codes:?}"
    );
    // Through the trusted proxy, clients are told apart by the address it forwards.
    let proxy = client_from("127.0.0.9");
    for _ in 0..5 {
        assert_eq!(
            wrong(proxy.clone(), "203.0.113.7").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        wrong(proxy.clone(), "203.0.113.7").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let ok = proxy
        .post(format!("{base}/api/login"))
        .header("x-forwarded-for", "203.0.113.8")
        .json(&json!({"username": "olga", "password": "a long password 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_disabled_and_real_users_cost_one_password_check_each() {
    let (base, store, server) = start(Vec::new()).await;
    let token = admin_token(&base, &store).await;
    add_user(&base, &token, "olga", "a long password 1", "operator").await;
    let dora = add_user(&base, &token, "dora", "a long password 2", "viewer").await;
    let resp = reqwest::Client::new()
        .patch(format!("{base}/api/users/{dora}"))
        .bearer_auth(&token)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cases = [
        ("olga", "wrong guess", "a real user, wrong password"),
        ("nobody", "wrong guess", "an unknown user"),
        (
            "dora",
            "a long password 2",
            "a disabled user, right password",
        ),
    ];
    for (i, (user, password, what)) in cases.into_iter().enumerate() {
        let http = client_from(&format!("127.0.1.{}", i + 1));
        let before = password_checks(&base).await;
        for _ in 0..3 {
            assert_eq!(
                login(&http, &base, user, password).await,
                StatusCode::UNAUTHORIZED,
                "{what}"
            );
        }
        assert_eq!(
            password_checks(&base).await - before,
            3,
            "{what}: one argon2 verification per attempt"
        );
    }
    // An admin cannot lock everyone out by disabling or demoting themselves.
    let me: Value = reqwest::Client::new()
        .get(format!("{base}/api/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for patch in [json!({"disabled": true}), json!({"role": "viewer"})] {
        let resp = reqwest::Client::new()
            .patch(format!("{base}/api/users/{}", me["id"]))
            .bearer_auth(&token)
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CONFLICT, "{patch}");
    }
    let rows = audit(&base, &token).await;
    assert!(
        rows.iter().any(|r| r["action"] == "update_user"
            && r["outcome"]
                .as_str()
                .unwrap()
                .starts_with("refused: you cannot disable yourself")),
        "the refusal is audited"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn log_pages_return_exactly_the_window_asked_and_log_streams_are_capped_per_user() {
    let (base, store, server) = start(Vec::new()).await;
    let token = admin_token(&base, &store).await;
    let repo = crate::repo(&store, "acme/logs").await;
    let task = crate::queued(&store, &repo, "Logs").await;
    let runner = crate::runner(&store, "r1").await;
    let (_, lease) = crate::claim(&store, runner).await;
    let chunks: Vec<(i64, String, Vec<u8>)> = (0..10)
        .map(|i| (i, "agent".to_owned(), format!("line {i}\n").into_bytes()))
        .collect();
    store.append_logs(&lease, &chunks).await.unwrap();
    let http = reqwest::Client::new();
    let get = |query: &str| {
        let req = http
            .get(format!("{base}/api/tasks/{}/logs?{query}", task.id))
            .bearer_auth(&token);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let seqs = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["seq"].as_i64().unwrap())
            .collect()
    };
    let (code, page) = get("after=2&limit=3").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(seqs(&page), [3, 4, 5]);
    assert_eq!(page[0]["text"], "line 3\n");
    let (_, page) = get("after=8&limit=3").await;
    assert_eq!(seqs(&page), [9]);
    let (_, page) = get("tail=4").await;
    assert_eq!(seqs(&page), [6, 7, 8, 9]);
    let (_, page) = get("").await;
    assert_eq!(seqs(&page), (0..10).collect::<Vec<_>>());
    let (_, page) = get("tail=2&after=8").await;
    assert_eq!(seqs(&page), [9], "the tail of what comes after `after`");
    let (_, page) = get("tail=2&after=3").await;
    assert_eq!(seqs(&page), [8, 9]);
    for bad in ["limit=0", "limit=1001", "tail=0", "tail=1001", "after=x"] {
        let (code, body) = get(bad).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["message"].is_string(), "{bad}: {body}");
    }
    // A page stops at its byte budget (4 MiB), whatever the limit: 20 chunks of 256 KiB.
    let big: Vec<(i64, String, Vec<u8>)> = (10..30)
        .map(|i| (i, "agent".to_owned(), vec![b'x'; 256 * 1024]))
        .collect();
    store.append_logs(&lease, &big).await.unwrap();
    let (_, page) = get("after=9&limit=1000").await;
    assert_eq!(seqs(&page), (10..26).collect::<Vec<_>>());
    // The stream sends pages of the size asked for.
    let first_event = async {
        let resp = http
            .get(format!("{base}/api/tasks/{}/logs/stream?limit=2", task.id))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let mut body = resp.bytes_stream();
        let mut seen = String::new();
        while !seen.contains("\n\n") {
            seen.push_str(&String::from_utf8_lossy(
                &body.next().await.unwrap().unwrap(),
            ));
        }
        seen
    };
    let event = tokio::time::timeout(Duration::from_secs(10), first_event)
        .await
        .unwrap();
    let data = event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let page: Value = serde_json::from_str(data).unwrap();
    assert_eq!(seqs(&page), [0, 1], "{event}");

    // A viewer may follow 8 logs at once; the 9th is refused with a clear 429, and audited.
    add_user(&base, &token, "vic", "a long password 1", "viewer").await;
    let vic = reqwest::Client::new();
    let resp = vic
        .post(format!("{base}/api/login"))
        .json(&json!({"username": "vic", "password": "a long password 1"}))
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let follow = |who: &reqwest::Client, cookie: Option<&str>| {
        let mut req = who.get(format!("{base}/api/tasks/{}/logs/stream?after=29", task.id));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    let mut open = Vec::new();
    for _ in 0..8 {
        let resp = follow(&vic, Some(&cookie)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        open.push(resp);
    }
    let resp = follow(&vic, Some(&cookie)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("8 log streams"),
        "{body}"
    );
    let rows = audit(&base, &token).await;
    assert!(
        rows.iter()
            .any(|r| r["actor"] == "user:vic" && r["outcome"] == "refused: too many log streams"),
        "the refusal is audited"
    );
    // The live task feed is bounded apart: 16 at once (her 8 log streams still open), then 429,
    // audited.
    let mut feeds = Vec::new();
    for _ in 0..controller::http::guard::MAX_EVENT_STREAMS {
        let resp = vic
            .get(format!("{base}/api/events"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        feeds.push(resp);
    }
    let resp = vic
        .get(format!("{base}/api/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        audit(&base, &token)
            .await
            .iter()
            .any(|r| r["actor"] == "user:vic" && r["outcome"] == "refused: too many live feeds"),
        "the refusal is audited"
    );
    drop(feeds);
    // Anonymous callers get no stream at all; another user has slots of their own.
    let resp = follow(&reqwest::Client::new(), None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let other = http
        .get(format!("{base}/api/tasks/{}/logs/stream?after=29", task.id))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    // Closing a stream gives its slot back.
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = follow(&vic, Some(&cookie)).await.unwrap();
        if resp.status() == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(open);
    drop(other);
    server.stop().await;
}
