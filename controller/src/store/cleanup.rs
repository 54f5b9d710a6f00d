//! The cleanup sweep's rows: ended tasks whose PR and branch may still be on GitHub, past the age
//! their end status allows ([`Sweep`]), and the mark that one was dealt with.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{RepoId, Result, Store, TaskId};

/// How long after its end each kind of ended task keeps its PR and branch (`None`: for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Failed tasks.
    pub failed: Option<Duration>,
    /// Canceled tasks.
    pub canceled: Option<Duration>,
    /// Merged tasks.
    pub merged: Option<Duration>,
}

/// When the sweep deals with what ended tasks left on GitHub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// Ages per end status.
    pub sweep: Sweep,
    /// Time between two sweeps.
    pub interval: Duration,
}

impl Default for CleanupPolicy {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            sweep: Sweep {
                failed: Some(Duration::from_secs(7 * DAY)),
                canceled: Some(Duration::from_secs(DAY)),
                merged: Some(Duration::from_secs(DAY)),
            },
            interval: Duration::from_secs(3600),
        }
    }
}

impl CleanupPolicy {
    /// The same kinds with no age: every ended task whose kind is swept at all (the on-demand
    /// `cleanup --now`).
    pub fn immediate(&self) -> Sweep {
        let now = |d: Option<Duration>| d.map(|_| Duration::ZERO);
        Sweep {
            failed: now(self.sweep.failed),
            canceled: now(self.sweep.canceled),
            merged: now(self.sweep.merged),
        }
    }
}

/// An ended task with something to sweep.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Leftover {
    /// Task.
    pub id: TaskId,
    /// Its repository.
    pub repo_id: RepoId,
    /// `owner/name`.
    pub repo: String,
    /// The repository's default branch (never deleted).
    pub default_branch: String,
    /// How it ended (`failed`, `canceled` or `merged`).
    pub status: String,
    /// Its branch.
    pub branch: Option<String>,
    /// Its PR.
    pub pr_number: Option<i64>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
}

impl Store {
    /// Ended tasks (of `repo`, if given) past their age under `sweep` that have a branch or a PR
    /// and were not swept since they ended, oldest first, at most `limit`.
    pub async fn leftovers(
        &self,
        sweep: &Sweep,
        repo: Option<RepoId>,
        limit: i64,
    ) -> Result<Vec<Leftover>> {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        Ok(sqlx::query_as(
            "SELECT t.id, t.repo_id, r.name AS repo, r.default_branch, t.status, t.branch, \
                    t.pr_number, t.finished_at \
             FROM tasks t JOIN repos r ON r.id = t.repo_id \
             WHERE t.finished_at IS NOT NULL \
               AND (t.swept_at IS NULL OR t.swept_at < t.finished_at) \
               AND (t.branch IS NOT NULL OR t.pr_number IS NOT NULL) \
               AND ($4::bigint IS NULL OR t.repo_id = $4) \
               AND ((t.status = 'failed' AND $1::float8 IS NOT NULL \
                       AND t.finished_at <= now() - make_interval(secs => $1)) \
                 OR (t.status = 'canceled' AND $2::float8 IS NOT NULL \
                       AND t.finished_at <= now() - make_interval(secs => $2)) \
                 OR (t.status = 'merged' AND $3::float8 IS NOT NULL \
                       AND t.finished_at <= now() - make_interval(secs => $3))) \
             ORDER BY t.finished_at, t.id LIMIT $5",
        )
        .bind(secs(sweep.failed))
        .bind(secs(sweep.canceled))
        .bind(secs(sweep.merged))
        .bind(repo)
        .bind(limit.clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks a task swept (until it ends again).
    pub async fn mark_swept(&self, id: TaskId) -> Result<()> {
        sqlx::query("UPDATE tasks SET swept_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
