//! The seam between the daemon and the work: an [`Executor`] runs one leased task and reports its
//! result. The daemon owns the lease, the log shipping and the reporting; the executor only works,
//! writes logs through its [`TaskContext`], and stops when the context's cancellation fires.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::spool::Spool;
use crate::task::{Assignment, ExecResult};

/// Runs tasks.
#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Agent backends this executor offers (advertised to the controller).
    fn backends(&self) -> Vec<String>;

    /// Runs one task to its end. Must return soon after `ctx.cancelled()` fires.
    async fn run(&self, ctx: TaskContext) -> ExecResult;
}

/// What an executor gets for one task.
pub struct TaskContext {
    /// The task and its lease.
    pub assignment: Assignment,
    /// A private directory for this attempt, removed afterwards.
    pub work_dir: PathBuf,
    pub(crate) spool: Arc<Spool>,
    pub(crate) cancel: CancellationToken,
    pub(crate) report_stage: StageReport,
}

/// Tells the controller the task moved to its verify stage (`true`) or back to the agent; the
/// daemon provides it. Resolves to `false` when the lease is gone.
pub type StageReport = Arc<dyn Fn(bool) -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

impl TaskContext {
    /// Writes to the task's log (stream: `stdout`, `stderr`, `agent`, `verify`, `runner`, …).
    pub fn log(&self, stream: &str, data: &[u8]) {
        if let Err(e) = self.spool.append(stream, data) {
            tracing::warn!(task = self.assignment.lease.task_id, error = %e, "cannot spool a log write");
        }
    }

    /// Fires when the work must stop (cancel requested, lease lost, runner stopping).
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Tells the controller the task moved to its verify stage (`true`) or back to the agent.
    /// Returns `false` when the lease is gone: stop.
    pub async fn stage(&self, verifying: bool) -> bool {
        (self.report_stage)(verifying).await
    }
}
