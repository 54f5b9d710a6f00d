//! The cursor of GitHub milestones: which timeline entries of an issue's task are already
//! reflected on GitHub (labels and comments), so each is applied once.

use super::lifecycle::{TaskEvent, TaskId};
use super::{Result, Store};

impl Store {
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

    /// A task's milestone cursor and the `ev_seq` read with it, while it has entries not yet
    /// reflected on GitHub.
    pub async fn forge_cursor(&self, task: TaskId) -> Result<Option<(i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT forge_event_id, ev_seq FROM tasks WHERE id = $1 AND forge_synced_seq < ev_seq",
        )
        .bind(task)
        .fetch_optional(&self.pool)
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
}
