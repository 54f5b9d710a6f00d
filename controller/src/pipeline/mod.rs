//! The controller's pipeline stages after a runner delivered its result: push the bundle and open
//! the PR, have the reviewer look at the diff, watch CI, merge — each a work item taken from the
//! store ([`crate::store::stages`]), never a loop that sleeps inside one task.
//!
//! A stage handler does one step and returns; the task's new status schedules the next stage (a
//! database trigger), and a stage that must wait (CI pending, a rate limit, GitHub down) is put
//! back with a delay. Several controller replicas can run this: a stage lease keeps a task's
//! stage with one of them at a time, renewed while the step runs (so it outlasts any step's own
//! timeout) and carried from opening the PR into the review it starts.
//!
//! Every stage is bounded: the worker keeps up to `concurrency` stages in flight and takes the
//! next due one as soon as a slot frees, so a slow review, push or rate-limit wait never holds up
//! other repositories; a stage that keeps failing fails its task (`internal_error`, with the
//! error and what to do) after `stage_error_tries` tries.

mod best_of;
pub mod dependencies;
pub mod feedback;
pub mod guard;
pub mod rank;
pub mod review;
mod stages;
pub mod triage;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::forge::Forge;
use crate::forge::git::Pusher;
use crate::loops::LoopCtx;
use crate::store::stages::STAGE_STATUSES;
use crate::store::wake::Channel;
use crate::store::{Note, Store, Task, TerminalReason};

pub use crate::config::PipelineConfig;
pub use review::{ReviewEvidence, ReviewInput, Reviewer, Verdict};

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
    /// Works on every due stage once (at most `concurrency` at a time) and waits for them; returns
    /// how many ran. Tests use it to step the pipeline; the service runs [`Pipeline::work`].
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

    /// Works on due stages until `shutdown`: up to `concurrency` in flight, a free slot refilled
    /// at once; woken by `wake` (a stage became due) with the sweep as a backstop. Stages in
    /// flight at shutdown finish (each bounded by its own timeouts).
    pub async fn work(&self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let mut running: JoinSet<()> = JoinSet::new();
        loop {
            let free = self.config.concurrency.saturating_sub(running.len());
            if free > 0 {
                match self
                    .store
                    .claim_stages(STAGE_STATUSES, self.config.stage_lease, free as i64)
                    .await
                {
                    Ok(tasks) => {
                        for task in tasks {
                            let me = self.clone();
                            running.spawn(async move { me.handle(task).await });
                        }
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "could not take due stages; trying again at the next sweep"
                    ),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.config.sweep) => {}
            }
        }
        while running.join_next().await.is_some() {}
    }

    async fn handle(&self, task: Task) {
        let id = task.id;
        let status = task.status;
        let keeper = self.keep_lease(id);
        let result = stages::run(self, task.clone()).await;
        keeper.abort();
        let Err(e) = result else { return };
        let tries = task.stage_tries + 1;
        if tries >= self.config.stage_error_tries as i32 {
            self.give_up(&task, tries, &format!("{e:#}")).await;
            return;
        }
        let delay = (self.config.stage_retry_base * (1u32 << tries.clamp(0, 5) as u32))
            .min(Duration::from_secs(120));
        tracing::error!(task = id, status = %status, tries, ?delay, error = %e, "pipeline stage failed; trying again later");
        let _ = self.store.reschedule_stage(id, status, delay, true).await;
    }

    /// Fails a task whose stage failed `tries` times in a row (`internal_error`, which notifies),
    /// saying what failed and what to do.
    async fn give_up(&self, task: &Task, tries: i32, last: &str) {
        let (id, status) = (task.id, task.status);
        let error = format!(
            "the {status} stage failed {tries} times in a row; last error: {last}. Fix the cause \
             (GitHub permissions, a deleted branch or pull request, branch protection), then requeue the task"
        );
        tracing::error!(task = id, status = %status, tries, error = last, "pipeline stage keeps failing; the task fails");
        if let Err(e) = self
            .store
            .fail(
                id,
                TerminalReason::InternalError,
                &error,
                &Note::new("controller", "stage_failed"),
            )
            .await
        {
            tracing::warn!(task = id, error = %e, "could not fail the task; the stage is tried again");
            let _ = self
                .store
                .reschedule_stage(id, status, Duration::from_secs(60), false)
                .await;
        }
    }

    /// Renews the stage lease of `id` every third of its length while its step runs.
    fn keep_lease(&self, id: crate::store::TaskId) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let lease = self.config.stage_lease;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                match store.extend_stage_lease(id, lease).await {
                    Ok(true) => {}
                    // Another controller holds the task's stage now (this one's lapsed, or the
                    // task moved on to a stage another took): renewing would steal it back.
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(task = id, error = %e, "could not renew a stage lease")
                    }
                }
            }
        })
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
    pipeline.work(wake, shutdown).await;
}
