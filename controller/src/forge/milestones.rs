//! GitHub milestones derived from the timeline: labels and short issue comments follow the task's
//! events, in order, exactly once each.
//!
//! Every transition writes a `task_events` row in its own transaction (a database trigger), so
//! nothing can change a task without leaving an event; this worker walks each issue task's events
//! past its cursor (`forge_event_id`) and applies what each one means on GitHub. A transient
//! failure (rate limit, outage) stops the task's walk and leaves the cursor, so the same effect is
//! tried again later; a permanent one (the issue was deleted) is logged and skipped.
//!
//! Replicas: a task's walk is claimed first ([`crate::store::work`]), its cursor read again under
//! the claim, and the claim renewed before each event's effect, so of any number of controllers
//! one walks a task at a time and each comment is posted once.
//!
//! | event                    | labels                                   | comment                                             |
//! |--------------------------|------------------------------------------|-----------------------------------------------------|
//! | created                  | + in-progress, − backporcher             | accepted                                            |
//! | → pr_open                |                                          | PR opened                                           |
//! | → plan_hold              |                                          | the plan (fenced), how to decide, its due time      |
//! | plan_hold → queued       |                                          | who approved it (or the policy's note)              |
//! | → approval_hold          |                                          | waiting for a human; says when no CI check appeared |
//! | → merged                 | + done, − in-progress; issue closed      | merged                                              |
//! | → failed                 | + failed, − in-progress                  | why, what to do                                     |
//! | → canceled               | − in-progress; PR closed, branch deleted | canceled                                            |
//! | failed/canceled → queued | + in-progress, − failed                  |                                                     |
//! | merged → queued (guard)  | + in-progress, − done                    | the merge broke CI, reverted in PR …, re-queued      |
//! | merged → failed (guard)  | as → failed                              | as → failed (the error names the revert)            |

use tokio_util::sync::CancellationToken;

use super::{Forge, ForgeError, labels};
use crate::loops::{LoopCtx, Next, every};
use crate::store::lifecycle::TaskEvent;
use crate::store::wake::Channel;
use crate::store::work::{CLAIM_TTL, Work};
use crate::store::{Status, Store, Task};

/// Applies every pending milestone once; returns how many events were applied.
pub async fn sync_once(store: &Store, forge: &dyn Forge) -> anyhow::Result<usize> {
    let pending = store.forge_pending(100).await?;
    let keys: Vec<i64> = pending.iter().map(|(t, _, _)| *t).collect();
    let mut applied = 0;
    let claimed = store.claim_work(Work::Forge, &keys, CLAIM_TTL).await?;
    let _kept = store.keep_work(Work::Forge, &claimed, CLAIM_TTL);
    for task_id in claimed {
        let walked = walk(store, forge, task_id).await;
        store.release_work(Work::Forge, task_id).await?;
        applied += walked?;
    }
    Ok(applied)
}

/// One claimed task's walk from its cursor, read again now (another replica may have walked it
/// since the candidates were listed).
async fn walk(store: &Store, forge: &dyn Forge, task_id: i64) -> anyhow::Result<usize> {
    let Some((cursor, seq)) = store.forge_cursor(task_id).await? else {
        return Ok(0);
    };
    let task = store.task(task_id).await?;
    let repo = store.repo(task.repo_id).await?;
    let Some(issue) = task.issue_number else {
        store.mark_forge_synced(task_id, cursor, Some(seq)).await?;
        return Ok(0);
    };
    let events = store.events_after(task_id, cursor).await?;
    let mut applied = 0;
    for ev in &events {
        if !store.renew_work(Work::Forge, task_id, CLAIM_TTL).await? {
            tracing::warn!(
                task = task_id,
                "the milestone claim ran out; another controller walks this task"
            );
            return Ok(applied);
        }
        // Plan gate: the plan an event about it shows (read before the effect; it is kept).
        let plan = match ev.to_status.as_str() {
            "plan_hold" => store.plan(task_id).await?,
            _ => None,
        };
        match apply(
            forge,
            &repo.name,
            &repo.default_branch,
            issue,
            &task,
            ev,
            plan.as_ref(),
        )
        .await
        {
            Ok(()) => applied += 1,
            Err(e) if e.is_transient() => {
                tracing::warn!(task = task_id, event = ev.id, error = %e, "GitHub milestone deferred");
                return Ok(applied);
            }
            Err(e) => {
                tracing::warn!(task = task_id, event = ev.id, error = %e, "GitHub milestone skipped");
            }
        }
        store.mark_forge_synced(task_id, ev.id, None).await?;
    }
    let last = events.last().map(|e| e.id).unwrap_or(cursor);
    store.mark_forge_synced(task_id, last, Some(seq)).await?;
    Ok(applied)
}

async fn apply(
    forge: &dyn Forge,
    repo: &str,
    default_branch: &str,
    issue: i64,
    task: &Task,
    ev: &TaskEvent,
    plan: Option<&crate::store::plans::Plan>,
) -> Result<(), ForgeError> {
    let pr = || match (&task.pr_number, &task.pr_url) {
        (Some(n), Some(u)) => format!("#{n} ({u})"),
        (Some(n), None) => format!("#{n}"),
        _ => "its pull request".into(),
    };
    // Statuses the store does not know (a newer schema) are no milestone.
    let from = ev.from_status.as_deref().map(str::parse::<Status>);
    let Ok(to) = ev.to_status.parse::<Status>() else {
        return Ok(());
    };
    let from = match from {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => return Ok(()),
    };
    match (from, to) {
        // The post-merge guard's and the merge queue's notes on a task keep its status: no
        // milestone of their own.
        (Some(f), t)
            if f == t
                && (ev.reason.starts_with("guard_")
                    || ev.reason.starts_with("merge_queue_")
                    || ev.reason == "branch_updated") =>
        {
            Ok(())
        }
        (None, _) => {
            forge
                .add_labels(repo, issue, &[labels::IN_PROGRESS])
                .await?;
            forge.remove_label(repo, issue, labels::TRIGGER).await?;
            forge
                .comment(
                    repo,
                    issue,
                    &format!(
                        "Backporcher accepted this issue as task {}. Progress shows in the dashboard; comment `@backporcher` on its pull request to ask for changes.",
                        task.id
                    ),
                )
                .await
        }
        (Some(Status::Pushing), Status::PrOpen) => {
            forge
                .comment(repo, issue, &format!("Opened pull request {}.", pr()))
                .await
        }
        (Some(_), Status::PlanHold) => {
            let Some(plan) = plan else { return Ok(()) };
            // The plan is the agent's text: shown in a fence, so nothing in it renders as a
            // mention, a link or markup on the issue.
            let text = textguard::github_block(&plan.text);
            let blast = plan
                .blast_radius
                .map(|b| format!(" Predicted blast radius: {b} files."))
                .unwrap_or_default();
            let discarded = if plan.discarded.is_empty() {
                String::new()
            } else {
                format!(
                    " The plan run tried to change {} path(s) in its read-only workspace; nothing of it was kept.",
                    plan.discarded.len()
                )
            };
            forge
                .comment(
                    repo,
                    issue,
                    &format!(
                        "Task {} proposes this plan and waits for a decision before it changes anything.{blast}{discarded}\n\n{text}\n\n`backporcher plan approve {}`, `backporcher plan edit {}` or `backporcher plan reject {} --reason …` (or the dashboard). Undecided, it is denied at {}.",
                        task.id, task.id, task.id, task.id, plan.due_at.format("%Y-%m-%d %H:%M UTC")
                    ),
                )
                .await
        }
        (Some(Status::PlanHold), Status::Queued) => {
            let note = ev
                .data
                .as_ref()
                .and_then(|d| d.0.get("note").and_then(|n| n.as_str()).map(str::to_owned));
            let edited = ev
                .data
                .as_ref()
                .and_then(|d| d.0.get("edited").and_then(|e| e.as_bool()))
                .unwrap_or(false);
            forge
                .comment(
                    repo,
                    issue,
                    &match note {
                        Some(n) => format!("The plan of task {} was {}.", task.id, textguard::clean_plain(&n)),
                        None => format!(
                            "The plan of task {} was approved{} by {}; the task now implements it.",
                            task.id,
                            if edited { " as edited" } else { "" },
                            ev.actor
                        ),
                    },
                )
                .await
        }
        (Some(_), Status::ApprovalHold) if ev.reason == "no_checks" => {
            let grace = ev
                .data
                .as_ref()
                .and_then(|d| d.0.get("grace_secs").and_then(|g| g.as_i64()))
                .map(|g| format!(" within {g} s"))
                .unwrap_or_default();
            forge
                .comment(
                    repo,
                    issue,
                    &format!(
                        "Pull request {} passed review, but no CI check appeared on it{grace}, so it waits for a human. Look at its checks on GitHub; `backporcher approve {}` merges it. A repository without CI can set its no-checks policy to `merge`.",
                        pr(),
                        task.id
                    ),
                )
                .await
        }
        (Some(_), Status::ApprovalHold) => {
            forge
                .comment(
                    repo,
                    issue,
                    &format!(
                        "Pull request {} passed review and CI and waits for a human: `backporcher approve {}` merges it.",
                        pr(),
                        task.id
                    ),
                )
                .await
        }
        (Some(_), Status::Merged) => {
            forge.add_labels(repo, issue, &[labels::DONE]).await?;
            forge.remove_label(repo, issue, labels::IN_PROGRESS).await?;
            forge
                .comment(repo, issue, &format!("Merged in {}.", pr()))
                .await?;
            forge.close_issue(repo, issue).await
        }
        (Some(_), Status::Failed) => {
            forge.add_labels(repo, issue, &[labels::FAILED]).await?;
            forge.remove_label(repo, issue, labels::IN_PROGRESS).await?;
            let why = ev
                .data
                .as_ref()
                .and_then(|d| d.0.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .or_else(|| task.error.clone())
                .unwrap_or_default();
            // The reason may quote the agent, a reviewer or a file name: shown inert.
            let why: String = why.chars().take(500).collect();
            forge
                .comment(
                    repo,
                    issue,
                    &format!(
                        "Task {} failed ({}). To try again: fix what the reason points at (the issue text, the repository's verify command or CI), then `backporcher requeue {}` or remove and re-add the `backporcher` label.{}",
                        task.id,
                        ev.reason,
                        task.id,
                        if why.trim().is_empty() {
                            String::new()
                        } else {
                            format!("\n\n{}", textguard::github_block(&why))
                        },
                    ),
                )
                .await
        }
        (Some(_), Status::Canceled) => {
            // Nothing half-done stays on GitHub: the PR is closed and its branch removed.
            if let Some(n) = task.pr_number {
                forge.close_pull(repo, n).await?;
            }
            if let Some(b) = task
                .branch
                .as_deref()
                .filter(|b| crate::store::tasks::is_task_branch(b, default_branch))
            {
                forge.delete_branch(repo, b).await?;
            }
            forge.remove_label(repo, issue, labels::IN_PROGRESS).await?;
            forge
                .comment(
                    repo,
                    issue,
                    &format!("Task {} was canceled by {}.", task.id, ev.actor),
                )
                .await
        }
        (Some(Status::Merged), Status::Queued) => {
            let revert = ev
                .data
                .as_ref()
                .and_then(|d| d.0.get("url").and_then(|u| u.as_str()).map(str::to_owned))
                .map(|u| format!(" in {u}"))
                .unwrap_or_default();
            let merged = ev
                .data
                .as_ref()
                .and_then(|d| d.0.get("merged_pr").and_then(|n| n.as_i64()))
                .map(|n| format!("#{n}"))
                .unwrap_or_else(pr);
            forge
                .add_labels(repo, issue, &[labels::IN_PROGRESS])
                .await?;
            forge.remove_label(repo, issue, labels::DONE).await?;
            forge
                .comment(
                    repo,
                    issue,
                    &format!(
                        "Merging {merged} turned CI on `{default_branch}` red, so Backporcher reverted it{revert}. Task {} is back in the queue with the failed checks' logs.",
                        task.id
                    ),
                )
                .await
        }
        (Some(s), Status::Queued) if Status::UNSUCCESSFUL.contains(&s) => {
            forge
                .add_labels(repo, issue, &[labels::IN_PROGRESS])
                .await?;
            forge.remove_label(repo, issue, labels::FAILED).await
        }
        _ => Ok(()),
    }
}

/// Runs until `shutdown`: woken by `bp_forge` notifications, with a sweep backstop (nothing to
/// do without GitHub).
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    let Some(forge) = ctx.forge.clone() else {
        return;
    };
    let wake = ctx.fanout.wake(Channel::Forge);
    every("milestones", vec![wake], ctx.config.sweep, shutdown, || {
        let (store, forge) = (ctx.store.clone(), forge.clone());
        async move {
            sync_once(&store, forge.as_ref()).await?;
            Ok(Next::Wait)
        }
    })
    .await;
}
