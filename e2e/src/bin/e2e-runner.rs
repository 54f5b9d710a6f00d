//! The real runner daemon with the scripted test executor, as its own process, for tests that
//! must kill a runner (`kill -9`). Usage: `e2e-runner <state-dir> <runs-file> <capacity>`.

use std::path::PathBuf;
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    e2e::harness::init();
    let mut args = std::env::args().skip(1);
    let state_dir = PathBuf::from(args.next().expect("state dir"));
    let runs = PathBuf::from(args.next().expect("runs file"));
    let capacity: u32 = args.next().and_then(|c| c.parse().ok()).unwrap_or(1);
    let identity = runner::identity::Identity::load(&state_dir)?;
    let config = runner::daemon::Config {
        state_dir,
        capacity,
        labels: vec![],
    };
    let executor = Arc::new(e2e::executor::ScriptExecutor::new(runs));
    runner::daemon::run(
        config,
        identity,
        executor,
        runner::daemon::Control::default(),
    )
    .await
}
