//! The dashboard in a real browser (Debian's chromium over chromedriver/WebDriver): log in, watch
//! a task appear live, approve a held task and see its state change without a reload, with the
//! keyboard. Screenshots go to `$CARGO_TARGET_TMPDIR/screenshots`. Skipped with
//! `BP_SKIP_BROWSER=1` (or when chromium is not installed, with a note).

use std::time::Duration;

use controller::store::tasks::NewTask;
use controller::store::{HoldKind, Note};
use e2e::harness::{Options, TestController, free_port};
use fantoccini::{ClientBuilder, Locator, key::Key};

pub(crate) fn skip() -> bool {
    if std::env::var("BP_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        return true;
    }
    if !std::path::Path::new("/usr/bin/chromium").exists()
        || !std::path::Path::new("/usr/bin/chromedriver").exists()
    {
        eprintln!(
            "chromium/chromedriver not installed (apt-get install chromium chromium-driver): browser test skipped"
        );
        return true;
    }
    false
}

pub(crate) async fn browser() -> (fantoccini::Client, tokio::process::Child, tempfile::TempDir) {
    let port = free_port();
    let profile = tempfile::tempdir().unwrap();
    let driver = xcmd::Cmd::new("/usr/bin/chromedriver", profile.path())
        .arg(format!("--port={port}"))
        .to_tokio()
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let caps: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-quic", "--window-size=1400,900",
                format!("--user-data-dir={}", profile.path().join("profile").display()),
            ]}
        }))
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match c {
            Ok(c) => return (c, driver, profile),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot start a WebDriver session: {e}"),
        }
    }
}

pub(crate) async fn screenshot(c: &fantoccini::Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Finds the element at `css` (waiting up to 10 s) and clicks it. The dashboard re-renders its
/// tables as events arrive, so an element found a moment ago may have been replaced: such a click
/// is tried again on the new element, a bounded number of times.
pub(crate) async fn click_fresh(c: &fantoccini::Client, css: &str) {
    act_fresh(c, css, None).await
}

/// Sends `keys` to the element at `css`, finding it again when the page replaced it meanwhile.
pub(crate) async fn keys_fresh(c: &fantoccini::Client, css: &str, keys: &str) {
    act_fresh(c, css, Some(keys)).await
}

/// Clicks (or types `keys` into) the element at `css`; a live page re-renders rows on every
/// event, so an element found a moment ago may be gone: find it again, up to 20 times.
async fn act_fresh(c: &fantoccini::Client, css: &str, keys: Option<&str>) {
    use fantoccini::error::{CmdError, ErrorStatus};
    for _ in 0..20 {
        let el = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        let done = match keys {
            None => el.click().await,
            Some(k) => el.send_keys(k).await,
        };
        match done {
            Ok(()) => return,
            Err(CmdError::Standard(e)) if e.error == ErrorStatus::StaleElementReference => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The driver focuses the element before typing; when the page replaced it between
            // the lookup and the focus, the detached element cannot take the focus and the error
            // reads "not interactable". Only an element that is gone now counts as replaced.
            Err(CmdError::Standard(e))
                if e.error == ErrorStatus::ElementNotInteractable && gone(&el).await =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("acting on {css}: {e}"),
        }
    }
    panic!("{css} was replaced on every one of 20 tries");
}

/// Whether `el` has left the page (the page replaced it since it was found).
async fn gone(el: &fantoccini::elements::Element) -> bool {
    use fantoccini::error::{CmdError, ErrorStatus};
    matches!(
        el.is_displayed().await,
        Err(CmdError::Standard(e)) if e.error == ErrorStatus::StaleElementReference
    )
}

/// Waits for the status cell of task `id` to read `want` (as the page shows it).
pub(crate) async fn wait_status(c: &fantoccini::Client, id: i64, want: &str) {
    let css = format!("#tasks tr[data-id=\"{id}\"] td.status span[data-status=\"{want}\"]");
    c.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(&css))
        .await
        .unwrap_or_else(|e| panic!("task {id} never showed `{want}`: {e}"));
}

#[tokio::test]
async fn log_in_watch_a_task_appear_and_approve_it_without_a_reload() {
    if skip() {
        return;
    }
    let c = TestController::start(Options::default()).await;
    let password = controller::http::bootstrap_admin(&c.store, "root")
        .await
        .unwrap();
    let repo = c.repo("acme/web").await;
    let (b, _driver, _profile) = browser().await;
    let base = format!("http://{}", c.http);
    b.goto(&base).await.unwrap();
    // Log in with the keyboard only.
    let user = b.find(Locator::Css("#login-user")).await.unwrap();
    user.send_keys("root").await.unwrap();
    user.send_keys(&Key::Tab.to_string()).await.unwrap();
    b.active_element()
        .await
        .unwrap()
        .send_keys(&password)
        .await
        .unwrap();
    b.active_element()
        .await
        .unwrap()
        .send_keys(&Key::Enter.to_string())
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#fleet:not([hidden])"))
        .await
        .expect("the fleet view after login");
    let who = b
        .find(Locator::Css("#user"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(who, "root (admin)");
    screenshot(&b, "01-fleet-empty").await;

    // A task arrives: its row appears without a reload (a marker on the window survives).
    b.execute("window.__noReload = 42; return null;", vec![])
        .await
        .unwrap();
    let mut t = NewTask::for_issue(repo.id, 0, "Shown live", "appears without a reload");
    t.issue_number = None;
    let task = c.store.create_task(&t).await.unwrap();
    wait_status(&b, task.id, "queued").await;
    screenshot(&b, "02-task-appeared").await;

    // Held for approval: the page shows it; approve from the detail panel with the keyboard.
    c.store
        .hold(
            task.id,
            HoldKind::DispatchApproval,
            None,
            &Note::new("test", "gate"),
        )
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(&format!(
            "#tasks tr[data-id=\"{}\"] .held",
            task.id
        )))
        .await
        .expect("the hold shows");
    keys_fresh(
        &b,
        &format!("#tasks tr[data-id=\"{}\"]", task.id),
        &Key::Enter.to_string(),
    )
    .await;
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(
            "#detail-actions button[data-action=\"approve\"]",
        ))
        .await
        .expect("an approve control for an admin");
    screenshot(&b, "03-detail-held").await;
    // The panel re-renders on live updates: the control is found again if it was replaced.
    click_fresh(&b, "#detail-actions button[data-action=\"approve\"]").await;
    let mut released = false;
    for _ in 0..100 {
        let held = b
            .find_all(Locator::Css(&format!(
                "#tasks tr[data-id=\"{}\"] .held",
                task.id
            )))
            .await
            .unwrap();
        if held.is_empty() {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !released {
        screenshot(&b, "04-not-released").await;
        let err = b
            .find(Locator::Css("#detail-error"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let db = c.store.task(task.id).await.unwrap();
        panic!(
            "the row kept its hold; page error: `{err}`; store: {:?} {:?}",
            db.status, db.hold_kind
        );
    }
    assert!(c.store.task(task.id).await.unwrap().hold_kind.0.is_none());
    let marker = b
        .execute("return window.__noReload;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, serde_json::json!(42), "the page was never reloaded");
    // The panel re-reads the task after the row changed: wait for its timeline.
    let mut timeline = String::new();
    for _ in 0..100 {
        timeline = b
            .find(Locator::Css("#detail-timeline"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if timeline.contains("approved") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(timeline.contains("approved"), "{timeline}");
    screenshot(&b, "04-approved").await;

    // The other views render.
    for (view, sel) in [
        ("runners", "#runner-table"),
        ("repos", "#repo-table tbody tr"),
        ("metrics", "#stats dt"),
    ] {
        click_fresh(&b, &format!("#nav button[data-view=\"{view}\"]")).await;
        b.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(sel))
            .await
            .unwrap_or_else(|e| panic!("{view}: {e}"));
    }
    screenshot(&b, "05-metrics").await;

    // A repository's environment: its settings beside what its file declares and what the
    // latest task used, which wins and why; the repository's text shows as text, never markup.
    sqlx::query(
        "INSERT INTO repo_environments (repo_id, task_id, attempt, report) VALUES ($1, $2, 1, $3)",
    )
    .bind(repo.id)
    .bind(task.id)
    .bind(serde_json::json!({
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "source": ".backporcher.toml",
        "files": [{"path": ".backporcher.toml", "image": "backporcher-env-python:latest",
                   "setup": ["python3 -m venv /opt/env"], "env": {"PIP_NO_CACHE_DIR": "1"},
                   "setup_network": true, "secrets": [], "verify": "pytest -q",
                   "protected_paths": ["migrations/**"]}],
        "image": "backporcher-env-python:latest", "snapshot": "backporcher-env:00112233aabbccdd",
        "setup": "reused", "verify": "pytest -q", "verify_from": ".backporcher.toml",
        "protected_paths": ["migrations/**"],
        "notes": ["<img src=x onerror=\"window.__pwned=1\">"],
    }))
    .execute(c.store.pool())
    .await
    .unwrap();
    click_fresh(&b, "#nav button[data-view=\"repos\"]").await;
    click_fresh(
        &b,
        &format!("#repo-table button[data-environment=\"{}\"]", repo.id),
    )
    .await;
    let image_row = b
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(
            "#environment:not([hidden]) #environment-table tr[data-setting=\"Image\"]",
        ))
        .await
        .expect("the environment table");
    let image = image_row.text().await.unwrap();
    assert!(
        image.contains("backporcher-env-python:latest")
            && image.contains("backporcher-env:00112233aabbccdd"),
        "{image}"
    );
    let verify = b
        .find(Locator::Css(
            "#environment-table tr[data-setting=\"Verify\"]",
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        verify.contains("pytest -q (from .backporcher.toml)"),
        "{verify}"
    );
    let vars = b
        .find(Locator::Css(
            "#environment-table tr[data-setting=\"Variables\"]",
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        vars.matches("PIP_NO_CACHE_DIR").count(),
        2,
        "declared and used: {vars}"
    );
    let notes = b
        .find(Locator::Css("#environment-notes"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(notes.contains("settings win over its files"), "{notes}");
    assert!(notes.contains("<img src=x"), "shown as text: {notes}");
    let pwned = b
        .execute("return window.__pwned === undefined;", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, serde_json::json!(true), "the note ran as markup");
    screenshot(&b, "06-environment").await;
    b.close().await.unwrap();
    c.stop().await;
}
