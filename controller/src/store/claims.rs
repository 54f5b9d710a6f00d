//! Leases: a runner claims a task, renews its lease while it works, and loses it when it stops
//! renewing (the reaper) or its process restarts; a controller start grants live leases a grace
//! period. The lease key — (task, attempt, lease token) and the runner — fences every runner
//! write ([`crate::store::logs`], [`crate::store::completion`]).
//!
//! A claim is one `FOR UPDATE SKIP LOCKED` statement that honours holds, dependencies, the global
//! pause, runner labels and the per-repo concurrency cap, and orders by priority then age. The cap
//! is exact without a shared counter: a capped repository has one slot row per unit of its cap
//! (`repo_slots`, migration 0022); a claim takes a free slot with `FOR UPDATE SKIP LOCKED` and the
//! tasks trigger frees it when the lease ends. A claim locks the repository's row only while the
//! repository has a daily budget; a change of the cap or the budget is fenced against the claims
//! of the repository ([`fence_repo_limits`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::budgets::{day_left, fleet_left, left_today};
use super::lifecycle::{self, RunnerId, Status, Task, TaskId, status_texts};
use super::{Error, Result, Store};

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
    /// A user asked to cancel: stop the work and complete with
    /// [`crate::store::completion::Outcome::Canceled`].
    pub cancel_requested: bool,
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

// Re-queues (or, with a pending cancel, cancels) active tasks chosen by `$filter`, spending no retry
// — unless the task has now lost its runner `settings.max_lease_losses` times in a row: then it
// fails with the reason, since it may be what kills its runners.
// Binds: $1 limit, $2 runner, $3 actor, $4 reason. The active statuses are written out
// (`Status::ACTIVE`, checked by a test) so the planner can use the partial indexes on live leases.
macro_rules! take_back_sql {
    ($filter:literal) => {
        concat!(
            "UPDATE tasks SET ",
            // A candidate (best-of-N) ends `finished` where a task would end.
            "status = CASE WHEN cancel_requested_at IS NOT NULL THEN ",
            "    CASE WHEN parent_id IS NULL THEN 'canceled' ELSE 'finished' END ",
            "  WHEN lost_count + 1 >= (SELECT max_lease_losses FROM settings) THEN ",
            "    CASE WHEN parent_id IS NULL THEN 'failed' ELSE 'finished' END ELSE 'queued' END, ",
            "terminal_reason = CASE WHEN cancel_requested_at IS NOT NULL THEN 'canceled_by_user' ",
            "  WHEN lost_count + 1 >= (SELECT max_lease_losses FROM settings) THEN $4 END, ",
            "error = CASE WHEN cancel_requested_at IS NULL AND lost_count + 1 >= (SELECT max_lease_losses FROM settings) ",
            "  THEN format('the task lost its runner %s times in a row (last: %s); it may be what stops its runners: ",
            "read the end of its last attempt''s log, fix the cause, then requeue it', lost_count + 1, $4) ELSE error END, ",
            "lost_count = lost_count + 1, ",
            "lease_token = NULL, lease_expires_at = NULL, ",
            "ev_seq = ev_seq + 1, ev_actor = $3, ev_reason = $4, ",
            "ev_data = jsonb_build_object('runner', runner_id, 'attempt', attempt, 'lost', lost_count + 1) ",
            "WHERE id IN (SELECT id FROM tasks WHERE status IN ('leased', 'running', 'verifying') AND ($2::bigint IS NULL OR runner_id = $2) AND ",
            $filter,
            " LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id, status, runner_id"
        )
    };
}

// The claim statement, with `$prelude` (extra CTEs) and `$from` choosing where candidates come from. Binds: $1 runner,
// $2 runner labels, $3 lease seconds, $4 runner capacity (NULL: unlimited). Its status lists are
// written out (`Status::UNSUCCESSFUL`, `Status::ACTIVE`, checked by a test) so the planner can use
// the partial index on active tasks: with a bound array it cannot, and claims run at half speed.
//
// Nothing every claim of a repository writes is shared: the candidate is chosen first (the plan
// that walks the head of the queue) and locked; then `gate` (`repo_claim_gate`, migration 0022)
// checks that no change of the repository's cap or daily budget is under way and that the ones
// read are still current, and keeps them so until the claim commits. A capped repository's claim
// takes a free slot (`FOR UPDATE SKIP LOCKED`: claims of the repository take different slots
// instead of waiting for each other); the repository's row is locked only while it has a daily
// budget, the fleet's only while the fleet has one.
//
// Money: the claim grants the attempt the least of what is left of the task's budget, of its
// repository's daily budget and of the fleet's (spend today and grants to running attempts
// subtracted). The fleet's row is locked before the grant is computed; the repository's is
// re-checked under its lock, so concurrent claims cannot together grant more than is left. The
// slot is locked before the repository's budget is written and taken only if the budget allowed
// it, so a claim that fails takes neither. A claim that lost a race retries with fresh figures.
macro_rules! claim_sql {
    ($prelude:literal, $from:literal) => {
        concat!(
            "WITH ", $prelude, " cand AS (",
            "  SELECT t.id, t.repo_id FROM ", $from, " JOIN repos r ON r.id = t.repo_id",
            "  WHERE t.status = 'queued'",
            "    AND (t.hold_kind IS NULL OR (t.hold_kind IN ('circuit_breaker', 'reflection') AND t.hold_until <= now()))",
            "    AND r.enabled AND (r.breaker_until IS NULL OR r.breaker_until <= now())",
            "    AND (NOT t.labels_required OR t.required_labels <@ $2::text[])",
            // Every runner has Claude Code; another backend only goes to a runner that offers it.
            "    AND (t.agent = 'claude' OR EXISTS (SELECT 1 FROM runners WHERE id = $1 AND t.agent = ANY(backends)))",
            "    AND (r.max_concurrency IS NULL OR EXISTS (SELECT 1 FROM repo_slots s",
            "         WHERE s.repo_id = r.id AND s.task_id IS NULL AND s.slot <= r.max_concurrency))",
            "    AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN tasks dt ON dt.id = d.depends_on",
            "                    WHERE d.task_id = t.id AND (dt.status <> 'merged' AND (NOT d.soft OR dt.status NOT IN ('failed', 'canceled'))))",
            "    AND NOT (SELECT queue_paused FROM settings)",
            // The runner's registry row, read in the claim itself: a runner disabled or drained
            // a moment ago claims nothing, whatever its caller remembered of the registry.
            "    AND (SELECT state FROM runners WHERE id = $1) = 'active'",
            "    AND ($4::int IS NULL OR (SELECT count(*) FROM tasks h WHERE h.runner_id = $1",
            "         AND h.status IN ('leased', 'running', 'verifying')) < $4)",
            "  ORDER BY t.priority, t.created_at, t.id",
            "  LIMIT 1",
            "  FOR UPDATE OF t SKIP LOCKED",
            // The fleet's row, locked only while a fleet budget is set (then claims take turns
            // on it); read after the candidate is chosen, so the choice keeps its fast plan.
            "), g AS (SELECT ", fleet_left!(""), " AS left_microusd FROM settings",
            "  WHERE budget_global_daily_microusd IS NOT NULL FOR UPDATE",
            "), grant_ AS (",
            "  SELECT cand.id, cand.repo_id, r.max_concurrency AS cap, r.budget_daily_microusd AS daily,",
            "    GREATEST(LEAST(",
            // A candidate's own share of its parent's budget (best-of-N), else the task budget.
            "      COALESCE(t.budget_task_microusd, r.budget_task_microusd, (SELECT budget_task_microusd FROM settings)) - t.cost_microusd,",
            "      COALESCE(", day_left!("r."), ", 9223372036854775807),",
            "      COALESCE((SELECT left_microusd FROM g), 9223372036854775807)), 0) AS amount",
            "  FROM cand JOIN tasks t ON t.id = cand.id JOIN repos r ON r.id = cand.repo_id",
            // Budgets are checked here, not in `cand`: an expression over the repository's
            // budget columns there makes the planner give up the head-of-queue plan (5× slower
            // claims). A candidate whose repository or fleet has nothing left is not claimed;
            // the budget-hold sweep takes such tasks off the queue within a sweep.
            "  WHERE COALESCE((SELECT left_microusd FROM g), 1) > 0",
            "    AND COALESCE(", day_left!("r."), ", 1) > 0",
            "), gate AS MATERIALIZED (",
            "  SELECT grant_.id FROM grant_ WHERE repo_claim_gate(grant_.repo_id, grant_.cap, grant_.daily)",
            "), free_slot AS MATERIALIZED (",
            "  SELECT s.repo_id, s.slot FROM grant_ JOIN repo_slots s ON s.repo_id = grant_.repo_id",
            "  WHERE grant_.cap IS NOT NULL AND EXISTS (SELECT 1 FROM gate)",
            "    AND s.task_id IS NULL AND s.slot <= grant_.cap",
            // Holders above the cap (it was lowered while over): no claim until they are gone.
            "    AND NOT EXISTS (SELECT 1 FROM repo_slots h WHERE h.repo_id = grant_.repo_id AND h.slot > grant_.cap)",
            "  ORDER BY s.slot LIMIT 1",
            "  FOR UPDATE OF s SKIP LOCKED",
            "), budget AS (",
            "  UPDATE repos r SET",
            "    day_spent_microusd = CASE WHEN r.spend_day = (now() AT TIME ZONE 'UTC')::date THEN r.day_spent_microusd ELSE 0 END,",
            "    spend_day = (now() AT TIME ZONE 'UTC')::date,",
            "    day_granted_microusd = r.day_granted_microusd + grant_.amount",
            "  FROM grant_",
            "  WHERE r.id = grant_.repo_id AND grant_.daily IS NOT NULL AND EXISTS (SELECT 1 FROM gate)",
            "    AND (grant_.cap IS NULL OR EXISTS (SELECT 1 FROM free_slot))",
            "    AND COALESCE(", day_left!("r."), " >= grant_.amount, false)",
            "  RETURNING r.id",
            "), won AS MATERIALIZED (",
            "  SELECT grant_.id, grant_.amount FROM grant_",
            "  WHERE EXISTS (SELECT 1 FROM gate)",
            "    AND (grant_.cap IS NULL OR EXISTS (SELECT 1 FROM free_slot))",
            "    AND (grant_.daily IS NULL OR EXISTS (SELECT 1 FROM budget))",
            "), slot AS (",
            "  UPDATE repo_slots s SET task_id = won.id FROM won, free_slot",
            "  WHERE s.repo_id = free_slot.repo_id AND s.slot = free_slot.slot",
            "), fleet AS (",
            "  UPDATE settings SET day_granted_microusd = day_granted_microusd + won.amount,",
            "    day_spent_microusd = CASE WHEN spend_day = (now() AT TIME ZONE 'UTC')::date THEN day_spent_microusd ELSE 0 END,",
            "    spend_day = (now() AT TIME ZONE 'UTC')::date",
            "  FROM won",
            "  WHERE budget_global_daily_microusd IS NOT NULL",
            "), claimed AS (",
            "  UPDATE tasks t SET status = 'leased', attempt = t.attempt + 1, lease_token = gen_random_uuid(),",
            "    runner_id = $1, leased_at = now(), lease_expires_at = now() + make_interval(secs => $3),",
            "    hold_kind = NULL, hold_until = NULL, hold_by = NULL, granted_microusd = won.amount,",
            "    started_at = COALESCE(t.started_at, now()),",
            // Plan gate: until its plan is approved, a task of a gated repository is claimed
            // only for a read-only plan run (candidates run under their parent's approved plan).
            "    plan_attempt = CASE WHEN t.parent_id IS NULL AND t.plan_state IS DISTINCT FROM 'approved'",
            "      AND (SELECT pr.plan_gate FROM repos pr WHERE pr.id = t.repo_id) THEN t.attempt + 1 END,",
            "    ev_seq = t.ev_seq + 1, ev_actor = 'runner:' || $1, ev_reason = 'claimed',",
            "    ev_data = jsonb_build_object('granted_microusd', won.amount)",
            "  FROM won",
            "  WHERE t.id = won.id",
            "  RETURNING t.*",
            ")",
            "SELECT cand.id AS claim_candidate, claimed.*, r.name AS repo_name, r.clone_url AS repo_clone_url,",
            "  r.default_branch AS repo_default_branch, r.verify_command AS repo_verify_command,",
            "  r.egress_policy AS repo_egress_policy, grant_.amount AS repo_grant_microusd,",
            "  r.agent_hooks AS repo_agent_hooks, r.env_image AS repo_env_image, r.env_setup AS repo_env_setup,",
            // Reproduce-first: `on`, or `bugs` for a task triage called a bug.
            "  COALESCE(r.reproduce_first = 'on' OR (r.reproduce_first = 'bugs' AND claimed.is_bug IS TRUE), false)",
            "    AS repo_reproduce_first,",
            "  COALESCE(claimed.plan_attempt = claimed.attempt, false) AS repo_plan_run,",
            "  (SELECT p.text FROM task_plans p WHERE p.task_id = COALESCE(claimed.parent_id, claimed.id)",
            "    AND p.state = 'approved') AS repo_plan,",
            // What the lease carries besides: the environment's setup secrets and the
            // repository's last ten learnings (empty when nothing was claimed: `r` is NULL then).
            "  ARRAY(SELECT s.name FROM repo_secrets s WHERE s.repo_id = r.id ORDER BY s.name) AS repo_secret_names,",
            "  ARRAY(SELECT s.value FROM repo_secrets s WHERE s.repo_id = r.id ORDER BY s.name) AS repo_secret_values,",
            "  ARRAY(SELECT format('[%s] %s', l.outcome, l.summary) FROM learnings l WHERE l.repo_id = r.id",
            "        ORDER BY l.id DESC LIMIT 10) AS repo_learnings",
            " FROM cand LEFT JOIN claimed ON claimed.id = cand.id LEFT JOIN repos r ON r.id = claimed.repo_id",
            " LEFT JOIN grant_ ON grant_.id = cand.id"
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

/// Seconds until the next live lease expires, through the partial index on live leases (the
/// status list written out, as in [`take_back_sql`]).
const NEXT_LEASE_EXPIRY_SQL: &str = "SELECT EXTRACT(EPOCH FROM (min(lease_expires_at) - now()))::float8 \
     FROM tasks WHERE status IN ('leased', 'running', 'verifying')";

/// Fails tasks past their deadline ([`Store::fail_past_deadline`]). Binds: $1 the statuses a
/// deadline ends, $2 limit. The terminal statuses are also written out as the partial index on
/// live tasks (`tasks_live`) says them (checked by a test), so a history of ended tasks is not read.
const DEADLINE_SQL: &str = "UPDATE tasks SET status = 'failed', terminal_reason = 'timed_out', \
               error = format('the task was still under way %s after its first lease (its deadline, \
settings.task_deadline_secs, over %s attempts); split the issue or raise the deadline, then requeue it', \
                 justify_interval(make_interval(secs => (SELECT task_deadline_secs FROM settings))), attempt), \
               lease_token = NULL, lease_expires_at = NULL, \
               ev_seq = ev_seq + 1, ev_actor = 'system', ev_reason = 'deadline', ev_data = NULL \
             WHERE id IN (SELECT id FROM tasks WHERE status NOT IN ('merged', 'failed', 'canceled', 'finished') \
               AND status = ANY($1) AND started_at IS NOT NULL AND parent_id IS NULL \
               AND started_at < now() - make_interval(secs => (SELECT task_deadline_secs FROM settings)) \
               AND (hold_kind IS NULL OR hold_kind NOT IN ('user', 'dispatch_approval', 'budget')) \
               LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id";

/// The claim statement's row: the candidate it locked, and the task if the claim won a slot.
struct ClaimRow {
    candidate: TaskId,
    task: Option<(Task, ClaimedRepo)>,
}

/// What a runner needs of the repository of a task it claimed (read in the claim statement).
/// Its `Debug` names the secrets but never shows their values.
#[derive(Clone, sqlx::FromRow)]
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
    /// What this attempt may spend on model calls: the least of what is left of the task's
    /// budget (across its attempts) and of today's repository and fleet budgets.
    #[sqlx(rename = "repo_grant_microusd")]
    pub grant_microusd: i64,
    /// Whether the agent CLI may run the default branch's hooks and MCP servers.
    #[sqlx(rename = "repo_agent_hooks")]
    pub agent_hooks: bool,
    /// The environment's base image, if the operator set one.
    #[sqlx(rename = "repo_env_image")]
    pub env_image: Option<String>,
    /// Its setup commands.
    #[sqlx(rename = "repo_env_setup")]
    pub env_setup: Vec<String>,
    /// Names of the secrets the environment's setup may read, sorted.
    #[sqlx(rename = "repo_secret_names")]
    pub secret_names: Vec<String>,
    /// Their values, in the order of `secret_names`.
    #[sqlx(rename = "repo_secret_values")]
    pub secret_values: Vec<String>,
    /// The repository's last ten learnings, newest first, each as `[outcome] summary`.
    #[sqlx(rename = "repo_learnings")]
    pub learnings: Vec<String>,
    /// Whether this task is reproduced first (the repository's setting and triage's verdict).
    #[sqlx(rename = "repo_reproduce_first")]
    pub reproduce_first: bool,
    /// Plan gate: this lease is a read-only plan run (the claim decided it; see
    /// [`crate::store::plans`]).
    #[sqlx(rename = "repo_plan_run")]
    pub plan_run: bool,
    /// Plan gate: the approved plan an implementation run follows.
    #[sqlx(rename = "repo_plan")]
    pub plan: Option<String>,
}

impl std::fmt::Debug for ClaimedRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedRepo")
            .field("name", &self.name)
            .field("clone_url", &self.clone_url)
            .field("default_branch", &self.default_branch)
            .field("verify_command", &self.verify_command)
            .field("egress_policy", &self.egress_policy)
            .field("grant_microusd", &self.grant_microusd)
            .field("agent_hooks", &self.agent_hooks)
            .field("reproduce_first", &self.reproduce_first)
            .field("plan_run", &self.plan_run)
            .field("plan", &self.plan.as_ref().map(String::len))
            .field("env_image", &self.env_image)
            .field("env_setup", &self.env_setup)
            .field("secret_names", &self.secret_names)
            .field("secret_values", &"<redacted>")
            .field("learnings", &self.learnings)
            .finish()
    }
}

impl ClaimedRepo {
    /// The setup secrets as (name, value) pairs.
    pub fn secrets(&self) -> impl Iterator<Item = (&str, &str)> {
        self.secret_names
            .iter()
            .map(String::as_str)
            .zip(self.secret_values.iter().map(String::as_str))
    }
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for ClaimRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let candidate = row.try_get("claim_candidate")?;
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
        // A claim that found a candidate but lost the repository's last slot (or what was left of
        // its budget) to a concurrent claimer, or met a change of its limits, tries again: other
        // repositories may still have work.
        for _ in 0..4 {
            let mut row = self.claim_once(CLAIM_HEAD_SQL, req).await?;
            if row.is_none() {
                row = self.claim_once(CLAIM_ALL_SQL, req).await?;
            }
            match row {
                None => return Ok(None),
                // A best-of-N task is not run itself: its claim makes its candidates, which
                // this and other runners claim next.
                Some(ClaimRow {
                    task: Some((t, r)), ..
                }) if t.best_of > 1 && !r.plan_run => {
                    self.fan_out(&t).await?;
                }
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

    /// Fails tasks still under way `settings.task_deadline_secs` after their first lease (a
    /// best-of-N candidate goes by its task's deadline: the task ending stops it)
    /// (`timed_out`, saying so), whatever they are doing — except waiting for a person (approval,
    /// a user's hold, a dispatch approval) or for the day's budget. A runner working on one learns
    /// at its next heartbeat that the lease is gone and stops. Returns the tasks failed.
    pub async fn fail_past_deadline(&self, limit: i64) -> Result<Vec<TaskId>> {
        Ok(sqlx::query_scalar(DEADLINE_SQL)
            .bind(status_texts(&[
                Status::Queued,
                Status::Leased,
                Status::Running,
                Status::Verifying,
                Status::Candidates,
                Status::Pushing,
                Status::PrOpen,
                Status::Reviewing,
                Status::CiWait,
                Status::Merging,
            ]))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Sets the deadline of every task, counted from its first lease.
    pub async fn set_task_deadline(&self, deadline: Duration) -> Result<()> {
        sqlx::query("UPDATE settings SET task_deadline_secs = $1")
            .bind(deadline.as_secs().clamp(60, i32::MAX as u64) as i32)
            .execute(&self.pool)
            .await?;
        Ok(())
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
                        .map_err(|e: lifecycle::UnknownValue| Error::Invalid(e.to_string()))?,
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

    pub(super) async fn lease_lost(&self, lease: &LeaseRef) -> Error {
        match self.task(lease.task_id).await {
            Ok(t) => Error::LeaseLost {
                task: lease.task_id,
                attempt: lease.attempt,
                current: t.status,
            },
            Err(e) => e,
        }
    }

    /// Seconds until the next live lease expires (negative when one is overdue), if any is live.
    pub async fn next_lease_expiry(&self) -> Result<Option<f64>> {
        Ok(sqlx::query_scalar(NEXT_LEASE_EXPIRY_SQL)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The runner and attempt of `task` while it is on a runner.
    pub async fn live_lease_of(&self, task: TaskId) -> Result<Option<(Option<RunnerId>, i32)>> {
        Ok(sqlx::query_as(
            "SELECT runner_id, attempt FROM tasks WHERE id = $1 AND status = ANY($2)",
        )
        .bind(task)
        .bind(status_texts(Status::ACTIVE))
        .fetch_optional(&self.pool)
        .await?)
    }
}

/// Fences a change of `repo`'s cap or daily budget (in `tx`, before its row is written): waits
/// for the claims of the repository under way and keeps new ones out until `tx` ends, and waits
/// for its leases that are ending now, so that the slots and the grant the repository's triggers
/// rebuild count every running attempt (`repo_limits_fence`, migration 0022).
pub(super) async fn fence_repo_limits(
    tx: &mut sqlx::PgConnection,
    repo: super::RepoId,
) -> Result<()> {
    sqlx::query("SELECT repo_limits_fence($1)")
        .bind(repo)
        .execute(tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::lifecycle::sql_list;
    use super::*;

    /// The claim's written-out lists are the sets they stand for, and the partial indexes the
    /// planner must match carry the same list.
    #[test]
    fn the_written_out_lists_are_the_sets_and_match_the_indexes() {
        for sql in [CLAIM_HEAD_SQL, CLAIM_ALL_SQL] {
            assert!(sql.contains(&format!(
                "dt.status NOT IN {}",
                sql_list(Status::UNSUCCESSFUL)
            )));
            assert!(sql.contains(&format!("h.status IN {}", sql_list(Status::ACTIVE))));
        }
        for sql in [
            take_back_sql!("true"),
            take_back_sql!("lease_expires_at < now() ORDER BY lease_expires_at"),
            NEXT_LEASE_EXPIRY_SQL,
        ] {
            assert!(sql.contains(&format!("status IN {}", sql_list(Status::ACTIVE))));
            assert!(!sql.contains("ANY("), "{sql}");
        }
        let live = include_str!("../../../migrations/0032_best_of.sql");
        let terminal = format!("status NOT IN {}", sql_list(Status::TERMINAL));
        assert!(live.contains(&format!(
            "CREATE INDEX tasks_live ON tasks (repo_id) WHERE {terminal};"
        )));
        assert!(DEADLINE_SQL.contains(&terminal), "{DEADLINE_SQL}");
        let schema = include_str!("../../../migrations/0001_store.sql");
        for index in ["tasks_runner ON tasks (runner_id)", "tasks_live_leases"] {
            let at = schema.find(index).expect("the index exists");
            let def = &schema[at..at + schema[at..].find(';').expect("a statement")];
            assert!(
                def.contains(&format!("WHERE status IN {}", sql_list(Status::ACTIVE))),
                "{def}"
            );
        }
    }
}
