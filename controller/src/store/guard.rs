//! The post-merge guard's records (`merge_guards`, migration 0035): one row per agent merge the
//! controller watches on the default branch, the repository's window, and the guard's effects on
//! the task — each in one statement with its timeline entry.
//!
//! The guard itself ([`crate::pipeline::guard`]) decides; this module only records. Every effect
//! outside the database is written down here once it is done (the revert commit, its pull
//! request, the requeue), and a pass reads these first, so a pass that runs again — on this
//! replica or another — never repeats an effect.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::lifecycle::{self, RepoId, TaskId, status_texts};
use super::{Result, Store};

/// Reverts a task may have before it fails instead of going back to the queue.
pub const MAX_REVERTS: i64 = 2;

/// Who writes the guard's timeline entries.
const ACTOR: &str = "controller";

/// One watched merge.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct MergeGuard {
    /// Id.
    pub id: i64,
    /// The merged task.
    pub task_id: TaskId,
    /// Its repository.
    pub repo_id: RepoId,
    /// The commit the merge made on the default branch.
    pub merge_sha: String,
    /// The task's pull request that merged.
    pub pr_number: Option<i64>,
    /// `watching`, `clean`, `unknown`, `guilty` (being reverted) or `reverted`.
    pub state: String,
    /// Why it ended (`green`, `green_later`, `red_before`, `window_ended`, `red`).
    pub reason: Option<String>,
    /// When it merged.
    pub merged_at: DateTime<Utc>,
    /// When the window ends.
    pub deadline: DateTime<Utc>,
    /// How many later commits the window spans.
    pub window_commits: i32,
    /// The branch pushed at the merge commit so CI runs on it, if one was.
    pub probe_branch: Option<String>,
    /// The failed checks with their logs, once found guilty.
    pub failed_checks: Option<sqlx::types::Json<Value>>,
    /// The revert's branch.
    pub revert_branch: Option<String>,
    /// The revert commit.
    pub revert_sha: Option<String>,
    /// The revert pull request.
    pub revert_pr_number: Option<i64>,
    /// Its web address.
    pub revert_pr_url: Option<String>,
    /// `open`, `awaiting_approval`, `merged`, `closed`, `ci_failed`, `conflict`, `unknown`.
    pub revert_state: Option<String>,
    /// When the guard stops waiting for the revert's CI (full-auto).
    pub revert_deadline: Option<DateTime<Utc>>,
    /// Whether the task was re-queued (or failed) for it.
    pub requeued: bool,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

const GUARD_COLUMNS: &str = "id, task_id, repo_id, merge_sha, pr_number, state, reason, merged_at, \
    deadline, window_commits, probe_branch, failed_checks, revert_branch, revert_sha, \
    revert_pr_number, revert_pr_url, revert_state, revert_deadline, requeued, updated_at";

/// The guards a pass works on: watching, being reverted, a revert whose task is not re-queued
/// yet, or a full-auto revert not merged yet.
/// Failed steps a guard is tried again after; the last one ends it for a person.
pub const MAX_GUARD_ERRORS: i32 = 5;

const LIVE: &str = "(state IN ('watching', 'guilty') OR (state = 'reverted' AND \
    (revert_state = 'open' OR (NOT requeued AND revert_pr_number IS NOT NULL))))";

/// How a task left `merged` for a revert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeued {
    /// Back in the queue with the regression in its retry context.
    Queued,
    /// Reverted [`MAX_REVERTS`] times: failed.
    Failed,
    /// It was no longer `merged` (a person requeued or changed it): left as it is.
    Untouched,
}

impl Store {
    /// Starts watching every agent merge (a `merged` timeline entry with its commit) still inside
    /// its repository's window and not watched yet; each gets a `guard_watching` entry. Returns
    /// how many started. Keyed by (task, commit): running it twice starts nothing twice.
    pub async fn start_guards(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "WITH fresh AS ( \
               INSERT INTO merge_guards (task_id, repo_id, merge_sha, pr_number, merged_at, deadline, window_commits) \
               SELECT t.id, t.repo_id, e.data->>'sha', t.pr_number, e.at, \
                      e.at + make_interval(secs => r.guard_window_secs), r.guard_window_commits \
               FROM tasks t JOIN repos r ON r.id = t.repo_id \
               JOIN LATERAL (SELECT at, data FROM task_events \
                             WHERE task_id = t.id AND to_status = 'merged' AND reason = 'merged' \
                             ORDER BY id DESC LIMIT 1) e ON true \
               WHERE t.status = 'merged' AND r.guard_window_secs > 0 \
                 AND t.finished_at > now() - make_interval(secs => r.guard_window_secs) \
                 AND e.data->>'sha' IS NOT NULL \
                 AND e.at > now() - make_interval(secs => r.guard_window_secs) \
               ON CONFLICT (task_id, merge_sha) DO NOTHING \
               RETURNING task_id, merge_sha, deadline, window_commits), \
             noted AS ( \
               UPDATE tasks SET ev_seq = ev_seq + 1, ev_actor = $1, ev_reason = 'guard_watching', \
                 ev_data = jsonb_build_object('sha', f.merge_sha, 'until', f.deadline, 'commits', f.window_commits) \
               FROM fresh f WHERE tasks.id = f.task_id RETURNING tasks.id) \
             SELECT count(*) FROM noted",
        )
        .bind(ACTOR)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    /// Repositories with guards to work on.
    pub async fn guard_repos(&self) -> Result<Vec<RepoId>> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT repo_id FROM merge_guards WHERE {LIVE} ORDER BY repo_id"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// A repository's guards to work on, in merge order.
    pub async fn live_guards(&self, repo: RepoId) -> Result<Vec<MergeGuard>> {
        Ok(sqlx::query_as::<_, MergeGuard>(sqlx::AssertSqlSafe(format!(
            "SELECT {GUARD_COLUMNS} FROM merge_guards WHERE repo_id = $1 AND {LIVE} \
             ORDER BY merged_at, id"
        )))
        .bind(repo)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One guard.
    pub async fn merge_guard(&self, id: i64) -> Result<Option<MergeGuard>> {
        Ok(sqlx::query_as::<_, MergeGuard>(sqlx::AssertSqlSafe(format!(
            "SELECT {GUARD_COLUMNS} FROM merge_guards WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A task's guards, latest merge first.
    pub async fn task_guards(&self, task: TaskId) -> Result<Vec<MergeGuard>> {
        Ok(sqlx::query_as::<_, MergeGuard>(sqlx::AssertSqlSafe(format!(
            "SELECT {GUARD_COLUMNS} FROM merge_guards WHERE task_id = $1 ORDER BY merged_at DESC, id DESC"
        )))
        .bind(task)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Ends a watch (`clean` or `unknown`) with why, on the task's timeline as `guard_<reason>`.
    /// `false` when it was not watching any more (another pass ended it).
    pub async fn end_guard(
        &self,
        g: &MergeGuard,
        state: &str,
        reason: &str,
        data: Value,
    ) -> Result<bool> {
        debug_assert!(matches!(state, "clean" | "unknown"));
        self.guard_step(
            g,
            "state = 'watching'",
            "state = $3, reason = $4",
            &[state, reason],
            &format!("guard_{reason}"),
            data,
        )
        .await
    }

    /// Records the probe branch pushed at the merge commit.
    pub async fn set_guard_probe(&self, g: &MergeGuard, branch: &str) -> Result<bool> {
        self.guard_step(
            g,
            "state = 'watching' AND probe_branch IS NULL",
            "probe_branch = $3",
            &[branch],
            "guard_probe",
            json!({"sha": g.merge_sha, "branch": branch}),
        )
        .await
    }

    /// Finds the merge guilty, with the failed checks and their logs.
    pub async fn guard_guilty(&self, g: &MergeGuard, failed: &Value, data: Value) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE merge_guards SET state = 'guilty', reason = 'red', failed_checks = $2, updated_at = now() \
             WHERE id = $1 AND state = 'watching'",
        )
        .bind(g.id)
        .bind(failed)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            note_in(&mut tx, g.task_id, "guard_guilty", &data).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Records the revert commit pushed to its branch.
    pub async fn set_revert_commit(&self, g: &MergeGuard, branch: &str, sha: &str) -> Result<bool> {
        self.guard_step(
            g,
            "state = 'guilty' AND revert_sha IS NULL",
            "revert_branch = $3, revert_sha = $4",
            &[branch, sha],
            "guard_revert_pushed",
            json!({"branch": branch, "sha": sha, "reverts": g.merge_sha}),
        )
        .await
    }

    /// Records the revert pull request: the merge is `reverted`, the PR `open` (the guard merges
    /// it once green, until `deadline`) or `awaiting_approval` (a person merges it).
    pub async fn set_revert_pr(
        &self,
        g: &MergeGuard,
        number: i64,
        url: &str,
        revert_state: &str,
        deadline: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE merge_guards SET state = 'reverted', revert_pr_number = $2, revert_pr_url = $3, \
             revert_state = $4, revert_deadline = $5, updated_at = now() \
             WHERE id = $1 AND state = 'guilty'",
        )
        .bind(g.id)
        .bind(number)
        .bind(url)
        .bind(revert_state)
        .bind(deadline)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            let data = json!({"pr": number, "url": url, "revert_state": revert_state, "reverts": g.merge_sha});
            note_in(&mut tx, g.task_id, "guard_revert_opened", &data).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Records that a revert cannot be made (it conflicts with the default branch): a person must
    /// revert by hand; the guard stops.
    pub async fn guard_revert_conflict(&self, g: &MergeGuard, why: &str) -> Result<bool> {
        self.guard_step(
            g,
            "state = 'guilty' AND revert_sha IS NULL",
            "state = 'reverted', revert_state = $3",
            &["conflict"],
            "guard_revert_conflict",
            json!({"error": why, "reverts": g.merge_sha}),
        )
        .await
    }

    /// Moves the revert PR on (`merged`, `closed`, `ci_failed`, `unknown`), with a timeline entry
    /// `guard_revert_<state>`.
    pub async fn set_revert_state(&self, g: &MergeGuard, state: &str, data: Value) -> Result<bool> {
        self.guard_step(
            g,
            "state = 'reverted' AND revert_state = 'open'",
            "revert_state = $3",
            &[state],
            &format!("guard_revert_{state}"),
            data,
        )
        .await
    }

    /// Sends the reverted task back to the queue with the regression in its retry context — or
    /// fails it when this was its [`MAX_REVERTS`]th revert — and queues the `reverted`
    /// notification, in one transaction that also marks the guard's requeue done.
    pub async fn guard_requeue(
        &self,
        g: &MergeGuard,
        error: &str,
        context: &Value,
        data: &Value,
    ) -> Result<Requeued> {
        let mut tx = self.pool.begin().await?;
        let done: Option<bool> =
            sqlx::query_scalar("SELECT requeued FROM merge_guards WHERE id = $1 FOR UPDATE")
                .bind(g.id)
                .fetch_optional(&mut *tx)
                .await?;
        if done != Some(false) {
            return Ok(Requeued::Untouched);
        }
        let reverts: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM merge_guards WHERE task_id = $1 AND state = 'reverted' \
             AND revert_state IS DISTINCT FROM 'conflict'",
        )
        .bind(g.task_id)
        .fetch_one(&mut *tx)
        .await?;
        let fail = reverts >= MAX_REVERTS;
        let step = lifecycle::GUARD_REVERT;
        let reason = if fail {
            "reverted_too_often"
        } else {
            "guard_reverted"
        };
        let error = if fail {
            format!(
                "{error}; the task was reverted {reverts} times, so it fails. Fix the issue text or the \
                 repository's CI, then `backporcher requeue {}`",
                g.task_id
            )
        } else {
            error.to_owned()
        };
        let moved = sqlx::query_scalar::<_, String>(
            "UPDATE tasks SET status = CASE WHEN $3 THEN 'failed' ELSE 'queued' END, \
               terminal_reason = CASE WHEN $3 THEN 'ci_failed' END, error = $4, \
               resume_branch = false, retry_context = retry_context || jsonb_build_array($5::jsonb), \
               pr_number = CASE WHEN $3 THEN pr_number END, pr_url = CASE WHEN $3 THEN pr_url END, \
               head_sha = CASE WHEN $3 THEN head_sha END, review = CASE WHEN $3 THEN review END, \
               lease_token = NULL, lease_expires_at = NULL, lost_count = 0, stage_tries = 0, \
               ev_seq = ev_seq + 1, ev_actor = $6, ev_reason = $7, ev_data = $8 \
             WHERE id = $1 AND status = ANY($2) RETURNING status",
        )
        .bind(g.task_id)
        .bind(status_texts(step.from))
        .bind(fail)
        .bind(&error)
        .bind(context)
        .bind(ACTOR)
        .bind(reason)
        .bind(data)
        .fetch_optional(&mut *tx)
        .await;
        let moved = match moved {
            Ok(m) => m,
            // A new task for the issue is live meanwhile: this one stays as it is.
            Err(e) if super::is_unique_violation(&e, "tasks_live_issue") => None,
            Err(e) => return Err(e.into()),
        };
        let outcome = match moved.as_deref() {
            Some("failed") => Requeued::Failed,
            Some(_) => Requeued::Queued,
            None => Requeued::Untouched,
        };
        if outcome == Requeued::Untouched {
            note_in(&mut tx, g.task_id, "guard_not_requeued", data).await?;
        }
        let text: String = sqlx::query_scalar(
            "SELECT format('[%s] task %s was reverted (%s): %s', r.name, t.id, $2, left(t.issue_title, 120)) \
             FROM tasks t JOIN repos r ON r.id = t.repo_id WHERE t.id = $1",
        )
        .bind(g.task_id)
        .bind(match (outcome, &g.revert_pr_url) {
            (Requeued::Failed, Some(u)) => format!("{u}; failed: reverted too often"),
            (_, Some(u)) => format!("{u}; re-queued"),
            (Requeued::Failed, None) => "failed: reverted too often".to_owned(),
            (_, None) => "re-queued".to_owned(),
        })
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO notify_outbox (kind, task_id, repo_id, text) VALUES ('reverted', $1, $2, $3)",
        )
        .bind(g.task_id)
        .bind(g.repo_id)
        .bind(&text)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(super::wake::Channel::Notify.name())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE merge_guards SET requeued = true, updated_at = now() WHERE id = $1")
            .bind(g.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// One guarded change of a guard row (`set` may use `$3`, `$4` from `args`) and its timeline
    /// entry, in one transaction; `false` when `when` no longer held.
    /// Counts a failed step of `g` (a non-transient error), on the task's timeline
    /// (`guard_step_failed`); at the [`MAX_GUARD_ERRORS`]th the watch ends as `unknown`
    /// (`step_failed`) and is left to a person. Returns whether it ended.
    pub async fn guard_step_failed(&self, g: &MergeGuard, why: &str) -> Result<bool> {
        self.guard_step(
            g,
            LIVE,
            &format!(
                "errors = errors + 1, \
                 state = CASE WHEN errors + 1 >= {MAX_GUARD_ERRORS} THEN 'unknown' ELSE state END, \
                 reason = CASE WHEN errors + 1 >= {MAX_GUARD_ERRORS} THEN 'step_failed' ELSE reason END"
            ),
            &[],
            "guard_step_failed",
            json!({"error": why, "merge": g.merge_sha, "gives_up_after": MAX_GUARD_ERRORS}),
        )
        .await?;
        let live: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {LIVE} FROM merge_guards WHERE id = $1"
        )))
        .bind(g.id)
        .fetch_one(&self.pool)
        .await?;
        Ok(!live)
    }

    async fn guard_step(
        &self,
        g: &MergeGuard,
        when: &str,
        set: &str,
        args: &[&str],
        reason: &str,
        data: Value,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE merge_guards SET {set}, updated_at = now() WHERE id = $1 AND repo_id = $2 AND {when}"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(g.id)
            .bind(g.repo_id);
        for a in args {
            q = q.bind(*a);
        }
        let n = q.execute(&mut *tx).await?.rows_affected();
        if n == 1 {
            note_in(&mut tx, g.task_id, reason, &data).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }
}

/// A timeline entry on the task without a change of status.
async fn note_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    task: TaskId,
    reason: &str,
    data: &Value,
) -> Result<()> {
    sqlx::query(
        "UPDATE tasks SET ev_seq = ev_seq + 1, ev_actor = $2, ev_reason = $3, ev_data = $4 WHERE id = $1",
    )
    .bind(task)
    .bind(ACTOR)
    .bind(reason)
    .bind(data)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
