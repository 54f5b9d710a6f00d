//! Runner protocol tests: the real controller and the real runner daemon over TLS on 127.0.0.1,
//! on real PostgreSQL. Runners that must be killed run as the `e2e-runner` process; the
//! multi-host rig runs controllers and runners on hosts of their own (network namespaces).

mod browser;
mod cancel;
mod chaos;
mod codex;
mod dashboard;
mod deploy;
mod environments;
mod failures;
mod fleet;
mod hostile_text;
mod logs;
mod partition;
mod pipeline;
mod plan_gate;
mod redteam;
mod reproduce;
mod sandbox;
mod security;
mod work;

use e2e::executor::ScriptExecutor;

/// A scripted executor recording into a fresh file.
pub fn executor() -> ScriptExecutor {
    ScriptExecutor::new(e2e::harness::state_dir("runs").join("runs.txt"))
}
