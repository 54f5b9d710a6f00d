//! The merge queue (`merge_queue`, migration 0036): which tasks of a repository are ready to merge,
//! in which order, and which one holds the repository's merge slot.
//!
//! A task enters when CI is first green on its head and keeps its place (the time it entered)
//! through an approval hold. The order is the task's priority (lower first), then the number of
//! queued siblings whose changed files it shares (fewer first: a change that touches nothing else
//! queued cannot make anyone refresh), then the time it entered. One entry per repository holds
//! the slot: the one holding it keeps it until it merges or leaves the merge path (or is held);
//! otherwise the first entry in order that is neither held nor waiting for approval takes it. The
//! slot is taken under a transaction-level advisory lock per repository and a unique index
//! allows one holder, so replicas never merge two changes of one repository at once.
//!
//! Leaving is the database's job: a trigger removes the entry, with a `merge_queue_left` timeline
//! entry naming why, whenever the task's status leaves `ci_wait`/`approval_hold`/`merging`.
//! The pipeline ([`crate::pipeline`]) decides what to do with the slot; this module only records.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::lifecycle::{RepoId, Status, TaskId};
use super::{Result, Store};

/// Times the head's branch may be brought up to date with a moving default branch before the
/// task fails instead of trying again (the default branch moves faster than its CI).
pub const MAX_REFRESHES: i32 = 10;

/// Longest a task may hold its repository's merge slot (CI on the up-to-date head included)
/// before it fails and frees the slot for the next one.
pub const MAX_SLOT_SECS: i64 = 6 * 3600;

/// Namespace of the advisory locks taken per repository (with the repository id).
const LOCK_SPACE: i32 = 0x6d71; // "mq"

/// One queued task, in queue order, with what it waits for.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct QueueEntry {
    /// The task.
    pub task_id: TaskId,
    /// Its repository.
    pub repo_id: RepoId,
    /// When it entered (its place among equals).
    pub entered_at: DateTime<Utc>,
    /// Approved (by a person, or full-auto).
    pub approved: bool,
    /// The head CI was last green on.
    pub green_head: Option<String>,
    /// Whether it holds the merge slot.
    pub merging: bool,
    /// Since when it holds the slot.
    pub slot_at: Option<DateTime<Utc>>,
    /// Times its branch was brought up to date while queued.
    pub refreshes: i32,
    /// The task's status.
    #[sqlx(try_from = "String")]
    pub status: Status,
    /// Whether the task is held (any hold).
    pub held: bool,
    /// The task's priority (lower first).
    pub priority: i32,
    /// Queued siblings whose changed files it shares.
    pub overlaps: i64,
    /// Its place, 1 = first.
    pub position: i64,
}

impl QueueEntry {
    /// What the entry waits for, in a few words.
    pub fn waiting_for(&self) -> &'static str {
        if self.merging {
            match self.status {
                Status::CiWait => "CI on the up-to-date branch",
                _ => "its merge",
            }
        } else if self.held {
            "its hold to be released"
        } else if self.status == Status::ApprovalHold {
            "approval"
        } else if self.status == Status::CiWait {
            "CI on its refreshed branch"
        } else {
            "its turn"
        }
    }
}

/// What taking the merge slot found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// The task holds the slot now.
    Taken,
    /// Another task holds it or comes first: the task's place and the one ahead.
    Wait {
        /// The task's place.
        position: i64,
        /// The task holding the slot or next in line.
        behind: TaskId,
    },
    /// The task is not queued.
    NotQueued,
}

/// The queue of one repository in order; the shared SELECT.
const ORDERED: &str = "\
WITH q AS (
    SELECT m.task_id, m.repo_id, m.entered_at, m.approved, m.green_head, m.merging, m.slot_at,
           m.refreshes, t.status, (t.hold_kind IS NOT NULL) AS held, t.priority,
           (SELECT count(*) FROM merge_queue o JOIN tasks ot ON ot.id = o.task_id
             WHERE o.repo_id = m.repo_id AND o.task_id <> m.task_id
               AND ot.changed_files && t.changed_files) AS \"overlaps\"
      FROM merge_queue m JOIN tasks t ON t.id = m.task_id
     WHERE m.repo_id = $1
)
SELECT q.*, row_number() OVER (ORDER BY merging DESC, priority, \"overlaps\", entered_at, task_id) AS position
  FROM q ORDER BY position";

impl Store {
    /// Puts a task whose CI is green on `green_head` in its repository's queue (a task approved
    /// before it was queued joins without one: CI is looked at again before it merges), or, when
    /// it is there already, records the new green head (and the approval, which is never taken back
    /// while it stays queued). The first entry writes a `merge_queue_entered` timeline entry.
    pub async fn enter_merge_queue(
        &self,
        task: TaskId,
        green_head: Option<&str>,
        approved: bool,
    ) -> Result<QueueEntry> {
        let mut tx = self.pool.begin().await?;
        let inserted: Option<(RepoId, bool)> = sqlx::query_as(
            "INSERT INTO merge_queue (task_id, repo_id, green_head, approved) \
             SELECT id, repo_id, $2, $3 FROM tasks WHERE id = $1 AND status = ANY($4) \
             ON CONFLICT (task_id) DO UPDATE SET \
                 green_head = COALESCE(EXCLUDED.green_head, merge_queue.green_head), \
                 approved = merge_queue.approved OR EXCLUDED.approved \
             RETURNING repo_id, (xmax = 0)",
        )
        .bind(task)
        .bind(green_head)
        .bind(approved)
        .bind(vec!["ci_wait", "approval_hold", "merging"])
        .fetch_optional(&mut *tx)
        .await?;
        let Some((repo, fresh)) = inserted else {
            return Err(super::Error::Conflict(format!(
                "task {task} is not ready to merge; only a task whose CI is green joins the merge queue"
            )));
        };
        let entries = ordered(&mut tx, repo).await?;
        let entry = entries
            .into_iter()
            .find(|e| e.task_id == task)
            .ok_or(super::Error::TaskNotFound(task))?;
        if fresh {
            sqlx::query(
                "INSERT INTO task_events (task_id, actor, from_status, to_status, reason, attempt, data) \
                 SELECT id, 'controller', status, status, 'merge_queue_entered', attempt, $2 \
                 FROM tasks WHERE id = $1",
            )
            .bind(task)
            .bind(json!({"position": entry.position, "head": green_head, "overlaps": entry.overlaps}))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(entry)
    }

    /// Marks a queued task approved (a person approved it, or the repository is full-auto).
    pub async fn approve_queued(&self, task: TaskId) -> Result<()> {
        sqlx::query("UPDATE merge_queue SET approved = true WHERE task_id = $1")
            .bind(task)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The queue of `repo` in order.
    pub async fn merge_queue(&self, repo: RepoId) -> Result<Vec<QueueEntry>> {
        let mut conn = self.pool.acquire().await?;
        ordered(&mut conn, repo).await
    }

    /// A task's entry with its place, if it is queued.
    pub async fn queue_entry(&self, task: TaskId) -> Result<Option<QueueEntry>> {
        let repo: Option<(RepoId,)> =
            sqlx::query_as("SELECT repo_id FROM merge_queue WHERE task_id = $1")
                .bind(task)
                .fetch_optional(&self.pool)
                .await?;
        let Some((repo,)) = repo else {
            return Ok(None);
        };
        Ok(self
            .merge_queue(repo)
            .await?
            .into_iter()
            .find(|e| e.task_id == task))
    }

    /// Takes the merge slot of the task's repository for `task` when it may have it: it holds it
    /// already, or nobody holds it validly (a holder that is held, or no longer on the merge
    /// path, loses it) and `task` is the first entry that is neither held nor waiting for
    /// approval.
    pub async fn take_merge_slot(&self, task: TaskId) -> Result<Slot> {
        let mut tx = self.pool.begin().await?;
        let repo: Option<(RepoId,)> =
            sqlx::query_as("SELECT repo_id FROM merge_queue WHERE task_id = $1")
                .bind(task)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((repo,)) = repo else {
            return Ok(Slot::NotQueued);
        };
        // One decision per repository at a time, whatever the replica.
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2::int)")
            .bind(LOCK_SPACE)
            .bind(i32::try_from(repo % i64::from(i32::MAX)).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        let entries = ordered(&mut tx, repo).await?;
        let Some(me) = entries.iter().find(|e| e.task_id == task) else {
            return Ok(Slot::NotQueued);
        };
        let eligible =
            |e: &&QueueEntry| !e.held && matches!(e.status, Status::CiWait | Status::Merging);
        let holder = entries.iter().filter(|e| e.merging).find(eligible);
        let next = holder.or_else(|| entries.iter().find(eligible));
        match next {
            Some(h) if h.task_id == task => {
                if !me.merging {
                    sqlx::query(
                        "UPDATE merge_queue SET merging = false, slot_at = NULL \
                         WHERE repo_id = $1 AND merging AND task_id <> $2",
                    )
                    .bind(repo)
                    .bind(task)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE merge_queue SET merging = true, slot_at = now() WHERE task_id = $1",
                    )
                    .bind(task)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Slot::Taken)
            }
            Some(h) => Ok(Slot::Wait {
                position: me.position,
                behind: h.task_id,
            }),
            None => Ok(Slot::Wait {
                position: me.position,
                behind: task,
            }),
        }
    }

    /// Records that the controller brought a queued task's branch up to date (CI must be green
    /// on the new head before it merges); the new count.
    pub async fn note_queue_refresh(&self, task: TaskId) -> Result<i32> {
        let n: Option<(i32,)> = sqlx::query_as(
            "UPDATE merge_queue SET refreshes = refreshes + 1 WHERE task_id = $1 RETURNING refreshes",
        )
        .bind(task)
        .fetch_optional(&self.pool)
        .await?;
        Ok(n.map(|n| n.0).unwrap_or_default())
    }

    /// A timeline entry for a queued task that does not change its status (a sibling's branch
    /// brought up to date while it waits).
    pub async fn queue_note(&self, task: TaskId, note: &super::Note) -> Result<()> {
        sqlx::query(
            "INSERT INTO task_events (task_id, actor, from_status, to_status, reason, attempt, data) \
             SELECT id, $2, status, status, $3, attempt, $4 FROM tasks WHERE id = $1",
        )
        .bind(task)
        .bind(&note.actor)
        .bind(&note.reason)
        .bind(&note.data)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queued siblings of `task` (same repository) whose changed files include any of `files`.
    pub async fn overlapping_queued(&self, task: TaskId, files: &[String]) -> Result<Vec<TaskId>> {
        let rows: Vec<(TaskId,)> = sqlx::query_as(
            "SELECT m.task_id FROM merge_queue m JOIN tasks t ON t.id = m.task_id \
             WHERE m.repo_id = (SELECT repo_id FROM tasks WHERE id = $1) AND m.task_id <> $1 \
               AND t.changed_files && $2::text[] ORDER BY m.entered_at",
        )
        .bind(task)
        .bind(files)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

async fn ordered(conn: &mut sqlx::PgConnection, repo: RepoId) -> Result<Vec<QueueEntry>> {
    Ok(sqlx::query_as::<_, QueueEntry>(ORDERED)
        .bind(repo)
        .fetch_all(conn)
        .await?)
}
