//! The real runner daemon as its own process, for tests that must kill, freeze or cut off a
//! runner. Usage: `e2e-runner <state-dir> <record-file> <capacity>`. The executor is the
//! scripted one ([`e2e::executor::ScriptExecutor`]), or with `E2E_EXECUTOR=paced` the paced one
//! of the multi-host rig ([`e2e::chaos::PacedExecutor`]: `E2E_AGENT_MS` of work in
//! `E2E_AGENT_LINES` log lines, then a commit). `BACKPORCHER_CONTROLLERS` lists the
//! controller's other replicas (comma-separated), as for the real runner.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    e2e::harness::init();
    let mut args = std::env::args().skip(1);
    let state_dir = PathBuf::from(args.next().expect("state dir"));
    let record = PathBuf::from(args.next().expect("record file"));
    let capacity: u32 = args.next().and_then(|c| c.parse().ok()).unwrap_or(1);
    let mut identity = runner::identity::Identity::load(&state_dir)?;
    identity.replicas = std::env::var("BACKPORCHER_CONTROLLERS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let env_num = |k: &str, default: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let executor: Arc<dyn runner::executor::Executor> =
        match std::env::var("E2E_EXECUTOR").as_deref() {
            Ok("paced") => {
                let work = state_dir.join("work");
                std::fs::create_dir_all(&work)?;
                Arc::new(e2e::chaos::PacedExecutor::new(
                    work,
                    record,
                    Duration::from_millis(env_num("E2E_AGENT_MS", 3000)),
                    env_num("E2E_AGENT_LINES", 10) as u32,
                ))
            }
            _ => Arc::new(e2e::executor::ScriptExecutor::new(record)),
        };
    let config = runner::daemon::Config {
        state_dir,
        capacity,
        labels: vec![],
    };
    runner::daemon::run(
        config,
        identity,
        executor,
        runner::daemon::Control::default(),
    )
    .await
}
