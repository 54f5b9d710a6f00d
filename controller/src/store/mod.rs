//! The controller's storage: every decision about a task is a statement (or one transaction) here.
//!
//! Rules this module keeps, and its tests check:
//! - a transition is one guarded `UPDATE … WHERE id = $1 AND status = ANY($from)`; the guard comes
//!   from the step table in [`lifecycle`]; zero rows means an illegal transition, reported with the
//!   task's current status;
//! - the timeline entry of a transition is written by a trigger in the same transaction (a status
//!   change without one is refused by the database);
//! - runner writes (renew, logs, bundle, complete) are fenced by (task, attempt, lease token) and
//!   the runner that holds the lease;
//! - a task that fails or is canceled fails its dependents, by trigger, on every path;
//! - PostgreSQL's `now()` is the only clock for leases.
//!
//! Submodules are named by what they hold, along the task's path: [`intake`] (deliveries, ETags,
//! PR feedback), [`tasks`] (lifecycle operations driven by the controller and users, task
//! lists), [`claims`] (leases: claim, renew, reap, grace), [`logs`] (log chunks and bundles),
//! [`completion`] (stage reports and results), [`candidates`] (best-of-N: fan-out, settling, rankings), [`plans`] (the plan gate), [`stages`] (the controller stages as work items),
//! [`milestones`] (what GitHub already shows), [`merge_queue`] (tasks ready to merge, their order and the merge slot), [`feedback`] (reflection, learnings, breaker,
//! outbox), [`ops`] (audited operations and the audit log), [`users`] (people and credentials),
//! [`repos`], [`runners`], [`settings`], [`usage`] and [`metrics`] (the ledger and numbers),
//! [`retention`] (pruning by age), [`activity`] (what live tasks and the controller's own agents
//! are doing now),
//! [`pki`] (the runner CA), [`evidence`] (signed evidence records and their key), [`lifecycle`] (statuses and the step table), [`wake`] (the
//! notification channels) and [`work`] (claims on work with effects outside the database, so
//! replicas do each piece once).

pub mod activity;
pub mod budgets;
pub mod candidates;
pub mod claims;
pub mod cleanup;
pub mod completion;
pub mod evidence;
pub mod feedback;
pub mod guard;
pub mod intake;
pub mod lifecycle;
pub mod logs;
pub mod merge_queue;
pub mod metrics;
pub mod milestones;
pub mod ops;
pub mod pki;
pub mod plans;
pub mod repos;
pub mod reproduction;
pub mod retention;
pub mod runners;
pub mod settings;
pub mod stages;
pub mod tasks;
pub mod usage;
pub mod users;
pub mod wake;
pub mod work;

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

pub use lifecycle::{
    FailureMode, HoldKind, RepoId, RunnerId, Status, Task, TaskId, TerminalReason,
};

/// A session-level advisory lock held on its own connection (see [`Store::try_singleton_lock`]).
/// The connection is closed when the lock is dropped, never returned to the pool still holding it.
#[derive(Debug)]
pub struct SingletonLock(PoolConnection<Postgres>);

impl SingletonLock {
    /// Whether the lock is still held: a session lock lives as long as its session, so one round
    /// trip on that session proves it (a database restart or a cut connection ends both).
    pub async fn alive(&mut self) -> bool {
        matches!(
            tokio::time::timeout(
                Duration::from_secs(5),
                sqlx::query("SELECT 1").execute(&mut *self.0)
            )
            .await,
            Ok(Ok(_))
        )
    }
}

/// The embedded migrations (`migrations/` at the workspace root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// What clears a hold of `kind` on `task`, said to the person who tried something else.
pub fn how_to_clear(kind: HoldKind, task: TaskId) -> String {
    match kind {
        HoldKind::User => format!("release it first: `backporcher release {task}`"),
        HoldKind::DispatchApproval => {
            format!("it waits for approval (review-all): `backporcher approve {task}`")
        }
        HoldKind::CircuitBreaker => "its repository's circuit breaker releases it by itself at the hold's end (`backporcher status` shows when)".to_owned(),
        HoldKind::Reflection => {
            "its failure is being diagnosed; it releases itself when the diagnosis is done".to_owned()
        }
        HoldKind::Budget => "the daily budget is used up; it releases when the UTC day turns or the budget is raised".to_owned(),
    }
}

/// What a store operation can report besides success.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No task with this id.
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// No repository with this id or name.
    #[error("repository {0} is not registered; add it first")]
    RepoNotFound(String),
    /// No runner with this id or name.
    #[error("runner {0} not found")]
    RunnerNotFound(String),
    /// The runner was disabled by an admin.
    #[error("runner {0} is disabled; an admin must enable it or enroll the host again")]
    RunnerDisabled(RunnerId),
    /// The presented certificate is not the runner's current one.
    #[error(
        "runner {0} presented a certificate that was replaced or revoked; enroll the host again"
    )]
    CertificateSuperseded(RunnerId),
    /// A join token was refused, with why.
    #[error("{0}")]
    JoinToken(String),
    /// The task is not in a status this step may start from.
    #[error("task {task} is {current}; `{step}` is only possible from {expected}")]
    IllegalTransition {
        /// The task.
        task: TaskId,
        /// The step that was refused.
        step: &'static str,
        /// The task's status now.
        current: Status,
        /// Statuses the step accepts.
        expected: String,
    },
    /// A hold prevents the step.
    #[error("task {task} is held ({kind}); {}", how_to_clear(*.kind, *.task))]
    Held {
        /// The task.
        task: TaskId,
        /// The hold in place.
        kind: HoldKind,
    },
    /// `release` was asked for a hold it does not clear (it clears a user hold only).
    #[error("task {task} has a {kind} hold, which release does not clear (it clears a user hold only); {}", how_to_clear(*.kind, *.task))]
    NotReleasable {
        /// The task.
        task: TaskId,
        /// The hold in place.
        kind: HoldKind,
    },
    /// Release was asked for a task that is not held.
    #[error("task {0} is not held")]
    NotHeld(TaskId),
    /// A runner write carried an attempt or lease token that is no longer current.
    #[error(
        "lease of task {task} attempt {attempt} is no longer valid (task is {current}); stop this work"
    )]
    LeaseLost {
        /// The task.
        task: TaskId,
        /// The attempt the writer claimed.
        attempt: i32,
        /// The task's status now.
        current: Status,
    },
    /// A live task already exists for this issue.
    #[error("issue #{issue} already has a live task ({existing})")]
    DuplicateIssue {
        /// The issue.
        issue: i64,
        /// The live task.
        existing: TaskId,
    },
    /// A dependency ended without merging, so this task could never run.
    #[error(
        "task {task} depends on task {dependency}, which ended without merging; requeue that one first"
    )]
    DependencyFailed {
        /// The task.
        task: TaskId,
        /// The dependency that ended.
        dependency: TaskId,
    },
    /// The dependency would close a cycle.
    #[error("task {task} cannot depend on {dependency}: that would close a dependency cycle")]
    DependencyCycle {
        /// The task.
        task: TaskId,
        /// The refused dependency.
        dependency: TaskId,
    },
    /// Input that the store refuses, with what was wrong.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Well-formed, but in conflict with what is stored (a name taken, a step the row's state
    /// does not allow), with what to do.
    #[error("{0}")]
    Conflict(String),
    /// No user with this id.
    #[error("user {0} does not exist")]
    UserNotFound(i64),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Binds a [`Note`]'s actor, reason and details, in that order: the `ev_actor`, `ev_reason`
/// and `ev_data` parameters every audited statement ends its timeline columns with.
pub(crate) trait BindNote<'q> {
    /// The query with the note bound.
    fn bind_note(self, note: &'q Note) -> Self;
}

impl<'q, O> BindNote<'q>
    for sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
{
    fn bind_note(self, note: &'q Note) -> Self {
        self.bind(&note.actor).bind(&note.reason).bind(&note.data)
    }
}

/// Result of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who performed an operation and why, recorded in the timeline.
#[derive(Debug, Clone)]
pub struct Note {
    /// `user:<name>`, `runner:<id>`, `controller`, `reaper`, …
    pub actor: String,
    /// A short machine-readable reason.
    pub reason: String,
    /// Optional details.
    pub data: Option<serde_json::Value>,
}

impl Note {
    /// A note without details.
    pub fn new(actor: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            reason: reason.into(),
            data: None,
        }
    }

    /// Adds details.
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// Handle on the database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    /// This process's identity as a holder of work claims ([`work`]).
    replica: uuid::Uuid,
    /// Window statistics computed lately ([`metrics`]).
    windows: metrics::WindowCache,
    /// Claims waiting to be made together ([`claims`]).
    combiner: std::sync::Arc<claims::Combiner>,
}

impl Store {
    /// Connects with a pool of at most `max_connections`.
    ///
    /// Every connection runs with PostgreSQL's JIT compiler off: the controller's statements are
    /// short, and a sweep whose estimate crosses `jit_above_cost` (tiny tables never analysed look
    /// like hundreds of rows) spent over a second of CPU compiling a plan that then ran in well
    /// under a millisecond — a second the claims on the same cores waited through.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options = url.parse::<PgConnectOptions>()?.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            replica: uuid::Uuid::new_v4(),
            windows: Default::default(),
            combiner: Default::default(),
        }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// The pool, for modules that own their own tables.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Takes the session-level advisory lock `key` on a connection of its own, for a loop only
    /// one replica runs; `None` when another holder has it. The lock lasts as long as the
    /// returned connection (and ends with it, when the database restarts); check it with
    /// [`SingletonLock::alive`] before each pass (see [`crate::loops::lead`]).
    pub async fn try_singleton_lock(&self, key: i64) -> Result<Option<SingletonLock>> {
        let mut conn = self.pool.acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        if !got {
            return Ok(None);
        }
        // Dropped, the lock's session ends with it: a pooled connection would keep the lock.
        conn.close_on_drop();
        Ok(Some(SingletonLock(conn)))
    }

    /// Builds the error for a guarded update that matched no row.
    pub(crate) async fn refused(&self, task: TaskId, step: lifecycle::Step) -> Error {
        let row: Option<(String, Option<String>)> =
            match sqlx::query_as("SELECT status, hold_kind FROM tasks WHERE id = $1")
                .bind(task)
                .fetch_optional(&self.pool)
                .await
            {
                Ok(r) => r,
                Err(e) => return e.into(),
            };
        let Some((status, hold)) = row else {
            return Error::TaskNotFound(task);
        };
        let current: Status = match status.parse() {
            Ok(s) => s,
            Err(e) => return Error::Invalid(e.to_string()),
        };
        if let Some(kind) = hold.and_then(|h| h.parse().ok())
            && step.from.contains(&current)
        {
            return Error::Held { task, kind };
        }
        Error::IllegalTransition {
            task,
            step: step.name,
            current,
            expected: step
                .from
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Whether a database error is a unique violation of `constraint`.
pub(crate) fn is_unique_violation(e: &sqlx::Error, constraint: &str) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") && d.constraint() == Some(constraint))
}

/// Whether a database error is a foreign-key violation.
pub(crate) fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23503"))
}
