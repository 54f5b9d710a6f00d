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
