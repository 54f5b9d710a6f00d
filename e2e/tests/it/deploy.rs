//! The deployment files: the compose file validates with the Compose tool, and refuses to start
//! without the database password rather than running with an empty one.

use std::path::Path;

fn compose(args: &[&str], env: &[(&str, &str)]) -> Option<std::process::Output> {
    compose_with(&[], args, env)
}

/// `compose` with options before the command (`--env-file`, `--profile`).
fn compose_with(
    options: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
) -> Option<std::process::Output> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (program, prefix): (&str, &[&str]) = if which("docker-compose") {
        ("docker-compose", &[])
    } else if which("docker") {
        ("docker", &["compose"])
    } else {
        return None;
    };
    let mut cmd = xcmd::Cmd::new(program, &root)
        .args(prefix)
        .args(["-f", "deploy/compose.yaml"])
        .args(options)
        .args(args);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    Some(cmd.to_std().output().unwrap())
}

fn which(p: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|d| d.join(p).exists()))
        .unwrap_or(false)
}

#[test]
fn the_compose_file_validates() {
    let Some(out) = compose(&["config", "-q"], &[("POSTGRES_PASSWORD", "example")]) else {
        eprintln!("no Compose tool installed: compose validation skipped");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = compose(&["config"], &[("POSTGRES_PASSWORD", "example")]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "postgres",
        "controller",
        "runner",
        "/var/run/docker.sock",
        "readyz",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    let out = compose(&["config", "-q"], &[]).unwrap();
    assert!(
        !out.status.success(),
        "a missing database password must be an error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("POSTGRES_PASSWORD"));
}

fn docker(args: &[&str]) -> std::process::Output {
    xcmd::Cmd::new("docker", std::env::temp_dir())
        .args(args)
        .to_std()
        .output()
        .unwrap()
}

/// The controller and runner images (built offline by `deploy/build-images.sh`, which `.ci/run`
/// runs) exist and their binaries start inside them; the controller image carries PostgreSQL for
/// the embedded default.
#[test]
fn the_offline_images_run() {
    if e2e::harness::skip_docker() {
        return;
    }
    for image in ["backporcher-controller:latest", "backporcher-runner:latest"] {
        let out = docker(&["run", "--rm", image, "--version"]);
        assert!(
            out.status.success(),
            "{image} does not run; build it with deploy/build-images.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("backporcher"),
            "{image}"
        );
    }
    let out = docker(&[
        "run",
        "--rm",
        "backporcher-controller:latest",
        "check-config",
        "--data-dir",
        "/var/lib/controller",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("no PostgreSQL binaries"), "{text}");
    assert!(text.contains("warning: no GitHub credentials"), "{text}");
}

/// A compose project brought down (volumes too) whatever the test's end.
struct Project {
    options: Vec<String>,
    env: Vec<(String, String)>,
}

impl Project {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let options: Vec<&str> = self.options.iter().map(String::as_str).collect();
        compose_with(&options, args, &env).expect("a Compose tool")
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The compose deployment starts here from the shipped file with the images built on this host
/// (no registry), with the `sims` profile and its shipped settings (`deploy/sims.env`):
/// PostgreSQL from its offline image, the controller ready on it and serving the dashboard over
/// HTTPS from its own CA (verified by name with the CA it serves), a runner container that enrolls
/// over mTLS through the published port and can run sandboxes (`backporcher-runner check` in it:
/// the engine, the agent image, the networks and firewall, and a sandbox reading a handed-over tree
/// through a bind mount the host's engine resolves); then the runner service runs, the sample
/// repository is registered through the API, and a labelled issue on the simulator becomes a
/// merged pull request through the containers (the real agent CLI in a sandbox the runner
/// container started); then down.
#[test]
fn compose_starts_from_the_shipped_file_and_its_runner_can_run_sandboxes() {
    if std::env::var("BP_SKIP_DOCKER").is_ok_and(|v| v == "1")
        || compose(&["version"], &[]).is_none()
    {
        eprintln!("no Docker or no Compose tool: compose deployment test skipped");
        return;
    }
    for image in [
        "backporcher-postgres:latest",
        "backporcher-controller:latest",
        "backporcher-runner:latest",
        "backporcher-sims:latest",
        "backporcher-agent:latest",
    ] {
        let found = xcmd::Cmd::new("docker", std::env::temp_dir())
            .args(["image", "inspect", image])
            .to_std()
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "{image} is missing: bash deploy/agent/build-offline.sh && bash deploy/build-images.sh"
        );
    }
    let state = std::env::temp_dir().join(format!("bp-compose-runner-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let (http, grpc) = (e2e::harness::free_port(), e2e::harness::free_port());
    let (sims_github, sims_model) = (e2e::harness::free_port(), e2e::harness::free_port());
    let sims = |port: u16| format!("http://host.docker.internal:{port}");
    let project = Project {
        options: ["--env-file", "deploy/sims.env", "--profile", "sims"]
            .map(String::from)
            .to_vec(),
        env: vec![
            (
                "COMPOSE_PROJECT_NAME".into(),
                format!("bptest{}", std::process::id()),
            ),
            ("POSTGRES_PASSWORD".into(), "compose-test-password".into()),
            (
                "RUNNER_STATE_DIR".into(),
                state.to_string_lossy().into_owned(),
            ),
            ("BACKPORCHER_HTTP_PORT".into(), http.to_string()),
            ("BACKPORCHER_GRPC_PORT".into(), grpc.to_string()),
            // The shipped settings name the simulators' default ports; these are free ones.
            (
                "BACKPORCHER_SIMS_GITHUB_PORT".into(),
                sims_github.to_string(),
            ),
            ("BACKPORCHER_SIMS_MODEL_PORT".into(), sims_model.to_string()),
            ("BACKPORCHER_GITHUB_API".into(), sims(sims_github)),
            ("ANTHROPIC_BASE_URL".into(), sims(sims_model)),
            ("BACKPORCHER_MODEL_API_URL".into(), sims(sims_model)),
        ],
    };
    let up = project.run(&["up", "-d", "controller", "sims"]);
    assert!(up.status.success(), "up: {}", text(&up));
    // Served over HTTPS from the controller's CA: ready, then the CA it serves verifies it for
    // the name a browser would use.
    let curl = |args: &[&str]| {
        xcmd::Cmd::new("curl", &state)
            .args(["-fsS", "--max-time", "5"])
            .args(args)
            .to_std()
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !curl(&["-k", &format!("https://127.0.0.1:{http}/readyz")])
        .status
        .success()
    {
        if std::time::Instant::now() > deadline {
            let logs = project.run(&["logs", "--no-color"]);
            panic!(
                "the controller never became ready over HTTPS:\n{}",
                text(&logs)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let ca = curl(&["-k", &format!("https://127.0.0.1:{http}/ca.pem")]);
    assert!(ca.status.success());
    std::fs::write(state.join("ca.pem"), &ca.stdout).unwrap();
    let verified = curl(&[
        "--cacert",
        "ca.pem",
        &format!("https://localhost:{http}/healthz"),
    ]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        !curl(&[&format!("http://127.0.0.1:{http}/healthz")])
            .status
            .success(),
        "no plain HTTP"
    );
    // A join ticket from the controller container; the runner container enrolls with it over
    // mTLS through the published port, checking the controller's CA against the ticket.
    let ticket = project.run(&[
        "exec",
        "-T",
        "controller",
        "backporcher-controller",
        "runner-token",
        "--data-dir",
        "/var/lib/controller",
    ]);
    assert!(ticket.status.success(), "runner-token: {}", text(&ticket));
    let ticket = String::from_utf8_lossy(&ticket.stdout).trim().to_owned();
    let joined = project.run(&[
        "run",
        "--rm",
        "--no-deps",
        "runner",
        "join",
        "--controller",
        &format!("https://localhost:{grpc}"),
        "--token",
        &ticket,
        "--name",
        "compose-runner",
    ]);
    assert!(joined.status.success(), "join: {}", text(&joined));
    assert!(
        text(&joined).contains("enrolled as runner"),
        "{}",
        text(&joined)
    );
    let checked = project.run(&[
        "run",
        "--rm",
        "--no-deps",
        "runner",
        "check",
        "--gateway-port",
        &e2e::harness::free_port().to_string(),
    ]);
    let said = text(&checked);
    assert!(
        checked.status.success(),
        "check in the runner container:\n{said}"
    );
    assert!(
        said.contains("ok    a sandbox reads a handed-over tree"),
        "{said}"
    );

    // The simulators answer (their sample repository and issues are in place).
    let sims_api = |path: &str| {
        curl(&[
            "-H",
            &format!("authorization: Bearer {}", sim::demo::GITHUB_TOKEN),
            &format!(
                "http://127.0.0.1:{sims_github}/repos/{}{path}",
                sim::demo::REPO
            ),
        ])
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !sims_api("/issues").status.success() {
        if std::time::Instant::now() > deadline {
            let logs = project.run(&["logs", "--no-color", "--tail", "40", "sims"]);
            panic!("the simulators never answered:\n{}", text(&logs));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    // The runner service runs; the sample repository is registered through the API (its clone
    // URL the address both containers reach the simulator at) and set to merge on its own.
    let up = project.run(&["up", "-d", "runner"]);
    assert!(up.status.success(), "up runner: {}", text(&up));
    let admin = project.run(&[
        "exec",
        "-T",
        "controller",
        "backporcher-controller",
        "bootstrap-admin",
        "--data-dir",
        "/var/lib/controller",
    ]);
    assert!(admin.status.success(), "bootstrap-admin: {}", text(&admin));
    let password = String::from_utf8_lossy(&admin.stdout).trim().to_owned();
    let base = format!("https://localhost:{http}");
    let login = curl(&[
        "--cacert",
        "ca.pem",
        "-c",
        "cookies",
        "-H",
        "content-type: application/json",
        "-d",
        &serde_json::json!({"username": "admin", "password": password}).to_string(),
        &format!("{base}/api/login"),
    ]);
    assert!(login.status.success(), "login: {}", text(&login));
    let me: serde_json::Value = serde_json::from_slice(&login.stdout).unwrap();
    let csrf = me["csrf_token"].as_str().unwrap().to_owned();
    let api = |method: &str, path: &str, body: serde_json::Value| {
        let out = curl(&[
            "--cacert",
            "ca.pem",
            "-b",
            "cookies",
            "-X",
            method,
            "-H",
            "content-type: application/json",
            "-H",
            &format!("x-csrf-token: {csrf}"),
            "-d",
            &body.to_string(),
            &format!("{base}{path}"),
        ]);
        assert!(out.status.success(), "{method} {path}: {}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let repo = api(
        "POST",
        "/api/repos",
        serde_json::json!({"name": "demo/widgets", "default_branch": "main",
                           "clone_url": format!("{}/demo/widgets.git", sims(sims_github))}),
    );
    api(
        "PATCH",
        &format!("/api/repos/{}", repo["id"]),
        serde_json::json!({"approval_mode": "full-auto"}),
    );

    // The poller finds the labelled sample issues; the first becomes a merged pull request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(420);
    let merged = loop {
        let pulls = sims_api("/pulls?state=closed");
        let pulls: serde_json::Value =
            serde_json::from_slice(&pulls.stdout).unwrap_or(serde_json::Value::Null);
        let merged: Vec<String> = pulls
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| !p["merged_at"].is_null())
            .map(|p| p["title"].as_str().unwrap_or_default().to_owned())
            .collect();
        if !merged.is_empty() {
            break merged;
        }
        if std::time::Instant::now() > deadline {
            let tasks = curl(&[
                "--cacert",
                "ca.pem",
                "-b",
                "cookies",
                &format!("{base}/api/tasks"),
            ]);
            let logs = project.run(&["logs", "--no-color", "--tail", "60"]);
            panic!(
                "no pull request merged through the containers; tasks: {}\nlogs:\n{}",
                text(&tasks),
                text(&logs)
            );
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    };
    assert!(
        merged
            .iter()
            .any(|t| sim::demo::SAMPLES.iter().any(|s| t.contains(s.title))),
        "{merged:?}"
    );
    eprintln!("merged through the containers: {merged:?}");
    drop(project);
    let _ = xcmd::Cmd::new("rm", std::env::temp_dir())
        .arg("-rf")
        .arg(&state)
        .to_std()
        .status();
}
