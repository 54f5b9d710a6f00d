//! The controller's pipeline stages after a runner delivered its result: push the bundle and open
//! the PR, have the reviewer look at the diff, watch CI, merge — each a work item taken from the
//! store ([`crate::store::stages`]), never a loop that sleeps inside one task.
//!
//! A stage handler does one step and returns; the task's new status schedules the next stage (a
//! database trigger), and a stage that must wait (CI pending, a rate limit, GitHub down) is put
//! back with a delay. Several controller replicas can run this: a stage lease keeps a task's
//! stage with one of them at a time.

pub mod dependencies;
pub mod feedback;
pub mod review;
mod stages;
pub mod triage;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::forge::Forge;
use crate::forge::git::Pusher;
use crate::loops::{LoopCtx, Next, every};
use crate::store::stages::STAGE_STATUSES;
use crate::store::wake::Channel;
use crate::store::{Store, Task};

pub use crate::config::PipelineConfig;
pub use review::{ReviewInput, Reviewer, Verdict};

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
}

/// Runs the stages until `shutdown`, woken by `bp_stage` with a sweep backstop (nothing runs
/// without GitHub).
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    let Some(forge) = ctx.forge.clone() else {
        return;
    };
    let reviewer: Arc<dyn Reviewer> = match &ctx.llm {
        Some(m) => Arc::new(review::ModelReviewer {
            client: m.clone(),
            model: ctx.config.review_model.clone(),
        }),
        None => Arc::new(review::NoReviewer),
    };
    let pipeline = Pipeline {
        store: ctx.store.clone(),
        forge,
        pusher: crate::forge::git::Pusher::new(&ctx.config.data_dir.join("forge")),
        reviewer,
        config: ctx.config.pipeline.clone(),
    };
    let wake = ctx.fanout.wake(Channel::Stage);
    every(
        "stages",
        vec![wake],
        pipeline.config.sweep,
        shutdown,
        || {
            let p = pipeline.clone();
            async move {
                Ok(if p.run_due().await? > 0 {
                    Next::Again
                } else {
                    Next::Wait
                })
            }
        },
    )
    .await;
}
