//! Runner protocol tests: the real controller and the real runner daemon over TLS on 127.0.0.1,
//! on real PostgreSQL. Runners that must be killed run as the `e2e-runner` process.

mod cancel;
mod failures;
mod logs;
mod security;
mod work;

use std::time::Duration;

use e2e::executor::ScriptExecutor;
use e2e::harness::{TestController, eventually};

/// A scripted executor recording into a fresh file.
pub fn executor() -> ScriptExecutor {
    ScriptExecutor::new(e2e::harness::state_dir("runs").join("runs.txt"))
}

/// Waits until `task` has status `status`.
pub async fn wait_status(c: &TestController, task: i64, status: &str, timeout: Duration) {
    let store = c.store.clone();
    eventually(
        timeout,
        &format!("task {task} to become {status}"),
        move || {
            let store = store.clone();
            async move {
                store
                    .task(task)
                    .await
                    .map(|t| t.status.as_str() == status)
                    .unwrap_or(false)
            }
        },
    )
    .await;
}
