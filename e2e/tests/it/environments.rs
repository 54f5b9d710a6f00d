//! Per-repository environments on real code: a real Python project (six, its source from PyPI)
//! whose environment installs pytest in setup; the scripted agent breaks the project, verify runs
//! the real test suite and fails with its real output, the fix round repairs it and the PR merges;
//! the next task starts from the snapshot without setup; a setup that fails ends its task with the
//! failing command. Real Docker, the real Claude Code CLI, the GitHub simulator. Skipped with
//! `BP_SKIP_DOCKER=1`; needs the environment base images (deploy/env/build-offline.sh) and the
//! package registries.

use std::time::Duration;

use controller::forge::labels;
use controller::store::repos::RepoSettings;
use controller::store::{Status, TerminalReason};
use e2e::full::{FullSystem, agent_script, says};
use e2e::harness::skip_docker;
use e2e::sources::{crates_io_source, files_of, pypi_sdist};

fn read(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

#[tokio::test]
async fn a_real_python_project_is_verified_by_its_own_suite_in_its_own_environment() {
    if skip_docker() {
        return;
    }
    let six = pypi_sdist("six", "1.16.0");
    let original = read(&six, "six.py");
    let broken = original.replacen(
        "    def u(s):\n        return s\n",
        "    def u(s):\n        return s + \"!\"\n",
        1,
    );
    assert_ne!(broken, original);
    // The fix round's version: the original with a comment (a change of its own to push).
    let fixed = original.replacen(
        "    def u(s):\n        return s\n",
        "    def u(s):\n        # Text is unicode already.\n        return s\n",
        1,
    );
    assert_ne!(fixed, original);
    // A fresh environment key per run (the snapshot is removed at the end).
    let config = format!(
        "verify = \"/opt/env/bin/python -m pytest -q -x -p no:cacheprovider test_six.py\"\n\
         [environment]\n\
         image = \"backporcher-env-python:latest\"\n\
         setup = [\"python3 -m venv /opt/env\", \"/opt/env/bin/pip install --quiet --no-cache-dir pytest\"]\n\
         env = {{ BP_TEST_RUN = \"{}\" }}\n",
        uuid::Uuid::new_v4()
    );
    let files = [
        ("six.py", original.clone()),
        ("test_six.py", read(&six, "test_six.py")),
        ("setup.py", read(&six, "setup.py")),
        ("setup.cfg", read(&six, "setup.cfg")),
        ("README.rst", read(&six, "README.rst")),
        ("LICENSE", read(&six, "LICENSE")),
        (".backporcher.toml", config.to_string()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sys = FullSystem::start(
        "six",
        &files,
        RepoSettings {
            approval_mode: Some("full-auto".into()),
            ..RepoSettings::default()
        },
    )
    .await;
    let (gh, model, c) = (&sys.gh, &sys.model, &sys.c);
    gh.set_default_ci("success");
    model.add_script(says(
        "Classify this issue",
        &[
            "{\"model\": \"sonnet\", \"complexity\": \"simple\"}",
            "{\"model\": \"sonnet\", \"complexity\": \"simple\"}",
        ],
    ));
    model.add_script(says(
        "review this pull request",
        &["VERDICT: APPROVE", "VERDICT: APPROVE"],
    ));
    // The agent breaks `six.u`; the suite's failure comes back in the fix round.
    model.add_script(agent_script(
        "MARK-SIX-1",
        "/workspace/six.py",
        &broken,
        "FAILED test_six.py::test_u",
        &fixed,
    ));
    let number = gh
        .open_issue(
            &sys.name,
            // The mark in the body only: the title reaches later tasks' prompts in the
            // repository's learnings, and the next task must not be answered by this script.
            "Tidy six.u",
            "Keep u() simple. MARK-SIX-1",
            "alice",
            &[labels::TRIGGER],
        )
        .await;
    let task = sys.task_of_issue(number).await;
    let t = sys
        .wait_for(task, "the merge", Duration::from_secs(600), |t| {
            t.status == Status::Merged
        })
        .await;
    let log: String = c.log_text(task, t.attempt).await;
    assert!(log.contains("setting up from .backporcher.toml"), "{log}");
    assert!(log.contains("environment backporcher-env:"), "{log}");
    assert!(
        log.contains("FAILED test_six.py::test_u"),
        "the real suite failed first: {log}"
    );
    assert!(log.contains("passed"), "then passed: {log}");
    // What the repository's file says and what the task used reach the controller (the
    // dashboard's environment view and the task's detail).
    let (seen, _, _, report) = c
        .store
        .repo_environment(sys.repo.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, task);
    assert_eq!(report["source"], ".backporcher.toml", "{report}");
    assert_eq!(report["files"][0]["path"], ".backporcher.toml", "{report}");
    assert_eq!(
        report["files"][0]["image"], "backporcher-env-python:latest",
        "{report}"
    );
    assert_eq!(report["setup"], "ran", "{report}");
    assert_eq!(report["verify_from"], ".backporcher.toml", "{report}");
    assert!(
        report["snapshot"]
            .as_str()
            .is_some_and(|s| s.starts_with("backporcher-env:")),
        "{report}"
    );

    // The next task starts from the snapshot: no setup.
    model.add_script(agent_script(
        "MARK-SIX-2",
        "/workspace/NOTES.txt",
        "notes\n",
        "never",
        "",
    ));
    let number = gh
        .open_issue(
            &sys.name,
            "Add notes MARK-SIX-2",
            "Add NOTES.txt.",
            "alice",
            &[labels::TRIGGER],
        )
        .await;
    let second = sys.task_of_issue(number).await;
    let t2 = sys
        .wait_for(second, "the second merge", Duration::from_secs(300), |t| {
            t.status == Status::Merged
        })
        .await;
    let log2: String = c.log_text(second, t2.attempt).await;
    assert!(log2.contains("reused (no setup)"), "{log2}");
    assert!(!log2.contains("setting up from"), "{log2}");
    let (seen, _, _, report2) = c
        .store
        .repo_environment(sys.repo.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, second);
    assert_eq!(report2["setup"], "reused", "{report2}");
    assert_eq!(report2["snapshot"], report["snapshot"]);
    let first = c.store.task_environment(task).await.unwrap().unwrap();
    assert_eq!(first["setup"], "ran", "each task keeps its own: {first}");
    let tag = log
        .split_whitespace()
        .find(|w| w.starts_with("backporcher-env:"))
        .unwrap()
        .trim_end_matches(':');
    let _ = xcmd::Cmd::new("docker", std::env::temp_dir())
        .args(["rmi", "-f", tag])
        .to_std()
        .output();
}

#[tokio::test]
async fn a_setup_that_fails_ends_the_task_naming_the_command() {
    if skip_docker() {
        return;
    }
    let config = "[environment]\n\
                  image = \"backporcher-env-python:latest\"\n\
                  setup = [\"python3 -m venv /opt/env\", \"/opt/env/bin/python -c 'import sys; print(\\\"no such toolchain\\\"); sys.exit(3)'\"]\n";
    let sys = FullSystem::start(
        "badsetup",
        &[
            ("README.md", "# bad setup\n"),
            (".backporcher.toml", config),
        ],
        RepoSettings::default(),
    )
    .await;
    sys.model.add_script(says(
        "Classify this issue",
        &["{\"model\": \"sonnet\", \"complexity\": \"simple\"}"],
    ));
    let number = sys
        .gh
        .open_issue(&sys.name, "Anything", "x", "alice", &[labels::TRIGGER])
        .await;
    let task = sys.task_of_issue(number).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let t = loop {
        let t = sys.c.store.task(task).await.unwrap();
        if t.status.is_terminal() {
            break t;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {}", t.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(t.terminal_reason.0, Some(TerminalReason::SetupFailed));
    let error = t.error.unwrap_or_default();
    assert!(
        error.contains("setup command `/opt/env/bin/python -c")
            && error.contains("exit 97")
            && error.contains("no such toolchain")
            && error.contains("requeue"),
        "{error}"
    );
    assert_eq!(t.agent_retries, 0, "no agent ran");
    let report = sys.c.store.task_environment(task).await.unwrap().unwrap();
    assert_eq!(report["setup"], "failed", "{report}");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("setup command `/opt/env/bin/python -c")),
        "{report}"
    );
    assert!(
        sys.model.received().iter().all(
            |r| !r.last_user_text.contains("Anything") || r.last_user_text.contains("Classify")
        ),
        "the agent never called the model"
    );
}

#[tokio::test]
async fn a_real_rust_crate_is_verified_with_cargo_test_in_a_rust_environment() {
    if skip_docker() {
        return;
    }
    let itoa = crates_io_source("itoa", "1.0.11");
    let mut files = files_of(&itoa);
    // Setup fetches what the crate resolves to into /opt/env (kept in the snapshot); verify then
    // builds and tests offline, as a sandbox without the internet must.
    files.push((
        ".backporcher.toml".into(),
        format!(
            "verify = \"cargo test --offline --quiet --tests\"\n\
             [environment]\n\
             image = \"backporcher-env-rust:latest\"\n\
             setup = [\"cargo fetch\"]\n\
             env = {{ CARGO_HOME = \"/opt/env/cargo\", BP_TEST_RUN = \"{}\" }}\n",
            uuid::Uuid::new_v4()
        ),
    ));
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let sys = FullSystem::start(
        "itoa",
        &files,
        RepoSettings {
            approval_mode: Some("full-auto".into()),
            ..RepoSettings::default()
        },
    )
    .await;
    let (gh, model, c) = (&sys.gh, &sys.model, &sys.c);
    gh.set_default_ci("success");
    model.add_script(says(
        "Classify this issue",
        &[
            "{\"model\": \"sonnet\", \"complexity\": \"simple\"}",
            "{\"model\": \"sonnet\", \"complexity\": \"simple\"}",
        ],
    ));
    model.add_script(says(
        "review this pull request",
        &["VERDICT: APPROVE", "VERDICT: APPROVE"],
    ));
    model.add_script(agent_script(
        "MARK-ITOA",
        "/workspace/NOTES.md",
        "Formatting notes.\n",
        "never",
        "",
    ));
    let number = gh
        .open_issue(
            &sys.name,
            "Add notes MARK-ITOA",
            "Add NOTES.md.",
            "alice",
            &[labels::TRIGGER],
        )
        .await;
    let task = sys.task_of_issue(number).await;
    let t = sys
        .wait_for(task, "the merge", Duration::from_secs(900), |t| {
            t.status == Status::Merged
        })
        .await;
    let log: String = c.log_text(task, t.attempt).await;
    assert!(
        log.contains("setting up from .backporcher.toml on backporcher-env-rust:latest"),
        "{log}"
    );
    assert!(log.contains("test result: ok"), "cargo test ran: {log}");
    // A change to a dependency manifest on the default branch sets the environment up again.
    let manifest = format!(
        "{}\n# touched\n",
        files_of(&itoa)
            .into_iter()
            .find(|(p, _)| p == "Cargo.toml")
            .unwrap()
            .1
    );
    gh.push_commit(&sys.name, "main", &[("Cargo.toml", &manifest)])
        .unwrap();
    model.add_script(agent_script(
        "MARK-ITOA-2",
        "/workspace/NOTES2.md",
        "More notes.\n",
        "never",
        "",
    ));
    let number = gh
        .open_issue(
            &sys.name,
            "More notes MARK-ITOA-2",
            "Add NOTES2.md.",
            "alice",
            &[labels::TRIGGER],
        )
        .await;
    let second = sys.task_of_issue(number).await;
    let t2 = sys
        .wait_for(second, "the second merge", Duration::from_secs(900), |t| {
            t.status == Status::Merged
        })
        .await;
    let log2 = c.log_text(second, t2.attempt).await;
    assert!(
        log2.contains("setting up from .backporcher.toml") && !log2.contains("reused (no setup)"),
        "a manifest change rebuilds the snapshot: {log2}"
    );
    if let Some(tag) = log2
        .split_whitespace()
        .find(|w| w.starts_with("backporcher-env:"))
    {
        let _ = xcmd::Cmd::new("docker", std::env::temp_dir())
            .args(["rmi", "-f", tag.trim_end_matches(':')])
            .to_std()
            .output();
    }
    if let Some(tag) = log
        .split_whitespace()
        .find(|w| w.starts_with("backporcher-env:"))
    {
        let _ = xcmd::Cmd::new("docker", std::env::temp_dir())
            .args(["rmi", "-f", tag.trim_end_matches(':')])
            .to_std()
            .output();
    }
}

/// A secret the repository grants its setup reaches setup only: setup reads it, the log shows it
/// scrubbed, and the snapshot later tasks start from keeps no trace of it.
#[tokio::test]
async fn a_granted_secret_reaches_setup_and_nothing_else() {
    if skip_docker() {
        return;
    }
    const VALUE: &str = "tok-registry-5678-abcdef";
    // Setup proves it got the exact value by its hash (the value itself appears nowhere in the
    // repository, the command or the snapshot).
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(VALUE.as_bytes()))
    };
    let config = format!(
        "[environment]\n\
         image = \"backporcher-env-python:latest\"\n\
         secrets = [\"REGISTRY_TOKEN\"]\n\
         setup_network = \"none\"\n\
         setup = [\"test \\\"$(printf %s \\\"$REGISTRY_TOKEN\\\" | sha256sum | cut -d' ' -f1)\\\" = {digest} && echo \\\"setup saw $REGISTRY_TOKEN\\\" && echo ok > /opt/env/marker\"]\n\
         env = {{ BP_TEST_RUN = \"{}\" }}\n",
        uuid::Uuid::new_v4()
    );
    let sys = FullSystem::start(
        "secrets",
        &[("README.md", "# secrets\n"), (".backporcher.toml", &config)],
        RepoSettings::default(),
    )
    .await;
    sys.c
        .store
        .set_repo_secret(sys.repo.id, "REGISTRY_TOKEN", VALUE)
        .await
        .unwrap();
    sys.model.add_script(says(
        "Classify this issue",
        &["{\"model\": \"sonnet\", \"complexity\": \"simple\"}"],
    ));
    sys.model.add_script(agent_script(
        "MARK-SECRET",
        "/workspace/NOTES.md",
        "notes\n",
        "never",
        "",
    ));
    let number = sys
        .gh
        .open_issue(
            &sys.name,
            "Notes MARK-SECRET",
            "x",
            "alice",
            &[labels::TRIGGER],
        )
        .await;
    let task = sys.task_of_issue(number).await;
    let t = sys
        .wait_for(task, "the result", Duration::from_secs(300), |t| {
            t.status.as_str() != "queued" && !t.status.is_active() && t.status.as_str() != "new"
        })
        .await;
    let log = sys.c.log_text(task, t.attempt).await;
    assert!(log.contains("setup saw [redacted]"), "{log}");
    assert!(!log.contains(VALUE), "{log}");
    let tag = log
        .split_whitespace()
        .find(|w| w.starts_with("backporcher-env:"))
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let inspect = xcmd::Cmd::new("docker", std::env::temp_dir())
        .args(["image", "inspect", &tag])
        .to_std()
        .output()
        .unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.contains("backporcher.env"), "{inspect}");
    assert!(
        !inspect.contains(VALUE),
        "the snapshot keeps no secret: {inspect}"
    );
    let _ = xcmd::Cmd::new("docker", std::env::temp_dir())
        .args(["rmi", "-f", &tag])
        .to_std()
        .output();
}

/// A secret the repository's file grants but nobody set ends the task before any setup runs,
/// saying which secret and how to set it.
#[tokio::test]
async fn a_granted_secret_nobody_set_ends_the_task_naming_it() {
    if skip_docker() {
        return;
    }
    let config = "[environment]\n\
                  image = \"backporcher-env-python:latest\"\n\
                  secrets = [\"MISSING_TOKEN\"]\n\
                  setup = [\"echo never\"]\n";
    let sys = FullSystem::start(
        "nosecret",
        &[
            ("README.md", "# no secret\n"),
            (".backporcher.toml", config),
        ],
        RepoSettings::default(),
    )
    .await;
    sys.model.add_script(says(
        "Classify this issue",
        &["{\"model\": \"sonnet\", \"complexity\": \"simple\"}"],
    ));
    let number = sys
        .gh
        .open_issue(&sys.name, "Anything", "x", "alice", &[labels::TRIGGER])
        .await;
    let task = sys.task_of_issue(number).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let t = loop {
        let t = sys.c.store.task(task).await.unwrap();
        if t.status.is_terminal() {
            break t;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {}", t.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(t.terminal_reason.0, Some(TerminalReason::SetupFailed));
    let error = t.error.unwrap_or_default();
    assert!(
        error.contains("`MISSING_TOKEN`") && error.contains("/secrets/MISSING_TOKEN"),
        "{error}"
    );
    let log = sys.c.log_text(task, t.attempt).await;
    assert!(!log.contains("$ echo never"), "no setup ran: {log}");
}
