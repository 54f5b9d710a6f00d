//! What the forge side of the controller stores: webhook deliveries seen, PR feedback acted on,
//! the poller's ETags, the timeline cursor of GitHub milestones, and the controller stages
//! (push, review, CI, merge) as leased work items.
//!
//! A stage is due when its task enters a stage status (a trigger sets `stage_due_at`); a worker
//! takes it with a short stage lease (`FOR UPDATE SKIP LOCKED`, so replicas never work on the
//! same stage at once), and either moves the task on (which schedules the next stage) or puts it
//! back with a delay.

use std::time::Duration;

use serde_json::Value;

use super::model::{RepoId, Status, TaskEvent, TaskId, status_texts, task_columns};
use super::{Note, Result, Store, Task, model};

/// Statuses in which the controller (not a runner) works on a task.
pub const STAGE_STATUSES: &[Status] = &[
    Status::Pushing,
    Status::PrOpen,
    Status::Reviewing,
    Status::CiWait,
    Status::Merging,
];

impl Store {
    /// Whether a webhook delivery was handled already.
    pub async fn delivery_seen(&self, delivery: &str) -> Result<bool> {
        Ok(sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE delivery_id = $1)",
        )
        .bind(delivery)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The live task of an issue, if there is one.
    pub async fn live_task_of_issue(&self, repo: RepoId, issue: i64) -> Result<Option<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE repo_id = $1 AND issue_number = $2 ",
            "AND status NOT IN ('merged', 'failed', 'canceled')"
        ))
        .bind(repo)
        .bind(issue)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records a handled webhook delivery id; `false` when it was recorded before.
    pub async fn record_delivery(&self, delivery: &str, event: &str) -> Result<bool> {
        Ok(sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, event) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(delivery)
        .bind(event)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// The live task whose PR is `number` in repository `repo`.
    pub async fn task_by_pr(&self, repo: &str, number: i64) -> Result<Option<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE repo_id = (SELECT id FROM repos WHERE name = $1) AND pr_number = $2 ",
            "AND status NOT IN ('merged', 'failed', 'canceled') ORDER BY id DESC LIMIT 1"
        ))
        .bind(repo)
        .bind(number)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Re-opens a task for PR feedback `key` unless that feedback was acted on already
    /// (`Ok(None)`). One transaction: the key and the transition land together.
    pub async fn reopen_once(
        &self,
        id: TaskId,
        key: &str,
        context: &Value,
        note: &Note,
    ) -> Result<Option<Task>> {
        let mut tx = self.pool.begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO task_feedback (task_id, key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(key)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(None);
        }
        let row = super::tasks::reopen_in(&mut tx, id, context, note).await?;
        match row {
            Some(t) => {
                tx.commit().await?;
                Ok(Some(t))
            }
            None => {
                drop(tx);
                Err(self.refused(id, model::REOPEN).await)
            }
        }
    }

    /// The poller's ETag for a repository.
    pub async fn poll_etag(&self, repo: RepoId) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT poll_etag FROM repos WHERE id = $1")
                .bind(repo)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// Stores the poller's ETag.
    pub async fn set_poll_etag(&self, repo: RepoId, etag: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE repos SET poll_etag = $2 WHERE id = $1")
            .bind(repo)
            .bind(etag)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Issue tasks with timeline entries not yet reflected on GitHub (oldest first).
    pub async fn forge_pending(&self, limit: i64) -> Result<Vec<(TaskId, i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT id, forge_event_id, ev_seq FROM tasks \
             WHERE source = 'issue' AND forge_synced_seq < ev_seq ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A task's timeline entries after event `after`.
    pub async fn events_after(&self, task: TaskId, after: i64) -> Result<Vec<TaskEvent>> {
        Ok(sqlx::query_as(
            "SELECT id, task_id, at, actor, from_status, to_status, reason, attempt, data \
             FROM task_events WHERE task_id = $1 AND id > $2 ORDER BY id",
        )
        .bind(task)
        .bind(after)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks events up to `event` applied; `seq` is the `ev_seq` read with them (later events
    /// keep the task pending).
    pub async fn mark_forge_synced(
        &self,
        task: TaskId,
        event: i64,
        seq: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET forge_event_id = GREATEST(forge_event_id, $2), \
             forge_synced_seq = CASE WHEN $3::bigint IS NULL THEN forge_synced_seq ELSE GREATEST(forge_synced_seq, $3) END \
             WHERE id = $1",
        )
        .bind(task)
        .bind(event)
        .bind(seq)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes up to `limit` due stage work items in `statuses`, leasing each for `lease`.
    pub async fn claim_stages(
        &self,
        statuses: &[Status],
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET stage_lease_until = now() + make_interval(secs => $2) ",
            "WHERE id IN (SELECT id FROM tasks WHERE status = ANY($1) AND stage_due_at <= now() ",
            "AND (stage_lease_until IS NULL OR stage_lease_until < now()) ",
            "ORDER BY stage_due_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
            task_columns!()
        ))
        .bind(status_texts(statuses))
        .bind(lease.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
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
             WHERE id = $1 AND status = $2",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(delay.as_secs_f64())
        .bind(failed)
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
