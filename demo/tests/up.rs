//! README command 1 for real: `backporcher-up` in a temporary directory, with no credentials, so
//! it brings the GitHub simulator with its sample issues and the scripted model; a sample issue
//! must become a merged PR on the simulator (checked through the simulator's REST API), and
//! SIGTERM must stop everything. Needs Docker (skipped with `BP_SKIP_DOCKER=1`).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn one_command_turns_sample_issues_into_merged_prs() {
    if std::env::var("BP_SKIP_DOCKER").is_ok_and(|v| v == "1") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (http, grpc, sim) = (port(), port(), port());
    let mut child = xcmd::Cmd::new(env!("CARGO_BIN_EXE_backporcher-up"), dir.path())
        .args([
            "--data-dir",
            ".backporcher",
            "--listen",
            &format!("127.0.0.1:{http}"),
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--sim-listen",
            &format!("127.0.0.1:{sim}"),
        ])
        .env("RUST_LOG", "warn")
        .to_std()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("backporcher-up starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let started = Instant::now();
    while !printed
        .iter()
        .any(|l: &String| l.starts_with("Admin login"))
    {
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(l) => printed.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("backporcher-up printed no login within 5 minutes: {printed:?}");
            }
        }
    }
    assert!(
        printed
            .iter()
            .any(|l| l.contains(&format!("http://127.0.0.1:{http}/"))),
        "{printed:?}"
    );
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("Admin login:        admin / ")),
        "{printed:?}"
    );

    // Watch the simulator as GitHub: a merged pull request appears.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let merged = rt.block_on(async {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(240);
        while Instant::now() < deadline {
            if let Ok(r) = http
                .get(format!(
                    "http://127.0.0.1:{sim}/repos/demo/widgets/pulls?state=closed"
                ))
                .header("authorization", "token ghs_demo_token")
                .send()
                .await
                && let Ok(v) = r.json::<serde_json::Value>().await
                && let Some(list) = v.as_array()
            {
                let merged: Vec<String> = list
                    .iter()
                    .filter(|p| p["merged"] == true)
                    .map(|p| p["title"].as_str().unwrap_or_default().to_owned())
                    .collect();
                if !merged.is_empty() {
                    return Some(merged);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    });
    let secs = started.elapsed().as_secs();
    // Stop it the way an operator would.
    let pid = child.id().to_string();
    let _ = xcmd::Cmd::new("kill", dir.path())
        .args(["-TERM", &pid])
        .to_std()
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let merged = merged.unwrap_or_else(|| {
        panic!("no sample issue became a merged PR within 4 minutes ({secs} s in)")
    });
    assert!(
        merged
            .iter()
            .any(|t| t.contains("CONTRIBUTING") || t.contains("release") || t.contains("health")),
        "{merged:?}"
    );
    let status = status.expect("backporcher-up stops on SIGTERM within a minute");
    assert!(status.success(), "backporcher-up exited with {status}");
}

/// A started `backporcher-up` and what it printed up to the line "Ctrl-C stops everything.".
struct Up {
    child: std::process::Child,
    printed: Vec<String>,
}

impl Up {
    fn start(dir: &std::path::Path, (http, grpc, sim): (u16, u16, u16), interval: &str) -> Up {
        let mut child = xcmd::Cmd::new(env!("CARGO_BIN_EXE_backporcher-up"), dir)
            .args([
                "--data-dir",
                ".backporcher",
                "--listen",
                &format!("127.0.0.1:{http}"),
                "--grpc-listen",
                &format!("127.0.0.1:{grpc}"),
                "--sim-listen",
                &format!("127.0.0.1:{sim}"),
                "--sample-interval",
                interval,
            ])
            .env("RUST_LOG", "warn")
            .to_std()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("backporcher-up starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut printed = Vec::new();
        // The runner joins once the agent image is there (built beside the controller's start
        // when missing); its line ends the start-up.
        while !printed
            .iter()
            .any(|l: &String| l.starts_with("Local runner:"))
        {
            match rx.recv_timeout(Duration::from_secs(300)) {
                Ok(l) => printed.push(l),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    panic!(
                        "backporcher-up ended ({status:?}) before printing `Local runner:` (its \
                         error is on stderr above): {printed:?}"
                    );
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!(
                        "backporcher-up printed no `Local runner:` within 5 minutes: {printed:?}"
                    );
                }
            }
        }
        Up { child, printed }
    }

    /// The first printed line containing `needle`.
    fn line(&self, needle: &str) -> &str {
        self.printed
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in {:?}", self.printed))
    }

    /// Stops it with SIGTERM; it must exit successfully within a minute.
    fn stop(mut self, dir: &std::path::Path) {
        let pid = self.child.id().to_string();
        let _ = xcmd::Cmd::new("kill", dir)
            .args(["-TERM", &pid])
            .to_std()
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "backporcher-up exited with {s}");
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("backporcher-up did not stop on SIGTERM within a minute");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The API token the start-up message prints in its commands.
fn printed_token(up: &Up) -> String {
    up.line("Authorization: Bearer bpt_")
        .split("Bearer ")
        .nth(1)
        .and_then(|t| t.split('\'').next())
        .unwrap()
        .to_owned()
}

/// Waits up to `secs` for `f` to give `Some`.
async fn until<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {secs} s for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn get_json(http: &reqwest::Client, url: &str, auth: &str) -> Option<serde_json::Value> {
    http.get(url)
        .header("authorization", auth)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The simulator's pull requests (all states).
async fn pulls(http: &reqwest::Client, sim: u16) -> Vec<serde_json::Value> {
    get_json(
        http,
        &format!("http://127.0.0.1:{sim}/repos/demo/widgets/pulls?state=all"),
        "token ghs_demo_token",
    )
    .await
    .and_then(|v| v.as_array().cloned())
    .unwrap_or_default()
}

/// The merged pull request whose title contains `title`, if any.
async fn merged_pr(http: &reqwest::Client, sim: u16, title: &str) -> Option<serde_json::Value> {
    pulls(http, sim)
        .await
        .into_iter()
        .find(|p| p["merged"] == true && p["title"].as_str().unwrap_or_default().contains(title))
}

/// The controller's task whose title contains `title`.
async fn task(
    http: &reqwest::Client,
    api: &str,
    auth: &str,
    title: &str,
) -> Option<serde_json::Value> {
    get_json(http, &format!("{api}/api/tasks"), auth)
        .await?
        .as_array()?
        .iter()
        .find(|t| t["title"].as_str().unwrap_or_default().contains(title))
        .cloned()
}

/// The demo as a newcomer plays with it, doing what the start-up message says: the samples come
/// spaced out; the CI-failure sample merges after the agent's fix; the held sample waits and
/// merges once approved through the API with the printed token; an issue filed through
/// `backporcher-up file-issue` becomes a merged PR made by the scripted model; the PR page of a
/// merged sample shows its diff. Then a second start on the same data directory finds the same
/// issues and PRs (none re-created), and a password reset from the command line logs in.
#[test]
fn the_printed_tour_works_and_a_second_start_is_coherent() {
    if std::env::var("BP_SKIP_DOCKER").is_ok_and(|v| v == "1") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ports = (port(), port(), port());
    let (http_port, _, sim) = ports;
    let api = format!("http://127.0.0.1:{http_port}");
    let sim_url = format!("http://127.0.0.1:{sim}");
    let up = Up::start(dir.path(), ports, "3");
    let auth = format!("Bearer {}", printed_token(&up));
    assert!(up.line("file-issue").contains(&sim_url), "{:?}", up.printed);
    assert!(
        up.line("Admin login").contains("admin / "),
        "{:?}",
        up.printed
    );
    up.line("GITHUB_TOKEN=");

    // Your own issue, through the printed command.
    let out = xcmd::Cmd::new(env!("CARGO_BIN_EXE_backporcher-up"), dir.path())
        .args([
            "file-issue",
            "--sim-url",
            &sim_url,
            "Say hello <b>newcomers</b>",
            "Greet people who read the README & say <why>.",
        ])
        .to_std()
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("filed issue #"), "{said}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    rt.block_on(async {
        // The filed issue becomes a merged PR: a note quoting it, made by the scripted model.
        let mine = until(300, "the filed issue's merged PR", || {
            merged_pr(&http, sim, "Say hello")
        })
        .await;
        let page = http
            .get(mine["html_url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("+++ b/notes/say-hello"), "{page}");
        assert!(page.contains("A scripted model wrote this note"), "{page}");
        assert!(
            page.contains("+&gt; Greet people who read the README"),
            "{page}"
        );
        assert!(
            !page.contains("<b>newcomers</b>"),
            "the title is escaped: {page}"
        );

        // From the dashboard's new-task form: the controller opens the issue on the simulator,
        // and the task follows it to a merged PR.
        let settings = get_json(&http, &format!("{api}/api/settings"), &auth)
            .await
            .unwrap();
        assert_eq!(settings["github"], true, "{settings}");
        let created = http
            .post(format!("{api}/api/tasks"))
            .header("authorization", &auth)
            .json(&serde_json::json!({
                "repo": "demo/widgets",
                "title": "Welcome the form's users",
                "prompt": "Say hi to people who use the form.",
                "open_issue": true,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 200, "{:?}", created.text().await);
        let created: serde_json::Value = created.json().await.unwrap();
        let number = created["issue_number"].as_i64().expect("an issue number");
        let issue = get_json(
            &http,
            &format!("{sim_url}/repos/demo/widgets/issues/{number}"),
            "token ghs_demo_token",
        )
        .await
        .expect("the opened issue");
        assert_eq!(issue["title"], "Welcome the form's users", "{issue}");
        let form_pr = until(300, "the form's task merged", || {
            merged_pr(&http, sim, "Welcome the form")
        })
        .await;
        assert!(
            form_pr["body"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("#{number}")),
            "the PR names the issue: {form_pr}"
        );
        let issue_page = http
            .get(format!("{sim_url}/demo/widgets/issues/{number}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            issue_page.contains("Say hi to people who use the form."),
            "{issue_page}"
        );

        // A merged sample's PR page shows its diff, state and checks.
        let contributing = until(300, "the CONTRIBUTING sample merged", || {
            merged_pr(&http, sim, "CONTRIBUTING")
        })
        .await;
        let page = http
            .get(contributing["html_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let page = page.text().await.unwrap();
        assert!(
            page.contains("<span class=\"state\">merged</span>"),
            "{page}"
        );
        assert!(page.contains("+++ b/CONTRIBUTING.md"), "{page}");
        assert!(
            page.contains("<span class=\"add\">+# Contributing</span>"),
            "{page}"
        );
        assert!(
            page.contains("check run <code>build</code>: <b>success</b>"),
            "{page}"
        );
        // The issue and the repository pages open too.
        let issue = http
            .get(format!("{sim_url}/demo/widgets/issues/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(issue.status(), 200);
        assert!(
            issue
                .text()
                .await
                .unwrap()
                .contains("We need a short CONTRIBUTING.md.")
        );
        let repo = http
            .get(format!("{sim_url}/demo/widgets"))
            .send()
            .await
            .unwrap();
        assert_eq!(repo.status(), 200);
        assert!(
            repo.text()
                .await
                .unwrap()
                .contains("<code>CONTRIBUTING.md</code>")
        );

        // The CI-failure sample merges after its retry, with the fix.
        let health = until(300, "the health sample merged", || {
            merged_pr(&http, sim, "health")
        })
        .await;
        let t = until(30, "the health task", || task(&http, &api, &auth, "health")).await;
        assert!(t["retries"]["ci"].as_i64().unwrap() >= 1, "{t}");
        let page = http
            .get(health["html_url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("+echo ok"), "{page}");

        // The held sample waits for a person; approved through the API, it merges.
        let held = until(300, "the LICENSE sample held for approval", || async {
            task(&http, &api, &auth, "LICENSE")
                .await
                .filter(|t| t["status"] == "approval_hold")
        })
        .await;
        assert!(merged_pr(&http, sim, "LICENSE").await.is_none());
        let approved = http
            .post(format!("{api}/api/tasks/{}/approve", held["id"]))
            .header("authorization", &auth)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert!(
            approved.status().is_success(),
            "{:?}",
            approved.text().await
        );
        until(120, "the approved LICENSE sample merged", || {
            merged_pr(&http, sim, "LICENSE")
        })
        .await;
        until(300, "the release sample merged", || {
            merged_pr(&http, sim, "release")
        })
        .await;
    });
    let before = rt.block_on(pulls(&http, sim)).len();
    up.stop(dir.path());

    // A lost admin password is reset from the command line.
    let out = xcmd::Cmd::new(env!("CARGO_BIN_EXE_backporcher-up"), dir.path())
        .args(["--data-dir", ".backporcher", "reset-admin-password"])
        .to_std()
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let password = said
        .lines()
        .find_map(|l| l.strip_prefix("Admin login:        admin / "))
        .unwrap_or_else(|| panic!("{said}"))
        .to_owned();

    // A second start: the same issues and PRs, none filed again.
    let up = Up::start(dir.path(), ports, "0");
    assert!(
        up.line("Admin login").contains("reset-admin-password"),
        "{:?}",
        up.printed
    );
    let old_auth = auth;
    let auth = format!("Bearer {}", printed_token(&up));
    rt.block_on(async {
        // Only the token on the screen works: the previous start's is revoked.
        let refused = http
            .get(format!("{api}/api/tasks"))
            .header("authorization", &old_auth)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "the previous start's token");
        tokio::time::sleep(Duration::from_secs(8)).await;
        let issues = get_json(
            &http,
            &format!("{sim_url}/repos/demo/widgets/issues?state=all&per_page=100"),
            "token ghs_demo_token",
        )
        .await
        .unwrap();
        let titles: Vec<&str> = issues
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i.get("pull_request").is_none())
            .map(|i| i["title"].as_str().unwrap())
            .collect();
        assert_eq!(titles.len(), 6, "{titles:?}");
        assert_eq!(pulls(&http, sim).await.len(), before);
        let tasks = get_json(&http, &format!("{api}/api/tasks"), &auth)
            .await
            .unwrap();
        assert_eq!(tasks.as_array().unwrap().len(), 6, "{tasks}");
        let login = http
            .post(format!("{api}/api/login"))
            .json(&serde_json::json!({"username": "admin", "password": password}))
            .send()
            .await
            .unwrap();
        assert!(
            login.status().is_success(),
            "the reset password logs in: {}",
            login.status()
        );
    });
    up.stop(dir.path());
}
