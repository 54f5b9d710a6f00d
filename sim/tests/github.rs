//! The GitHub simulator behaves like GitHub for the calls the controller makes, with real git.

use std::path::Path;

use serde_json::{Value, json};
use sim::github::GitHubSim;

const TOKEN: &str = "ghs_simtoken";

async fn start() -> (GitHubSim, String, std::path::PathBuf) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = std::env::temp_dir().join(format!("ghsim-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&root).unwrap();
    let sim = GitHubSim::new(&root, TOKEN);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    sim.serve(l);
    (sim, url, root)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

use sim::kit::git;

fn xcmd_like(cwd: &Path, args: &[&str]) -> std::process::Output {
    xcmd::Cmd::new("git", cwd)
        .args(["-c", "user.name=T", "-c", "user.email=t@localhost"])
        .args(args)
        .to_std()
        .output()
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn api(
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client()
        .request(method, url)
        .header("Authorization", format!("token {TOKEN}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_labels_comments_and_etags() {
    let (sim, url, _root) = start().await;
    sim.create_repo("acme/widgets", "main", &[("README.md", "hi\n")])
        .unwrap();
    let n = sim.create_issue(
        "acme/widgets",
        "Add health check",
        "GET /health",
        "alice",
        &["backporcher"],
    );
    sim.create_issue("acme/widgets", "Unrelated", "x", "bob", &[]);
    let bad = client()
        .get(format!("{url}/repos/acme/widgets/issues"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let (s, list, h) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/issues?labels=backporcher&state=open"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["number"], n);
    assert_eq!(list[0]["user"]["login"], "alice");
    assert_eq!(h["x-ratelimit-remaining"], "4999");
    let etag = h["etag"].to_str().unwrap().to_owned();
    let r = client()
        .get(format!(
            "{url}/repos/acme/widgets/issues?labels=backporcher&state=open"
        ))
        .header("Authorization", format!("token {TOKEN}"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304, "unchanged since the ETag");
    let (s, _, _) = api(
        reqwest::Method::POST,
        &format!("{url}/repos/acme/widgets/issues/{n}/labels"),
        Some(json!({"labels": ["backporcher-in-progress"]})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = api(
        reqwest::Method::DELETE,
        &format!("{url}/repos/acme/widgets/issues/{n}/labels/backporcher"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        sim.labels("acme/widgets", n),
        vec!["backporcher-in-progress".to_string()]
    );
    let r = client()
        .get(format!(
            "{url}/repos/acme/widgets/issues?labels=backporcher&state=open"
        ))
        .header("Authorization", format!("token {TOKEN}"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "changed: a new answer");
    let (s, _, _) = api(
        reqwest::Method::POST,
        &format!("{url}/repos/acme/widgets/issues/{n}/comments"),
        Some(json!({"body": "On it."})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(sim.comments("acme/widgets", n), vec!["On it.".to_string()]);
    let (s, issue, _) = api(
        reqwest::Method::PATCH,
        &format!("{url}/repos/acme/widgets/issues/{n}"),
        Some(json!({"state": "closed"})),
    )
    .await;
    assert_eq!((s, issue["state"].as_str()), (200, Some("closed")));
    let (s, _, _) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/nope/issues"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, repo, _) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets"),
        None,
    )
    .await;
    assert_eq!(
        (
            s,
            repo["default_branch"].as_str(),
            repo["full_name"].as_str()
        ),
        (200, Some("main"), Some("acme/widgets"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_over_http_pull_requests_ci_and_a_real_merge() {
    let (sim, url, root) = start().await;
    sim.create_repo(
        "acme/widgets",
        "main",
        &[("a.txt", "one\n"), ("b.txt", "two\n")],
    )
    .unwrap();
    let work = root.join("work");
    let remote = format!(
        "http://x:{TOKEN}@{}/acme/widgets.git",
        url.trim_start_matches("http://")
    );
    git(&root, &["clone", "--quiet", &remote, "work"]);
    // No token: refused.
    let anon = format!("{url}/acme/widgets.git");
    assert!(
        !xcmd_like(&root, &["clone", "--quiet", &anon, "anon"])
            .status
            .success()
    );
    git(
        &work,
        &["checkout", "--quiet", "-b", "backporcher/1-feature"],
    );
    std::fs::write(work.join("a.txt"), "one, improved\n").unwrap();
    git(&work, &["commit", "--quiet", "-am", "improve a"]);
    git(
        &work,
        &["push", "--quiet", "origin", "backporcher/1-feature"],
    );
    let body = json!({"title": "Improve a", "head": "backporcher/1-feature", "base": "main", "body": "Closes #1"});
    let (s, pr, _) = api(
        reqwest::Method::POST,
        &format!("{url}/repos/acme/widgets/pulls"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 201, "{pr}");
    let number = pr["number"].as_u64().unwrap();
    let (s, again, _) = api(
        reqwest::Method::POST,
        &format!("{url}/repos/acme/widgets/pulls"),
        Some(body),
    )
    .await;
    assert_eq!(s, 422, "one open PR per head: {again}");
    let (_, found, _) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/pulls?head=acme:backporcher/1-feature&state=open"),
        None,
    )
    .await;
    assert_eq!(found.as_array().unwrap().len(), 1);
    let head = pr["head"]["sha"].as_str().unwrap().to_owned();
    // CI: pending, then green.
    let (_, st, _) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/commits/{head}/status"),
        None,
    )
    .await;
    assert_eq!(st["state"], "pending");
    sim.set_ci("acme/widgets", &head, "success");
    let (_, st, _) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/commits/{head}/status"),
        None,
    )
    .await;
    assert_eq!(st["state"], "success");
    let (_, runs, _) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/commits/{head}/check-runs"),
        None,
    )
    .await;
    assert_eq!(runs["check_runs"][0]["conclusion"], "success");
    let (_, got, _) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/pulls/{number}"),
        None,
    )
    .await;
    assert_eq!(got["mergeable"], true);
    let (s, merged, _) = api(
        reqwest::Method::PUT,
        &format!("{url}/repos/acme/widgets/pulls/{number}/merge"),
        Some(json!({"merge_method": "squash", "sha": head})),
    )
    .await;
    assert_eq!(s, 200, "{merged}");
    assert_eq!(
        sim.state_of("acme/widgets", number),
        Some(("closed".into(), true))
    );
    git(&work, &["fetch", "--quiet", "origin"]);
    assert_eq!(git(&work, &["show", "origin/main:a.txt"]), "one, improved");
    assert_eq!(
        git(&work, &["log", "-1", "--format=%s", "origin/main"]),
        format!("Improve a (#{number})")
    );
    let (s, _, _) = api(
        reqwest::Method::PUT,
        &format!("{url}/repos/acme/widgets/pulls/{number}/merge"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 405, "already merged");
    let (s, _, _) = api(
        reqwest::Method::DELETE,
        &format!("{url}/repos/acme/widgets/git/refs/heads/backporcher/1-feature"),
        None,
    )
    .await;
    assert_eq!(s, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_pull_requests_are_not_mergeable() {
    let (sim, url, root) = start().await;
    sim.create_repo("acme/widgets", "main", &[("a.txt", "one\n")])
        .unwrap();
    let remote = format!(
        "http://x:{TOKEN}@{}/acme/widgets.git",
        url.trim_start_matches("http://")
    );
    git(&root, &["clone", "--quiet", &remote, "w"]);
    let w = root.join("w");
    git(&w, &["checkout", "--quiet", "-b", "feature"]);
    std::fs::write(w.join("a.txt"), "feature\n").unwrap();
    git(&w, &["commit", "--quiet", "-am", "feature"]);
    git(&w, &["push", "--quiet", "origin", "feature"]);
    git(&w, &["checkout", "--quiet", "main"]);
    std::fs::write(w.join("a.txt"), "main moved\n").unwrap();
    git(&w, &["commit", "--quiet", "-am", "main"]);
    git(&w, &["push", "--quiet", "origin", "main"]);
    let (_, pr, _) = api(
        reqwest::Method::POST,
        &format!("{url}/repos/acme/widgets/pulls"),
        Some(json!({"title": "F", "head": "feature", "base": "main"})),
    )
    .await;
    let number = pr["number"].as_u64().unwrap();
    assert_eq!(pr["mergeable"], false);
    assert_eq!(pr["mergeable_state"], "dirty");
    let (s, e, _) = api(
        reqwest::Method::PUT,
        &format!("{url}/repos/acme/widgets/pulls/{number}/merge"),
        Some(json!({"merge_method": "squash"})),
    )
    .await;
    assert_eq!(s, 405, "{e}");
    assert_eq!(e["message"], "Pull Request is not mergeable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed() {
    let (sim, url, root) = start().await;
    // A receiver that checks the signature like the controller will.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, bool)>::new()));
    let r2 = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let r2 = r2.clone();
                async move {
                    use hmac::{KeyInit, Mac};
                    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
                    mac.update(&body);
                    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                    let got = headers["x-hub-signature-256"].to_str().unwrap().to_owned();
                    r2.lock().unwrap().push((
                        headers["x-github-event"].to_str().unwrap().to_owned(),
                        got == want,
                    ));
                    "ok"
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    sim.set_webhook(&hook, "s3cret");
    sim.create_repo("acme/widgets", "main", &[("a.txt", "one\n")])
        .unwrap();
    let remote = format!(
        "http://x:{TOKEN}@{}/acme/widgets.git",
        url.trim_start_matches("http://")
    );
    git(&root, &["clone", "--quiet", &remote, "w"]);
    let w = root.join("w");
    git(&w, &["checkout", "--quiet", "-b", "f"]);
    std::fs::write(w.join("b.txt"), "b\n").unwrap();
    git(&w, &["add", "-A"]);
    git(&w, &["commit", "--quiet", "-m", "b"]);
    git(&w, &["push", "--quiet", "origin", "f"]);
    api(
        reqwest::Method::POST,
        &format!("{url}/repos/acme/widgets/pulls"),
        Some(json!({"title": "F", "head": "f", "base": "main"})),
    )
    .await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got, vec![("pull_request".to_string(), true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_failed_job_logs_and_rate_limits() {
    let (sim, url, root) = start().await;
    sim.create_repo("acme/widgets", "main", &[("a.txt", "one\n")])
        .unwrap();
    let remote = format!(
        "http://x:{TOKEN}@{}/acme/widgets.git",
        url.trim_start_matches("http://")
    );
    git(&root, &["clone", "--quiet", &remote, "w"]);
    let w = root.join("w");
    git(&w, &["checkout", "--quiet", "-b", "f"]);
    std::fs::write(w.join("b.txt"), "b\n").unwrap();
    git(&w, &["add", "-A"]);
    git(&w, &["commit", "--quiet", "-m", "b"]);
    git(&w, &["push", "--quiet", "origin", "f"]);
    let (_, pr, _) = api(
        reqwest::Method::POST,
        &format!("{url}/repos/acme/widgets/pulls"),
        Some(json!({"title": "F", "head": "f", "base": "main"})),
    )
    .await;
    let number = pr["number"].as_u64().unwrap();
    let head = pr["head"]["sha"].as_str().unwrap().to_owned();
    sim.fail_ci(
        "acme/widgets",
        &head,
        "error[E0308]: mismatched types\n  --> src/lib.rs:3:5",
    );
    let (_, runs, _) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/commits/{head}/check-runs"),
        None,
    )
    .await;
    assert_eq!(runs["check_runs"][0]["conclusion"], "failure");
    let job = runs["check_runs"][0]["id"].as_u64().unwrap();
    let log = client()
        .get(format!("{url}/repos/acme/widgets/actions/jobs/{job}/logs"))
        .header("Authorization", format!("token {TOKEN}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("mismatched types"));
    sim.submit_review(
        "acme/widgets",
        number,
        "alice",
        "@backporcher please address these",
        &["rename x", "add a test", "fix the typo"],
    )
    .await;
    let (_, reviews, _) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/pulls/{number}/reviews"),
        None,
    )
    .await;
    assert_eq!(reviews[0]["body"], "@backporcher please address these");
    let (_, comments, _) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/pulls/{number}/comments"),
        None,
    )
    .await;
    assert_eq!(comments.as_array().unwrap().len(), 3);
    sim.rate_limit_next(sim::github::RateLimit::Secondary, 1);
    let (s, e, h) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/issues"),
        None,
    )
    .await;
    assert_eq!(s, 403);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("secondary rate limit")
    );
    assert_eq!(h["retry-after"], "1");
    sim.rate_limit_next(sim::github::RateLimit::Primary, 1);
    let (s, _, h) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/issues"),
        None,
    )
    .await;
    assert_eq!(
        (s, h["x-ratelimit-remaining"].to_str().unwrap()),
        (403, "0")
    );
    let (s, _, _) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/issues"),
        None,
    )
    .await;
    assert_eq!(s, 200, "served again after the limits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paginated_with_link_headers_as_on_github() {
    let (sim, url, _root) = start().await;
    sim.create_repo("acme/widgets", "main", &[("README.md", "hi\n")])
        .unwrap();
    let head = sim.branch_head("acme/widgets", "main").unwrap();
    let runs: Vec<(String, &str)> = (1..=150).map(|i| (format!("job-{i}"), "success")).collect();
    let runs: Vec<(&str, &str)> = runs.iter().map(|(n, o)| (n.as_str(), *o)).collect();
    sim.set_check_runs("acme/widgets", &head, &runs);
    let statuses: Vec<(String, &str)> = (1..=40).map(|i| (format!("ci/{i}"), "success")).collect();
    let statuses: Vec<(&str, &str)> = statuses.iter().map(|(c, s)| (c.as_str(), *s)).collect();
    sim.set_statuses("acme/widgets", &head, &statuses);
    for i in 1..=35 {
        sim.create_issue(
            "acme/widgets",
            &format!("Issue {i}"),
            "",
            "alice",
            &["backporcher"],
        );
    }
    let link = |h: &reqwest::header::HeaderMap| {
        h.get("link")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };

    // Check runs: 100 at most a page, the total in every page, `Link` to the next and last.
    let runs_url = format!("{url}/repos/acme/widgets/commits/{head}/check-runs");
    let (s, page1, h) = api(
        reqwest::Method::GET,
        &format!("{runs_url}?per_page=500"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(page1["total_count"], 150);
    assert_eq!(
        page1["check_runs"].as_array().unwrap().len(),
        100,
        "per_page is capped at 100"
    );
    let l = link(&h);
    assert!(
        l.contains(&format!("<{runs_url}?per_page=500&page=2>; rel=\"next\"")),
        "{l}"
    );
    assert!(l.contains("rel=\"last\""), "{l}");
    let (_, page2, h) = api(
        reqwest::Method::GET,
        &format!("{runs_url}?per_page=100&page=2"),
        None,
    )
    .await;
    assert_eq!(page2["check_runs"].as_array().unwrap().len(), 50);
    assert_eq!(page2["check_runs"][49]["name"], "job-150");
    let l = link(&h);
    assert!(!l.contains("rel=\"next\""), "the last page: {l}");
    assert!(
        l.contains("rel=\"prev\"") && l.contains("rel=\"first\""),
        "{l}"
    );

    // The combined status: 30 a page by default, the total and the state over all of them.
    let (_, st, h) = api(
        reqwest::Method::GET,
        &format!("{url}/repos/acme/widgets/commits/{head}/status"),
        None,
    )
    .await;
    assert_eq!(st["statuses"].as_array().unwrap().len(), 30);
    assert_eq!(st["total_count"], 40);
    assert_eq!(st["state"], "success");
    assert!(link(&h).contains("page=2>; rel=\"next\""), "{}", link(&h));

    // Labelled issues: pages, each with its own ETag.
    let issues_url = format!("{url}/repos/acme/widgets/issues?labels=backporcher&state=open");
    let (_, first, h1) = api(
        reqwest::Method::GET,
        &format!("{issues_url}&per_page=20"),
        None,
    )
    .await;
    assert_eq!(first.as_array().unwrap().len(), 20);
    assert!(link(&h1).contains("rel=\"next\""));
    let (_, second, h2) = api(
        reqwest::Method::GET,
        &format!("{issues_url}&per_page=20&page=2"),
        None,
    )
    .await;
    assert_eq!(second.as_array().unwrap().len(), 15);
    assert!(!link(&h2).contains("rel=\"next\""));
    assert_ne!(h1["etag"], h2["etag"]);
    // One page: no `Link` header.
    let (_, all, h) = api(
        reqwest::Method::GET,
        &format!("{issues_url}&per_page=100"),
        None,
    )
    .await;
    assert_eq!(all.as_array().unwrap().len(), 35);
    assert!(h.get("link").is_none());
}

/// The web pages at the `html_url`s the simulator hands out: a private repository's stay hidden
/// from anonymous callers (as on GitHub), every text is escaped, and a merged pull request's page
/// shows its diff and checks even after its branch is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_open_escaped_and_private_ones_stay_hidden() {
    let (sim, url, root) = start().await;
    sim.create_repo("acme/pages", "main", &[("a.txt", "one <b>\n")])
        .unwrap();
    sim.set_default_ci("success");
    let n = sim.create_issue(
        "acme/pages",
        "<script>alert(1)</script>",
        "body & <img src=x onerror=alert(2)>",
        "eve",
        &["backporcher"],
    );
    let anon = |path: &str| client().get(format!("{url}{path}")).send();
    for path in ["/acme/pages", &format!("/acme/pages/issues/{n}")] {
        assert_eq!(anon(path).await.unwrap().status(), 404, "{path} is private");
    }
    let page = client()
        .get(format!("{url}/acme/pages/issues/{n}"))
        .header("Authorization", format!("token {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(
        html.contains("body &amp; &lt;img src=x onerror=alert(2)&gt;"),
        "{html}"
    );
    assert!(
        !html.contains("<script>") && !html.contains("<img"),
        "{html}"
    );

    sim.set_public("acme/pages");
    let remote = format!(
        "http://x:{TOKEN}@{}/acme/pages.git",
        url.trim_start_matches("http://")
    );
    git(&root, &["clone", "--quiet", &remote, "pw"]);
    let w = root.join("pw");
    git(&w, &["checkout", "--quiet", "-b", "f"]);
    std::fs::write(w.join("b.txt"), "hello <world>\n").unwrap();
    git(&w, &["add", "-A"]);
    git(&w, &["commit", "--quiet", "-m", "b"]);
    git(&w, &["push", "--quiet", "origin", "f"]);
    let (s, pr, _) = api(
        reqwest::Method::POST,
        &format!("{url}/repos/acme/pages/pulls"),
        Some(json!({"title": "Add b", "head": "f", "base": "main", "body": "Closes #1 <i>"})),
    )
    .await;
    assert_eq!(s, 201, "{pr}");
    let html_url = pr["html_url"].as_str().unwrap().to_owned();
    let open = client()
        .get(&html_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(open.contains("<span class=\"state\">open</span>"), "{open}");
    assert!(open.contains("+hello &lt;world&gt;"), "{open}");
    let number = pr["number"].as_u64().unwrap();
    let (s, _, _) = api(
        reqwest::Method::PUT,
        &format!("{url}/repos/acme/pages/pulls/{number}/merge"),
        Some(json!({"merge_method": "squash"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = api(
        reqwest::Method::DELETE,
        &format!("{url}/repos/acme/pages/git/refs/heads/f"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let merged = client()
        .get(&html_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        merged.contains("<span class=\"state\">merged</span>"),
        "{merged}"
    );
    assert!(merged.contains("+++ b/b.txt"), "{merged}");
    assert!(merged.contains("+hello &lt;world&gt;"), "{merged}");
    assert!(
        merged.contains("check run <code>build</code>: <b>success</b>"),
        "{merged}"
    );
    assert!(merged.contains("Closes #1 &lt;i&gt;"), "{merged}");
    // The issue number of a pull request sends to its page, and the repository page lists it.
    let moved = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{url}/acme/pages/issues/{number}"))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 301);
    let repo = anon("/acme/pages").await.unwrap().text().await.unwrap();
    assert!(
        repo.contains("<code>b.txt</code>") && repo.contains("hello &lt;world&gt;"),
        "{repo}"
    );
    assert!(repo.contains("merged pull request"), "{repo}");
    assert_eq!(anon("/acme/pages/pull/999").await.unwrap().status(), 404);
}

/// `POST /repos/{owner}/{repo}/issues` files the issue as the token's user and fires the
/// webhook with a fresh UUID delivery id each time; without a token it is refused. Saved state
/// comes back in a new simulator on the same root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_filed_over_rest_are_the_tokens_users_and_state_survives_a_restart() {
    let (sim, url, root) = start().await;
    let ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let ids2 = ids.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let ids2 = ids2.clone();
            async move {
                let id = headers["x-github-delivery"].to_str().unwrap().to_owned();
                ids2.lock().unwrap().push(id);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    sim.set_webhook(&hook, "s3cret");
    sim.create_repo("acme/filed", "main", &[("a.txt", "one\n")])
        .unwrap();
    sim.add_user_token("ghp_alice", "alice");
    let issue = json!({"title": "Do it", "body": "please", "labels": ["backporcher"]});
    let anon = client()
        .post(format!("{url}/repos/acme/filed/issues"))
        .json(&issue)
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    let post = |token: &'static str, body: Value| {
        client()
            .post(format!("{url}/repos/acme/filed/issues"))
            .header("Authorization", format!("token {token}"))
            .json(&body)
            .send()
    };
    let r = post("ghp_alice", issue.clone()).await.unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["user"]["login"], "alice");
    assert_eq!(v["labels"][0]["name"], "backporcher");
    assert!(
        v["html_url"]
            .as_str()
            .unwrap()
            .ends_with("/acme/filed/issues/1")
    );
    assert_eq!(
        post("ghp_alice", json!({"body": "no title"}))
            .await
            .unwrap()
            .status(),
        422
    );
    post("ghp_alice", issue.clone()).await.unwrap();
    let got = ids.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_ne!(got[0], got[1]);
    for id in &got {
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{id} is a UUID");
        assert_eq!(&id[14..15], "4", "{id} is a version-4 UUID");
    }

    let state = root.join("state.json");
    sim.save(&state).unwrap();
    let again = GitHubSim::new(&root, TOKEN);
    assert!(again.load(&state).unwrap());
    assert_eq!(
        again.state_of("acme/filed", 2),
        Some(("open".into(), false))
    );
    assert_eq!(
        again.labels("acme/filed", 1),
        vec!["backporcher".to_string()]
    );
    assert!(!again.load(&root.join("none.json")).unwrap());
    std::fs::write(&state, "{}").unwrap();
    assert!(again.load(&state).is_err(), "not the simulator's state");
}
