//! Runner protocol tests: the real controller and the real runner daemon over TLS on 127.0.0.1,
//! on real PostgreSQL. Runners that must be killed run as the `e2e-runner` process.

mod browser;
mod cancel;
mod deploy;
mod failures;
mod hostile_text;
mod logs;
mod pipeline;
mod redteam;
mod sandbox;
mod security;
mod work;

use std::time::Duration;

use e2e::executor::ScriptExecutor;
use e2e::harness::TestController;

/// A scripted executor recording into a fresh file.
pub fn executor() -> ScriptExecutor {
    ScriptExecutor::new(e2e::harness::state_dir("runs").join("runs.txt"))
}

/// Waits until `task` has status `status`; on timeout, fails with its timeline and log tail.
pub async fn wait_status(c: &TestController, task: i64, status: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if c.store
            .task(task)
            .await
            .map(|t| t.status.as_str() == status)
            .unwrap_or(false)
        {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let t = c.store.task(task).await.unwrap();
            let timeline: Vec<String> = c
                .store
                .timeline(task)
                .await
                .unwrap()
                .iter()
                .map(|e| {
                    format!(
                        "{} -> {} ({}, {})",
                        e.from_status.clone().unwrap_or_default(),
                        e.to_status,
                        e.reason,
                        e.actor
                    )
                })
                .collect();
            let mut logs = String::new();
            for attempt in 1..=t.attempt {
                for (_, stream, data) in c.store.log_chunks(task, attempt).await.unwrap() {
                    logs.push_str(&format!(
                        "[{attempt} {stream}] {}",
                        String::from_utf8_lossy(&data)
                    ));
                }
            }
            let n = logs.chars().count();
            let tail: String = if n > 8000 {
                let head: String = logs.chars().take(4000).collect();
                let end: String = logs.chars().skip(n - 4000).collect();
                format!("{head}\n[…]\n{end}")
            } else {
                logs
            };
            panic!(
                "timed out after {timeout:?} waiting for task {task} to become {status}; it is {} ({:?}, error {:?})\ntimeline:\n{}\nlog tail:\n{tail}",
                t.status,
                t.terminal_reason.0,
                t.error,
                timeline.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
