//! Runner execution benchmarks: how long from a lease until the agent runs in its container
//! (warm mirror, image present), and what a task checkout costs on a large repository (mirror +
//! local checkout against a fresh clone).
//!
//! `cargo bench -p e2e --bench sandbox -- [--tasks 10] [--files 20000]`. Needs Docker and the
//! agent image (`deploy/agent/build-offline.sh`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::store::Note;
use e2e::harness::{
    Options, TestController, enroll, fixture_repo, free_port, spawn_runner_with, state_dir,
};
use runner::gateway::Credential;
use runner::sandbox_executor::ExecConfig;
use runner::task::TaskSpec;
use runner::workspace::Workspaces;
use sim::model::{ModelSim, Script};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p) as usize]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let tasks = arg("--tasks", 10);
    lease_to_agent(
        tasks,
        "the agent image",
        vec![("README.md".into(), "hello\n".into())],
    )
    .await;
    if arg("--environments", 1) == 1 {
        // Real projects in their own environments: setup once (the cold start), then warm starts.
        let run = uuid::Uuid::new_v4();
        let mut six = e2e::sources::files_of(&e2e::sources::pypi_sdist("six", "1.16.0"));
        six.push((
            ".backporcher.toml".into(),
            format!(
                "[environment]\nimage = \"backporcher-env-python:latest\"\n\
                 setup = [\"python3 -m venv /opt/env\", \"/opt/env/bin/pip install --quiet --no-cache-dir pytest\"]\n\
                 env = {{ BP_BENCH_RUN = \"{run}\" }}\n"
            ),
        ));
        lease_to_agent(tasks, "six (PyPI) in a python environment", six).await;
        let mut itoa = e2e::sources::files_of(&e2e::sources::crates_io_source("itoa", "1.0.11"));
        itoa.push((
            ".backporcher.toml".into(),
            format!(
                "[environment]\nimage = \"backporcher-env-rust:latest\"\nsetup = [\"cargo fetch\"]\n\
                 env = {{ CARGO_HOME = \"/opt/env/cargo\", BP_BENCH_RUN = \"{run}\" }}\n"
            ),
        ));
        lease_to_agent(tasks, "itoa (crates.io) in a rust environment", itoa).await;
    }
    checkout_cost(arg("--files", 20_000)).await;
}

async fn lease_to_agent(tasks: usize, label: &str, files: Vec<(String, String)>) {
    let c = TestController::start(Options {
        lease: Duration::from_secs(60),
        heartbeat: Duration::from_secs(5),
        ..Options::default()
    })
    .await;
    let sim = ModelSim::new(Some("k".into()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_url = format!("http://{}", l.local_addr().unwrap());
    sim.serve(l);
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let origin = fixture_repo(&files);
    let repo = c
        .store
        .add_repo(&controller::store::repos::NewRepo {
            name: format!("bench/warm{}", uuid::Uuid::new_v4().simple()),
            clone_url: origin.to_string_lossy().into_owned(),
            default_branch: "main".into(),
        })
        .await
        .unwrap();
    let (id, dir) = enroll(&c, "bench-runner", &[]).await;
    let exec = runner::start::executor(runner::start::Setup {
        name: "bench-runner".into(),
        image: None,
        model_api: sim_url.clone(),
        credential: Credential::ApiKey("k".into()),
        openai: None,
        exec: ExecConfig {
            agent_timeout: Duration::from_secs(120),
            stall_timeout: Duration::from_secs(120),
            verify_timeout: Duration::from_secs(60),
            max_verify_fixes: 0,
            ..ExecConfig::new(dir.clone(), free_port())
        },
    })
    .await
    .expect("docker, the agent image, and the executor starts");
    let runner = spawn_runner_with(id, &dir, Arc::new(exec), 1);
    let mut cold = None;
    let mut to_running = Vec::new();
    let mut to_agent = Vec::new();
    let mut total = Vec::new();
    // One warm-up task (mirror clone), then the measured ones.
    for i in 0..=tasks {
        let marker = format!("[MARK-BENCH-{i}]");
        sim.add_script(Script::writes(
            &marker,
            &format!("/workspace/f{i}.txt"),
            "x\n",
        ));
        let mut nt = controller::store::tasks::NewTask::for_issue(
            repo.id,
            0,
            &format!("Bench {marker}"),
            "write a file",
        );
        nt.issue_number = None;
        let t = c.store.create_task(&nt).await.unwrap();
        let before = sim.received().len();
        c.store
            .triage(t.id, &Default::default(), &Note::new("bench", "triaged"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = c.store.task(t.id).await.unwrap().status;
            if s.as_str() == "pushing" || s.is_terminal() {
                break;
            }
            assert!(Instant::now() < deadline, "task {} stuck", t.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let events = c.store.timeline(t.id).await.unwrap();
        let at = |to: &str| {
            events
                .iter()
                .find(|e| e.to_status == to)
                .map(|e| e.at.timestamp_millis())
                .expect("event")
        };
        let leased = at("leased");
        let first_call = sim.received()[before..]
            .iter()
            .map(|r| r.at_ms)
            .min()
            .expect("a model call");
        if i == 0 {
            cold = Some((first_call - leased) as f64);
            continue;
        }
        to_running.push((at("running") - leased) as f64);
        to_agent.push((first_call - leased) as f64);
        total.push((at("pushing") - leased) as f64);
    }
    println!("## Lease to agent: {label} ({tasks} tasks after a first one)\n");
    println!(
        "first task (mirror clone, environment setup and snapshot if any): lease → the agent's first model call {:.0} ms\n",
        cold.unwrap_or_default()
    );
    println!("| step | p50 ms | p90 ms | max ms |\n|---|---:|---:|---:|");
    for (label, v) in [
        (
            "lease → the runner took it (`running` reported)",
            &to_running,
        ),
        ("lease → the agent's first model call", &to_agent),
        ("lease → result stored (`pushing`)", &total),
    ] {
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} |",
            median(v.clone()),
            pct(v.clone(), 0.9),
            pct(v.clone(), 1.0)
        );
    }
    println!();
    runner.stop().await.unwrap();
    c.stop().await;
}

async fn checkout_cost(files: usize) {
    // A large repository: `files` files over 200 directories, 20 commits.
    let origin = fixture_repo(&[("README.md", "big\n")]);
    let seed = state_dir("big-seed");
    let git = |cwd: &std::path::Path, args: &[&str]| {
        let out = xcmd::Cmd::new("git", cwd)
            .args(["-c", "user.name=B", "-c", "user.email=b@localhost"])
            .args(args)
            .to_std()
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&seed, &["clone", "--quiet", origin.to_str().unwrap(), "w"]);
    let w = seed.join("w");
    for round in 0..20 {
        for i in (round..files).step_by(20) {
            let d = w.join(format!("dir{:03}", i % 200));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join(format!("file{i}.rs")),
                format!("// file {i} round {round}\n{}\n", "fn f() {}\n".repeat(40)),
            )
            .unwrap();
        }
        git(&w, &["add", "-A"]);
        git(&w, &["commit", "--quiet", "-m", &format!("round {round}")]);
    }
    git(&w, &["push", "--quiet", "origin", "HEAD:main"]);
    let size = xcmd::Cmd::new("du", "/")
        .args(["-sm", origin.to_str().unwrap()])
        .to_std()
        .output()
        .unwrap();
    let mb = String::from_utf8_lossy(&size.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned();
    let mut fresh = Vec::new();
    let mut cleanup = Vec::new();
    for i in 0..5 {
        let dir = state_dir(&format!("fresh{i}"));
        let t0 = Instant::now();
        git(
            &dir,
            &[
                "clone",
                "--quiet",
                "--no-local",
                &format!("file://{}", origin.display()),
                "repo",
            ],
        );
        fresh.push(t0.elapsed().as_secs_f64() * 1000.0);
        cleanup.push(dir);
    }
    let ws = Workspaces::new(state_dir("mirrors"));
    let spec = TaskSpec {
        repo: "bench/big".into(),
        clone_url: origin.to_string_lossy().into_owned(),
        default_branch: "main".into(),
        title: "bench".into(),
        branch: Some("backporcher/7-t".into()),
        ..TaskSpec::default()
    };
    let t0 = Instant::now();
    ws.mirror(&spec).await.unwrap();
    let first_mirror = t0.elapsed().as_secs_f64() * 1000.0;
    let mut warm = Vec::new();
    for i in 0..5 {
        let dir = state_dir(&format!("warm{i}")).join("repo");
        let t0 = Instant::now();
        ws.checkout(&spec, i, &dir).await.unwrap();
        warm.push(t0.elapsed().as_secs_f64() * 1000.0);
        cleanup.push(dir.parent().unwrap().to_owned());
    }
    // Deleted only at the end: on this machine's ext4 (mounted with `discard`), deleting a large
    // tree slows file creation for a while afterwards and would distort the next measurement.
    for d in cleanup {
        let _ = std::fs::remove_dir_all(d);
    }
    println!("## Task checkout on a large repository ({files} files, 20 commits, {mb} MB bare)\n");
    println!("| method | median ms |\n|---|---:|");
    println!(
        "| fresh clone over the git protocol (`git clone --no-local file://…`) | {:.0} |",
        median(fresh)
    );
    println!("| first mirror (`git clone --mirror`, once per runner host) | {first_mirror:.0} |");
    println!(
        "| warm mirror: fetch + local checkout + hand to the sandbox user | {:.0} |",
        median(warm)
    );
}
