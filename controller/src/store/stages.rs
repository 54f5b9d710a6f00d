//! The controller stages (push, review, CI, merge) as leased work items, and what they record.
//!
//! A stage is due when its task enters a stage status (a trigger sets `stage_due_at`); a worker
//! takes it with a short stage lease (`FOR UPDATE SKIP LOCKED`, so replicas never work on the
//! same stage at once) that names its process, and either moves the task on (which schedules the
//! next stage) or puts it back with a delay. Only the holder renews or puts back a live lease; a
//! holder whose lease lapsed and was taken learns it at its next renewal and stops.

use std::time::Duration;

use serde_json::Value;

use super::lifecycle::{Status, TaskId, status_texts, task_columns};
use super::{Result, Store, Task};

/// Statuses in which the controller (not a runner) works on a task.
pub const STAGE_STATUSES: &[Status] = &[
    Status::Pushing,
    Status::PrOpen,
    Status::Reviewing,
    Status::CiWait,
    Status::Merging,
];

impl Store {
    /// Takes up to `limit` due stage work items in `statuses`, leasing each for `lease`.
    pub async fn claim_stages(
        &self,
        statuses: &[Status],
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET stage_lease_until = now() + make_interval(secs => $2), stage_lease_holder = $4 ",
            "WHERE id IN (SELECT id FROM tasks WHERE status = ANY($1) AND stage_due_at <= now() ",
            "AND (stage_lease_until IS NULL OR stage_lease_until < now()) ",
            // Work nearest the merge first: a busy pipeline finishes what it started before it
            // opens more (the `ci_wait` → merged tail stays short), and nothing starves, since
            // later stages only come from earlier ones.
            "ORDER BY CASE status WHEN 'merging' THEN 0 WHEN 'ci_wait' THEN 1 WHEN 'reviewing' THEN 2 ",
            "WHEN 'pr_open' THEN 3 ELSE 4 END, stage_due_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
            task_columns!()
        ))
        .bind(status_texts(statuses))
        .bind(lease.as_secs_f64())
        .bind(limit)
        .bind(self.replica)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Extends the stage lease of a task whose step is still running (a lease the status change
    /// cleared stays cleared: the next stage is due). `false` when another controller holds the
    /// stage now (this one's lease lapsed and was taken): stop working on it.
    pub async fn extend_stage_lease(&self, id: TaskId, lease: Duration) -> Result<bool> {
        let row: Option<(Option<uuid::Uuid>,)> = sqlx::query_as(
            "UPDATE tasks SET stage_lease_until = CASE WHEN stage_lease_holder = $4 \
                 THEN now() + make_interval(secs => $3) ELSE stage_lease_until END \
             WHERE id = $1 AND status = ANY($2) AND stage_lease_until IS NOT NULL \
             RETURNING stage_lease_holder",
        )
        .bind(id)
        .bind(status_texts(STAGE_STATUSES))
        .bind(lease.as_secs_f64())
        .bind(self.replica)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some((holder,)) => holder == Some(self.replica),
            // No live stage lease: the step moved the task on, nobody else works on it.
            None => true,
        })
    }

    /// Puts a stage back to be looked at after `delay` (`failed`: counts a transient failure).
    pub async fn reschedule_stage(
        &self,
        id: TaskId,
        status: Status,
        delay: Duration,
        failed: bool,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET stage_due_at = now() + make_interval(secs => $3), \
             stage_lease_until = NULL, stage_tries = stage_tries + CASE WHEN $4 THEN 1 ELSE 0 END \
             WHERE id = $1 AND status = $2 \
               AND (stage_lease_holder = $5 OR stage_lease_until IS NULL OR stage_lease_until < now())",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(delay.as_secs_f64())
        .bind(failed)
        .bind(self.replica)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records what the push put on the forge.
    pub async fn set_pushed(
        &self,
        id: TaskId,
        head_sha: &str,
        changed_files: &[String],
    ) -> Result<()> {
        sqlx::query("UPDATE tasks SET head_sha = $2, changed_files = $3 WHERE id = $1")
            .bind(id)
            .bind(head_sha)
            .bind(changed_files)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The key that marks the pull request the controller opened for a task (in its body).
    pub async fn pr_key(&self, id: TaskId) -> Result<uuid::Uuid> {
        sqlx::query_scalar("SELECT pr_key FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(super::Error::TaskNotFound(id))
    }

    /// Records the reviewer's verdict.
    pub async fn set_review(&self, id: TaskId, review: &Value) -> Result<()> {
        sqlx::query("UPDATE tasks SET review = $2 WHERE id = $1")
            .bind(id)
            .bind(review)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Data the runner reported with the attempt's result.
    pub async fn result_data(&self, id: TaskId, attempt: i32) -> Result<Option<Value>> {
        Ok(
            sqlx::query_scalar("SELECT data FROM task_results WHERE task_id = $1 AND attempt = $2")
                .bind(id)
                .bind(attempt)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }
}
