//! The API against its own contract: schemathesis (from PyPI) reads `/api/openapi.json` of a live
//! controller with a seeded database and calls every operation as an admin — examples, coverage
//! (edge and invalid values), fuzzing and stateful sequences along the document's links — and
//! fails on any server error, any response that does not match its schema, any schema-valid
//! request refused and any invalid one accepted. `.ci/run` installs schemathesis into
//! `$HOME/.cache/backporcher/venv-schemathesis`; without it this test fails unless
//! `BP_SKIP_SCHEMATHESIS=1` (a developer's choice, so CI cannot skip it silently).

use std::path::PathBuf;
use std::time::Duration;

use controller::config::Config;
use controller::store::Status;
use serde_json::{Value, json};

/// Where schemathesis is: `BP_SCHEMATHESIS`, or the venv `.ci/run` installs.
fn schemathesis() -> Option<PathBuf> {
    let path = std::env::var_os("BP_SCHEMATHESIS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/backporcher/venv-schemathesis/bin/st"))
        })?;
    path.is_file().then_some(path)
}

/// A database with something in every list: repositories, tasks in several statuses with a log,
/// a runner, users and tokens, learnings, audit rows.
async fn seed(base: &str, store: &controller::store::Store) -> String {
    let password = controller::http::bootstrap_admin(store, "root")
        .await
        .unwrap();
    // The run revokes tokens by id as it pleases: the one it runs with gets an id it will not
    // pick among the small ones it tries.
    sqlx::query("ALTER SEQUENCE api_tokens_id_seq RESTART WITH 7340000017")
        .execute(store.pool())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/api/login"))
        .json(&json!({"username": "root", "password": password}))
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let me: Value = resp.json().await.unwrap();
    let tok: Value = http
        .post(format!("{base}/api/tokens"))
        .header("cookie", cookie.split(';').next().unwrap())
        .header("x-csrf-token", me["csrf_token"].as_str().unwrap())
        .json(&json!({"name": "contract"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tok["secret"].as_str().unwrap().to_owned();
    let repo = crate::repo(store, "acme/widgets").await;
    crate::repo(store, "acme/gadgets").await;
    let runner = crate::runner(store, "r1").await;
    let running = crate::queued(store, &repo, "Fix the parser").await;
    let (_, lease) = crate::claim(store, runner).await;
    store
        .append_log(&lease, 0, "agent", b"{\"type\":\"system\"}\n")
        .await
        .unwrap();
    // The follower of a live attempt's log would never end; schemathesis follows ended ones.
    crate::force_status(store, running.id, Status::Failed, runner).await;
    for (title, status) in [
        ("Add a flag", Status::Queued),
        ("Bump deps", Status::Merged),
        ("Rename things", Status::Canceled),
    ] {
        let t = crate::queued(store, &repo, title).await;
        if status != Status::Queued {
            crate::force_status(store, t.id, status, runner).await;
        }
    }
    for (name, role) in [("vera", "viewer"), ("otto", "operator")] {
        let resp = http
            .post(format!("{base}/api/users"))
            .bearer_auth(&token)
            .json(&json!({"username": name, "password": "a long password 1", "role": role}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
    token
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_the_api_true_to_its_openapi_document() {
    let Some(st) = schemathesis() else {
        if std::env::var("BP_SKIP_SCHEMATHESIS").as_deref() == Ok("1") {
            eprintln!("schemathesis is not installed; skipped (BP_SKIP_SCHEMATHESIS=1)");
            return;
        }
        panic!(
            "schemathesis is not installed: run .ci/run, or `python3 -m venv ~/.cache/backporcher/venv-schemathesis && \
             ~/.cache/backporcher/venv-schemathesis/bin/pip install schemathesis`, or set BP_SKIP_SCHEMATHESIS=1 to skip"
        );
    };
    let (store, url) = crate::store_and_url().await;
    let server = crate::Serving::start(Config {
        database_url: Some(url),
        data_dir: tempfile::tempdir().unwrap().keep(),
        ..Config::default()
    })
    .await;
    let base = format!("http://{}", server.addr);
    let token = seed(&base, &store).await;
    let work = tempfile::tempdir().unwrap();
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    // A fixed seed keeps CI's run the same; BP_SCHEMATHESIS_SEED and _EXAMPLES explore further.
    let examples = std::env::var("BP_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into());
    let seed = std::env::var("BP_SCHEMATHESIS_SEED").unwrap_or_else(|_| "7".into());
    let cmd = xcmd::Cmd::new(&st, work.path())
        .env("HOME", work.path())
        .env("BP_CONTRACT_TOKEN", &token)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{base}/api/openapi.json")])
        .args([
            "--max-examples",
            &examples,
            "--seed",
            &seed,
            "--workers",
            "2",
        ])
        .args(["--request-timeout", "20", "--no-color"]);
    let run = cmd.to_tokio().kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finishes within 10 minutes")
        .expect("schemathesis starts");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "schemathesis found the API untrue to its document:\n{text}"
    );
    // Every operation schemathesis loaded was tested but the one excluded (the endless event
    // stream): none silently skipped.
    let figure = |label: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("no `{label}` in the summary:\n{text}"))
            .trim()
            .to_owned()
    };
    let selected = figure("Selected:");
    let (chosen, total) = selected.split_once('/').unwrap();
    assert_eq!(figure("Tested:"), chosen, "{text}");
    assert_eq!(
        chosen.parse::<usize>().unwrap() + 1,
        total.parse::<usize>().unwrap(),
        "{text}"
    );
    server.stop().await;
}
