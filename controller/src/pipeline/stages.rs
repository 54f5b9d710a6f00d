//! One handler per stage status. Each does one step: it moves the task on through the store (which
//! schedules the next stage) or puts the stage back with a delay. Transient GitHub trouble (rate
//! limits, outages) only delays; what GitHub refuses for good ends the task with a reason.

use std::time::Duration;

use serde_json::json;

use super::review::{MAX_WINDOWS, ReviewError, WINDOW};
use super::{Pipeline, ReviewInput};
use crate::forge::git::{BranchUpdate, PushRequest};
use crate::forge::{
    CheckState, CiVerdict, FailedLog, ForgeError, MergeMethod, MergeOutcome, NewPullRequest,
    PullRequest,
};
use crate::store::merge_queue::{MAX_REFRESHES, MAX_SLOT_SECS, Slot};
use crate::store::repos::Repo;
use crate::store::tasks::{Advance, Failure};
use crate::store::{Error, FailureMode, Note, Status, Task, TerminalReason};

const ACTOR: &str = "controller";

/// Runs the stage the task is in.
pub(super) async fn run(p: &Pipeline, task: Task) -> anyhow::Result<()> {
    let repo = p.store.repo(task.repo_id).await?;
    let result = match task.status {
        Status::Pushing => push(p, &task, &repo).await,
        Status::PrOpen => review(p, &task, &repo).await,
        Status::Reviewing => {
            // A replica died mid-review: look again.
            p.store
                .advance(
                    task.id,
                    &Advance::ReviewDeferred,
                    &Note::new(ACTOR, "review_restarted"),
                )
                .await
                .map(drop)
                .map_err(StageError::from)
        }
        Status::CiWait => ci(p, &task, &repo).await,
        Status::Merging => merge(p, &task, &repo).await,
        _ => Ok(()),
    };
    match result {
        Ok(()) => Ok(()),
        Err(StageError::Wait(delay, why)) => {
            tracing::debug!(task = task.id, status = %task.status, ?delay, why, "stage waits");
            p.store
                .reschedule_stage(task.id, task.status, delay, false)
                .await?;
            Ok(())
        }
        Err(StageError::Later(delay, why)) => {
            let tries = task.stage_tries + 1;
            if tries >= p.config.stage_transient_tries as i32 {
                p.give_up(&task, tries, &why).await;
                return Ok(());
            }
            tracing::info!(task = task.id, status = %task.status, ?delay, tries, why, "stage deferred");
            p.store
                .reschedule_stage(task.id, task.status, delay, true)
                .await?;
            Ok(())
        }
        // A hold stops the step; releasing it makes the stage due again at once.
        Err(StageError::Store(Error::Held { .. })) => {
            p.store
                .reschedule_stage(task.id, task.status, Duration::from_secs(60), false)
                .await?;
            Ok(())
        }
        // Someone else moved the task (cancel, a human merge): nothing to do.
        Err(StageError::Store(Error::IllegalTransition { .. })) => Ok(()),
        Err(StageError::Store(e)) => Err(e.into()),
        Err(StageError::Other(e)) => Err(e),
    }
}

enum StageError {
    /// Nothing is wrong, the stage waits (CI running, checks not reported yet): not a try.
    Wait(Duration, String),
    /// A transient failure (GitHub unavailable or rate-limited, a failed git command): tried
    /// again after the delay, at most `stage_transient_tries` times in a row.
    Later(Duration, String),
    Store(Error),
    Other(anyhow::Error),
}

impl From<Error> for StageError {
    fn from(e: Error) -> Self {
        StageError::Store(e)
    }
}

type StageResult = Result<(), StageError>;

/// Backoff for transient forge errors: the rate limit's own wait, else growing with the tries.
fn later(task: &Task, e: &ForgeError) -> StageError {
    let delay = match e {
        ForgeError::RateLimited { wait, .. } => *wait,
        _ => Duration::from_secs((2u64 << task.stage_tries.clamp(0, 6)).min(120)),
    };
    StageError::Later(delay, e.to_string())
}

/// Maps a forge error: transient → later, otherwise an error that ends nothing by itself.
fn forge_err(task: &Task, e: ForgeError) -> StageError {
    if e.is_transient() {
        later(task, &e)
    } else {
        StageError::Other(anyhow::anyhow!(e))
    }
}

async fn push(p: &Pipeline, task: &Task, repo: &Repo) -> StageResult {
    // Best-of-N: the round's candidates are ranked first; the winner's bundle becomes the task's.
    if task.best_of > 1
        && let Some(ranked) = super::best_of::rank_round(p, task, repo).await?
        && ranked.winner.is_none()
    {
        p.store
            .fail(
                task.id,
                TerminalReason::PushRejected,
                "no candidate of the round left a result that can be pushed",
                &Note::new(ACTOR, "push_rejected"),
            )
            .await?;
        return Ok(());
    }
    let branch = task
        .branch
        .clone()
        .unwrap_or_else(|| crate::store::tasks::task_branch(task.id, &task.issue_title));
    let Some((_, bundle)) = p.store.bundle(task.id, task.attempt).await? else {
        p.store
            .fail(
                task.id,
                TerminalReason::PushRejected,
                "the runner's result has no bundle",
                &Note::new(ACTOR, "push_rejected"),
            )
            .await?;
        return Ok(());
    };
    let token = p.forge.git_token().await.map_err(|e| forge_err(task, e))?;
    let pushed = p
        .pusher
        .push(&PushRequest {
            repo: &repo.name,
            clone_url: &repo.clone_url,
            default_branch: &repo.default_branch,
            branch: &branch,
            bundle: &bundle,
            allow_workflow_changes: repo.allow_workflow_changes,
            token: &token,
        })
        .await;
    let pushed = match pushed {
        Ok(x) => x,
        Err(ForgeError::Refused(why)) => {
            p.store
                .fail(
                    task.id,
                    TerminalReason::PushRejected,
                    &why,
                    &Note::new(ACTOR, "push_rejected").with_data(json!({"error": why})),
                )
                .await?;
            return Ok(());
        }
        Err(e @ ForgeError::Git { .. }) => {
            return Err(StageError::Later(
                Duration::from_secs((2u64 << task.stage_tries.clamp(0, 6)).min(120)),
                e.to_string(),
            ));
        }
        Err(e) => return Err(forge_err(task, e)),
    };
    p.store
        .set_pushed(task.id, &pushed.head_sha, &pushed.changed_files)
        .await?;
    // The attempt's signed evidence record, before the PR that names it.
    let evidence = crate::evidence::make(&p.store, task, &repo.name, &pushed.head_sha)
        .await
        .map_err(StageError::Other)?;
    let section = serde_json::from_str::<serde_json::Value>(&evidence.record)
        .map(|r| crate::evidence::pr_section(&r))
        .unwrap_or_default();
    // One PR per task, and only the one the controller opened: a retried push finds it again
    // by the key in its body; a PR somebody else opened from the branch is never adopted.
    let key = p.store.pr_key(task.id).await?;
    let marker = pr_marker(task, key);
    let ours = |pr: &crate::forge::PullRequest| {
        pr.body.contains(&marker) && pr.head_ref == branch && pr.base_ref == repo.default_branch
    };
    let found = p
        .forge
        .find_pull(&repo.name, &branch)
        .await
        .map_err(|e| forge_err(task, e))?;
    let pr = match found {
        Some(pr) if ours(&pr) => {
            // A later attempt on the same PR: its record is named in a comment, once.
            if !evidence.announced && !pr.body.contains(&evidence_mark(&evidence)) {
                let note = format!("{section}\n{}\n", evidence_mark(&evidence));
                p.forge
                    .comment(&repo.name, pr.number, &note)
                    .await
                    .map_err(|e| forge_err(task, e))?;
            }
            pr
        }
        Some(pr) => return foreign_pr(p, task, &branch, pr.number).await,
        None => {
            let title = pr_title(task);
            let reproduction = p.store.task_reproduction(task.id).await?;
            let body = pr_body(
                task,
                &marker,
                reproduction.as_ref(),
                &format!("{section}\n{}\n", evidence_mark(&evidence)),
            );
            match p
                .forge
                .create_pull(
                    &repo.name,
                    &NewPullRequest {
                        title: &title,
                        body: &body,
                        head: &branch,
                        base: &repo.default_branch,
                    },
                )
                .await
            {
                Ok(pr) => pr,
                // Opened meanwhile (a concurrent replica, a lost answer): find it.
                Err(ForgeError::Http { status: 422, .. }) => {
                    match p
                        .forge
                        .find_pull(&repo.name, &branch)
                        .await
                        .map_err(|e| forge_err(task, e))?
                    {
                        Some(pr) if ours(&pr) => pr,
                        Some(pr) => return foreign_pr(p, task, &branch, pr.number).await,
                        None => {
                            return Err(StageError::Later(
                                Duration::from_secs(5),
                                "PR creation refused and no PR found".into(),
                            ));
                        }
                    }
                }
                Err(e) => return Err(forge_err(task, e)),
            }
        }
    };
    p.store
        .set_evidence_announced(task.id, evidence.attempt)
        .await?;
    p.store
        .advance(
            task.id,
            &Advance::PrOpened {
                number: pr.number,
                url: pr.url.clone(),
            },
            &Note::new(ACTOR, "pr_opened").with_data(json!({"pr": pr.number, "head": pushed.head_sha, "files": pushed.changed_files.len()})),
        )
        .await?;
    Ok(())
}

fn pr_title(task: &Task) -> String {
    // Nothing in it may switch the repository's CI off (a squash merge's message is the title).
    let t: String = textguard::without_ci_skips(&textguard::clean_plain(&task.issue_title))
        .chars()
        .filter(|c| *c != '\n')
        .take(100)
        .collect();
    match task.issue_number {
        Some(n) => format!("{t} (#{n})"),
        None => t,
    }
}

/// Fails a task whose branch already has a pull request the controller did not open.
async fn foreign_pr(p: &Pipeline, task: &Task, branch: &str, number: i64) -> StageResult {
    let why = format!(
        "pull request #{number} uses the task branch `{branch}` but was not opened by Backporcher; close it, then requeue the task"
    );
    p.store
        .fail(
            task.id,
            TerminalReason::PushRejected,
            &why,
            &Note::new(ACTOR, "foreign_pr").with_data(json!({"pr": number, "branch": branch})),
        )
        .await?;
    Ok(())
}

/// The mark of the PR the controller opened for `task` (an HTML comment: hidden on GitHub).
fn pr_marker(task: &Task, key: uuid::Uuid) -> String {
    format!("<!-- backporcher task {} key {key} -->", task.id)
}

fn pr_body(
    task: &Task,
    marker: &str,
    reproduction: Option<&crate::store::reproduction::Reproduction>,
    evidence: &str,
) -> String {
    let mut s = String::new();
    if let Some(n) = task.issue_number {
        s.push_str(&format!("Closes #{n}.\n\n"));
    }
    // Reproduce-first: "reproduced" or "not reproduced", with what the runs showed.
    if let Some(r) = reproduction {
        s.push_str(&format!("**Reproduce-first:** {}.\n\n", r.summary()));
    }
    s.push_str(&format!(
        "Backporcher task {}. Comment `@backporcher <what to change>` or submit a review to ask for changes.\n\n{evidence}\n{marker}\n",
        task.id
    ));
    s
}

/// The mark of an attempt's evidence section in the PR (hidden on GitHub).
fn evidence_mark(e: &crate::store::evidence::StoredEvidence) -> String {
    format!(
        "<!-- backporcher evidence task {} attempt {} -->",
        e.task_id, e.attempt
    )
}

async fn review(p: &Pipeline, task: &Task, repo: &Repo) -> StageResult {
    // What the reviewer needs from GitHub first: trouble getting it delays the review, it is
    // not a review failure (which the repository's fail mode would turn into approve or fail).
    let branch = task.branch.clone().unwrap_or_default();
    let token = p.forge.git_token().await.map_err(|e| forge_err(task, e))?;
    let diff = p
        .pusher
        .diff(
            &repo.name,
            &repo.clone_url,
            &repo.default_branch,
            &branch,
            &token,
            WINDOW * MAX_WINDOWS + 1,
        )
        .await
        .map_err(|e| later(task, &e))?;
    let blast = p
        .store
        .result_data(task.id, task.attempt)
        .await?
        .and_then(|d| {
            // The runner's data sits under the completion's `data`.
            d.pointer("/data/data/blast_radius")
                .or_else(|| d.pointer("/data/blast_radius"))
                .and_then(|b| b.as_str())
                .map(str::to_owned)
        });
    // No valid, signed record for this head: never approved.
    let evidence = crate::evidence::check(&p.store, task, &diff.head)
        .await
        .map_err(StageError::Other)?;
    p.store
        .advance(
            task.id,
            &Advance::StartReview,
            &Note::new(ACTOR, "review_started").with_data(json!({"head": diff.head})),
        )
        .await?;
    let fail_closed = repo.review_fail_mode == "closed";
    let unreadable = unreadable_changes(&diff.text);
    let input = ReviewInput {
        task: task.id,
        repo: repo.id,
        title: task.issue_title.clone(),
        body: task
            .prompt_override
            .clone()
            .unwrap_or_else(|| task.issue_body.clone()),
        diff: diff.text,
        blast_radius: blast,
        plan: p.store.approved_plan(task.id).await?,
        evidence: evidence.as_ref().ok().map(|r| {
            let (figures, details) = crate::evidence::for_reviewer(r);
            super::ReviewEvidence { figures, details }
        }),
    };
    let verdict = if !diff.complete {
        Err(ReviewError::Unreviewable(format!(
            "the diff is larger than {} bytes",
            WINDOW * MAX_WINDOWS
        )))
    } else if !unreadable.is_empty() {
        // Nothing is approved unseen: a binary file (or a byte that makes git call a text file
        // binary) or a submodule pointer shows the reviewer nothing of what it carries.
        Err(ReviewError::Unreviewable(format!(
            "the change holds what the reviewer cannot read: {}",
            unreadable
                .iter()
                .take(10)
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    } else {
        match tokio::time::timeout(p.config.review_timeout, p.reviewer.review(&input)).await {
            Ok(r) => r,
            // The diff decides how many windows are asked (and asked again): a review that does
            // not finish is the change's doing as much as the model's, and is never taken for
            // an unavailable reviewer that a repository failing open would approve.
            Err(_) => Err(ReviewError::Unusable(format!(
                "the review did not finish within {:?}; a person must look",
                p.config.review_timeout
            ))),
        }
    };
    // Without a valid record the reviewer still reads the diff, and its rejection counts (a
    // commit someone added after the agent's is caught like any other), but nothing else does:
    // an approval, an unusable answer or an unavailable reviewer all leave it to a person.
    let verdict = match (&evidence, verdict) {
        (Ok(_), v) => v,
        (Err(_), Ok(v)) if !v.approve => Ok(v),
        (Err(why), _) => Err(ReviewError::NoEvidence(why.clone())),
    };
    // A plan the policy approved was the agent's own word about what it would touch: a change
    // beyond its files is left to a person, whatever the reviewer said (a rejection still counts).
    let beyond = p
        .store
        .beyond_policy_plan(task.id, &task.changed_files)
        .await?;
    let verdict = match verdict {
        Ok(v) if !v.approve => Ok(v),
        _ if !beyond.is_empty() => Err(ReviewError::BeyondPlan(format!(
            "it changes {} the plan did not name ({})",
            if beyond.len() == 1 { "a file" } else { "files" },
            beyond
                .iter()
                .take(10)
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        v => v,
    };
    let head = diff.head;
    match verdict {
        Ok(v) if v.approve => {
            p.store
                .set_review(
                    task.id,
                    &json!({"approve": true, "reasons": v.reasons, "head": head}),
                )
                .await?;
            p.store
                .advance(
                    task.id,
                    &Advance::ReviewApproved,
                    &Note::new(ACTOR, "review_approved")
                        .with_data(json!({"reasons": v.reasons, "head": head})),
                )
                .await?;
        }
        Ok(v) => {
            p.store
                .set_review(
                    task.id,
                    &json!({"approve": false, "reasons": v.reasons, "head": head}),
                )
                .await?;
            // The transition first: of two controllers that reviewed the same change (one whose
            // stage lease lapsed), only the one whose transition holds comments and closes.
            p.store
                .retry_or_fail(
                    task.id,
                    &Failure {
                        mode: FailureMode::Review,
                        reason: None,
                        error: format!("review rejected: {}", first_line(&v.reasons)),
                        context: Some(json!({"reviewer_feedback": v.reasons})),
                    },
                    &p.config.retry,
                    &Note::new(ACTOR, "review_rejected").with_data(json!({"reasons": v.reasons})),
                )
                .await?;
            if let Some(n) = task.pr_number {
                // The reviewer's words may repeat what the diff planted: shown inert.
                let note = format!(
                    "The reviewer rejected this change; it goes back to the agent with the feedback:\n\n{}",
                    textguard::github_block(&v.reasons)
                );
                let _ = p.forge.comment(&repo.name, n, &note).await;
                if let Err(e) = p.forge.close_pull(&repo.name, n).await {
                    tracing::warn!(task = task.id, error = %e, "closing the rejected PR failed");
                }
            }
        }
        // No verdict was reached on what the reviewer was shown, or it could not be shown
        // whole, or it has no valid evidence record: never an approval. The change goes on to
        // CI, and only a person can merge it.
        Err(
            e @ (ReviewError::Unusable(_)
            | ReviewError::Unreviewable(_)
            | ReviewError::NoEvidence(_)
            | ReviewError::BeyondPlan(_)),
        ) => {
            tracing::warn!(task = task.id, error = %e, "no review verdict; a person must approve the merge");
            p.store
                .set_review(
                    task.id,
                    &json!({"approve": false, "human_required": e.to_string(), "head": head}),
                )
                .await?;
            p.store
                .advance(
                    task.id,
                    &Advance::ReviewApproved,
                    &Note::new(ACTOR, "review_needs_human").with_data(json!({
                        "error": e.to_string(),
                        "head": head,
                        "no_evidence": matches!(e, ReviewError::NoEvidence(_)),
                    })),
                )
                .await?;
        }
        Err(e) if fail_closed => {
            tracing::warn!(task = task.id, error = %e, "review failed; the repository fails closed");
            p.store
                .set_review(
                    task.id,
                    &json!({"error": e.to_string(), "fail_mode": "closed", "head": head}),
                )
                .await?;
            p.store
                .fail(
                    task.id,
                    TerminalReason::ReviewRejected,
                    &format!("the review could not run and this repository fails closed: {e}"),
                    &Note::new(ACTOR, "review_error"),
                )
                .await?;
        }
        Err(e) => {
            tracing::warn!(task = task.id, error = %e, "the reviewer is unavailable; the repository fails open");
            p.store
                .set_review(
                    task.id,
                    &json!({"approve": true, "error": e.to_string(), "fail_mode": "open", "head": head}),
                )
                .await?;
            p.store
                .advance(
                    task.id,
                    &Advance::ReviewApproved,
                    &Note::new(ACTOR, "review_failed_open")
                        .with_data(json!({"error": e.to_string(), "head": head})),
                )
                .await?;
        }
    }
    Ok(())
}

/// The files of a unified diff whose content it does not show: binary files (`Binary files … and
/// b/x differ`) and submodule pointers (`+Subproject commit …`).
fn unreadable_changes(diff: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = "";
    for line in diff.lines() {
        if let Some(rest) = line.strip_prefix("diff --git ") {
            current = rest.rsplit_once(" b/").map_or(rest, |(_, b)| b);
        } else if ((line.starts_with("Binary files ") && line.ends_with(" differ"))
            || line.starts_with("+Subproject commit ")
            || line.starts_with("-Subproject commit "))
            && out.last().map(String::as_str) != Some(current)
        {
            out.push(current.to_owned());
        }
    }
    out
}

/// The commit the reviewer saw (or the controller's own update of it), if any.
fn reviewed_head(task: &Task) -> Option<&str> {
    task.review.as_ref().and_then(|r| r.0["head"].as_str())
}

/// Why a person must approve the merge whatever the approval mode, if they must.
fn human_required(task: &Task) -> Option<&str> {
    task.review
        .as_ref()
        .and_then(|r| r.0["human_required"].as_str())
}

/// Sends the task back to review when the PR's head is not the reviewed commit.
async fn head_unreviewed(p: &Pipeline, task: &Task, pr_head: &str) -> Result<bool, StageError> {
    if reviewed_head(task) == Some(pr_head) {
        return Ok(false);
    }
    // The controller records its own update of the branch before pushing it: until the push
    // lands the PR still shows the commit it was made from, which was reviewed.
    let updated_from = task
        .review
        .as_ref()
        .and_then(|r| r.0["updated_from"].as_str());
    if updated_from == Some(pr_head) {
        return Ok(false);
    }
    tracing::warn!(task = task.id, pr_head, reviewed = ?reviewed_head(task), "the PR's head is not the reviewed commit; reviewing again");
    p.store
        .advance(
            task.id,
            &Advance::ReviewAgain,
            &Note::new(ACTOR, "head_moved_after_review")
                .with_data(json!({"head": pr_head, "reviewed": reviewed_head(task)})),
        )
        .await?;
    Ok(true)
}

/// Deletes a merged task's branch — only ever a branch the controller named.
async fn delete_task_branch(p: &Pipeline, repo: &Repo, branch: &str) {
    if !crate::store::tasks::is_task_branch(branch, &repo.default_branch) {
        tracing::error!(
            repo = repo.name,
            branch,
            "refusing to delete a branch the controller did not name"
        );
        return;
    }
    if let Err(e) = p.forge.delete_branch(&repo.name, branch).await {
        tracing::warn!(repo = repo.name, branch, error = %e, "deleting the merged branch failed");
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

async fn approval_mode(p: &Pipeline, repo: &Repo) -> Result<String, StageError> {
    Ok(match &repo.approval_mode {
        Some(m) => m.clone(),
        None => p.store.settings().await?.approval_mode,
    })
}

/// The task's pull request as GitHub has it now. A task without one fails (`doing` says what
/// needed it) and `None` comes back.
async fn task_pull(
    p: &Pipeline,
    task: &Task,
    repo: &Repo,
    doing: &str,
) -> Result<Option<PullRequest>, StageError> {
    let Some(number) = task.pr_number else {
        p.store
            .fail(
                task.id,
                TerminalReason::InternalError,
                &format!("{doing} without a PR"),
                &Note::new(ACTOR, "internal_error"),
            )
            .await?;
        return Ok(None);
    };
    p.forge
        .pull(&repo.name, number)
        .await
        .map(Some)
        .map_err(|e| forge_err(task, e))
}

async fn ci(p: &Pipeline, task: &Task, repo: &Repo) -> StageResult {
    let Some(pr) = task_pull(p, task, repo, "waiting for CI").await? else {
        return Ok(());
    };
    let number = pr.number;
    if pr.state != "open" && !pr.merged {
        p.store
            .fail(
                task.id,
                TerminalReason::MergeFailed,
                &format!("PR #{number} was closed on GitHub"),
                &Note::new(ACTOR, "pr_closed"),
            )
            .await?;
        return Ok(());
    }
    if head_unreviewed(p, task, &pr.head_sha).await? {
        return Ok(());
    }
    // The queue's head waits for CI on its up-to-date branch here, within the slot's bound.
    if let Some(entry) = p.store.queue_entry(task.id).await?
        && slot_overdue(p, task, repo, &entry).await?
    {
        return Ok(());
    }
    let checks = p
        .forge
        .checks(&repo.name, &pr.head_sha)
        .await
        .map_err(|e| forge_err(task, e))?;
    let mut verdict = CiVerdict::of(checks, &repo.ci_ignore);
    if matches!(verdict, CiVerdict::Red(_)) {
        // Check runs and statuses are two reads; a check that finished between them would be
        // missed (and its log with it). Read again before spending a CI retry on it.
        let again = p
            .forge
            .checks(&repo.name, &pr.head_sha)
            .await
            .map_err(|e| forge_err(task, e))?;
        verdict = CiVerdict::of(again, &repo.ci_ignore);
    }
    let no_checks = matches!(verdict, CiVerdict::NoChecks);
    let green = match verdict {
        CiVerdict::Pending(_) => {
            return Err(StageError::Wait(p.config.ci_poll, "CI is running".into()));
        }
        CiVerdict::NoChecks => {
            // `updated_at` moves with the timeline only: it is when the task entered `ci_wait`.
            let waited = (chrono::Utc::now() - task.updated_at).num_seconds();
            if waited < i64::from(repo.no_checks_grace_secs) || repo.no_checks == "wait" {
                return Err(StageError::Wait(
                    p.config.ci_poll,
                    "no checks reported yet".into(),
                ));
            }
            // Only an explicit `merge` (a repository without CI) counts as green; `hold` (the
            // default) and anything else wait for a person.
            repo.no_checks == "merge"
        }
        CiVerdict::Red(checks) => {
            let mut logs = Vec::new();
            for c in checks.iter().filter(|c| c.state == CheckState::Failed) {
                let log = match c.job_id {
                    Some(job) => match p.forge.job_log(&repo.name, job).await {
                        Ok(l) => l,
                        Err(e) if e.is_transient() => return Err(later(task, &e)),
                        Err(e) => format!("(log unavailable: {e})"),
                    },
                    None => format!("(no log; see {})", c.url.clone().unwrap_or_default()),
                };
                logs.push(FailedLog {
                    name: c.name.clone(),
                    log: textguard::clean_plain(&log),
                });
            }
            let names: Vec<&str> = logs.iter().map(|l| l.name.as_str()).collect();
            p.store
                .retry_or_fail(
                    task.id,
                    &Failure {
                        mode: FailureMode::Ci,
                        reason: None,
                        error: format!("CI failed: {}", names.join(", ")),
                        context: Some(json!({"failed_checks": logs})),
                    },
                    &p.config.retry,
                    &Note::new(ACTOR, "ci_failed").with_data(json!({"checks": names})),
                )
                .await?;
            return Ok(());
        }
        CiVerdict::Green(_) => true,
    };
    let mode = approval_mode(p, repo).await?;
    let auto = mode == "full-auto" && human_required(task).is_none();
    // Ready to merge: the task joins its repository's merge queue (or, back from a refresh,
    // records the head CI is green on now). An approval given earlier stays with the entry.
    let entry = if green {
        Some(
            p.store
                .enter_merge_queue(task.id, Some(&pr.head_sha), auto)
                .await?,
        )
    } else {
        None
    };
    if let Some(entry) = entry.as_ref().filter(|e| auto || e.approved) {
        let why = if no_checks {
            "no_checks_merge"
        } else {
            "ci_green"
        };
        p.store
            .advance(
                task.id,
                &Advance::StartMerge,
                &Note::new(ACTOR, why).with_data(json!({
                    "head": pr.head_sha,
                    "queue_position": entry.position,
                })),
            )
            .await?;
    } else {
        let why = if no_checks { "no_checks" } else { "ci_green" };
        let mut data = json!({"approval_mode": mode, "human_required": human_required(task)});
        if let Some(e) = &entry {
            data["queue_position"] = json!(e.position);
        }
        if no_checks {
            data["head"] = json!(pr.head_sha);
            data["grace_secs"] = json!(repo.no_checks_grace_secs);
            data["message"] = json!(format!(
                "no CI check appeared on {} within {} s; look at the PR's checks, then \
                 `backporcher approve {}` merges it. A repository without CI can set its \
                 no-checks policy to `merge`",
                pr.head_sha, repo.no_checks_grace_secs, task.id
            ));
        }
        p.store
            .advance(
                task.id,
                &Advance::AwaitApproval,
                &Note::new(ACTOR, why).with_data(data),
            )
            .await?;
    }
    Ok(())
}

/// The merge stage: the task waits for its turn in the repository's merge queue; at the head it
/// is brought up to date with the default branch (and goes back to CI on that combination), and
/// only a head that contains the default branch and on which CI was green merges. After the
/// merge, queued siblings whose changed files overlap are refreshed at once.
async fn merge(p: &Pipeline, task: &Task, repo: &Repo) -> StageResult {
    // The task reached `merging`: full-auto, or a person approved it. Its turn first (no GitHub
    // call while it waits).
    p.store.approve_queued(task.id).await?;
    let mut slot = p.store.take_merge_slot(task.id).await?;
    if slot == Slot::NotQueued {
        // Approved before it was queued: it joins now (at the back); CI is looked at again on
        // its head before it merges.
        p.store.enter_merge_queue(task.id, None, true).await?;
        slot = p.store.take_merge_slot(task.id).await?;
    }
    let entry = match (slot, p.store.queue_entry(task.id).await?) {
        (Slot::Taken, Some(e)) => e,
        (Slot::Wait { position, behind }, _) => {
            return Err(StageError::Wait(
                p.config.ci_poll,
                format!("merge queue position {position}, after task {behind}"),
            ));
        }
        _ => {
            return Err(StageError::Wait(
                p.config.ci_poll,
                "joining the merge queue".into(),
            ));
        }
    };
    let Some(pr) = task_pull(p, task, repo, "merging").await? else {
        return Ok(());
    };
    let number = pr.number;
    let branch = task.branch.clone().unwrap_or_default();
    if pr.merged {
        p.store
            .advance(
                task.id,
                &Advance::Merged,
                &Note::new(ACTOR, "merged_on_github"),
            )
            .await?;
        delete_task_branch(p, repo, &branch).await;
        refresh_siblings(p, task, repo).await;
        return Ok(());
    }
    // Only the reviewed commit merges: GitHub refuses the merge if the head moves meanwhile.
    if head_unreviewed(p, task, &pr.head_sha).await? {
        return Ok(());
    }
    if slot_overdue(p, task, repo, &entry).await? {
        return Ok(());
    }
    let token = p.forge.git_token().await.map_err(|e| forge_err(task, e))?;
    let up_to_date = p
        .pusher
        .contains_default(
            &repo.name,
            &repo.clone_url,
            &repo.default_branch,
            &branch,
            &pr.head_sha,
            &token,
        )
        .await
        .map_err(|e| later(task, &e))?;
    if !up_to_date || pr.mergeable == Some(false) {
        return refresh(p, task, repo, "queue_head").await;
    }
    if entry.green_head.as_deref() != Some(pr.head_sha.as_str()) {
        // Up to date, but CI has not been seen green on this very head.
        p.store
            .advance(
                task.id,
                &Advance::MergeDeferred,
                &Note::new(ACTOR, "ci_not_seen_on_head").with_data(json!({"head": pr.head_sha})),
            )
            .await?;
        return Ok(());
    }
    let method: MergeMethod = repo.merge_method.parse().unwrap_or_default();
    let outcome = p
        .forge
        .merge(&repo.name, number, &pr.head_sha, method)
        .await
        .map_err(|e| forge_err(task, e))?;
    match outcome {
        MergeOutcome::Merged(sha) => {
            p.store
                .advance(
                    task.id,
                    &Advance::Merged,
                    &Note::new(ACTOR, "merged").with_data(json!({
                        "sha": sha,
                        "pr": number,
                        "head": pr.head_sha,
                        "refreshes": entry.refreshes,
                    })),
                )
                .await?;
            delete_task_branch(p, repo, &branch).await;
            refresh_siblings(p, task, repo).await;
        }
        MergeOutcome::HeadMoved(why) => {
            p.store
                .advance(
                    task.id,
                    &Advance::MergeDeferred,
                    &Note::new(ACTOR, "head_moved").with_data(json!({"error": why})),
                )
                .await?;
        }
        // The default branch moved between the check and the merge: bring it up to date again.
        MergeOutcome::Conflict(_) => return refresh(p, task, repo, "queue_head").await,
        MergeOutcome::Refused(why) => {
            p.store
                .fail(
                    task.id,
                    TerminalReason::MergeFailed,
                    &format!("GitHub refused the merge: {why}"),
                    &Note::new(ACTOR, "merge_refused").with_data(json!({"error": why})),
                )
                .await?;
        }
    }
    Ok(())
}

/// Fails a task that held its repository's merge slot longer than [`MAX_SLOT_SECS`] (CI on
/// its up-to-date head never decided, the default branch kept moving): the next task gets the
/// slot. `true` when it did.
async fn slot_overdue(
    p: &Pipeline,
    task: &Task,
    repo: &Repo,
    entry: &crate::store::merge_queue::QueueEntry,
) -> Result<bool, StageError> {
    let Some(since) = entry.slot_at.filter(|_| entry.merging) else {
        return Ok(false);
    };
    if (chrono::Utc::now() - since).num_seconds() <= MAX_SLOT_SECS {
        return Ok(false);
    }
    p.store
        .fail(
            task.id,
            TerminalReason::MergeFailed,
            &format!(
                "the task held the merge queue of {} for more than {} hours without merging (CI on its up-to-date branch never decided, or the default branch kept moving); requeue it",
                repo.name,
                MAX_SLOT_SECS / 3600
            ),
            &Note::new(ACTOR, "merge_queue_timeout"),
        )
        .await?;
    Ok(true)
}

/// Brings a queued task's branch up to date with the default branch (a merge commit the
/// controller makes; the reviewed head follows it) and sends it back to CI; a real conflict goes
/// back to the agent with the conflicting hunks and both sides in its context, spending a
/// conflict retry. At most [`MAX_REFRESHES`] times per stay in the queue.
async fn refresh(p: &Pipeline, task: &Task, repo: &Repo, why: &str) -> StageResult {
    let branch = task.branch.clone().unwrap_or_default();
    let token = p.forge.git_token().await.map_err(|e| forge_err(task, e))?;
    let updated = p
        .pusher
        .update_branch(
            &repo.name,
            &repo.clone_url,
            &repo.default_branch,
            &branch,
            &token,
            // A repository that merges by rebase keeps its history linear: the branch is
            // made again on the default branch's head rather than merged with it.
            repo.merge_method == "rebase",
        )
        .await;
    match updated {
        Ok(BranchUpdate::UpToDate(head)) => {
            if task.status == Status::Merging {
                // Up to date after all (GitHub's mergeability lagged): CI decides on this head.
                p.store
                    .advance(
                        task.id,
                        &Advance::MergeDeferred,
                        &Note::new(ACTOR, "merge_recheck").with_data(json!({"head": head})),
                    )
                    .await?;
            }
        }
        Ok(BranchUpdate::Made {
            commit: sha,
            replaces,
            from,
        }) => {
            // Only the reviewed commit is brought up to date: a branch someone pushed to since
            // the review would carry the push into a head the controller vouches for.
            if head_unreviewed(p, task, &from).await? {
                return Ok(());
            }
            let refreshes = p.store.note_queue_refresh(task.id).await?;
            if refreshes > MAX_REFRESHES {
                p.store
                    .fail(
                        task.id,
                        TerminalReason::MergeFailed,
                        &format!(
                            "the branch was brought up to date with {} {MAX_REFRESHES} times and the default branch moved again each time before it could merge; requeue it when the default branch is quieter",
                            repo.default_branch
                        ),
                        &Note::new(ACTOR, "merge_queue_refresh_bound"),
                    )
                    .await?;
                return Ok(());
            }
            // The controller's own merge of the base into the reviewed commit, recorded before
            // it is pushed (the old head stays accepted until the push lands).
            if let Some(review) = &task.review {
                let mut r = review.0.clone();
                r["head"] = json!(sha);
                r["updated_from"] = json!(reviewed_head(task));
                p.store.set_review(task.id, &r).await?;
            }
            p.pusher
                .push_update(
                    &repo.name,
                    &repo.clone_url,
                    &repo.default_branch,
                    &branch,
                    &sha,
                    replaces.as_deref(),
                    &token,
                )
                .await
                .map_err(|e| later(task, &e))?;
            let how = if replaces.is_some() {
                "rebased"
            } else {
                "merged"
            };
            let note = Note::new(ACTOR, "branch_updated")
                .with_data(json!({"sha": sha, "why": why, "refreshes": refreshes, "how": how}));
            if task.status == Status::Merging {
                p.store
                    .advance(task.id, &Advance::MergeDeferred, &note)
                    .await?;
            } else {
                p.store.queue_note(task.id, &note).await?;
            }
        }
        Ok(BranchUpdate::Conflict(files)) => {
            let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            p.store
                .retry_or_fail(
                    task.id,
                    &Failure {
                        mode: FailureMode::Conflict,
                        reason: None,
                        error: format!(
                            "merge conflict with {} in {}",
                            repo.default_branch,
                            names.join(", ")
                        ),
                        context: Some(json!({
                            "conflicts": files,
                            "ours": "the task branch",
                            "theirs": repo.default_branch,
                            "note": "start again from the current default branch and make the change fit what it has now",
                        })),
                    },
                    &p.config.retry,
                    &Note::new(ACTOR, "merge_conflict").with_data(json!({"files": names, "why": why})),
                )
                .await?;
        }
        Err(e @ ForgeError::Git { .. }) => return Err(later(task, &e)),
        Err(e) => return Err(forge_err(task, e)),
    }
    Ok(())
}

/// After `merged` merged, its queued siblings whose changed files overlap are refreshed now, so
/// a conflict reaches its agent before that sibling's turn. A failure here only logs: the
/// sibling's own turn brings it up to date again.
async fn refresh_siblings(p: &Pipeline, merged: &Task, repo: &Repo) {
    let siblings = match p
        .store
        .overlapping_queued(merged.id, &merged.changed_files)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(task = merged.id, error = %e, "reading the merge queue failed");
            return;
        }
    };
    for id in siblings {
        let Ok(t) = p.store.task(id).await else {
            continue;
        };
        if !matches!(
            t.status,
            Status::CiWait | Status::ApprovalHold | Status::Merging
        ) {
            continue;
        }
        match refresh(p, &t, repo, "sibling_merged").await {
            Ok(()) => {}
            Err(StageError::Store(e)) => {
                tracing::warn!(task = id, error = %e, "refreshing a queued sibling failed");
            }
            Err(StageError::Wait(_, why) | StageError::Later(_, why)) => {
                tracing::warn!(
                    task = id,
                    why,
                    "refreshing a queued sibling failed; its turn does it"
                );
            }
            Err(StageError::Other(e)) => {
                tracing::warn!(task = id, error = %e, "refreshing a queued sibling failed");
            }
        }
    }
}
