//! What is happening right now, for the dashboard's agent view (`GET /api/activity`): every live
//! task with the stage it is in and since when, whether a controller worker holds its stage, and
//! the controller's own model calls (triage, review, reflection) most recently made, and the
//! claims on triage and reflection work held now (`work.rs`). Bounded: live
//! tasks are read through the `tasks_live` partial index (at most [`MAX_LIVE`]), recent calls from
//! the newest ledger rows only.

use chrono::{DateTime, Utc};

use super::lifecycle::TaskId;
use super::{Result, Store};

/// Most live tasks returned (the newest first past this).
pub const MAX_LIVE: i64 = 500;
/// Newest ledger rows searched for each purpose's last call.
const RECENT_CALLS: i64 = 2000;

/// A live task and its place in the pipeline.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LiveTask {
    /// The task.
    pub id: TaskId,
    /// Its repository (`owner/name`).
    pub repo: String,
    /// Its title.
    pub title: String,
    /// Its status (the stage it is in).
    pub status: String,
    /// Its hold, if any.
    pub hold: Option<String>,
    /// Model of its agent.
    pub model: String,
    /// Attempt number.
    pub attempt: i32,
    /// The runner of its lease, while it has one.
    pub runner_id: Option<i64>,
    /// When it entered its current status.
    pub since: DateTime<Utc>,
    /// Whether a controller worker holds its stage now (push, review, CI, merge).
    pub stage_worked: bool,
    /// Which controller replica holds it.
    pub stage_holder: Option<String>,
}

/// The last model call the controller made for one purpose.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LastCall {
    /// `triage`, `review`, `reflection`, …
    pub purpose: String,
    /// When.
    pub at: DateTime<Utc>,
    /// For which task.
    pub task_id: Option<TaskId>,
    /// Which model.
    pub model: String,
    /// What it cost, micro-dollars.
    pub cost_microusd: i64,
    /// Calls for this purpose in the last hour (among the newest ledger rows).
    pub last_hour: i64,
}

/// Today's activity.
#[derive(Debug, Clone)]
pub struct Activity {
    /// Live tasks, oldest first.
    pub live: Vec<LiveTask>,
    /// The last call per purpose (not the agents' own metered rows).
    pub last_calls: Vec<LastCall>,
    /// Live claims on model-call work (`triage`, `reflection`): (kind, task) being worked on now.
    pub claims: Vec<(String, TaskId)>,
}

/// Live tasks: the status list is `Status::TERMINAL` written out for the `tasks_live` index.
const LIVE_SQL: &str = "SELECT * FROM ( \
       SELECT t.id, r.name AS repo, t.issue_title AS title, t.status, t.hold_kind AS hold, t.model, t.attempt, \
              t.runner_id, \
              COALESCE((SELECT max(e.at) FROM task_events e WHERE e.task_id = t.id AND e.to_status = t.status), \
                       t.updated_at) AS since, \
              COALESCE(t.stage_lease_until > now(), false) AS stage_worked, \
              t.stage_lease_holder::text AS stage_holder \
       FROM tasks t JOIN repos r ON r.id = t.repo_id \
       WHERE t.status NOT IN ('merged', 'failed', 'canceled', 'finished') ORDER BY t.id DESC LIMIT $1) l \
     ORDER BY id";

impl Store {
    /// What every live task and the controller's own agents are doing now.
    pub async fn activity(&self) -> Result<Activity> {
        let live = sqlx::query_as(LIVE_SQL)
            .bind(MAX_LIVE)
            .fetch_all(&self.pool)
            .await?;
        let last_calls = sqlx::query_as(
            "SELECT DISTINCT ON (purpose) purpose, at, task_id, model, cost_microusd, \
                    count(*) FILTER (WHERE at > now() - interval '1 hour') OVER (PARTITION BY purpose) AS last_hour \
             FROM (SELECT * FROM usage_ledger ORDER BY id DESC LIMIT $1) u \
             WHERE purpose <> 'agent' ORDER BY purpose, at DESC, id DESC",
        )
        .bind(RECENT_CALLS)
        .fetch_all(&self.pool)
        .await?;
        let claims = sqlx::query_as(
            "SELECT kind, key FROM work_claims WHERE until > now() AND kind IN ('triage', 'reflection') \
             ORDER BY kind, key LIMIT $1",
        )
        .bind(MAX_LIVE)
        .fetch_all(&self.pool)
        .await?;
        Ok(Activity {
            live,
            last_calls,
            claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::lifecycle::{Status, sql_list};
    use super::*;

    #[test]
    fn the_live_list_matches_the_partial_index() {
        assert!(LIVE_SQL.contains(&format!("status NOT IN {}", sql_list(Status::TERMINAL))));
    }
}
