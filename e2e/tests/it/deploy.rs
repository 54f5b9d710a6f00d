//! The deployment files: the compose file validates with the Compose tool, and refuses to start
//! without the database password rather than running with an empty one.

use std::path::Path;

fn compose(args: &[&str], env: &[(&str, &str)]) -> Option<std::process::Output> {
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
