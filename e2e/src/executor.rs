//! An executor for protocol tests, scripted by the task title:
//! - `sleep:<ms>`: works that long (stopping early on cancel), then succeeds;
//! - `logs:<n>[:<ms>]`: writes `n` numbered lines (spread over `ms`), then succeeds;
//! - `forever`: works until cancelled;
//! - `fail`: the agent fails;
//! - `bundle:<text>`: succeeds with `text` as the result bundle;
//! - `context`: logs how many retry-context entries it was given and the first one's kind;
//! - `bigbundle:<MiB>`: succeeds with a bundle of that many mebibytes.
//!
//! Every run is appended to a shared file (`task attempt pid`), so tests can count executions
//! across runner processes; every run's end to `<runs file>.ended` (`task attempt pid outcome`),
//! so tests can tell when an attempt stopped working.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use runner::executor::{Executor, TaskContext};
use runner::task::{ExecResult, Outcome, Usage};

/// The scripted executor.
#[derive(Debug, Clone)]
pub struct ScriptExecutor {
    /// File every run is recorded in.
    pub runs_file: PathBuf,
}

impl ScriptExecutor {
    /// Records runs in `runs_file`.
    pub fn new(runs_file: PathBuf) -> Self {
        Self { runs_file }
    }

    /// Runs recorded so far: (task, attempt, pid).
    pub fn runs(&self) -> Vec<(i64, i32, u32)> {
        records(&self.runs_file)
            .into_iter()
            .map(|(task, attempt, pid, _)| (task, attempt, pid))
            .collect()
    }

    /// Waits up to `within` for process `pid`'s run to end; how long that took and its outcome.
    /// Panics, saying `what`, when it has not ended by then.
    pub async fn wait_ended(&self, pid: u32, within: Duration, what: &str) -> (Duration, String) {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(end) = self.ended().into_iter().find(|r| r.2 == pid) {
                return (t0.elapsed(), end.3);
            }
            assert!(
                t0.elapsed() < within,
                "{what}: not within {within:?}; ended so far: {:?}",
                self.ended()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The lines of a record, `task attempt pid [word]`, that parse.
fn records(path: &std::path::Path) -> Vec<(i64, i32, u32, Option<String>)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next().map(str::to_owned),
            ))
        })
        .collect()
}

/// Appends `line` to the record at `path` (shared by runner processes; a line per write).
pub fn append_line(path: &std::path::Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

async fn pause(ctx: &TaskContext, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = ctx.cancelled().cancelled() => false,
    }
}

#[async_trait::async_trait]
impl Executor for ScriptExecutor {
    fn backends(&self) -> Vec<String> {
        vec!["script".into()]
    }

    async fn run(&self, ctx: TaskContext) -> ExecResult {
        let lease = ctx.assignment.lease.clone();
        let result = self.script(ctx).await;
        append_line(
            &self.runs_file.with_extension("ended"),
            &format!(
                "{} {} {} {:?}",
                lease.task_id,
                lease.attempt,
                std::process::id(),
                result.outcome
            ),
        );
        result
    }
}

impl ScriptExecutor {
    /// Runs that ended so far: (task, attempt, pid, outcome).
    pub fn ended(&self) -> Vec<(i64, i32, u32, String)> {
        records(&self.runs_file.with_extension("ended"))
            .into_iter()
            .filter_map(|(task, attempt, pid, outcome)| Some((task, attempt, pid, outcome?)))
            .collect()
    }

    async fn script(&self, ctx: TaskContext) -> ExecResult {
        let lease = ctx.assignment.lease.clone();
        append_line(
            &self.runs_file,
            &format!("{} {} {}", lease.task_id, lease.attempt, std::process::id()),
        );
        let title = ctx.assignment.spec.title.clone();
        let mut parts = title.split(':');
        let verb = parts.next().unwrap_or_default();
        let arg = |p: Option<&str>| p.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let mut result = ExecResult::new(Outcome::Succeeded);
        result.usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cost_microusd: 42,
            ..Usage::default()
        };
        match verb {
            "sleep" => {
                if !pause(&ctx, Duration::from_millis(arg(parts.next()))).await {
                    return ExecResult::new(Outcome::Canceled);
                }
            }
            "logs" => {
                let n = arg(parts.next());
                let spread = Duration::from_millis(arg(parts.next()));
                let step = (n / 100).max(1);
                for i in 0..n {
                    ctx.log("stdout", format!("line {i}\n").as_bytes());
                    if i % step == step - 1 && !spread.is_zero() && !pause(&ctx, spread / 100).await
                    {
                        return ExecResult::new(Outcome::Canceled);
                    }
                }
            }
            "forever" => {
                ctx.cancelled().cancelled().await;
                return ExecResult::new(Outcome::Canceled);
            }
            "fail" => {
                result = ExecResult::new(Outcome::AgentFailed);
                result.error = Some("the script said fail".into());
            }
            "bigbundle" => {
                let mib = arg(parts.next()) as usize;
                result.bundle = Some(vec![b'x'; mib << 20]);
                result.head_sha = Some("0123456789abcdef0123456789abcdef01234567".into());
            }
            "context" => {
                let entries = ctx
                    .assignment
                    .spec
                    .retry_context
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let first = entries
                    .first()
                    .and_then(|e| e["kind"].as_str())
                    .unwrap_or("none")
                    .to_owned();
                ctx.log(
                    "stdout",
                    format!("retry context: {} entries, first {first}\n", entries.len()).as_bytes(),
                );
            }
            "navigation" => {
                let off = ctx.assignment.spec.navigation_off;
                ctx.log(
                    "stdout",
                    format!("navigation: {}\n", if off { "off" } else { "on" }).as_bytes(),
                );
            }
            "bundle" => {
                result.bundle = Some(parts.collect::<Vec<_>>().join(":").into_bytes());
                result.head_sha = Some("0123456789abcdef0123456789abcdef01234567".into());
            }
            _ => {
                result = ExecResult::new(Outcome::AgentFailed);
                result.error = Some(format!("unknown script `{title}`"));
            }
        }
        result
    }
}
