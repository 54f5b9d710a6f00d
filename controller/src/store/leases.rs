//! Runner-side writes: claim, renew, stage changes, log chunks and completion, all fenced by
//! (task, attempt, lease token); plus the reaper and the restart grace period.
//!
//! A claim is one `FOR UPDATE SKIP LOCKED` statement that honours holds, dependencies, the global
//! pause, runner labels and the per-repo concurrency cap, and orders by priority then age. The cap
//! is exact: the statement increments the repository's `active_tasks` only while it is below the
//! cap, on the locked repository row, and the tasks trigger decrements it when a lease ends.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::model::{
    self, FailureMode, RunnerId, Status, Task, TaskId, TerminalReason, status_texts, task_columns,
};
use super::tasks::{Failure, RetryPolicy, retry_in};
use super::{Error, Note, Result, Store};

/// Largest log chunk accepted, in bytes. Larger chunks must be split by the runner.
pub const MAX_LOG_CHUNK: usize = 256 * 1024;
/// Most log bytes stored per attempt; the rest is acknowledged, counted and dropped.
pub const MAX_LOG_BYTES: i64 = proto::limits::MAX_LOG_BYTES as i64;

/// A runner asking for work.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// The runner (its registry labels, not what it claims about itself).
    pub runner_id: RunnerId,
    /// Labels of the runner; a task's required labels must all be among them.
    pub labels: &'a [String],
    /// Lease length.
    pub lease: Duration,
    /// Most leases the runner may hold at once (`None`: no limit).
    pub capacity: Option<i32>,
}

/// The identity a runner writes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRef {
    /// Task.
    pub task_id: TaskId,
    /// Attempt the lease belongs to.
    pub attempt: i32,
    /// The lease token.
    pub token: Uuid,
    /// The runner that holds it (every write is checked against it too).
    pub runner_id: RunnerId,
}

impl LeaseRef {
    /// The lease a freshly claimed task carries.
    pub fn of(task: &Task) -> Option<Self> {
        Some(Self {
            task_id: task.id,
            attempt: task.attempt,
            token: task.lease_token?,
            runner_id: task.runner_id?,
        })
    }
}

/// Result of a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// New expiry.
    pub expires_at: DateTime<Utc>,
    /// A user asked to cancel: stop the work and complete with [`Outcome::Canceled`].
    pub cancel_requested: bool,
}

/// How a run ended, as the runner saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The agent produced a result that passed verification.
    Succeeded,
    /// The agent failed (including producing no change).
    AgentFailed,
    /// Verification kept failing after the runner's own fix rounds.
    VerifyFailed,
    /// The run hit its wall-clock or idle limit.
    TimedOut,
    /// The run hit its cost budget.
    BudgetExceeded,
    /// The run stopped because cancellation was requested.
    Canceled,
    /// The runner gave the work up for its own reasons (shutdown, lost workspace): re-queue
    /// without spending a retry.
    Abandoned,
}

impl Outcome {
    /// Text stored in `task_results`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::AgentFailed => "agent_failed",
            Outcome::VerifyFailed => "verify_failed",
            Outcome::TimedOut => "timed_out",
            Outcome::BudgetExceeded => "budget_exceeded",
            Outcome::Canceled => "canceled",
            Outcome::Abandoned => "abandoned",
        }
    }
}

/// What a runner reports when it is done.
#[derive(Debug, Clone)]
pub struct Completion {
    /// How it ended.
    pub outcome: Outcome,
    /// Error text for failures.
    pub error: Option<String>,
    /// Context the next run needs (verify output, agent summary).
    pub context: Option<Value>,
    /// Branch the result is on.
    pub branch: Option<String>,
    /// Head commit of the result.
    pub head_sha: Option<String>,
    /// Cost of this attempt.
    pub cost_microusd: i64,
    /// Anything else to keep with the result.
    pub data: Option<Value>,
}

impl Completion {
    /// A completion with only an outcome.
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            error: None,
            context: None,
            branch: None,
            head_sha: None,
            cost_microusd: 0,
            data: None,
        }
    }
}

/// What the controller made of a completion.
#[derive(Debug, Clone)]
pub struct Completed {
    /// The task after it.
    pub task: Task,
    /// `true` when this attempt had already completed: nothing changed.
    pub duplicate: bool,
}

/// A task the reaper took back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Task.
    pub task_id: TaskId,
    /// Its status now (`queued`, or `canceled` when cancel had been requested).
    pub status: Status,
    /// Runner that held it.
    pub runner_id: Option<RunnerId>,
}

// Re-queues (or, with a pending cancel, cancels) active tasks chosen by `$filter`, spending no retry.
// Binds: $1 active statuses, $2 limit, $3 runner, $4 actor, $5 reason.
macro_rules! take_back_sql {
    ($filter:literal) => {
        concat!(
            "UPDATE tasks SET ",
            "status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'canceled' ELSE 'queued' END, ",
            "terminal_reason = CASE WHEN cancel_requested_at IS NOT NULL THEN 'canceled_by_user' END, ",
            "lease_token = NULL, lease_expires_at = NULL, ",
            "ev_seq = ev_seq + 1, ev_actor = $4, ev_reason = $5, ",
            "ev_data = jsonb_build_object('runner', runner_id, 'attempt', attempt) ",
            "WHERE id IN (SELECT id FROM tasks WHERE status = ANY($1) AND ($3::bigint IS NULL OR runner_id = $3) AND ",
            $filter,
            " LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id, status, runner_id"
        )
    };
}

// The claim statement, with `$prelude` (extra CTEs) and `$from` choosing where candidates come from. Binds: $1 runner,
// $2 runner labels, $3 lease seconds, $4 runner capacity (NULL: unlimited).
macro_rules! claim_sql {
    ($prelude:literal, $from:literal) => {
        concat!(
            "WITH ", $prelude, " cand AS (",
            "  SELECT t.id, t.repo_id FROM ", $from, " JOIN repos r ON r.id = t.repo_id",
            "  WHERE t.status = 'queued'",
            "    AND (t.hold_kind IS NULL OR (t.hold_kind IN ('circuit_breaker', 'reflection') AND t.hold_until <= now()))",
            "    AND r.enabled AND (r.breaker_until IS NULL OR r.breaker_until <= now())",
            "    AND (NOT t.labels_required OR t.required_labels <@ $2::text[])",
            "    AND (r.max_concurrency IS NULL OR r.active_tasks < r.max_concurrency)",
            "    AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN tasks dt ON dt.id = d.depends_on",
            "                    WHERE d.task_id = t.id AND (dt.status <> 'merged' AND (NOT d.soft OR dt.status NOT IN ('failed', 'canceled'))))",
            "    AND NOT (SELECT queue_paused FROM settings)",
            "    AND ($4::int IS NULL OR (SELECT count(*) FROM tasks h WHERE h.runner_id = $1",
            "         AND h.status IN ('leased', 'running', 'verifying')) < $4)",
            "  ORDER BY t.priority, t.created_at, t.id",
            "  LIMIT 1",
            "  FOR UPDATE OF t SKIP LOCKED",
            "), slot AS (",
            "  UPDATE repos r SET active_tasks = r.active_tasks + 1 FROM cand",
            "  WHERE r.id = cand.repo_id AND (r.max_concurrency IS NULL OR r.active_tasks < r.max_concurrency)",
            "  RETURNING r.id",
            "), claimed AS (",
            "  UPDATE tasks t SET status = 'leased', attempt = t.attempt + 1, lease_token = gen_random_uuid(),",
            "    runner_id = $1, leased_at = now(), lease_expires_at = now() + make_interval(secs => $3),",
            "    hold_kind = NULL, hold_until = NULL, hold_by = NULL,",
            "    ev_seq = t.ev_seq + 1, ev_actor = 'runner:' || $1, ev_reason = 'claimed', ev_data = NULL",
            "  FROM cand JOIN slot ON slot.id = cand.repo_id",
            "  WHERE t.id = cand.id",
            "  RETURNING t.*",
            ")",
            "SELECT cand.id AS candidate, claimed.*, r.name AS repo_name, r.clone_url AS repo_clone_url,",
            "  r.default_branch AS repo_default_branch, r.verify_command AS repo_verify_command,",
            "  r.egress_policy AS repo_egress_policy, r.budget_task_microusd AS repo_budget_task_microusd,",
            "  r.agent_hooks AS repo_agent_hooks",
            " FROM cand LEFT JOIN claimed ON claimed.id = cand.id LEFT JOIN repos r ON r.id = claimed.repo_id"
        )
    };
}

/// Claims from the head of the queue: the first 128 queued tasks in claim order,
/// read from the `(priority, created_at, id)` partial index whatever the planner's statistics say.
/// This is the fast path; it keeps a claim O(1) in the queue length.
/// The head is materialised so that no plan, however poor its statistics, re-reads it per row.
const CLAIM_HEAD_SQL: &str = claim_sql!(
    "head AS MATERIALIZED (SELECT id FROM tasks WHERE status = 'queued' \
     ORDER BY priority, created_at, id LIMIT 128),",
    "head JOIN tasks t ON t.id = head.id"
);
/// Claims from the whole queue: used when everything at the head is gated (held, waiting for
/// dependencies, labels, caps) or locked by other claimers.
const CLAIM_ALL_SQL: &str = claim_sql!("", "tasks t");

/// The lease columns `complete` locks and checks.
#[derive(sqlx::FromRow)]
struct LockedLease {
    status: String,
    attempt: i32,
    lease_token: Option<Uuid>,
    cancel_requested: bool,
    runner_id: Option<RunnerId>,
}

/// The claim statement's row: the candidate it locked, and the task if the claim won a slot.
struct ClaimRow {
    candidate: TaskId,
    task: Option<(Task, ClaimedRepo)>,
}

/// What a runner needs of the repository of a task it claimed (read in the claim statement).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedRepo {
    /// `owner/name`.
    #[sqlx(rename = "repo_name")]
    pub name: String,
    /// Clone URL.
    #[sqlx(rename = "repo_clone_url")]
    pub clone_url: String,
    /// Base branch.
    #[sqlx(rename = "repo_default_branch")]
    pub default_branch: String,
    /// Verify command.
    #[sqlx(rename = "repo_verify_command")]
    pub verify_command: Option<String>,
    /// Egress policy.
    #[sqlx(rename = "repo_egress_policy")]
    pub egress_policy: String,
    /// Per-task budget.
    #[sqlx(rename = "repo_budget_task_microusd")]
    pub budget_task_microusd: Option<i64>,
    /// Whether the agent CLI may run the default branch's hooks and MCP servers.
    #[sqlx(rename = "repo_agent_hooks")]
    pub agent_hooks: bool,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for ClaimRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let candidate = row.try_get("candidate")?;
        let won: Option<TaskId> = row.try_get("id")?;
        let task = match won {
            Some(_) => Some((
                <Task as sqlx::FromRow<_>>::from_row(row)?,
                <ClaimedRepo as sqlx::FromRow<_>>::from_row(row)?,
            )),
            None => None,
        };
        Ok(Self { candidate, task })
    }
}

impl Store {
    /// Leases the next eligible task to a runner, or returns `None` when nothing is eligible.
    pub async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Option<Task>> {
        Ok(self.claim_with_repo(req).await?.map(|(t, _)| t))
    }

    /// [`Store::claim`], also returning what the runner needs of the task's repository (read in
    /// the same statement).
    pub async fn claim_with_repo(
        &self,
        req: &ClaimRequest<'_>,
    ) -> Result<Option<(Task, ClaimedRepo)>> {
        // A claim that found a candidate but lost the repository's last slot to a concurrent
        // claimer tries again: other repositories may still have work.
        for _ in 0..4 {
            let mut row = self.claim_once(CLAIM_HEAD_SQL, req).await?;
            if row.is_none() {
                row = self.claim_once(CLAIM_ALL_SQL, req).await?;
            }
            match row {
                None => return Ok(None),
                Some(ClaimRow { task: Some(t), .. }) => return Ok(Some(t)),
                Some(ClaimRow {
                    candidate,
                    task: None,
                }) => {
                    tracing::debug!(candidate, "claim lost the repository slot; retrying");
                }
            }
        }
        Ok(None)
    }

    async fn claim_once(
        &self,
        sql: &'static str,
        req: &ClaimRequest<'_>,
    ) -> Result<Option<ClaimRow>> {
        Ok(sqlx::query_as(sql)
            .bind(req.runner_id)
            .bind(req.labels)
            .bind(req.lease.as_secs_f64())
            .bind(req.capacity)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Extends a lease. Reports a pending cancellation so the runner can stop.
    pub async fn renew(&self, lease: &LeaseRef, length: Duration) -> Result<Renewal> {
        let row: Option<(DateTime<Utc>, bool)> = sqlx::query_as(
            "UPDATE tasks SET lease_expires_at = now() + make_interval(secs => $4) \
             WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND status = ANY($5) AND runner_id = $6 \
             RETURNING lease_expires_at, cancel_requested_at IS NOT NULL",
        )
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(lease.token)
        .bind(length.as_secs_f64())
        .bind(status_texts(Status::ACTIVE))
        .bind(lease.runner_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((expires_at, cancel_requested)) => Ok(Renewal {
                expires_at,
                cancel_requested,
            }),
            None => Err(self.lease_lost(lease).await),
        }
    }

    /// Renews every lease a runner lists, in one statement. Leases that are not the runner's any
    /// more come back as `None`: the runner must stop that work.
    pub async fn renew_many(
        &self,
        runner: RunnerId,
        leases: &[LeaseRef],
        length: Duration,
    ) -> Result<Vec<(LeaseRef, Option<Renewal>)>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = leases.iter().map(|l| l.task_id).collect();
        let attempts: Vec<i32> = leases.iter().map(|l| l.attempt).collect();
        let tokens: Vec<Uuid> = leases.iter().map(|l| l.token).collect();
        let rows: Vec<(TaskId, i32, DateTime<Utc>, bool)> = sqlx::query_as(
            "UPDATE tasks t SET lease_expires_at = now() + make_interval(secs => $4) \
             FROM unnest($1::bigint[], $2::int[], $3::uuid[]) AS k(id, attempt, token) \
             WHERE t.id = k.id AND t.attempt = k.attempt AND t.lease_token = k.token \
               AND t.runner_id = $5 AND t.status = ANY($6) \
             RETURNING t.id, t.attempt, t.lease_expires_at, t.cancel_requested_at IS NOT NULL",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&tokens)
        .bind(length.as_secs_f64())
        .bind(runner)
        .bind(status_texts(Status::ACTIVE))
        .fetch_all(&self.pool)
        .await?;
        Ok(leases
            .iter()
            .map(|l| {
                let renewed = rows
                    .iter()
                    .find(|(id, attempt, _, _)| *id == l.task_id && *attempt == l.attempt)
                    .map(|(_, _, expires_at, cancel_requested)| Renewal {
                        expires_at: *expires_at,
                        cancel_requested: *cancel_requested,
                    });
                (*l, renewed)
            })
            .collect())
    }

    /// Stores the result bundle of an attempt (replacing an earlier upload of the same attempt).
    pub async fn store_bundle(&self, lease: &LeaseRef, data: &[u8], sha256: &str) -> Result<()> {
        let n = sqlx::query(
            "INSERT INTO task_bundles (task_id, attempt, size, sha256, data) \
             SELECT id, attempt, $4, $5, $6 FROM tasks WHERE id = $1 AND attempt = $2 AND lease_token = $3 \
               AND runner_id = $7 AND status = ANY($8) \
             ON CONFLICT (task_id, attempt) DO UPDATE SET size = EXCLUDED.size, sha256 = EXCLUDED.sha256, \
               data = EXCLUDED.data, received_at = now()",
        )
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(lease.token)
        .bind(data.len() as i64)
        .bind(sha256)
        .bind(data)
        .bind(lease.runner_id)
        .bind(status_texts(Status::ACTIVE))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(self.lease_lost(lease).await);
        }
        Ok(())
    }

    /// The stored bundle of an attempt: (sha256, bytes).
    pub async fn bundle(&self, task: TaskId, attempt: i32) -> Result<Option<(String, Vec<u8>)>> {
        Ok(sqlx::query_as(
            "SELECT sha256, data FROM task_bundles WHERE task_id = $1 AND attempt = $2",
        )
        .bind(task)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ranges of log sequence numbers missing below the highest one stored, as inclusive
    /// `(first, last)` pairs: a gap in an attempt's log is visible, never silent.
    pub async fn log_gaps(&self, task: TaskId, attempt: i32) -> Result<Vec<(i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT prev + 1, seq - 1 FROM ( \
               SELECT seq, COALESCE(lag(seq) OVER (ORDER BY seq), -1) AS prev \
               FROM log_chunks WHERE task_id = $1 AND attempt = $2) s \
             WHERE seq > prev + 1 ORDER BY seq",
        )
        .bind(task)
        .bind(attempt)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The runner started (or restarted) the agent.
    pub async fn start_agent(&self, lease: &LeaseRef) -> Result<Task> {
        self.runner_step(lease, model::START_AGENT).await
    }

    /// The runner started the verify command.
    pub async fn start_verify(&self, lease: &LeaseRef) -> Result<Task> {
        self.runner_step(lease, model::START_VERIFY).await
    }

    async fn runner_step(&self, lease: &LeaseRef, step: model::Step) -> Result<Task> {
        let row = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET status = $4, ",
            "ev_seq = ev_seq + 1, ev_actor = 'runner:' || runner_id, ev_reason = $6, ev_data = NULL ",
            "WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND status = ANY($5) AND runner_id = $7 RETURNING ",
            task_columns!()
        ))
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(lease.token)
        .bind(step.to.as_str())
        .bind(status_texts(step.from))
        .bind(step.name)
        .bind(lease.runner_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(t) => Ok(t),
            None => {
                let t = self.task(lease.task_id).await?;
                let holds_lease = t.attempt == lease.attempt
                    && t.lease_token == Some(lease.token)
                    && t.runner_id == Some(lease.runner_id)
                    && t.status.is_active();
                if holds_lease {
                    // The lease is fine; the step is not legal from here.
                    Err(self.refused(lease.task_id, step).await)
                } else {
                    Err(Error::LeaseLost {
                        task: lease.task_id,
                        attempt: lease.attempt,
                        current: t.status,
                    })
                }
            }
        }
    }

    /// Stores one log chunk. Idempotent on (task, attempt, seq): a resent chunk is acknowledged
    /// again and stored once. Returns whether it was newly stored.
    pub async fn append_log(
        &self,
        lease: &LeaseRef,
        seq: i64,
        stream: &str,
        data: &[u8],
    ) -> Result<bool> {
        let (_, stored) = self
            .store_logs(
                lease,
                &[(seq, stream.to_owned(), data.to_vec())],
                MAX_LOG_BYTES,
            )
            .await?;
        Ok(stored == 1)
    }

    /// Stores a batch of log chunks; idempotent on (task, attempt, seq). Returns the sequence
    /// numbers acknowledged (all of them: new ones, resends, and chunks past the cap).
    pub async fn append_logs(
        &self,
        lease: &LeaseRef,
        chunks: &[(i64, String, Vec<u8>)],
    ) -> Result<Vec<i64>> {
        self.append_logs_capped(lease, chunks, MAX_LOG_BYTES).await
    }

    /// [`Store::append_logs`] with an explicit per-attempt cap in bytes. Chunks past the cap are
    /// acknowledged (the runner must not stall) but not stored; they are counted in `log_totals`
    /// and show as a gap in the sequence numbers.
    pub async fn append_logs_capped(
        &self,
        lease: &LeaseRef,
        chunks: &[(i64, String, Vec<u8>)],
        cap: i64,
    ) -> Result<Vec<i64>> {
        Ok(self.store_logs(lease, chunks, cap).await?.0)
    }

    /// The one log-writing path: fenced, idempotent, capped. Returns the acknowledged sequence
    /// numbers and how many chunks were newly stored.
    async fn store_logs(
        &self,
        lease: &LeaseRef,
        chunks: &[(i64, String, Vec<u8>)],
        cap: i64,
    ) -> Result<(Vec<i64>, i64)> {
        if let Some((seq, _, data)) = chunks.iter().find(|(_, _, d)| d.len() > MAX_LOG_CHUNK) {
            return Err(Error::Invalid(format!(
                "log chunk {seq} of {} bytes exceeds the {MAX_LOG_CHUNK}-byte limit; split it",
                data.len()
            )));
        }
        if let Some((seq, _, _)) = chunks.iter().find(|(s, _, _)| *s < 0) {
            return Err(Error::Invalid(format!("log sequence {seq} is negative")));
        }
        let mut tx = self.pool.begin().await?;
        let stored: Option<i64> = sqlx::query_scalar(
            "INSERT INTO log_totals (task_id, attempt) \
             SELECT id, attempt FROM tasks WHERE id = $1 AND attempt = $2 AND lease_token = $3 \
               AND runner_id = $4 AND status = ANY($5) \
             ON CONFLICT (task_id, attempt) DO UPDATE SET bytes = log_totals.bytes RETURNING bytes",
        )
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(lease.token)
        .bind(lease.runner_id)
        .bind(status_texts(Status::ACTIVE))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(stored) = stored else {
            drop(tx);
            return Err(self.lease_lost(lease).await);
        };
        // Resends of stored chunks are acknowledged again and count against nothing.
        let all: Vec<i64> = chunks.iter().map(|c| c.0).collect();
        let present: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM log_chunks WHERE task_id = $1 AND attempt = $2 AND seq = ANY($3)",
        )
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(&all)
        .fetch_all(&mut *tx)
        .await?;
        let mut room = cap - stored;
        let (mut keep, mut dropped) = (Vec::new(), 0i64);
        for c in chunks.iter().filter(|c| !present.contains(&c.0)) {
            let len = c.2.len() as i64;
            if len <= room {
                room -= len;
                keep.push(c);
            } else {
                dropped += 1;
            }
        }
        let seqs: Vec<i64> = keep.iter().map(|c| c.0).collect();
        let streams: Vec<&str> = keep.iter().map(|c| c.1.as_str()).collect();
        let data: Vec<&[u8]> = keep.iter().map(|c| c.2.as_slice()).collect();
        let (inserted, stored_new): (i64, i64) = sqlx::query_as(
            "WITH ins AS (INSERT INTO log_chunks (task_id, attempt, seq, stream, data) \
               SELECT $1, $2, c.seq, c.stream, c.data FROM unnest($3::bigint[], $4::text[], $5::bytea[]) AS c(seq, stream, data) \
               ON CONFLICT (task_id, attempt, seq) DO NOTHING RETURNING length(data) AS n) \
             SELECT COALESCE(sum(n), 0)::bigint, count(*) FROM ins",
        )
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(&seqs)
        .bind(&streams)
        .bind(&data)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE log_totals SET bytes = bytes + $3, dropped_chunks = dropped_chunks + $4 WHERE task_id = $1 AND attempt = $2")
            .bind(lease.task_id)
            .bind(lease.attempt)
            .bind(inserted)
            .bind(dropped)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if dropped > 0 {
            tracing::warn!(
                task = lease.task_id,
                attempt = lease.attempt,
                dropped,
                cap,
                "log over its cap; chunks dropped"
            );
        }
        Ok((chunks.iter().map(|c| c.0).collect(), stored_new))
    }

    /// Bytes stored and chunks dropped (over the cap) for an attempt's log.
    pub async fn log_totals(&self, task: TaskId, attempt: i32) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT bytes, dropped_chunks FROM log_totals WHERE task_id = $1 AND attempt = $2",
        )
        .bind(task)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or((0, 0)))
    }

    /// The stored log of one attempt, in sequence order: (seq, stream, bytes).
    pub async fn log_chunks(
        &self,
        task: TaskId,
        attempt: i32,
    ) -> Result<Vec<(i64, String, Vec<u8>)>> {
        Ok(sqlx::query_as(
            "SELECT seq, stream, data FROM log_chunks WHERE task_id = $1 AND attempt = $2 ORDER BY seq",
        )
        .bind(task)
        .bind(attempt)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records the runner's result and moves the task on. Idempotent: the same attempt completing
    /// again is acknowledged with `duplicate = true` and changes nothing. A cancel requested
    /// meanwhile always wins.
    pub async fn complete(
        &self,
        lease: &LeaseRef,
        c: &Completion,
        policy: &RetryPolicy,
    ) -> Result<Completed> {
        let mut tx = self.pool.begin().await?;
        let row: Option<LockedLease> = sqlx::query_as(
            "SELECT status, attempt, lease_token, cancel_requested_at IS NOT NULL AS cancel_requested, runner_id \
             FROM tasks WHERE id = $1 FOR UPDATE",
        )
        .bind(lease.task_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(LockedLease {
            status,
            attempt,
            lease_token: token,
            cancel_requested,
            runner_id: runner,
        }) = row
        else {
            return Err(Error::TaskNotFound(lease.task_id));
        };
        let status: Status = status
            .parse()
            .map_err(|e: model::UnknownValue| Error::Invalid(e.to_string()))?;

        let previous: Option<Uuid> = sqlx::query_scalar(
            "SELECT lease_token FROM task_results WHERE task_id = $1 AND attempt = $2",
        )
        .bind(lease.task_id)
        .bind(lease.attempt)
        .fetch_optional(&mut *tx)
        .await?;
        if previous == Some(lease.token) {
            drop(tx);
            return Ok(Completed {
                task: self.task(lease.task_id).await?,
                duplicate: true,
            });
        }
        if c.cost_microusd < 0 {
            return Err(Error::Invalid(format!(
                "a completion cannot report a negative cost ({} micro-dollars)",
                c.cost_microusd
            )));
        }
        if attempt != lease.attempt
            || token != Some(lease.token)
            || runner != Some(lease.runner_id)
            || !status.is_active()
        {
            return Err(Error::LeaseLost {
                task: lease.task_id,
                attempt: lease.attempt,
                current: status,
            });
        }

        sqlx::query(
            "INSERT INTO task_results (task_id, attempt, lease_token, outcome, error, data) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(lease.token)
        .bind(c.outcome.as_str())
        .bind(&c.error)
        .bind(json!({"context": c.context, "data": c.data, "head_sha": c.head_sha, "branch": c.branch}))
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE tasks SET cost_microusd = cost_microusd + $2 WHERE id = $1")
            .bind(lease.task_id)
            .bind(c.cost_microusd)
            .execute(&mut *tx)
            .await?;
        // The runner's metered agent calls join the ledger with the controller's own calls.
        if c.cost_microusd > 0 {
            sqlx::query(
                "INSERT INTO usage_ledger (task_id, repo_id, purpose, model, cost_microusd) \
                 SELECT id, repo_id, 'agent', model, $2 FROM tasks WHERE id = $1",
            )
            .bind(lease.task_id)
            .bind(c.cost_microusd)
            .execute(&mut *tx)
            .await?;
        }

        let actor = format!("runner:{}", runner.unwrap_or_default());
        let task = if cancel_requested {
            end_lease(
                &mut tx,
                lease.task_id,
                Status::Canceled,
                Some(TerminalReason::CanceledByUser),
                c.error.as_deref(),
                &actor,
                "canceled",
            )
            .await?
        } else {
            match c.outcome {
                Outcome::Succeeded => sqlx::query_as::<_, Task>(concat!(
                    "UPDATE tasks SET status = 'pushing', ",
                    "head_sha = COALESCE($3, head_sha), lease_expires_at = NULL, error = NULL, ",
                    "ev_seq = ev_seq + 1, ev_actor = $4, ev_reason = 'completed', ",
                    "ev_data = CASE WHEN $2::text IS DISTINCT FROM branch ",
                    "  THEN jsonb_build_object('runner_branch', $2::text, 'branch', branch) END ",
                    "WHERE id = $1 RETURNING ",
                    task_columns!()
                ))
                .bind(lease.task_id)
                .bind(&c.branch)
                .bind(&c.head_sha)
                .bind(&actor)
                .fetch_one(&mut *tx)
                .await?,
                Outcome::AgentFailed | Outcome::TimedOut | Outcome::VerifyFailed => {
                    let (mode, reason) = match c.outcome {
                        Outcome::VerifyFailed => {
                            (FailureMode::Verify, TerminalReason::VerifyFailed)
                        }
                        Outcome::TimedOut => (FailureMode::Agent, TerminalReason::TimedOut),
                        _ => (FailureMode::Agent, TerminalReason::AgentFailed),
                    };
                    let failure = Failure {
                        mode,
                        reason: Some(reason),
                        error: c
                            .error
                            .clone()
                            .unwrap_or_else(|| c.outcome.as_str().to_owned()),
                        context: c.context.clone(),
                    };
                    let note = Note::new(actor.clone(), c.outcome.as_str());
                    retry_in(&mut tx, lease.task_id, &failure, policy, &note)
                        .await?
                        .ok_or(Error::TaskNotFound(lease.task_id))?
                }
                Outcome::BudgetExceeded => {
                    end_lease(
                        &mut tx,
                        lease.task_id,
                        Status::Failed,
                        Some(TerminalReason::BudgetExceeded),
                        c.error.as_deref(),
                        &actor,
                        "budget_exceeded",
                    )
                    .await?
                }
                Outcome::Canceled | Outcome::Abandoned => {
                    end_lease(
                        &mut tx,
                        lease.task_id,
                        Status::Queued,
                        None,
                        c.error.as_deref(),
                        &actor,
                        "abandoned",
                    )
                    .await?
                }
            }
        };
        tx.commit().await?;
        Ok(Completed {
            task,
            duplicate: false,
        })
    }

    /// Takes back leases that expired: re-queued without spending a retry (`lease_expired`), or
    /// canceled when cancellation had been requested. Processes at most `limit` rows.
    pub async fn reap_expired(&self, limit: i64) -> Result<Vec<Reaped>> {
        self.take_back(
            take_back_sql!("lease_expires_at < now() ORDER BY lease_expires_at"),
            limit,
            None,
            "lease_expired",
            "reaper",
        )
        .await
    }

    /// Takes back every lease of a runner that is gone (disabled, revoked, or known dead):
    /// re-queued as `runner_lost`, without spending a retry.
    pub async fn release_runner_leases(
        &self,
        runner: RunnerId,
        actor: &str,
    ) -> Result<Vec<Reaped>> {
        self.take_back(
            take_back_sql!("true"),
            i64::MAX,
            Some(runner),
            "runner_lost",
            actor,
        )
        .await
    }

    async fn take_back(
        &self,
        sql: &'static str,
        limit: i64,
        runner: Option<RunnerId>,
        reason: &'static str,
        actor: &str,
    ) -> Result<Vec<Reaped>> {
        let rows: Vec<(TaskId, String, Option<RunnerId>)> = sqlx::query_as(sql)
            .bind(status_texts(Status::ACTIVE))
            .bind(limit)
            .bind(runner)
            .bind(actor)
            .bind(reason)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(task_id, status, runner_id)| {
                Ok(Reaped {
                    task_id,
                    status: status
                        .parse()
                        .map_err(|e: model::UnknownValue| Error::Invalid(e.to_string()))?,
                    runner_id,
                })
            })
            .collect()
    }

    /// Gives every live lease at least `grace` more time: called when a controller starts, so
    /// runners that were cut off by the restart can reconnect before their work is taken back.
    pub async fn grant_grace(&self, grace: Duration) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE tasks SET lease_expires_at = GREATEST(lease_expires_at, now() + make_interval(secs => $1)) \
             WHERE status = ANY($2)",
        )
        .bind(grace.as_secs_f64())
        .bind(status_texts(Status::ACTIVE))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn lease_lost(&self, lease: &LeaseRef) -> Error {
        match self.task(lease.task_id).await {
            Ok(t) => Error::LeaseLost {
                task: lease.task_id,
                attempt: lease.attempt,
                current: t.status,
            },
            Err(e) => e,
        }
    }
}

async fn end_lease(
    tx: &mut sqlx::PgConnection,
    id: TaskId,
    to: Status,
    reason: Option<TerminalReason>,
    error: Option<&str>,
    actor: &str,
    why: &str,
) -> Result<Task> {
    Ok(sqlx::query_as::<_, Task>(concat!(
        "UPDATE tasks SET status = $2, terminal_reason = $3, error = COALESCE($4, error), ",
        "lease_token = CASE WHEN $2 = 'queued' THEN NULL ELSE lease_token END, lease_expires_at = NULL, ",
        "ev_seq = ev_seq + 1, ev_actor = $5, ev_reason = $6, ev_data = NULL ",
        "WHERE id = $1 RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(to.as_str())
    .bind(reason.map(|r| r.as_str()))
    .bind(error)
    .bind(actor)
    .bind(why)
    .fetch_one(tx)
    .await?)
}
