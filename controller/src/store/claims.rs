//! Leases: a runner claims a task, renews its lease while it works, and loses it when it stops
//! renewing (the reaper) or its process restarts; a controller start grants live leases a grace
//! period. The lease key — (task, attempt, lease token) and the runner — fences every runner
//! write ([`crate::store::logs`], [`crate::store::completion`]).
//!
//! A claim honours holds, dependencies, the global pause, runner labels, backends and capacity,
//! the per-repo concurrency cap and the budgets, and orders by priority then age; candidates'
//! queue rows are locked `FOR UPDATE SKIP LOCKED`, so claimers take different tasks instead of
//! waiting.
//!
//! A claim does not rewrite the task row (migration 0046): it takes the task out of `task_queue`
//! and writes a narrow `task_claims` row (runner, attempt, token, expiry, grant, plan run), and
//! the runner is told the lease as the task row will hold it (the claim laid over the task row
//! here, as `claim_start` will write it). A claim commits durably even where commits are
//! asynchronous (migration 0047). The runner's first report starts
//! the claim ([`Store::start_claim`]: its step's fence finds no started lease, the claim is
//! started, the step made again — [`Store::fenced`]): the task row takes the lease,
//! `queued → leased`. Until then the claim counts as a live lease everywhere (capacity,
//! active tasks, slots, grants); renewals extend it; a claim never started lapses at its expiry,
//! goes with its runner, and goes when its task leaves the queue or is held — its slot and grant
//! returned, the task queued again with the same attempt number. The cap
//! is exact without a shared counter: a capped repository has one slot row per unit of its cap
//! (`repo_slots`, migration 0022); a claim takes a free slot with `SKIP LOCKED` and the tasks
//! trigger frees it when the lease ends. A claim locks the repository's row only while the
//! repository has a daily budget; a change of the cap or the budget is fenced against the claims
//! of the repository ([`fence_repo_limits`]).
//!
//! Claims are made in batches: the claims that arrive while one is under way are made together
//! by one call of the database function `claim_batch` (migrations 0046 and 0047, where the rules
//! are written), so that what a claim costs besides its own row — the statement, the round trip, the
//! commit — is shared ([`Combiner`]). A claim alone is a batch of one. The statements run on at
//! most two connections the claims keep for themselves (a quarter of the pool at most; not the
//! pool's in turn), so that their plans stay planned; [`Store::close`] lets them go.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

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

/// The claim statement: `claim_batch` (migration 0047) makes the claims of a batch, and this
/// reads what each runner needs of its task's repository beside the task (once per repository
/// of the batch: its secrets and learnings are the same for each of its tasks). Binds: $1 the runners,
/// $2 their labels (a JSON array of arrays), $3 their capacities (NULL: no limit), $4 the lease
/// lengths in seconds, one element per request.
const CLAIM_SQL: &str = "WITH b AS MATERIALIZED (SELECT * FROM claim_batch($1, $2, $3, $4)), \
     r AS (SELECT r.id, r.name, r.clone_url, r.default_branch, r.verify_command, r.egress_policy, \
       r.agent_hooks, r.env_image, r.env_setup, r.reproduce_first, \
       ARRAY(SELECT s.name FROM repo_secrets s WHERE s.repo_id = r.id ORDER BY s.name) AS secret_names, \
       ARRAY(SELECT s.value FROM repo_secrets s WHERE s.repo_id = r.id ORDER BY s.name) AS secret_values, \
       ARRAY(SELECT format('[%s] %s', l.outcome, l.summary) FROM learnings l WHERE l.repo_id = r.id \
         ORDER BY l.id DESC LIMIT 10) AS learnings \
       FROM repos r WHERE r.id IN (SELECT (b_task).repo_id FROM b)) \
     SELECT b.b_req, b.b_lost, (b.b_task).*, (b.b_claim).attempt AS claim_attempt, \
     (b.b_claim).token AS claim_token, (b.b_claim).runner_id AS claim_runner_id, \
     (b.b_claim).expires_at AS claim_expires_at, (b.b_claim).plan_attempt AS claim_plan_attempt, \
     r.name AS repo_name, \
     r.clone_url AS repo_clone_url, r.default_branch AS repo_default_branch, \
     r.verify_command AS repo_verify_command, r.egress_policy AS repo_egress_policy, \
     b.b_amount AS repo_grant_microusd, r.agent_hooks AS repo_agent_hooks, \
     r.env_image AS repo_env_image, r.env_setup AS repo_env_setup, \
     reproduce_first_asked(r.reproduce_first, (b.b_task).is_bug) AS repo_reproduce_first, \
     COALESCE((b.b_claim).plan_attempt = (b.b_claim).attempt, false) AS repo_plan_run, \
     (SELECT p.text FROM task_plans p WHERE p.task_id = COALESCE((b.b_task).parent_id, (b.b_task).id) \
       AND p.state = 'approved') AS repo_plan, \
     r.secret_names AS repo_secret_names, r.secret_values AS repo_secret_values, \
     r.learnings AS repo_learnings \
     FROM b LEFT JOIN r ON r.id = (b.b_task).repo_id";

/// Most claims one statement makes.
const MAX_BATCH: usize = 32;
/// Most claim statements this process has under way at once. A second starts only while
/// [`SECOND_BATCH`] claims are waiting: fewer wait for the first to end and join the next.
const MAX_RUNNING: usize = 2;
/// Claims waiting that start a second statement beside the first.
const SECOND_BATCH: usize = 8;
/// Times a driver lets the claimers it just answered run before it gathers its next batch.
const YIELDS: usize = 2;
/// Times a claim is made again after it lost a race (a slot taken a moment before by another
/// claimer, a change of its repository's limits under way); then it returns nothing, and the
/// runner asks again.
const MAX_TRIES: u32 = 4;

/// Seconds until the next live lease expires, through the partial index on live leases (the
/// status list written out, as in [`take_back_sql`]).
const NEXT_LEASE_EXPIRY_SQL: &str = "SELECT EXTRACT(EPOCH FROM (LEAST(min(lease_expires_at), \
       (SELECT min(expires_at) FROM task_claims)) - now()))::float8 \
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

/// A row of the claim statement: a request of the batch (1-based) and its task if it was
/// served; `lost` when it lost a race and may try again.
struct ClaimRow {
    req: i32,
    lost: bool,
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
        let won: Option<TaskId> = row.try_get("id")?;
        let task = match won {
            Some(_) => {
                let mut task = <Task as sqlx::FromRow<_>>::from_row(row)?;
                // The claim laid over its task as it is: the task as `claim_start` (migration
                // 0046) will make it when the runner's first report starts the claim.
                task.status = Status::Leased;
                task.attempt = row.try_get("claim_attempt")?;
                task.lease_token = Some(row.try_get("claim_token")?);
                task.runner_id = Some(row.try_get("claim_runner_id")?);
                task.lease_expires_at = Some(row.try_get("claim_expires_at")?);
                task.hold_kind = lifecycle::OptHold(None);
                task.hold_until = None;
                task.plan_attempt = row.try_get("claim_plan_attempt")?;
                Some((task, <ClaimedRepo as sqlx::FromRow<_>>::from_row(row)?))
            }
            None => None,
        };
        Ok(Self {
            req: row.try_get("b_req")?,
            lost: row.try_get("b_lost")?,
            task,
        })
    }
}

/// Gathers the claims that arrive while one is under way, so that one statement makes them
/// together (each process has one; replicas are kept apart by the rows' locks, as single claims
/// are). Under light load a claim runs alone at once; under a burst (runners asking for work at
/// the same time) the claims that waited go together, at most [`MAX_BATCH`] in one statement and
/// at most [`MAX_RUNNING`] statements at once.
///
/// The statements run on connections of their own, kept between batches ([`Parked`]): on the
/// pool's connections in turn, each claim first paid the pool's liveness round trip, and after
/// each `ANALYZE` of the tasks (autovacuum's, or a bulk load's) every connection of the pool planned
/// the claim again — the first claims after it took 6–15 ms each instead of 1–2 for a tenth of
/// a second, the p99 of a bench round of 10,000 leases.
#[derive(Default)]
pub(super) struct Combiner {
    state: std::sync::Mutex<Gathered>,
    parked: std::sync::Mutex<Parked>,
    /// Claim statements run, and claims answered by them (served or not), since the start.
    statements: std::sync::atomic::AtomicU64,
    requests: std::sync::atomic::AtomicU64,
}

/// How claims were gathered since the process started ([`Store::claim_batching`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimBatching {
    /// Claim statements run.
    pub statements: u64,
    /// Claims those statements made (each try of a claim that lost a race counts).
    pub requests: u64,
}

/// The connections claim drivers keep between batches ([`Store::claim_connections_kept`]), each
/// with when it last answered; none once the store is closed ([`Store::close`]), so that closing
/// the pool does not wait for them.
#[derive(Default)]
struct Parked {
    conns: Vec<(ClaimConn, std::time::Instant)>,
    closed: bool,
}

/// A connection claim statements run on.
type ClaimConn = sqlx::pool::PoolConnection<sqlx::Postgres>;

/// A kept claim connection idle longer than this is checked (a round trip) before its next
/// claim; one that answered more recently is used at once, and if it broke meanwhile its claims
/// fail once (their runners ask again) and it is replaced.
const CHECK_PARKED_AFTER: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Gathered {
    waiting: std::collections::VecDeque<Waiting>,
    running: usize,
}

/// A claim waiting for its batch.
struct Waiting {
    runner_id: RunnerId,
    labels: Vec<String>,
    lease_secs: f64,
    capacity: Option<i32>,
    tries: u32,
    reply: tokio::sync::oneshot::Sender<Result<Option<(Task, ClaimedRepo)>>>,
}

impl std::fmt::Debug for Combiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("Combiner")
            .field("waiting", &g.waiting.len())
            .field("running", &g.running)
            .finish()
    }
}

impl Combiner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Gathered> {
        // The state stays whole whatever panicked while it was held: take it back.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a claim; true when the caller must start a driver for it.
    fn push(&self, w: Waiting) -> bool {
        let mut g = self.lock();
        g.waiting.push_back(w);
        let start = g.running == 0 || (g.running < MAX_RUNNING && g.waiting.len() >= SECOND_BATCH);
        if start {
            g.running += 1;
        }
        start
    }

    /// Keeps a claim connection for the next driver (or lets it go back to the pool when `keep`
    /// are kept, or the store is closed).
    fn park(&self, conn: ClaimConn, keep: usize) {
        let mut p = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        if !p.closed && p.conns.len() < keep {
            p.conns.push((conn, std::time::Instant::now()));
        }
    }

    /// A kept claim connection, if any.
    fn unpark(&self) -> Option<(ClaimConn, std::time::Instant)> {
        self.parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conns
            .pop()
    }

    /// Lets the kept connections go, and keeps none from now on.
    fn close(&self) {
        let mut p = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        p.closed = true;
        p.conns.clear();
    }

    /// Queues again a claim that lost a race, or answers it with nothing after [`MAX_TRIES`].
    /// Called by a running driver, which takes it with its next batch.
    fn again(&self, mut w: Waiting) {
        w.tries += 1;
        if w.tries >= MAX_TRIES {
            let _ = w.reply.send(Ok(None));
            return;
        }
        self.lock().waiting.push_back(w);
    }

    /// The next batch for a driver; `None` (and the driver counted out, under the same lock,
    /// so that a claim queued after it is never left without one) when nothing waits.
    fn take(&self, running: &mut Running<'_>) -> Option<Vec<Waiting>> {
        let mut g = self.lock();
        // A claim whose caller went away (a runner's lease call that was cut) is not made: its
        // task would wait, leased to no one, until the lease lapsed.
        g.waiting.retain(|w| !w.reply.is_closed());
        if g.waiting.is_empty() {
            g.running -= 1;
            running.1 = false;
            return None;
        }
        let n = g.waiting.len().min(MAX_BATCH);
        Some(g.waiting.drain(..n).collect())
    }
}

/// A driver counted in [`Gathered::running`]; if it ends without being counted out (it panicked
/// or its runtime stopped), it counts itself out and answers the waiting claims with an error
/// rather than leave them waiting for a driver that is gone.
struct Running<'a>(&'a Combiner, bool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.1 {
            let mut g = self.0.lock();
            g.running -= 1;
            if g.running == 0 {
                g.waiting.clear();
            }
        }
    }
}

impl Store {
    /// Leases the next eligible task to a runner, or returns `None` when nothing is eligible.
    pub async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Option<Task>> {
        Ok(self.claim_with_repo(req).await?.map(|(t, _)| t))
    }

    /// [`Store::claim`], also returning what the runner needs of the task's repository (read in
    /// the same statement).
    ///
    /// Claims that arrive while another is under way wait for it to end and are then made
    /// together, by one statement ([`Combiner`]); a claim that lost a race (the repository's
    /// last slot taken a moment before, a change of its limits under way) is made again with the
    /// next batch, at most [`MAX_TRIES`] times.
    pub async fn claim_with_repo(
        &self,
        req: &ClaimRequest<'_>,
    ) -> Result<Option<(Task, ClaimedRepo)>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let waiting = Waiting {
            runner_id: req.runner_id,
            labels: req.labels.to_vec(),
            lease_secs: req.lease.as_secs_f64(),
            capacity: req.capacity,
            tries: 0,
            reply,
        };
        if self.combiner.push(waiting) {
            // Its own task: a caller that goes away does not take the others' claims with it.
            tokio::spawn(self.clone().drive_claims());
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::Database(sqlx::Error::Io(std::io::Error::other(
                "the claim was dropped: the controller is shutting down",
            ))))
        })
    }

    /// Makes the waiting claims, a batch at a time, until none waits, on a kept connection.
    async fn drive_claims(self) {
        let mut running = Running(&self.combiner, true);
        let mut conn = None;
        while let Some(batch) = self.combiner.take(&mut running) {
            self.claim_batch(batch, &mut conn).await;
            // The claimers just answered ask again at once (a runner's next lease, a claim that
            // lost a race): let them, so that they join the next batch instead of the one after.
            for _ in 0..YIELDS {
                tokio::task::yield_now().await;
            }
        }
        if let Some(conn) = conn {
            self.combiner.park(conn, self.claim_connections_kept());
        }
    }

    /// How many connections the claims keep: [`MAX_RUNNING`], but at most a quarter of the pool
    /// (none in a pool of fewer than four), so the rest of the store never waits for them.
    fn claim_connections_kept(&self) -> usize {
        let pool = usize::try_from(self.pool.options().get_max_connections()).unwrap_or(0);
        (pool / 4).min(MAX_RUNNING)
    }

    /// The connection for the next claim statement: a kept one (checked first if it was idle
    /// long), else one from the pool.
    async fn claim_connection(&self) -> Result<ClaimConn> {
        use sqlx::Connection;
        while let Some((mut conn, since)) = self.combiner.unpark() {
            if since.elapsed() < CHECK_PARKED_AFTER || conn.ping().await.is_ok() {
                return Ok(conn);
            }
            conn.close_on_drop();
        }
        Ok(self.pool.acquire().await?)
    }

    /// Closes the pool, after letting the claim connections go (a kept connection would hold
    /// the close forever).
    pub async fn close(&self) {
        self.combiner.close();
        self.pool.close().await;
    }

    /// How claims were gathered into statements since this process started.
    pub fn claim_batching(&self) -> ClaimBatching {
        use std::sync::atomic::Ordering::Relaxed;
        ClaimBatching {
            statements: self.combiner.statements.load(Relaxed),
            requests: self.combiner.requests.load(Relaxed),
        }
    }

    /// Makes one batch of claims and answers each, on `conn` (taken if there is none; let go
    /// if it broke).
    async fn claim_batch(&self, batch: Vec<Waiting>, conn: &mut Option<ClaimConn>) {
        {
            use std::sync::atomic::Ordering::Relaxed;
            self.combiner.statements.fetch_add(1, Relaxed);
            self.combiner
                .requests
                .fetch_add(batch.len() as u64, Relaxed);
        }
        let runners: Vec<RunnerId> = batch.iter().map(|w| w.runner_id).collect();
        let labels: Vec<&[String]> = batch.iter().map(|w| w.labels.as_slice()).collect();
        let capacities: Vec<Option<i32>> = batch.iter().map(|w| w.capacity).collect();
        let leases: Vec<f64> = batch.iter().map(|w| w.lease_secs).collect();
        let rows: Result<Vec<ClaimRow>> = async {
            let mut c = match conn.take() {
                Some(c) => c,
                None => self.claim_connection().await?,
            };
            let rows = sqlx::query_as(CLAIM_SQL)
                .bind(&runners)
                .bind(sqlx::types::Json(&labels))
                .bind(&capacities)
                .bind(&leases)
                .fetch_all(&mut *c)
                .await;
            if connection_lives(&rows) {
                *conn = Some(c);
            } else {
                c.close_on_drop();
            }
            Ok(rows?)
        }
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                let told = e.to_string();
                let mut first = Some(e);
                for w in batch {
                    let e = first.take().unwrap_or_else(|| {
                        Error::Database(sqlx::Error::Io(std::io::Error::other(format!(
                            "a claim made together with this one failed: {told}"
                        ))))
                    });
                    let _ = w.reply.send(Err(e));
                }
                return;
            }
        };
        let size = batch.len();
        let mut batch: Vec<Option<Waiting>> = batch.into_iter().map(Some).collect();
        let mut fan_out = Vec::new();
        for row in rows {
            let Some(w) = usize::try_from(row.req - 1)
                .ok()
                .and_then(|i| batch.get_mut(i))
                .and_then(Option::take)
            else {
                tracing::error!(
                    req = row.req,
                    size,
                    "the claim statement answered a request it was not sent"
                );
                continue;
            };
            match row.task {
                // A best-of-N task is not run itself: its claim makes its candidates, which this
                // and other runners claim next.
                Some((t, r)) if t.best_of > 1 && !r.plan_run => fan_out.push((t, w)),
                Some(claimed) => {
                    if let Err(Ok(Some((t, _)))) = w.reply.send(Ok(Some(claimed))) {
                        tracing::warn!(
                            task = t.id,
                            runner = w.runner_id,
                            "the runner that claimed this task went away before it heard; the \
                             lease is taken back when it lapses"
                        );
                    }
                }
                None => {
                    debug_assert!(row.lost);
                    tracing::debug!(
                        runner = w.runner_id,
                        tries = w.tries,
                        "claim lost a race; trying again"
                    );
                    self.combiner.again(w);
                }
            }
        }
        for w in batch.into_iter().flatten() {
            let _ = w.reply.send(Ok(None));
        }
        for (t, w) in fan_out {
            match self.fan_out(&t).await {
                Ok(_) => self.combiner.again(w),
                Err(e) => {
                    let _ = w.reply.send(Err(e));
                }
            }
        }
    }

    /// Extends a lease. Reports a pending cancellation so the runner can stop.
    pub async fn renew(&self, lease: &LeaseRef, length: Duration) -> Result<Renewal> {
        let renewed = self.renew_many(lease.runner_id, &[*lease], length).await?;
        match renewed.into_iter().next().and_then(|(_, r)| r) {
            Some(r) => Ok(r),
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
        // Started leases on the task rows, claims not started yet on theirs.
        let rows: Vec<(TaskId, i32, DateTime<Utc>, bool)> = sqlx::query_as(
            "WITH k AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::uuid[]) AS k(id, attempt, token)), \
             started AS (UPDATE tasks t SET lease_expires_at = now() + make_interval(secs => $4) \
               FROM k WHERE t.id = k.id AND t.attempt = k.attempt AND t.lease_token = k.token \
                 AND t.runner_id = $5 AND t.status = ANY($6) \
               RETURNING t.id, t.attempt, t.lease_expires_at, t.cancel_requested_at IS NOT NULL AS cancel), \
             claimed AS (UPDATE task_claims c SET expires_at = now() + make_interval(secs => $4) \
               FROM k WHERE c.task_id = k.id AND c.attempt = k.attempt AND c.token = k.token \
                 AND c.runner_id = $5 \
               RETURNING c.task_id, c.attempt, c.expires_at, false) \
             SELECT * FROM started UNION ALL SELECT * FROM claimed",
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
        let mut reaped = self.lapse_claims(limit, None, true).await?;
        let left = limit - reaped.len() as i64;
        if left > 0 {
            reaped.extend(
                self.take_back(
                    take_back_sql!("lease_expires_at < now() ORDER BY lease_expires_at"),
                    left,
                    None,
                    "lease_expired",
                    "reaper",
                )
                .await?,
            );
        }
        Ok(reaped)
    }

    /// Drops claims that were never started — expired ones, or every one of `runner` — at most
    /// `limit`: their slots and grants come back and their tasks rejoin the queue
    /// (`claims_lapse`, migration 0046). Nothing ran under them, so nothing is counted against
    /// the task.
    async fn lapse_claims(
        &self,
        limit: i64,
        runner: Option<RunnerId>,
        expired: bool,
    ) -> Result<Vec<Reaped>> {
        let rows: Vec<(TaskId, RunnerId)> =
            sqlx::query_as("SELECT * FROM claims_lapse($1, $2, $3)")
                .bind(limit)
                .bind(runner)
                .bind(expired)
                .fetch_all(&self.pool)
                .await?;
        for (task, runner) in &rows {
            tracing::info!(
                task,
                runner,
                "a claim the runner never started was taken back; the task is queued again"
            );
        }
        Ok(rows
            .into_iter()
            .map(|(task_id, runner_id)| Reaped {
                task_id,
                status: Status::Queued,
                runner_id: Some(runner_id),
            })
            .collect())
    }

    /// Takes back every lease of a runner that is gone (disabled, revoked, or known dead):
    /// re-queued as `runner_lost`, without spending a retry.
    pub async fn release_runner_leases(
        &self,
        runner: RunnerId,
        actor: &str,
    ) -> Result<Vec<Reaped>> {
        let mut reaped = self.lapse_claims(i64::MAX, Some(runner), false).await?;
        reaped.extend(
            self.take_back(
                take_back_sql!("true"),
                i64::MAX,
                Some(runner),
                "runner_lost",
                actor,
            )
            .await?,
        );
        Ok(reaped)
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
        let started = sqlx::query(
            "UPDATE tasks SET lease_expires_at = GREATEST(lease_expires_at, now() + make_interval(secs => $1)) \
             WHERE status = ANY($2)",
        )
        .bind(grace.as_secs_f64())
        .bind(status_texts(Status::ACTIVE))
        .execute(&self.pool)
        .await?
        .rows_affected();
        let claimed = sqlx::query(
            "UPDATE task_claims SET expires_at = GREATEST(expires_at, now() + make_interval(secs => $1))",
        )
        .bind(grace.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(started + claimed)
    }

    /// [`Store::start_claim`] on its own.
    pub async fn start_claim_now(&self, lease: &LeaseRef) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        Self::start_claim(&mut conn, lease).await
    }

    /// Runs the fenced write `write` (`None`: its lease fence found no started lease); when it
    /// finds none and `lease` is a claim not yet started — the runner's first report, or a write
    /// that came before it — starts the claim and runs `write` once more. A claim starts once, so
    /// the write runs at most twice.
    pub(super) async fn fenced<T, F, Fut>(&self, lease: &LeaseRef, write: F) -> Result<Option<T>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        if let Some(done) = write().await? {
            return Ok(Some(done));
        }
        if self.start_claim_now(lease).await? {
            return write().await;
        }
        Ok(None)
    }

    /// Starts the claim `lease` names, if it is one not started yet: the task row takes the
    /// lease (`queued → leased`, migration 0046's `claim_start`). A lease already started, or
    /// gone, is left as it is (the caller's own fence then decides). Runs in `conn`, so that a
    /// caller's transaction (a completion, a fan-out) holds what it starts.
    pub(super) async fn start_claim(
        conn: &mut sqlx::PgConnection,
        lease: &LeaseRef,
    ) -> Result<bool> {
        Ok(sqlx::query_scalar("SELECT claim_start($1, $2, $3, $4)")
            .bind(lease.task_id)
            .bind(lease.attempt)
            .bind(lease.token)
            .bind(lease.runner_id)
            .fetch_one(conn)
            .await?)
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

/// Whether the connection a statement ran on can run the next: it answered, even if only with
/// an error of the statement's — not when it broke (the link was cut) or the server is ending
/// the session (a shutdown or restart: SQLSTATE class 57, or a connection exception, class 08).
fn connection_lives<T>(result: &std::result::Result<T, sqlx::Error>) -> bool {
    match result {
        Ok(_) => true,
        Err(sqlx::Error::Database(e)) => !matches!(
            e.code().as_deref().and_then(|c| c.get(..2)),
            Some("57" | "08")
        ),
        Err(_) => false,
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
        let claim = include_str!("../../../migrations/0047_claim_head_order.sql");
        // The candidate queries carry the lists.
        for list in [
            format!("dt.status NOT IN {}", sql_list(Status::UNSUCCESSFUL)),
            format!("h.status IN {}", sql_list(Status::ACTIVE)),
        ] {
            assert!(claim.contains(&list), "{list}");
        }
        // The two candidate queries differ only in where they read from: their conditions,
        // order and locking are one text, so a rule changed in one and not the other fails here.
        // The head's query orders by the head's columns (so that its join keeps that order).
        let rules: Vec<String> = claim
            .split("WHERE t.status = 'queued'")
            .skip(1)
            .map(|q| {
                q[..q
                    .find("FOR UPDATE OF qu SKIP LOCKED")
                    .expect("a locking clause")]
                    .replace("head.", "qu.")
            })
            .collect();
        assert_eq!(rules.len(), 2, "the head's query and the whole queue's");
        assert_eq!(rules[0], rules[1]);
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
        // The index by runner has the live statuses alone; the index by expiry also names its
        // key as present (migration 0042), so a count by runner cannot read it instead.
        let active = format!("WHERE status IN {}", sql_list(Status::ACTIVE));
        for (schema, index, predicate) in [
            (
                include_str!("../../../migrations/0001_store.sql"),
                "tasks_runner ON tasks (runner_id)",
                format!("{active};"),
            ),
            (
                include_str!("../../../migrations/0042_live_lease_index.sql"),
                "CREATE INDEX tasks_live_leases ON tasks (lease_expires_at)",
                format!("{active} AND lease_expires_at IS NOT NULL;"),
            ),
        ] {
            let at = schema.find(index).expect("the index exists");
            let def = &schema[at..=at + schema[at..].find(';').expect("a statement")];
            let def = def.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(def.ends_with(&predicate), "{def}");
        }
    }
}
