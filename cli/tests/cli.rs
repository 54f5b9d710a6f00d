//! The `backporcher` binary against a live controller (real PostgreSQL, real HTTP): login stores
//! a 0600 config, read commands print text or `--json`, actions work for an operator and exit 4
//! for a viewer, missing things exit 3, an unreachable controller exits 6.

use std::path::Path;
use std::time::Duration;

use controller::config::Config;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn backporcher(config: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = xcmd::Cmd::new(env!("CARGO_BIN_EXE_backporcher"), std::env::temp_dir())
        .arg("--config")
        .arg(config)
        .args(args)
        .to_std()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_drives_a_live_controller() {
    let Served {
        store,
        url,
        dir,
        shutdown,
        server,
        password,
    } = Served::start().await;
    let admin_cfg = dir.path().join("admin.toml");
    let cfg = admin_cfg.clone();
    let u = url.clone();
    let run = move |cfg: std::path::PathBuf, args: Vec<String>, stdin: Option<String>| {
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            backporcher(&cfg, &a, stdin.as_deref())
        })
    };
    let sv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // Not logged in yet: exit 4 with what to do.
    let (code, _, err) = run(cfg.clone(), sv(&["fleet"]), None).await.unwrap();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("backporcher login"), "{err}");
    let (code, out, err) = run(
        cfg.clone(),
        sv(&["login", "--url", &u, "--user", "root", "--password-stdin"]),
        Some(password.clone()),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (code, out, err) = run(cfg.clone(), sv(&["repo", "add", "acme/cli"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(
        cfg.clone(),
        sv(&["repo", "verify", "acme/cli", "cargo", "test"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("`cargo test`"), "{out}");
    let (code, out, _) = run(cfg.clone(), sv(&["repo", "list", "--json"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    let repos: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(repos[0]["settings"]["verify_command"], "cargo test");
    let (code, _, err) = run(cfg.clone(), sv(&["repo", "learnings", "acme/none"]), None)
        .await
        .unwrap();
    assert_eq!(code, 3, "{err}");
    let (code, out, err) = run(cfg.clone(), sv(&["repo", "environment", "acme/cli"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("verify  cargo test") && out.contains("no task has reported"),
        "{out}"
    );
    let repo = store.repo_by_name("acme/cli").await.unwrap();
    sqlx::query(
        "INSERT INTO repo_environments (repo_id, task_id, attempt, report) VALUES ($1, 7, 1, $2)",
    )
    .bind(repo.id)
    .bind(serde_json::json!({
        "commit": "0123456789abcdef0123", "source": ".backporcher.toml",
        "files": [{"path": ".backporcher.toml", "image": "backporcher-env-python:latest",
                   "setup": ["python3 -m venv /opt/env"], "verify": "pytest -q",
                   "protected_paths": []}],
        "image": "backporcher-env-python:latest", "snapshot": "backporcher-env:00aa",
        "setup": "reused", "verify": "cargo test", "verify_from": "the repository's settings",
        "notes": ["verify command from the repository's settings; .backporcher.toml's `pytest -q` is overridden (settings win)"],
    }))
    .execute(store.pool())
    .await
    .unwrap();
    let (code, out, err) = run(cfg.clone(), sv(&["repo", "environment", "acme/cli"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    for want in [
        "default branch at 0123456789ab (task #7",
        "used: .backporcher.toml",
        "backporcher-env-python:latest → backporcher-env:00aa (setup reused)",
        "verify  cargo test (from the repository's settings)",
        "is overridden (settings win)",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }

    // A task made through the API; an operator acts on it, a viewer cannot.
    let mut t = controller::store::tasks::NewTask::for_issue(repo.id, 0, "From the CLI test", "x");
    t.issue_number = None;
    let task = store.create_task(&t).await.unwrap();
    let id = task.id.to_string();
    for _ in 0..200 {
        if store.task(task.id).await.unwrap().status == controller::store::Status::Queued {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out, _) = run(cfg.clone(), sv(&["fleet"]), None).await.unwrap();
    assert_eq!(code, 0);
    assert!(
        out.contains("From the CLI test") && out.contains("queued"),
        "{out}"
    );
    let (code, out, err) = run(cfg.clone(), sv(&["hold", &id]), None).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("held: user"), "{out}");
    let (code, _, err) = run(cfg.clone(), sv(&["hold", &id]), None).await.unwrap();
    assert_eq!(code, 5, "already held is a conflict: {err}");
    let (code, out, _) = run(cfg.clone(), sv(&["status", &id, "--json"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    let detail: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(detail["task"]["hold"], "user");
    let (code, _, _) = run(cfg.clone(), sv(&["status", "99999"]), None)
        .await
        .unwrap();
    assert_eq!(code, 3);
    let (code, out, _) = run(cfg.clone(), sv(&["stats", "--json"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["live"], 1);
    let (code, out, _) = run(
        cfg.clone(),
        sv(&["runner", "token", "--labels", "gpu"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert!(out.trim().contains('@'));
    let (code, out, _) = run(cfg.clone(), sv(&["pause"]), None).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.starts_with("dispatch paused\n"), "{out}");
    let (code, out, _) = run(cfg.clone(), sv(&["fleet"]), None).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("DISPATCH PAUSED"));
    let (code, out, _) = run(cfg.clone(), sv(&["resume", "--json"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["paused"],
        false
    );

    // Settings: get, set the approval mode (admin) and the pause; bad input exits 2 or 1.
    let (code, out, err) = run(cfg.clone(), sv(&["settings", "get"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "dispatch running\napproval mode review-merge\n");
    let (code, out, err) = run(
        cfg.clone(),
        sv(&["settings", "set", "approval-mode", "review-all", "--json"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        serde_json::json!({"paused": false, "approval_mode": "review-all", "github": false})
    );
    assert_eq!(store.settings().await.unwrap().approval_mode, "review-all");
    let (code, _, err) = run(
        cfg.clone(),
        sv(&["settings", "set", "approval-mode", "sometimes"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("full-auto, review-merge, review-all"), "{err}");
    let (code, _, err) = run(cfg.clone(), sv(&["settings", "set", "colour", "x"]), None)
        .await
        .unwrap();
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = run(
        cfg.clone(),
        sv(&["settings", "set", "paused", "true"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (code, out.as_str()),
        (0, "dispatch paused\napproval mode review-all\n")
    );
    let (code, _, _) = run(
        cfg.clone(),
        sv(&["settings", "set", "paused", "false"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    let (code, _, _) = run(
        cfg.clone(),
        sv(&["settings", "set", "approval-mode", "review-merge"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);

    // Edit before dispatch: prompt (from stdin), model, priority; nothing to edit exits 2.
    let (code, out, err) = run(
        cfg.clone(),
        sv(&[
            "edit",
            &id,
            "--prompt",
            "-",
            "--model",
            "opus",
            "--priority",
            "7",
        ]),
        Some("a better prompt".into()),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("opus"), "{out}");
    let edited = store.task(task.id).await.unwrap();
    assert_eq!(
        (
            edited.prompt_override.as_deref(),
            edited.model.as_str(),
            edited.priority
        ),
        (Some("a better prompt"), "opus", 7)
    );
    let (code, out, _) = run(
        cfg.clone(),
        sv(&["edit", &id, "--priority", "9", "--json"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["priority"], 9);
    let (code, _, err) = run(cfg.clone(), sv(&["edit", &id]), None).await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--prompt"), "{err}");

    // Approve and release as the reference means them: approve clears an approval hold, release
    // a user hold; each refusal names the hold and the command.
    let (code, _, err) = run(cfg.clone(), sv(&["approve", &id]), None).await.unwrap();
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("it has a user hold") && err.contains(&format!("backporcher release {id}")),
        "{err}"
    );
    let (code, out, err) = run(cfg.clone(), sv(&["release", &id]), None).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("held"), "{out}");
    store
        .hold(
            task.id,
            controller::store::HoldKind::DispatchApproval,
            None,
            &controller::store::Note::new("test", "review-all"),
        )
        .await
        .unwrap();
    let (code, _, err) = run(cfg.clone(), sv(&["release", &id]), None).await.unwrap();
    assert_eq!(code, 5, "{err}");
    assert!(err.contains(&format!("backporcher approve {id}")), "{err}");
    let (code, out, err) = run(cfg.clone(), sv(&["approve", &id, "--json"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["hold"],
        Value::Null
    );

    // Escalate, then logs (a chunk of the current attempt), logs -f (ends with the attempt).
    let (code, out, err) = run(
        cfg.clone(),
        sv(&["escalate", &id, "--model", "haiku"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("haiku"), "{out}");
    sqlx::query(
        "INSERT INTO log_chunks (task_id, attempt, seq, stream, data) VALUES ($1, $2, 0, 'agent', $3)",
    )
    .bind(task.id)
    .bind(edited.attempt)
    .bind(b"hello from the agent\n".to_vec())
    .execute(store.pool())
    .await
    .unwrap();
    let (code, out, err) = run(cfg.clone(), sv(&["logs", &id]), None).await.unwrap();
    assert_eq!((code, out.as_str()), (0, "hello from the agent\n"), "{err}");
    let (code, out, _) = run(cfg.clone(), sv(&["logs", &id, "--json"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()[0]["seq"], 0);
    let (code, out, err) = run(cfg.clone(), sv(&["logs", "-f", &id]), None)
        .await
        .unwrap();
    assert_eq!((code, out.as_str()), (0, "hello from the agent\n"), "{err}");
    let (code, out, _) = run(cfg.clone(), sv(&["status", &id, "--logs"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("hello from the agent"), "{out}");

    // A second task: held, then canceled by cancel-held; requeued with another model.
    let mut t2 = controller::store::tasks::NewTask::for_issue(repo.id, 0, "Second", "y");
    t2.issue_number = None;
    let second = store.create_task(&t2).await.unwrap();
    let id2 = second.id.to_string();
    for _ in 0..200 {
        if store.task(second.id).await.unwrap().status == controller::store::Status::Queued {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _, _) = run(cfg.clone(), sv(&["hold", &id2]), None).await.unwrap();
    assert_eq!(code, 0);
    let (code, out, err) = run(cfg.clone(), sv(&["cancel-held", "acme/cli"]), None)
        .await
        .unwrap();
    assert_eq!((code, out.trim()), (0, "canceled 1 held task(s)"), "{err}");
    assert_eq!(
        store.task(second.id).await.unwrap().status,
        controller::store::Status::Canceled
    );
    let (code, out, err) = run(
        cfg.clone(),
        sv(&["requeue", &id2, "--model", "opus", "--json"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["model"].as_str()),
        (Some("queued"), Some("opus"))
    );
    let (code, out, err) = run(cfg.clone(), sv(&["cancel", &id2]), None).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("canceled"), "{out}");

    // status with no id: counts, live tasks, recently ended.
    let (code, out, err) = run(cfg.clone(), sv(&["status"]), None).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("canceled 1")
            && out.contains("queued 1")
            && out.contains("live (1):")
            && out.contains("recently ended (1):")
            && out.contains("Second"),
        "{out}"
    );
    let (code, out, _) = run(cfg.clone(), sv(&["status", "--json"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            v["counts"]["canceled"].as_i64(),
            v["live"][0]["id"].as_i64(),
            v["recent"][0]["id"].as_i64()
        ),
        (Some(1), Some(task.id), Some(second.id)),
        "{v}"
    );

    // cleanup needs GitHub, which this controller has none of: it says so (the sweep itself is
    // tested against the GitHub simulator in the controller's tests).
    let (code, _, err) = run(cfg.clone(), sv(&["cleanup", "--now"]), None)
        .await
        .unwrap();
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("no GitHub is configured"), "{err}");

    // Runners: list (text and JSON), drain.
    let r = store.register_runner("cli-runner", &[], 2).await.unwrap();
    let (code, out, _) = run(cfg.clone(), sv(&["runner", "list"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(
        out.contains("cli-runner") && out.contains("0/2 leases"),
        "{out}"
    );
    let (code, out, err) = run(
        cfg.clone(),
        sv(&["runner", "drain", &r.id.to_string()]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "runner cli-runner is draining");
    let (code, out, _) = run(cfg.clone(), sv(&["runner", "list", "--json"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()[0]["state"],
        "draining"
    );

    // Repository: clear the verify command; learnings of a registered repository.
    let (code, out, _) = run(cfg.clone(), sv(&["repo", "verify", "acme/cli"]), None)
        .await
        .unwrap();
    assert_eq!((code, out.trim()), (0, "acme/cli: verify cleared"));
    store
        .add_learning(repo.id, None, "merged", "small PRs merge fast")
        .await
        .unwrap();
    let (code, out, _) = run(cfg.clone(), sv(&["repo", "learnings", "acme/cli"]), None)
        .await
        .unwrap();
    assert_eq!((code, out.trim()), (0, "+ small PRs merge fast"));
    let (code, out, _) = run(
        cfg.clone(),
        sv(&["repo", "learnings", "acme/cli", "--json"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()[0]["summary"],
        "small PRs merge fast"
    );

    // A viewer's token: reads work, actions exit 4.
    let hash = controller::http::auth::hash_password("viewer password 1").unwrap();
    store.create_user("vee", &hash, "viewer").await.unwrap();
    let viewer_cfg = dir.path().join("viewer.toml");
    let (code, _, err) = run(
        viewer_cfg.clone(),
        sv(&["login", "--url", &u, "--user", "vee", "--password-stdin"]),
        Some("viewer password 1".into()),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = run(viewer_cfg.clone(), sv(&["fleet", "--json"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    let (code, _, err) = run(viewer_cfg.clone(), sv(&["release", &id]), None)
        .await
        .unwrap();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("operator"), "{err}");
    let (code, _, err) = run(
        viewer_cfg.clone(),
        sv(&["settings", "set", "approval-mode", "full-auto"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("admin"), "{err}");
    let (code, _, err) = run(
        viewer_cfg,
        sv(&["login", "--url", &u, "--user", "vee", "--password-stdin"]),
        Some("wrong".into()),
    )
    .await
    .unwrap();
    assert_eq!(code, 4, "{err}");

    // A new task from a prompt read from stdin; without a GitHub connection no issue can be
    // opened, and the refusal says so (nothing is created).
    let (code, out, err) = run(
        cfg.clone(),
        sv(&[
            "new",
            "acme/cli",
            "--title",
            "Add a changelog",
            "--prompt",
            "-",
        ]),
        Some("Write CHANGELOG.md".into()),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Add a changelog"), "{out}");
    let tasks_before = store.list_tasks(&Default::default()).await.unwrap().len();
    let (code, _, err) = run(
        cfg.clone(),
        sv(&[
            "new",
            "acme/cli",
            "--title",
            "Not opened",
            "--prompt",
            "x",
            "--open-issue",
        ]),
        None,
    )
    .await
    .unwrap();
    // A conflict with how the controller is set up (exit code 5), not a malformed request.
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("no GitHub connection"), "{err}");
    assert_eq!(
        store.list_tasks(&Default::default()).await.unwrap().len(),
        tasks_before
    );

    // Shell completions; an unreachable controller.
    let (code, out, _) = run(cfg.clone(), sv(&["completions", "bash"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("backporcher"));
    shutdown.cancel();
    server.stopped().await.unwrap();
    let (code, _, err) = run(admin_cfg, sv(&["fleet"]), None).await.unwrap();
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("cannot reach the controller"), "{err}");
}

/// A controller serving on its own database with an admin (`root`, `password`).
struct Served {
    store: controller::store::Store,
    url: String,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: controller::server::Running,
    password: String,
}

impl Served {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let db = pgembed::testing::cluster()
            .await
            .fresh_database(&controller::store::MIGRATOR)
            .await
            .unwrap();
        let store = controller::store::Store::connect(&db.url, 4).await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", http.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let server = controller::server::start(
            Config {
                database_url: Some(db.url.clone()),
                data_dir: dir.path().join("controller"),
                ..Config::default()
            },
            controller::server::Listeners { http, grpc },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let password = controller::http::bootstrap_admin(&store, "root")
            .await
            .unwrap();
        Self {
            store,
            url,
            dir,
            shutdown,
            server,
            password,
        }
    }
}

/// [`Served`] with one task of `repo` leased to a runner: what the tests of commands that read
/// a task's run start from.
struct Leased {
    served: Served,
    repo: controller::store::repos::Repo,
    task: controller::store::Task,
    lease: controller::store::claims::LeaseRef,
}

impl Leased {
    async fn start(repo: &str, title: &str) -> Self {
        use controller::store::claims::{ClaimRequest, LeaseRef};
        let served = Served::start().await;
        let store = &served.store;
        let repo = store
            .add_repo(&controller::store::repos::NewRepo {
                name: repo.into(),
                clone_url: format!("https://example.invalid/{repo}.git"),
                default_branch: "main".into(),
            })
            .await
            .unwrap();
        let mut t = controller::store::tasks::NewTask::for_issue(repo.id, 0, title, "body");
        t.issue_number = None;
        let task = store.create_task(&t).await.unwrap();
        store
            .triage(
                task.id,
                &controller::store::tasks::Triage::default(),
                &controller::store::Note::new("user:test", "triaged"),
            )
            .await
            .unwrap();
        let runner = store.register_runner("r1", &[], 4).await.unwrap().id;
        let claimed = store
            .claim(&ClaimRequest {
                runner_id: runner,
                labels: &[],
                lease: Duration::from_secs(60),
                capacity: None,
            })
            .await
            .unwrap()
            .unwrap();
        let lease = LeaseRef::of(&claimed).unwrap();
        Self {
            served,
            repo,
            task,
            lease,
        }
    }
}

/// `backporcher logs` prints a whole log however many pages the API serves it in.
#[tokio::test(flavor = "multi_thread")]
async fn logs_prints_every_page_of_a_long_log() {
    let Leased {
        served:
            Served {
                store,
                url,
                dir,
                shutdown,
                server,
                password,
            },
        repo: _,
        task,
        lease,
    } = Leased::start("acme/logs", "Long log").await;
    // 2,500 chunks: three pages of at most 1,000.
    let chunks: Vec<(i64, String, Vec<u8>)> = (0..2500)
        .map(|i| (i, "agent".to_owned(), format!("line {i}\n").into_bytes()))
        .collect();
    store.append_logs(&lease, &chunks).await.unwrap();

    let cfg = dir.path().join("admin.toml");
    let login = {
        let (cfg, url) = (cfg.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            backporcher(
                &cfg,
                &["login", "--url", &url, "--user", "root", "--password-stdin"],
                Some(&password),
            )
        })
    };
    let (code, out, err) = login.await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let id = task.id.to_string();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || backporcher(&cfg, &["logs", &id], None))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    let expected: String = (0..2500).map(|i| format!("line {i}\n")).collect();
    assert!(
        out == expected,
        "the log printed is not the whole log ({} bytes of {})",
        out.len(),
        expected.len()
    );
    shutdown.cancel();
    server.stopped().await.unwrap();
}

/// `backporcher evidence`: a signed record verifies (from the controller and from a saved file,
/// offline with the key); one byte changed in a field, or a substituted signature, exits 1
/// naming what was changed; the transcript downloads and matches the hash the record names.
#[tokio::test(flavor = "multi_thread")]
async fn evidence_verifies_and_tampering_is_named() {
    let Leased {
        served:
            Served {
                store,
                url,
                dir,
                shutdown,
                server,
                password,
            },
        repo,
        task,
        lease,
    } = Leased::start("acme/evidence", "Evidence").await;
    let events = [
        serde_json::json!({"type": "system", "subtype": "init", "model": "sonnet"}),
        serde_json::json!({"type": "assistant", "message": {"model": "sonnet", "usage": {"input_tokens": 7, "output_tokens": 3}, "content": [{"type": "tool_use", "id": "t1", "name": "Edit", "input": {"file_path": "/workspace/a.txt"}}]}}),
        serde_json::json!({"type": "result", "is_error": false, "result": "done"}),
    ];
    let chunks: Vec<(i64, String, Vec<u8>)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (i as i64, "agent".to_owned(), format!("{e}\n").into_bytes()))
        .collect();
    store.append_logs(&lease, &chunks).await.unwrap();
    let task = store.task(task.id).await.unwrap();
    let head = "0123456789abcdef0123456789abcdef01234567";
    controller::evidence::make(&store, &task, &repo.name, head)
        .await
        .unwrap();

    let cfg = dir.path().join("admin.toml");
    let run = {
        let cfg = cfg.clone();
        move |args: Vec<String>, stdin: Option<String>| {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                backporcher(&cfg, &a, stdin.as_deref())
            })
        }
    };
    let sv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (code, out, err) = run(
        sv(&["login", "--url", &url, "--user", "root", "--password-stdin"]),
        Some(password),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let id = task.id.to_string();

    // From the controller: signed, and the transcript matches its hash.
    let (code, out, err) = run(sv(&["evidence", "verify", &id]), None).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: ") && out.contains(head), "{out}");
    assert!(out.contains("the transcript matches"), "{out}");
    let (code, out, err) = run(sv(&["evidence", "show", &id]), None).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verify before: not_reported"), "{out}");
    let (code, out, err) = run(sv(&["evidence", "trajectory", &id, "--attempt", "1"]), None)
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let trajectory: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(trajectory["format"], "backporcher.trajectory/1");
    assert_eq!(trajectory["steps"][1]["tool"], "Edit");

    // Saved, with the key saved too: verifies offline.
    let (code, saved, err) = run(sv(&["--json", "evidence", "show", &id]), None)
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let file = dir.path().join("record.json");
    std::fs::write(&file, &saved).unwrap();
    let pem = reqwest::get(format!("{url}/evidence-key.pem"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let key = dir.path().join("key.pem");
    std::fs::write(&key, &pem).unwrap();
    let offline = dir.path().join("nobody.toml");
    let verify_file = |cfg: std::path::PathBuf, f: std::path::PathBuf| {
        let (key, id) = (key.clone(), id.clone());
        tokio::task::spawn_blocking(move || {
            backporcher(
                &cfg,
                &[
                    "evidence",
                    "verify",
                    &id,
                    "--file",
                    f.to_str().unwrap(),
                    "--key",
                    key.to_str().unwrap(),
                ],
                None,
            )
        })
    };
    let (code, out, err) = verify_file(offline.clone(), file.clone()).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");

    // One byte changed in a field: detected, and named when the controller can be asked.
    let mut envelope: Value = serde_json::from_str(&saved).unwrap();
    let record = envelope["record"].as_str().unwrap().to_owned();
    assert!(record.contains("\"attempt\":1,"), "{record}");
    let changed = record.replacen("\"attempt\":1,", "\"attempt\":2,", 1);
    assert_eq!(changed.len(), record.len(), "one byte");
    envelope["record"] = Value::String(changed);
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, envelope.to_string()).unwrap();
    let (code, out, err) = verify_file(offline.clone(), tampered.clone())
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("the signature does not match the record"),
        "{err}"
    );
    let (code, out, err) = verify_file(cfg.clone(), tampered.clone()).await.unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("tampered with") && err.contains("attempt (here 2, the controller's 1)"),
        "{err}"
    );

    // The record intact, another signature (a valid one, of other bytes, by the same key).
    let mut envelope: Value = serde_json::from_str(&saved).unwrap();
    let other = controller::evidence::Signer::load(&store)
        .await
        .unwrap()
        .sign(b"something else");
    use base64::Engine;
    envelope["signature"] = Value::String(base64::engine::general_purpose::STANDARD.encode(other));
    let substituted = dir.path().join("substituted.json");
    std::fs::write(&substituted, envelope.to_string()).unwrap();
    let (code, out, err) = verify_file(offline.clone(), substituted.clone())
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}{err}");
    let (code, out, err) = verify_file(cfg.clone(), substituted).await.unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("byte for byte") && err.contains("signature was substituted"),
        "{err}"
    );

    // A task without a record: not found.
    let (code, _, err) = run(sv(&["evidence", "verify", "999999"]), None)
        .await
        .unwrap();
    assert_eq!(code, 3, "{err}");
    shutdown.cancel();
    server.stopped().await.unwrap();
}
