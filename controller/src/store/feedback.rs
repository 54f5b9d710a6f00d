//! The pipeline's feedback loops in storage: reflection holds and their diagnoses, learnings, the
//! per-repository circuit breaker, and the notification outbox.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::lifecycle::{RepoId, Status, TaskId, status_texts, task_columns};
use super::{Result, Store, Task};

/// A notification waiting to be sent.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Notification {
    /// Id.
    pub id: i64,
    /// `approval_hold`, `failed`, `merged`, `paused`.
    pub kind: String,
    /// Task, when about one.
    pub task_id: Option<TaskId>,
    /// The message.
    pub text: String,
    /// Sends tried so far.
    pub attempts: i32,
}

impl Store {
    /// Whether failures are held for reflection (a controller with a model sets it).
    pub async fn set_reflection_enabled(&self, on: bool) -> Result<()> {
        sqlx::query("UPDATE settings SET reflection_enabled = $1")
            .bind(on)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets how many leases in a row a task may lose before it fails (at least 1).
    pub async fn set_max_lease_losses(&self, n: u32) -> Result<()> {
        sqlx::query("UPDATE settings SET max_lease_losses = $1")
            .bind(i32::try_from(n.max(1)).unwrap_or(i32::MAX))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Tasks held for reflection, oldest first.
    pub async fn reflection_pending(&self, limit: i64) -> Result<Vec<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE status = 'queued' AND hold_kind = 'reflection' ORDER BY updated_at LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Adds the diagnosis to the retry context and releases the reflection hold.
    pub async fn finish_reflection(&self, id: TaskId, diagnosis: Option<&Value>) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE tasks SET hold_kind = NULL, hold_until = NULL, hold_by = NULL, \
             retry_context = CASE WHEN $2::jsonb IS NULL THEN retry_context ELSE retry_context || jsonb_build_array($2::jsonb) END, \
             ev_seq = ev_seq + 1, ev_actor = 'controller', ev_reason = 'reflected', ev_data = $2 \
             WHERE id = $1 AND status = 'queued' AND hold_kind = 'reflection'",
        )
        .bind(id)
        .bind(diagnosis)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Ended tasks (merged or failed) without a learning for their last outcome.
    pub async fn learnings_pending(&self, limit: i64) -> Result<Vec<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks t WHERE status = ANY($2) AND finished_at > now() - interval '7 days' ",
            "AND NOT EXISTS (SELECT 1 FROM learnings l WHERE l.task_id = t.id \
               AND (l.outcome_at = t.finished_at OR l.created_at >= t.finished_at)) ",
            "ORDER BY finished_at LIMIT $1"
        ))
        .bind(limit)
        .bind(status_texts(Status::OUTCOMES))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records a learning, once per outcome of a task (keyed by when the task ended, so a
    /// replica that recorded it first wins); whether this call recorded it.
    pub async fn add_learning(
        &self,
        repo: RepoId,
        task: Option<TaskId>,
        outcome: &str,
        summary: &str,
    ) -> Result<bool> {
        Ok(sqlx::query(
            "INSERT INTO learnings (repo_id, task_id, outcome, summary, outcome_at) \
             VALUES ($1, $2, $3, $4, (SELECT finished_at FROM tasks WHERE id = $2)) \
             ON CONFLICT DO NOTHING",
        )
        .bind(repo)
        .bind(task)
        .bind(outcome)
        .bind(summary)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// The last `n` learnings of a repository, newest first.
    pub async fn recent_learnings(&self, repo: RepoId, n: i64) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT outcome, summary FROM learnings WHERE repo_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(repo)
        .bind(n)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Trips the repository's breaker when its failures since the window start (or the last
    /// trip) reach the threshold; returns when it releases if it tripped now. A person's (or the
    /// timeout's) denial of a plan is no failure of the repository.
    pub async fn trip_breaker_if_needed(&self, repo: RepoId) -> Result<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            "UPDATE repos r SET breaker_until = now() + make_interval(secs => r.breaker_cooldown_secs) \
             WHERE r.id = $1 AND (r.breaker_until IS NULL OR r.breaker_until <= now()) \
               AND (SELECT count(*) FROM tasks t WHERE t.repo_id = r.id AND t.status = 'failed' \
                      AND t.terminal_reason NOT IN ('dependency_failed', 'canceled_by_user', 'plan_rejected', 'plan_timed_out') \
                      AND t.finished_at > GREATEST(now() - make_interval(secs => r.breaker_window_secs), \
                                                   COALESCE(r.breaker_until, '-infinity'))) >= r.breaker_threshold \
             RETURNING breaker_until",
        )
        .bind(repo)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Queues a notification not tied to a task event.
    pub async fn enqueue_notification(
        &self,
        kind: &str,
        repo: Option<RepoId>,
        text: &str,
    ) -> Result<()> {
        sqlx::query("INSERT INTO notify_outbox (kind, repo_id, text) VALUES ($1, $2, $3)")
            .bind(kind)
            .bind(repo)
            .bind(text)
            .execute(&self.pool)
            .await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(super::wake::Channel::Notify.name())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Notifications due now.
    pub async fn notifications_due(&self, limit: i64) -> Result<Vec<Notification>> {
        Ok(sqlx::query_as(
            "SELECT id, kind, task_id, text, attempts FROM notify_outbox WHERE next_at <= now() ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Those of the notifications `ids` still waiting, oldest first.
    pub async fn notifications_among(&self, ids: &[i64]) -> Result<Vec<Notification>> {
        Ok(sqlx::query_as(
            "SELECT id, kind, task_id, text, attempts FROM notify_outbox WHERE id = ANY($1) AND next_at <= now() ORDER BY id",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Drops a sent (or hopeless) notification.
    pub async fn notification_done(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM notify_outbox WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Retries a notification later (backoff doubling from 5 s).
    pub async fn notification_retry(&self, id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE notify_outbox SET attempts = attempts + 1, \
             next_at = now() + make_interval(secs => least(3600, 5 * power(2, attempts))) WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Store {
    /// Those of the tasks `ids` that are in `status` now, oldest first.
    pub async fn tasks_in_among(&self, status: super::Status, ids: &[TaskId]) -> Result<Vec<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE status = $1 AND id = ANY($2) ORDER BY id"
        ))
        .bind(status.as_str())
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Tasks in `status`, oldest first.
    pub async fn tasks_in(&self, status: super::Status, limit: i64) -> Result<Vec<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE status = $1 ORDER BY id LIMIT $2"
        ))
        .bind(status.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A repository's tasks that were dispatched and have not ended (queued through merging).
    /// Best-of-N candidates are not among them: they end as `finished`, never merged, and a
    /// task told to wait for one would wait for ever; their parent stands for them.
    pub async fn in_flight(&self, repo: RepoId) -> Result<Vec<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE repo_id = $1 AND status = ANY($2) AND parent_id IS NULL ORDER BY id"
        ))
        .bind(repo)
        .bind(status_texts(&Status::in_flight()))
        .fetch_all(&self.pool)
        .await?)
    }
}
