//! The cleanup sweep: what ended tasks leave on GitHub — an open PR, a task branch — is dealt
//! with by policy ([`CleanupPolicy`]): a failed task's PR is closed and its branch deleted some
//! days after it failed (so a person can still look), a canceled task's right away at the cancel
//! ([`crate::forge::milestones`]) with the sweep catching stragglers, and a merged task's branch,
//! deleted at the merge, is checked gone. One replica sweeps at a time ([`crate::loops::lead`]),
//! every `interval`; `POST /api/cleanup` runs the same pass on demand ([`sweep`]). Each task is
//! marked swept once dealt with, and again only if it is requeued and ends anew; every GitHub
//! call here is idempotent, so a pass cut short is simply repeated.

use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::forge::Forge;
use crate::loops::{Leading, LoopCtx, Next, every, lead, singleton};
pub use crate::store::cleanup::CleanupPolicy;
use crate::store::cleanup::{Leftover, Sweep};
use crate::store::{RepoId, Status, Store};

/// Tasks looked at per pass.
pub const BATCH: i64 = 100;

/// What the sweep did to one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    /// The task.
    pub task: crate::store::TaskId,
    /// `owner/name`.
    pub repo: String,
    /// How it ended.
    pub status: Status,
    /// The PR it closed (an open one only).
    pub pr_closed: Option<i64>,
    /// The branch it deleted (or found gone).
    pub branch_deleted: Option<String>,
    /// Why the task could not be swept this time (it is tried again next pass).
    pub error: Option<String>,
}

/// One pass: the leftovers of ended tasks (of `repo`, if given) past their age under `ages`, at
/// most [`BATCH`] of them.
pub async fn sweep(
    store: &Store,
    forge: &dyn Forge,
    ages: &Sweep,
    repo: Option<RepoId>,
) -> crate::store::Result<Vec<Swept>> {
    let mut out = Vec::new();
    for left in store.leftovers(ages, repo, BATCH).await? {
        let mut done = Swept {
            task: left.id,
            repo: left.repo.clone(),
            status: left.status.parse().unwrap_or(Status::Failed),
            pr_closed: None,
            branch_deleted: None,
            error: None,
        };
        match sweep_one(forge, &left, &mut done).await {
            Ok(()) => store.mark_swept(left.id).await?,
            Err(e) => {
                tracing::warn!(task = left.id, error = %e, "cleanup: cannot sweep the task now; trying again next pass");
                done.error = Some(e.to_string());
            }
        }
        out.push(done);
    }
    Ok(out)
}

async fn sweep_one(
    forge: &dyn Forge,
    left: &Leftover,
    done: &mut Swept,
) -> crate::forge::Result<()> {
    if left.status != Status::Merged.as_str()
        && let Some(n) = left.pr_number
    {
        let pr = forge.pull(&left.repo, n).await?;
        if pr.state == "open" && !pr.merged {
            forge.close_pull(&left.repo, n).await?;
            done.pr_closed = Some(n);
        }
    }
    if let Some(b) = left
        .branch
        .as_deref()
        .filter(|b| crate::store::tasks::is_task_branch(b, &left.default_branch))
    {
        forge.delete_branch(&left.repo, b).await?;
        done.branch_deleted = Some(b.to_owned());
    }
    Ok(())
}

/// Runs the sweep every `cleanup.interval` on the replica that leads it, until `shutdown`.
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    let Some(forge) = ctx.forge.clone() else {
        return;
    };
    let lock = Arc::new(Mutex::new(None));
    let policy = ctx.config.cleanup;
    every("cleanup", Vec::new(), policy.interval, shutdown, || {
        let (store, lock, forge) = (ctx.store.clone(), lock.clone(), forge.clone());
        async move {
            if lead(&store, singleton::CLEANUP, &mut *lock.lock().await).await? == Leading::No {
                return Ok(Next::Wait);
            }
            let swept = sweep(&store, forge.as_ref(), &policy.sweep, None).await?;
            let ok = swept.iter().filter(|s| s.error.is_none()).count();
            if !swept.is_empty() {
                tracing::info!(
                    swept = ok,
                    failed = swept.len() - ok,
                    "cleanup: ended tasks' PRs closed and branches deleted"
                );
            }
            // A full batch of successes: there may be more.
            Ok(if ok as i64 == BATCH {
                Next::Again
            } else {
                Next::Wait
            })
        }
    })
    .await;
}
