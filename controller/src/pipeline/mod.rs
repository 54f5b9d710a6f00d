//! The controller's pipeline stages after a runner delivered its result: push the bundle and open
//! the PR, have the reviewer look at the diff, watch CI, merge — each a work item taken from the
//! store ([`crate::store::stages`]), never a loop that sleeps inside one task.
//!
//! A stage handler does one step and returns; the task's new status schedules the next stage (a
//! database trigger), and a stage that must wait (CI pending, a rate limit, GitHub down) is put
//! back with a delay. Several controller replicas can run this: a stage lease keeps a task's
//! stage with one of them at a time.

pub mod loops;
pub mod review;
mod stages;
pub mod triage;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::forge::Forge;
use crate::forge::git::Pusher;
use crate::store::stages::STAGE_STATUSES;
use crate::store::tasks::RetryPolicy;
use crate::store::{Store, Task};

pub use review::{ReviewInput, Reviewer, Verdict};

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Retry budgets and model escalation.
    pub retry: RetryPolicy,
    /// How often a pending CI is looked at again.
    pub ci_poll: Duration,
    /// Longest stage lease (a replica that dies mid-stage loses it after this).
    pub stage_lease: Duration,
    /// Stages worked on at once.
    pub concurrency: usize,
    /// Sweep interval when no notification arrives.
    pub sweep: Duration,
    /// Longest time a review may take before it counts as failed.
    pub review_timeout: Duration,
    /// How long triage waits after the first new task, so issues filed together are triaged
    /// together (one call, dependencies between them).
    pub triage_debounce: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            ci_poll: Duration::from_secs(10),
            stage_lease: Duration::from_secs(120),
            concurrency: 8,
            sweep: Duration::from_secs(1),
            review_timeout: Duration::from_secs(300),
            triage_debounce: Duration::from_millis(300),
        }
    }
}

/// What the stages need.
#[derive(Clone)]
pub struct Pipeline {
    /// The store.
    pub store: Store,
    /// GitHub.
    pub forge: Arc<dyn Forge>,
    /// Pushes bundles.
    pub pusher: Pusher,
    /// The reviewer.
    pub reviewer: Arc<dyn Reviewer>,
    /// Settings.
    pub config: PipelineConfig,
}

impl Pipeline {
    /// Works on every due stage once (at most `concurrency` at a time); returns how many ran.
    pub async fn run_due(&self) -> anyhow::Result<usize> {
        let tasks = self
            .store
            .claim_stages(
                STAGE_STATUSES,
                self.config.stage_lease,
                self.config.concurrency as i64,
            )
            .await?;
        let n = tasks.len();
        let mut set = JoinSet::new();
        for task in tasks {
            let me = self.clone();
            set.spawn(async move { me.handle(task).await });
        }
        while set.join_next().await.is_some() {}
        Ok(n)
    }

    async fn handle(&self, task: Task) {
        let id = task.id;
        let status = task.status;
        if let Err(e) = stages::run(self, task).await {
            tracing::error!(task = id, status = %status, error = %e, "pipeline stage failed; retrying later");
            let _ = self
                .store
                .reschedule_stage(id, status, Duration::from_secs(5), true)
                .await;
        }
    }

    /// Runs stages until `shutdown`, woken by `bp_stage` notifications with a sweep backstop.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut waker = self.store.waker(&["bp_stage"]).await.ok();
        loop {
            let ran = match self.run_due().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming pipeline stages failed");
                    0
                }
            };
            if ran > 0 {
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            let sweep = self.config.sweep;
            let wait = crate::store::wake::pause(&mut waker, sweep);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wait => {}
            }
        }
    }
}
