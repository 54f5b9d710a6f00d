//! The task's domain types: statuses, reasons, holds and the legal transitions between statuses.
//!
//! The transition table here is the single source the store's SQL guards are built from: each
//! store operation names a [`Step`], and its `UPDATE … WHERE status = ANY(…)` uses that step's
//! `from` set. The tests walk every (status, step) pair against the real database.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Database id of a task.
pub type TaskId = i64;
/// Database id of a repository.
pub type RepoId = i64;
/// Database id of a runner.
pub type RunnerId = i64;

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant,)* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(UnknownValue { kind: stringify!($name), value: other.to_owned() }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownValue;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    };
}

/// A database value that no enum variant matches (a schema/code mismatch).
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {kind} `{value}` in the database")]
pub struct UnknownValue {
    kind: &'static str,
    value: String,
}

text_enum! {
    /// Where a task is in its life.
    Status {
        /// Accepted from intake, waiting for triage.
        New = "new",
        /// Ready to be leased (subject to holds, dependencies, pause, labels, per-repo cap).
        Queued = "queued",
        /// Leased by a runner that has not started the agent yet.
        Leased = "leased",
        /// The agent runs on a runner.
        Running = "running",
        /// The repository's verify command runs on a runner.
        Verifying = "verifying",
        /// Best-of-N: the task's candidates run (each a task of its own); the controller ranks
        /// them when they have ended. Not on a runner, not claimable.
        Candidates = "candidates",
        /// Plan gate: the read-only plan run delivered a plan; the task waits for a person (or
        /// the repository's auto-approval) to approve, edit or reject it, or for the timeout.
        /// Not on a runner, not claimable.
        PlanHold = "plan_hold",
        /// The runner's result is stored; the controller pushes the branch and opens the PR.
        Pushing = "pushing",
        /// A pull request exists and waits for review.
        PrOpen = "pr_open",
        /// The reviewer model is looking at the diff.
        Reviewing = "reviewing",
        /// Review approved; waiting for CI checks.
        CiWait = "ci_wait",
        /// Checks are green; a human must approve the merge.
        ApprovalHold = "approval_hold",
        /// The merge is in progress.
        Merging = "merging",
        /// Terminal: merged.
        Merged = "merged",
        /// Terminal: failed, with a reason.
        Failed = "failed",
        /// Terminal: canceled by a user.
        Canceled = "canceled",
        /// Terminal, candidates only: the candidate's run ended (its `terminal_reason` says how);
        /// its parent ranks it.
        Finished = "finished",
    }
}

impl Status {
    /// Terminal statuses: nothing moves a task out of these except an explicit requeue.
    pub const TERMINAL: &'static [Status] = &[
        Status::Merged,
        Status::Failed,
        Status::Canceled,
        Status::Finished,
    ];
    /// Statuses in which a runner holds a lease.
    pub const ACTIVE: &'static [Status] = &[Status::Leased, Status::Running, Status::Verifying];
    /// Ended without merging: a task waiting for one of these cannot go on.
    pub const UNSUCCESSFUL: &'static [Status] = &[Status::Failed, Status::Canceled];
    /// Ended with an outcome to learn from.
    pub const OUTCOMES: &'static [Status] = &[Status::Merged, Status::Failed];

    /// Merged, failed, canceled or (a candidate) finished.
    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// Leased, running or verifying.
    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }

    /// Every status that is not terminal.
    pub fn live() -> Vec<Status> {
        Self::ALL
            .iter()
            .copied()
            .filter(|s| !s.is_terminal())
            .collect()
    }

    /// Dispatched and not ended: live, past triage.
    pub fn in_flight() -> Vec<Status> {
        Self::live()
            .into_iter()
            .filter(|s| *s != Status::New)
            .collect()
    }
}

text_enum! {
    /// Why a task ended (or, for `lease_expired`/`runner_lost`, why it went back to the queue).
    TerminalReason {
        /// Merged.
        Succeeded = "succeeded",
        /// The agent failed and its retries are spent.
        AgentFailed = "agent_failed",
        /// Verification kept failing.
        VerifyFailed = "verify_failed",
        /// The reviewer rejected it and review retries are spent.
        ReviewRejected = "review_rejected",
        /// CI kept failing.
        CiFailed = "ci_failed",
        /// Merge conflicts kept coming back.
        MergeConflict = "merge_conflict",
        /// The forge refused the merge for another reason.
        MergeFailed = "merge_failed",
        /// A user canceled it.
        CanceledByUser = "canceled_by_user",
        /// Its runner disappeared (re-queues without spending a retry; fails after
        /// `settings.max_lease_losses` lost leases in a row).
        RunnerLost = "runner_lost",
        /// Its lease expired (re-queues without spending a retry; fails after
        /// `settings.max_lease_losses` lost leases in a row).
        LeaseExpired = "lease_expired",
        /// It ran past its wall-clock limit (an attempt's, or the task's deadline).
        TimedOut = "timed_out",
        /// Its agent went silent (no output, no model traffic) past the runner's stall limit.
        Stalled = "stalled",
        /// The repository's environment could not be set up.
        SetupFailed = "setup_failed",
        /// It reached its cost budget.
        BudgetExceeded = "budget_exceeded",
        /// A task it depends on failed or was canceled.
        DependencyFailed = "dependency_failed",
        /// The controller refused the runner's bundle (branch, size, forbidden paths).
        PushRejected = "push_rejected",
        /// The safety scan found something that must not be pushed.
        SafetyBlocked = "safety_blocked",
        /// A bug or an unexpected error in the controller.
        InternalError = "internal_error",
        /// Plan gate: a person rejected the task's plan.
        PlanRejected = "plan_rejected",
        /// Plan gate: nobody decided on the plan within the repository's plan timeout.
        PlanTimedOut = "plan_timed_out",
    }
}

text_enum! {
    /// Why a task is held (an overlay on its status that blocks dispatch and merge).
    HoldKind {
        /// A user asked for it.
        User = "user",
        /// review-all mode: a human must approve the dispatch.
        DispatchApproval = "dispatch_approval",
        /// The repository's circuit breaker tripped; releases itself at `hold_until`.
        CircuitBreaker = "circuit_breaker",
        /// A failure is being diagnosed before the retry; releases itself at `hold_until`.
        Reflection = "reflection",
        /// Its repository's (or the fleet's) daily budget is used up; released when the day
        /// turns (`hold_until`) or the budget is raised.
        Budget = "budget",
    }
}

text_enum! {
    /// A failure mode with its own retry budget.
    FailureMode {
        /// The agent exited with an error (retry escalates the model).
        Agent = "agent",
        /// The verify command kept failing.
        Verify = "verify",
        /// The reviewer rejected the diff.
        Review = "review",
        /// CI checks failed.
        Ci = "ci",
        /// The PR conflicted with its base.
        Conflict = "conflict",
    }
}

impl FailureMode {
    /// The terminal reason when this mode's budget is spent.
    pub fn exhausted_reason(self) -> TerminalReason {
        match self {
            FailureMode::Agent => TerminalReason::AgentFailed,
            FailureMode::Verify => TerminalReason::VerifyFailed,
            FailureMode::Review => TerminalReason::ReviewRejected,
            FailureMode::Ci => TerminalReason::CiFailed,
            FailureMode::Conflict => TerminalReason::MergeConflict,
        }
    }
}

/// A controller-driven step of the pipeline: from which statuses it may start, where it leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Name used in errors and timeline entries.
    pub name: &'static str,
    /// Statuses this step may start from.
    pub from: &'static [Status],
    /// The status it leads to (for retry steps: when budget remains).
    pub to: Status,
}

use Status::*;

/// Declares each step as a constant and lists them all in [`STEPS`] (for exhaustive tests and
/// documentation), so a step is written once.
macro_rules! steps {
    ($($(#[$doc:meta])* $name:ident = $text:literal: [$($from:ident),*] => $to:ident;)*) => {
        $($(#[$doc])* pub const $name: Step = Step { name: $text, from: &[$($from),*], to: $to };)*
        /// Every controller-driven step.
        pub const STEPS: &[Step] = &[$($name),*];
    };
}

steps! {
    /// Triage done: the task joins the queue.
    TRIAGE = "triage": [New] => Queued;
    /// A runner claims it.
    CLAIM = "claim": [Queued] => Leased;
    /// Best-of-N: the claimed task makes its candidates and waits for them.
    FAN_OUT = "fan_out": [Leased] => Candidates;
    /// Plan gate: the read-only plan run delivered its plan, which waits for a decision.
    PLAN_READY = "plan_ready": [Leased, Running, Verifying] => PlanHold;
    /// Plan gate: the plan was approved (as written or edited): the task goes back to the queue,
    /// now claimable for implementation.
    PLAN_APPROVED = "plan_approved": [PlanHold] => Queued;
    /// Best-of-N: the candidates ended (or the cost cap stopped them) and one succeeded: the
    /// push stage ranks them and pushes the winner.
    CANDIDATES_DONE = "candidates_done": [Candidates] => Pushing;
    /// A candidate's run ended.
    CANDIDATE_FINISHED = "candidate_finished": [Queued, Leased, Running, Verifying] => Finished;
    /// The runner started the agent (or re-runs it after a failed verify).
    START_AGENT = "start_agent": [Leased, Verifying] => Running;
    /// The runner started the verify command.
    START_VERIFY = "start_verify": [Running] => Verifying;
    /// The runner delivered a successful result.
    COMPLETE = "complete": [Leased, Running, Verifying] => Pushing;
    /// The branch is pushed and the pull request exists.
    PR_OPENED = "pr_opened": [Pushing] => PrOpen;
    /// The reviewer started.
    START_REVIEW = "start_review": [PrOpen] => Reviewing;
    /// The reviewer approved (or failed open).
    REVIEW_APPROVED = "review_approved": [Reviewing] => CiWait;
    /// The review could not run and will be tried again.
    REVIEW_DEFERRED = "review_deferred": [Reviewing] => PrOpen;
    /// The PR's head is not the commit the reviewer saw: the change is reviewed again.
    REVIEW_AGAIN = "review_again": [CiWait, ApprovalHold, Merging] => PrOpen;
    /// Checks are green and a human must approve.
    AWAIT_APPROVAL = "await_approval": [CiWait] => ApprovalHold;
    /// The merge starts (automatically from `ci_wait`, or approved from `approval_hold`).
    START_MERGE = "start_merge": [CiWait, ApprovalHold] => Merging;
    /// The merge did not happen for a transient reason; checks are looked at again.
    MERGE_DEFERRED = "merge_deferred": [Merging] => CiWait;
    /// The forge merged it.
    MERGED = "merged": [Merging] => Merged;
    /// Comments on the PR ask for another round on the same branch.
    REOPEN = "reopen": [PrOpen, Reviewing, CiWait, ApprovalHold] => Queued;
    /// The post-merge guard reverted the merge: back to the queue with the regression (or failed
    /// when the task was reverted too often).
    GUARD_REVERT = "guard_revert": [Merged] => Queued;
    /// An explicit requeue of an ended task.
    REQUEUE = "requeue": [Failed, Canceled] => Queued;
    /// Cancel: immediate for tasks not on a runner, requested (and finished by the runner or the
    /// reaper) for active ones. Too late once the merge started.
    CANCEL = "cancel": [
        New, Queued, Leased, Running, Verifying, Candidates, PlanHold, Pushing, PrOpen, Reviewing, CiWait,
        ApprovalHold
    ] => Canceled;
    /// Fail with a reason, from any live status.
    FAIL = "fail": [
        New, Queued, Leased, Running, Verifying, Candidates, PlanHold, Pushing, PrOpen, Reviewing, CiWait,
        ApprovalHold, Merging
    ] => Failed;
}

/// A failure that spends a retry of `mode` (to `queued`, or `failed` when spent).
pub const fn retry_step(mode: FailureMode) -> Step {
    match mode {
        FailureMode::Agent | FailureMode::Verify => Step {
            name: "agent_retry",
            from: &[Leased, Running, Verifying, Candidates],
            to: Queued,
        },
        FailureMode::Review => Step {
            name: "review_retry",
            from: &[Reviewing],
            to: Queued,
        },
        FailureMode::Ci => Step {
            name: "ci_retry",
            from: &[CiWait],
            to: Queued,
        },
        FailureMode::Conflict => Step {
            name: "conflict_retry",
            from: &[CiWait, ApprovalHold, Merging],
            to: Queued,
        },
    }
}

/// Whether some step leads from `from` to `to`.
pub fn is_legal(from: Status, to: Status) -> bool {
    let retry = [
        FailureMode::Agent,
        FailureMode::Review,
        FailureMode::Ci,
        FailureMode::Conflict,
    ]
    .into_iter()
    .map(retry_step);
    // A lost lease goes back to the queue, or fails once the task lost its runner too often.
    let lease_back = from.is_active() && matches!(to, Queued | Canceled | Failed);
    lease_back
        || STEPS
            .iter()
            .copied()
            .chain(retry)
            .any(|s| s.from.contains(&from) && (s.to == to || (s.to == Queued && to == Failed)))
}

/// A status set as an SQL list, `('leased', 'running', 'verifying')`. Statements that a partial
/// index must serve write their list out (the planner cannot match a bound array to an index
/// predicate); the store's tests check each such list against its set with this.
pub fn sql_list(set: &[Status]) -> String {
    let items: Vec<String> = set.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("({})", items.join(", "))
}

/// A string list of statuses, as bound to `status = ANY($n)`.
pub fn status_texts(list: &[Status]) -> Vec<&'static str> {
    list.iter().map(|s| s.as_str()).collect()
}

/// One task as stored.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Task {
    /// Id.
    pub id: TaskId,
    /// Repository.
    pub repo_id: RepoId,
    /// `issue` or `api`.
    pub source: String,
    /// Issue number when the task came from an issue.
    pub issue_number: Option<i64>,
    /// Issue title at trigger time.
    pub issue_title: String,
    /// Issue body at trigger time (sanitised by intake).
    pub issue_body: String,
    /// Issue author.
    pub issue_author: Option<String>,
    /// Content hash of the snapshot.
    pub issue_hash: Option<String>,
    /// A prompt edited by a user, replacing the issue text.
    pub prompt_override: Option<String>,
    /// Status.
    #[sqlx(try_from = "String")]
    pub status: Status,
    /// Why it ended.
    #[sqlx(try_from = "OptText")]
    pub terminal_reason: OptReason,
    /// Last error, for humans.
    pub error: Option<String>,
    /// Hold overlay.
    #[sqlx(try_from = "OptText")]
    pub hold_kind: OptHold,
    /// When a circuit-breaker hold releases itself.
    pub hold_until: Option<DateTime<Utc>>,
    /// When cancellation was asked for.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Lower runs first.
    pub priority: i32,
    /// Model for the agent.
    pub model: String,
    /// Agent backend.
    pub agent: String,
    /// Labels a runner must carry to lease it.
    pub required_labels: Vec<String>,
    /// Retries spent on agent failures.
    pub agent_retries: i32,
    /// Retries spent on verify failures.
    pub verify_retries: i32,
    /// Retries spent on review rejections.
    pub review_retries: i32,
    /// Retries spent on CI failures.
    pub ci_retries: i32,
    /// Retries spent on merge conflicts.
    pub conflict_retries: i32,
    /// Number of claims so far; fences runner writes.
    pub attempt: i32,
    /// Leases lost in a row (expired, runner gone) since the last completed attempt.
    pub lost_count: i32,
    /// Token of the current lease.
    pub lease_token: Option<Uuid>,
    /// Runner of the current (or last) lease.
    pub runner_id: Option<RunnerId>,
    /// When the current lease ends unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Whether the next run continues the existing branch.
    pub resume_branch: bool,
    /// Context for the next run.
    pub retry_context: sqlx::types::Json<serde_json::Value>,
    /// Task branch.
    pub branch: Option<String>,
    /// Head commit of the task branch as last pushed or reported.
    pub head_sha: Option<String>,
    /// Files the pushed branch changes.
    pub changed_files: Vec<String>,
    /// Transient failures in the current controller stage.
    pub stage_tries: i32,
    /// The reviewer's last verdict.
    pub review: Option<sqlx::types::Json<serde_json::Value>>,
    /// PR number.
    pub pr_number: Option<i64>,
    /// PR URL.
    pub pr_url: Option<String>,
    /// Cost so far in micro-dollars.
    pub cost_microusd: i64,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Last transition.
    pub updated_at: DateTime<Utc>,
    /// Ended at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Best-of-N: how many candidates each round runs (1: a single attempt).
    pub best_of: i32,
    /// For a candidate: the best-of-N task it is a candidate of.
    pub parent_id: Option<TaskId>,
    /// For a candidate: its place among its siblings (1..N).
    pub candidate: Option<i32>,
    /// Plan gate: the attempt that is (or was) a read-only plan run, as the claim decided it
    /// (`None` when no attempt was).
    pub plan_attempt: Option<i32>,
}

impl Task {
    /// Plan gate: a runner is making this task's plan now (its current attempt is a plan run).
    pub fn planning(&self) -> bool {
        self.plan_attempt == Some(self.attempt) && self.status.is_active()
    }
}

/// Nullable text column, decoded through `TryFrom`.
pub type OptText = Option<String>;

macro_rules! opt_enum {
    ($name:ident, $inner:ty) => {
        /// An optional enum column.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct $name(pub Option<$inner>);

        impl TryFrom<Option<String>> for $name {
            type Error = UnknownValue;
            fn try_from(v: Option<String>) -> Result<Self, Self::Error> {
                v.map(|s| s.parse()).transpose().map($name)
            }
        }
    };
}
opt_enum!(OptReason, TerminalReason);
opt_enum!(OptHold, HoldKind);

/// The columns [`Task`] reads, as a literal for `concat!` in `RETURNING`/`SELECT` lists.
macro_rules! task_columns {
    () => {
        "id, repo_id, source, issue_number, issue_title, issue_body, issue_author, issue_hash, \
         prompt_override, status, terminal_reason, error, hold_kind, hold_until, cancel_requested_at, \
         priority, model, agent, required_labels, agent_retries, verify_retries, review_retries, \
         ci_retries, conflict_retries, attempt, lost_count, lease_token, runner_id, lease_expires_at, \
         resume_branch, retry_context, branch, head_sha, changed_files, stage_tries, review, pr_number, pr_url, cost_microusd, \
         created_at, updated_at, finished_at, best_of, parent_id, candidate, plan_attempt"
    };
}
pub(crate) use task_columns;

/// One timeline entry.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct TaskEvent {
    /// Id (orders the timeline).
    pub id: i64,
    /// Task.
    pub task_id: TaskId,
    /// When.
    pub at: DateTime<Utc>,
    /// Who: `user:<name>`, `runner:<id>`, `system`, `controller`.
    pub actor: String,
    /// Status before (None for creation).
    pub from_status: Option<String>,
    /// Status after.
    pub to_status: String,
    /// Why.
    pub reason: String,
    /// Attempt at the time.
    pub attempt: i32,
    /// Details.
    pub data: Option<sqlx::types::Json<serde_json::Value>>,
}
