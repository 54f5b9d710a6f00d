//! The REST API's wire types: what the controller's `/api` answers and accepts, shared with the
//! CLI and the tests so both sides agree by construction. Domain types stay inside the controller;
//! its HTTP layer converts them to these. Each derives its JSON schema (`utoipa::ToSchema`): the
//! controller's `/api/openapi.json` is built from these derives, so the document describes what
//! is sent. Fields whose values form a closed set are `String`s on the wire and enums in the
//! schema ([`TaskStatus`], [`Role`], …).
#![deny(missing_docs)]

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Every schema of the API, by name: what the controller's OpenAPI document draws its
/// `components.schemas` from (each type's own and those it refers to).
pub fn schemas() -> Vec<(
    String,
    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
)> {
    let mut all = Vec::new();
    macro_rules! each {
        ($($t:ty),* $(,)?) => {$(
            all.push((<$t as ToSchema>::name().into_owned(), <$t as utoipa::PartialSchema>::schema()));
            <$t as ToSchema>::schemas(&mut all);
        )*};
    }
    each!(
        ErrorBody,
        LoginRequest,
        Me,
        Task,
        TaskDetail,
        TaskPlan,
        PlanDecision,
        GuardWatch,
        GuardState,
        MergeQueue,
        MergeQueuePlace,
        Dependencies,
        Candidates,
        CandidateRanking,
        LogChunk,
        ActionRequest,
        CreateTask,
        Repo,
        RepoSettings,
        NewRepo,
        Secret,
        SecretValue,
        RepoEnvironment,
        SignedEvidence,
        Learning,
        Runner,
        JoinTokenRequest,
        JoinTicket,
        Settings,
        User,
        NewUser,
        UserPatch,
        NewToken,
        Token,
        AuditEntry,
        Stats,
        TaskStatus,
        Role,
        ApprovalMode,
        RunnerState,
        TaskAction,
        RunnerAction,
        RepoApprovalMode,
        ReviewFailMode,
        EgressPolicy,
        Agent,
        MergeMethod,
        NoChecks,
        ReproduceFirst,
        ReproducePolicy,
        Reproduction,
        ReproductionRun,
        ReproductionStatus,
        LogStreamEvent,
        TaskStreamEvent,
        SettingsPatch,
        CleanupRequest,
        CleanedTask,
        Activity,
        UsageLine,
        GroupStats,
    );
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.dedup_by(|a, b| a.0 == b.0);
    all
}

/// Priorities a person may give run from `-PRIORITY_LIMIT` to `PRIORITY_LIMIT` (lower first).
pub const PRIORITY_LIMIT: i32 = 1_000_000;

/// Whether `model` names a model a task may use: an alias or a full `claude-*` name.
pub fn valid_model(model: &str) -> bool {
    matches!(model, "sonnet" | "opus" | "haiku") || model.starts_with("claude-")
}

/// Longest life of a runner join ticket, minutes (a week).
pub const MAX_JOIN_TTL_MINUTES: u64 = 7 * 24 * 60;

/// Integers as JSON (and its schemas) count them: `3` and `3.0` alike; `3.5` or one out of the
/// type's range is refused, naming the value.
mod integer {
    use serde::{Deserialize, Deserializer};

    fn of<T: TryFrom<i64>>(n: serde_json::Number) -> Result<T, String> {
        let whole = match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Some(i),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
            _ => None,
        };
        whole
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| format!("{n} is not an integer in range"))
    }

    /// An optional integer field.
    pub fn option<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<Option<T>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(|n| of(n).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The events of `GET /api/tasks/{id}/logs/stream` (server-sent events).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogStreamEvent {
    /// `logs`: `data` is a JSON array of [`LogChunk`] (a page); `end`: the attempt ended, `data`
    /// is `{}`.
    pub event: LogStreamKind,
    /// The event's JSON.
    pub data: String,
}

/// The kinds of [`LogStreamEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStreamKind {
    /// A page of chunks.
    Logs,
    /// The attempt ended: nothing more will come.
    End,
}

/// The events of `GET /api/events` (server-sent events).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskStreamEvent {
    /// `task`: `data` is a [`Task`] that changed; `resync`: deltas were missed, reload the list.
    pub event: TaskStreamKind,
    /// The event's JSON.
    pub data: String,
}

/// The kinds of [`TaskStreamEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStreamKind {
    /// A task changed.
    Task,
    /// Reload the list.
    Resync,
}

/// A repository's approval mode: one of the global modes, or `""` (in a `PATCH`: clear, so the
/// global mode applies). Its schema lists the serde names of its variants (the derive drops an
/// empty name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepoApprovalMode {
    /// Nobody approves.
    FullAuto,
    /// A person approves each merge.
    ReviewMerge,
    /// A person approves each dispatch and each merge.
    ReviewAll,
    /// The global mode.
    #[serde(rename = "")]
    Global,
}

impl utoipa::PartialSchema for RepoApprovalMode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use RepoApprovalMode::*;
        let names = [FullAuto, ReviewMerge, ReviewAll, Global]
            .map(|m| serde_json::to_value(m).expect("a unit variant serialises"));
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .description(Some(
                "A repository's approval mode, or `\"\"` for the global one",
            ))
            .enum_values(Some(names))
            .into()
    }
}

impl ToSchema for RepoApprovalMode {}

/// What happens when the reviewer cannot give a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewFailMode {
    /// The task goes on unreviewed.
    Open,
    /// The task waits for a person.
    Closed,
}

/// The agent CLI a task runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Agent {
    /// Claude Code (the Messages API).
    Claude,
    /// The Codex CLI (the Responses API).
    Codex,
}

/// Whether `agent` names an agent backend.
pub fn valid_agent(agent: &str) -> bool {
    matches!(agent, "claude" | "codex")
}

/// What the agent's sandbox may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EgressPolicy {
    /// Nothing.
    None,
    /// The model gateway only.
    GatewayOnly,
    /// Anything.
    Open,
}

/// How a pull request is merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MergeMethod {
    /// One squashed commit.
    Squash,
    /// A merge commit.
    Merge,
    /// Rebased commits.
    Rebase,
}

/// What happens to a pull request no CI check reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoChecks {
    /// Merge it.
    Merge,
    /// Hold it for a person.
    Hold,
    /// Keep waiting.
    Wait,
}

/// Which tasks of a repository are reproduced first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReproduceFirst {
    /// None.
    Off,
    /// Every task.
    On,
    /// Tasks triage called a bug (the default).
    Bugs,
}

/// What happens to a task whose issue was not reproduced (no test that fails on the base).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReproducePolicy {
    /// Hold it for a person: its PR opens, marked, and does not merge until released (the
    /// default).
    Hold,
    /// Go on, marked "not reproduced".
    Proceed,
}

/// How reproduce-first ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReproductionStatus {
    /// The test fails on the base and passes on the head.
    Reproduced,
    /// The test passes on the base: it does not expose the issue.
    NotReproduced,
    /// The agent named no (valid) test.
    NoTest,
    /// The test still fails on the head after the fix rounds.
    NotFixed,
}

/// One run of the agent's reproduction test.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReproductionRun {
    /// Exit code; -1 when it did not exit.
    pub exit_code: i32,
    /// It ran past the time limit.
    pub timed_out: bool,
    /// The end of its output.
    pub output_tail: String,
    /// How long it ran, milliseconds.
    pub duration_ms: u64,
}

/// Plan gate: a task's plan (`GET /api/tasks/{id}/plan`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskPlan {
    /// The task.
    pub task: i64,
    /// The plan run's attempt.
    pub attempt: i32,
    /// `pending`, `approved`, `rejected` or `timed_out`.
    pub state: String,
    /// Files the plan names.
    pub files: Vec<String>,
    /// How.
    pub approach: String,
    /// What could go wrong.
    pub risks: Vec<String>,
    /// How it will be tested.
    pub tests: Vec<String>,
    /// The plan as posted (Markdown), or as a person edited it: what the implementation run and
    /// the reviewer get once approved.
    pub text: String,
    /// A person replaced the text.
    pub edited: bool,
    /// Predicted blast radius (files named plus files impacted); absent when unknown.
    pub blast_radius: Option<i32>,
    /// Paths the plan run changed in its read-only workspace (discarded, never pushed).
    pub discarded: Vec<String>,
    /// Who decided (`user:…`, `policy`, `system`).
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<DateTime<Utc>>,
    /// Why (a rejection's reason, the policy's note).
    pub note: Option<String>,
    /// When it was posted.
    pub posted_at: DateTime<Utc>,
    /// When an undecided plan is denied.
    pub due_at: DateTime<Utc>,
}

/// `POST /api/tasks/{id}/plan`: what a person does with a plan, named by `action`; each action
/// takes exactly its own field (`text` for `edit`, `reason` for `reject`), so the document says
/// what the API refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum PlanDecision {
    /// Approve it as it is (a struct variant, so that a field sent with it is refused).
    Approve {},
    /// Replace its text, then approve it.
    Edit {
        /// The new plan text (not blank).
        text: String,
    },
    /// Reject it: the task fails.
    Reject {
        /// Why (not blank).
        reason: String,
    },
}

/// Reproduce-first as the runner showed it: the agent's test on the base and on the head.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Reproduction {
    /// How it ended.
    pub status: ReproductionStatus,
    /// The test command the agent named (empty when none).
    pub command: String,
    /// The files the agent named as its test.
    pub files: Vec<String>,
    /// The run on the base (a fresh checkout plus the test's files), when it ran.
    pub base: Option<ReproductionRun>,
    /// The run on the head, when it ran.
    pub head: Option<ReproductionRun>,
    /// Why, for people.
    pub note: String,
    /// One line: "reproduced: …" or "not reproduced: …".
    pub summary: String,
}

/// A task's status (`Task.status`, the `status` filter of `GET /api/tasks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Arrived, not triaged yet.
    New,
    /// Waiting for a runner.
    Queued,
    /// A runner took it.
    Leased,
    /// The agent works.
    Running,
    /// The verify command runs.
    Verifying,
    /// Best-of-N: its candidates run; the best one is pushed when they end.
    Candidates,
    /// Plan gate: its plan waits for a person to approve, edit or reject it.
    PlanHold,
    /// The branch is pushed.
    Pushing,
    /// A pull request is open.
    PrOpen,
    /// The reviewer reads it.
    Reviewing,
    /// Waiting for CI.
    CiWait,
    /// Waiting for a person to approve the merge.
    ApprovalHold,
    /// Being merged.
    Merging,
    /// Merged.
    Merged,
    /// Failed.
    Failed,
    /// Canceled.
    Canceled,
    /// A best-of-N candidate whose run ended (`terminal_reason` says how); its parent ranks it.
    Finished,
}

/// A user's role, ordered by what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and steers tasks.
    Operator,
    /// Everything.
    Admin,
}

/// When a person approves: never, before merging, or before dispatch and merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalMode {
    /// Nobody approves.
    FullAuto,
    /// A person approves each merge.
    ReviewMerge,
    /// A person approves each dispatch and each merge.
    ReviewAll,
}

/// A runner's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    /// Takes work.
    Active,
    /// Finishes its leases, takes no more.
    Draining,
    /// Takes nothing; its certificate is refused.
    Disabled,
}

/// `{action}` of `POST /api/tasks/{id}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TaskAction {
    /// Clears an approval hold.
    Approve,
    /// Holds the task.
    Hold,
    /// Releases a hold.
    Release,
    /// Cancels it.
    Cancel,
    /// Rejects what waits for approval.
    Reject,
    /// Queues it again (with edits).
    Requeue,
    /// Moves it to a stronger model.
    Escalate,
    /// Dispatches it now.
    Dispatch,
    /// Dispatches it now (alias of `dispatch`).
    DispatchNow,
    /// Changes its prompt, model or priority.
    Edit,
}

/// `{state}` of `POST /api/runners/{id}/{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunnerAction {
    /// Finish the leases, take no more.
    Drain,
    /// Refuse the runner.
    Disable,
    /// Take work again.
    Enable,
}

/// Every error: what went wrong and what to do about it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable kind (`unauthorized`, `forbidden`, `not_found`, `conflict`, `invalid`, …).
    pub error: String,
    /// For people: what was wrong and what to do next.
    pub message: String,
}

/// `POST /api/login`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// User name.
    #[schema(max_length = 64)]
    pub username: String,
    /// Password.
    pub password: String,
}

/// Who is asking (`GET /api/me`, and the login answer).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// User id.
    pub id: i64,
    /// User name.
    pub username: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = Role)]
    pub role: String,
    /// The CSRF token to send as `X-CSRF-Token` with mutating requests (cookie sessions only).
    pub csrf_token: Option<String>,
}

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Task {
    /// Id.
    pub id: i64,
    /// Repository `owner/name`.
    pub repo: String,
    /// Issue number, for issue tasks.
    pub issue_number: Option<i64>,
    /// Title.
    pub title: String,
    /// Status.
    #[schema(value_type = TaskStatus)]
    pub status: String,
    /// Why it ended.
    pub terminal_reason: Option<String>,
    /// Hold overlay.
    pub hold: Option<String>,
    /// Last error.
    pub error: Option<String>,
    /// Model.
    pub model: String,
    /// Agent backend: `claude` or `codex`.
    #[schema(value_type = Agent)]
    pub agent: String,
    /// Priority (lower first).
    pub priority: i32,
    /// Attempts so far.
    pub attempt: i32,
    /// Retries per failure mode.
    pub retries: Retries,
    /// Runner of the current or last lease.
    pub runner_id: Option<i64>,
    /// Task branch.
    pub branch: Option<String>,
    /// PR number and link.
    pub pr_number: Option<i64>,
    /// PR link.
    pub pr_url: Option<String>,
    /// Cost so far, micro-dollars.
    pub cost_microusd: i64,
    /// Reviewer's verdict.
    pub review: Option<Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Best-of-N: candidates per round (1: a single attempt).
    #[serde(default = "one")]
    pub best_of: i32,
    /// For a best-of-N candidate: the task it is a candidate of.
    #[serde(default)]
    pub parent_id: Option<i64>,
    /// For a best-of-N candidate: its place among its siblings (1..N).
    #[serde(default)]
    pub candidate: Option<i32>,
    /// Plan gate: a runner is making the task's plan now (a read-only plan run, not the change).
    #[serde(default)]
    pub planning: bool,
}

fn one() -> i32 {
    1
}

/// `GET /api/tasks/{id}/candidates`: a best-of-N task's candidates and how each round was ranked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Candidates {
    /// The task.
    pub task: i64,
    /// Candidates per round.
    pub best_of: i32,
    /// Every candidate (newest round first), with its own logs at `/api/tasks/{id}/logs`.
    pub candidates: Vec<Task>,
    /// Each ranked round, newest first.
    pub rankings: Vec<CandidateRanking>,
}

/// How one round of candidates was ranked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CandidateRanking {
    /// The task's attempt (the round).
    pub attempt: i32,
    /// When.
    pub ranked_at: DateTime<Utc>,
    /// How long the controller took to rank, microseconds (the reviewer's calls included).
    pub rank_micros: i64,
    /// The candidate pushed.
    pub winner: Option<i64>,
    /// Whether and how the reviewer scored the finalists.
    pub reviewer: String,
    /// Each candidate: its inputs (`task_id`, `candidate`, `model`, `backend`, `outcome`,
    /// `has_bundle`, `tests_passed`, `reproduced`, `diff_lines`, `coverage`, `reviewer_score`,
    /// `cost_microusd`), `rank`, `finalist` and `reason`.
    pub entries: Vec<Value>,
}

/// Retries spent per failure mode.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, ToSchema)]
pub struct Retries {
    /// Agent failures.
    pub agent: i32,
    /// Verify failures.
    pub verify: i32,
    /// Review rejections.
    pub review: i32,
    /// CI failures.
    pub ci: i32,
    /// Merge conflicts.
    pub conflict: i32,
}

/// A timeline entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Id (orders the timeline).
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// From.
    #[schema(value_type = Option<TaskStatus>)]
    pub from_status: Option<String>,
    /// To.
    #[schema(value_type = TaskStatus)]
    pub to_status: String,
    /// Why.
    pub reason: String,
    /// Details.
    pub data: Option<Value>,
}

/// Task detail: the task and its timeline.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskDetail {
    /// The task.
    pub task: Task,
    /// Its timeline.
    pub timeline: Vec<Event>,
    /// Issue text (cleaned at intake), or the edited prompt.
    pub body: String,
    /// What its latest attempt reported of the repository's environment (see
    /// [`RepoEnvironment`]), once a runner has read it.
    #[serde(default)]
    pub environment: Option<serde_json::Value>,
    /// What it cost, per purpose and model, dearest first.
    #[serde(default)]
    pub usage: Vec<UsageLine>,
    /// Reproduce-first of its latest attempt that ran it.
    #[serde(default)]
    pub reproduction: Option<Reproduction>,
    /// The post-merge guard's watch over each of its merges, latest first.
    #[serde(default)]
    pub guard: Vec<GuardWatch>,
    /// Its place in its repository's merge queue, while it is queued.
    #[serde(default)]
    pub merge_queue: Option<MergeQueuePlace>,
}

/// `GET /api/repos/{id}/merge-queue`: the tasks of a repository ready to merge, in the order
/// they merge.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MergeQueue {
    /// Repository `owner/name`.
    pub repo: String,
    /// The queue, first (the one merging) first.
    pub entries: Vec<MergeQueuePlace>,
}

/// One task's place in its repository's merge queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct MergeQueuePlace {
    /// The task.
    pub task: i64,
    /// Its place: 1 merges next (or is merging).
    pub position: i64,
    /// What it waits for: `its turn`, `approval`, `its hold to be released`, `CI on the
    /// up-to-date branch`, `CI on its refreshed branch`, `its merge`.
    pub waiting_for: String,
    /// Whether it holds the repository's merge slot.
    pub merging: bool,
    /// When it entered (its place among tasks of equal priority).
    pub entered_at: DateTime<Utc>,
    /// Task status.
    #[schema(value_type = TaskStatus)]
    pub status: String,
    /// Task priority (lower first).
    pub priority: i32,
    /// Queued siblings whose changed files it shares.
    pub overlaps: i64,
    /// Times its branch was brought up to date with the default branch while queued.
    pub refreshes: i32,
}

/// Where the post-merge guard is with one of a task's merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuardState {
    /// The default branch's CI is watched.
    Watching,
    /// CI stayed green after it (or was red before it).
    Clean,
    /// The window ended with CI undecided: no longer watched.
    Unknown,
    /// Found guilty; the revert is being made.
    Reverting,
    /// Reverted by a pull request.
    Reverted,
}

/// The post-merge guard's watch over one merge.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GuardWatch {
    /// Its state.
    pub state: GuardState,
    /// Why it ended (`green`, `green_later`, `red_before`, `window_ended`, `red`).
    pub reason: Option<String>,
    /// The merge commit on the default branch.
    pub merge_sha: String,
    /// When the window ends.
    pub until: DateTime<Utc>,
    /// The revert pull request.
    pub revert_pr: Option<i64>,
    /// Its web address.
    pub revert_pr_url: Option<String>,
    /// `open` (merged by the guard once green), `awaiting_approval`, `merged`, `closed`,
    /// `ci_failed`, `refused`, `conflict` (revert by hand), `unknown`.
    pub revert_state: Option<String>,
}

/// One line of a task's cost breakdown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageLine {
    /// `agent`, `triage`, `review`, `reflection`, …
    pub purpose: String,
    /// Model.
    pub model: String,
    /// Calls (for `agent`: attempts).
    pub calls: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost, micro-dollars.
    pub cost_microusd: i64,
}

/// A task's place in the dependency graph.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Dependencies {
    /// The task.
    pub task: i64,
    /// What it waits for, directly and through others, nearest first.
    pub waits_for: Vec<DependencyLink>,
    /// What waits for it, nearest first.
    pub blocks: Vec<DependencyLink>,
}

/// A task reached in the dependency graph.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DependencyLink {
    /// The task.
    pub id: i64,
    /// Its title.
    pub title: String,
    /// Its status.
    #[schema(value_type = TaskStatus)]
    pub status: String,
    /// Edges away (1: directly).
    pub depth: u32,
    /// Whether the fates are tied all the way (a failure there fails this side too); `false`
    /// when some link on the way is ordering only.
    pub hard: bool,
}

/// One log chunk.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogChunk {
    /// Attempt.
    pub attempt: i32,
    /// Sequence number within the attempt.
    pub seq: i64,
    /// `agent`, `verify`, `runner`, …
    pub stream: String,
    /// Text (lossy UTF-8).
    pub text: String,
    /// When the controller received it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// `POST /api/tasks`: a task from a prompt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateTask {
    /// Repository `owner/name` (registered).
    pub repo: String,
    /// Title (not blank).
    pub title: String,
    /// What the agent is to do (not blank).
    pub prompt: String,
    /// Model (default: the configured one): `sonnet`, `opus`, `haiku` or a full `claude-*` name.
    #[schema(pattern = r"^(sonnet|opus|haiku|claude-[^\u0000]*)$")]
    pub model: Option<String>,
    /// Priority (lower first).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = -1_000_000, maximum = 1_000_000)]
    pub priority: Option<i32>,
    /// Also open an issue on GitHub with the title and prompt; the task then follows it like a
    /// labelled issue (milestone labels and comments, the PR linked to it).
    #[serde(default)]
    pub open_issue: bool,
    /// Agent backend (default: the repository's).
    #[serde(default)]
    #[schema(value_type = Option<Agent>)]
    pub agent: Option<String>,
    /// Best-of-N: candidates to run in parallel, the best one pushed (default: the
    /// repository's setting; 1 is a single attempt).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = 1, maximum = 5)]
    pub best_of: Option<i32>,
}

/// `POST /api/tasks/{id}/{action}` bodies (all optional fields).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ActionRequest {
    /// New model (escalate, edit, requeue): `sonnet`, `opus`, `haiku` or a full `claude-*` name.
    #[schema(pattern = r"^(sonnet|opus|haiku|claude-[^\u0000]*)$")]
    pub model: Option<String>,
    /// New priority (edit, requeue).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = -1_000_000, maximum = 1_000_000)]
    pub priority: Option<i32>,
    /// New prompt (edit, requeue; not blank).
    pub prompt: Option<String>,
    /// New agent backend (edit, requeue).
    #[serde(default)]
    #[schema(value_type = Option<Agent>)]
    pub agent: Option<String>,
}

/// A repository.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Repo {
    /// Id.
    pub id: i64,
    /// `owner/name`.
    pub name: String,
    /// Clone URL.
    pub clone_url: String,
    /// Default branch.
    pub default_branch: String,
    /// Settings.
    pub settings: RepoSettings,
    /// Tasks on runners now.
    pub active_tasks: i32,
}

/// Repository settings; in a `PATCH`, absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RepoSettings {
    /// Verify command (`""` clears it).
    pub verify_command: Option<String>,
    /// `full-auto`, `review-merge`, `review-all` (`""`: the global mode).
    #[schema(value_type = Option<RepoApprovalMode>)]
    pub approval_mode: Option<String>,
    /// `open` or `closed`.
    #[schema(value_type = Option<ReviewFailMode>)]
    pub review_fail_mode: Option<String>,
    /// `none`, `gateway-only`, `open`.
    #[schema(value_type = Option<EgressPolicy>)]
    pub egress_policy: Option<String>,
    /// Per-task budget, micro-dollars (0 clears).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = 0)]
    pub budget_task_microusd: Option<i64>,
    /// Daily budget, micro-dollars (0 clears).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = 0)]
    pub budget_daily_microusd: Option<i64>,
    /// Concurrency cap (0 removes; at most 1000).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = 0, maximum = 1000)]
    pub max_concurrency: Option<i32>,
    /// `squash`, `merge`, `rebase`.
    #[schema(value_type = Option<MergeMethod>)]
    pub merge_method: Option<String>,
    /// Checks that do not count.
    pub ci_ignore: Option<Vec<String>>,
    /// `merge`, `hold`, `wait`.
    #[schema(value_type = Option<NoChecks>)]
    pub no_checks: Option<String>,
    /// Whether tasks are dispatched.
    pub enabled: Option<bool>,
    /// Whether tasks may change `.github/workflows`.
    pub allow_workflow_changes: Option<bool>,
    /// Whether the agent CLI may run the hooks and MCP servers the default branch configures.
    pub agent_hooks: Option<bool>,
    /// The agent backend its tasks start with (an issue label `codex` or `claude` wins).
    #[serde(default)]
    #[schema(value_type = Option<Agent>)]
    pub agent: Option<String>,
    /// Whether a task the model API rate-limited on one backend goes on with the other.
    #[serde(default)]
    pub agent_fallback: Option<bool>,
    /// Seconds to wait for CI checks to appear before the no-checks policy applies.
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = 0)]
    pub no_checks_grace_secs: Option<i32>,
    /// The environment's base image, a local image on the runners (`""` clears it: the
    /// repository's `.backporcher.toml` or devcontainer decides). Wins over the repository's files.
    pub env_image: Option<String>,
    /// The environment's setup commands (with `env_image`).
    pub env_setup: Option<Vec<String>>,
    /// Reproduce-first: `off`, `on`, `bugs` (tasks triage called a bug; the default).
    #[serde(default)]
    #[schema(value_type = Option<ReproduceFirst>)]
    pub reproduce_first: Option<String>,
    /// When no test is shown to fail on the base: `hold` (the default) or `proceed`.
    #[serde(default)]
    #[schema(value_type = Option<ReproducePolicy>)]
    pub reproduce_policy: Option<String>,
    /// Seconds the post-merge guard watches the default branch's CI after an agent's merge
    /// (0 turns the guard off; default 1800).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = 0, maximum = 604800)]
    pub guard_window_secs: Option<i32>,
    /// Later commits on the default branch the guard watches a merge over (default 10).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = 0, maximum = 200)]
    pub guard_window_commits: Option<i32>,
    /// Best-of-N: candidates each task runs in parallel, the best one pushed (1: a single
    /// attempt; an issue's `best-of-N` label wins).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = 1, maximum = 5)]
    pub best_of: Option<i32>,
    /// Models the candidates cycle through (empty: the task's model for all; a blank entry: the
    /// task's model for that candidate), at most 5.
    #[schema(max_items = 5)]
    pub best_of_models: Option<Vec<String>>,
    /// Plan gate: each task first runs read-only and delivers a plan (files, approach, risks,
    /// tests) that a person approves, edits or rejects before the task is implemented (default
    /// off).
    #[serde(default)]
    pub plan_gate: Option<bool>,
    /// Plan gate: approve a plan automatically when its predicted blast radius (files named
    /// plus files the code graph says they impact) is at most this; -1: never (the default).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = -1, maximum = 10000)]
    pub plan_auto_blast: Option<i32>,
    /// Plan gate: seconds an undecided plan waits before it is denied and its task fails
    /// (default 86400).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = 300, maximum = 1209600)]
    pub plan_timeout_secs: Option<i32>,
}

/// `POST /api/repos`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewRepo {
    /// `owner/name`.
    #[schema(pattern = "^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+$")]
    pub name: String,
    /// Clone URL (default: GitHub's).
    pub clone_url: Option<String>,
    /// Default branch (default `main`).
    pub default_branch: Option<String>,
}

/// A repository's setup-only secret as listed (the value is never returned).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Secret {
    /// Its name (an environment variable name).
    pub name: String,
    /// When it was last set.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// `PUT /api/repos/{id}/secrets/{name}`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretValue {
    /// The value (12 to 65,536 characters).
    #[schema(min_length = 12, max_length = 65536)]
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(…)")
    }
}

/// `GET /api/repos/{id}/environment`: the environment as the repository's settings describe it,
/// beside what its own files on the default branch declare as the latest task read them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RepoEnvironment {
    /// The repository.
    pub repo: String,
    /// The settings' side (an image set here wins over the repository's files).
    pub settings: EnvironmentSettings,
    /// The latest report a runner sent (none until a task of the repository has run).
    pub seen: Option<EnvironmentSeen>,
}

/// The environment as the repository's settings describe it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentSettings {
    /// Base image (none: the repository's files decide).
    pub image: Option<String>,
    /// Setup commands.
    pub setup: Vec<String>,
    /// Verify command (wins over the file's).
    pub verify_command: Option<String>,
}

/// A runner's report of a repository's environment, as of one task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentSeen {
    /// The task.
    pub task: i64,
    /// Its attempt.
    pub attempt: i32,
    /// When the report arrived.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The report: `commit` (the default branch as read), `source` (what described the
    /// environment used), `files` (what each of the repository's files declares), `image`,
    /// `snapshot`, `setup` (`reused`, `ran`, `failed`), `verify` and `verify_from`,
    /// `protected_paths`, `notes` (which description won over which, and why) and `error`.
    pub report: serde_json::Value,
}

/// `GET /api/tasks/{id}/evidence`: an attempt's evidence record in its signed envelope
/// (`docs/evidence.md`). `record` is the record's JSON text exactly as signed: verify the
/// signature over its UTF-8 bytes, then parse it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignedEvidence {
    /// `backporcher.evidence.signed/1`.
    pub schema: String,
    /// `ed25519`.
    pub algorithm: String,
    /// SHA-256 (hex) of the raw public key that signed (`GET /evidence-key.pem`).
    pub key_id: String,
    /// The signature, base64 (standard alphabet, padded).
    pub signature: String,
    /// The record (`backporcher.evidence/1`), JSON text.
    pub record: String,
}

/// A learning.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Learning {
    /// `merged` or `failed`.
    pub outcome: String,
    /// What was learned.
    pub summary: String,
}

/// A runner.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Runner {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Host.
    pub hostname: Option<String>,
    /// Labels.
    pub labels: Vec<String>,
    /// Capacity.
    pub capacity: i32,
    /// `active`, `draining`, `disabled`.
    #[schema(value_type = RunnerState)]
    pub state: String,
    /// Version.
    pub version: Option<String>,
    /// Last contact.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Leases now.
    pub leases: i64,
}

/// `POST /api/runners/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenRequest {
    /// Labels the runner will carry.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Minutes valid (default 60, at most a week).
    #[serde(default, deserialize_with = "integer::option")]
    #[schema(minimum = 1, maximum = 10080)]
    pub ttl_minutes: Option<u64>,
}

/// A join ticket for `backporcher-runner join --token`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTicket {
    /// `<token>@<ca-sha256>`.
    pub ticket: String,
}

/// Global switches.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Settings {
    /// Dispatch paused.
    pub paused: bool,
    /// Default approval mode.
    #[schema(value_type = ApprovalMode)]
    pub approval_mode: String,
    /// A GitHub connection is configured: new tasks can open their issue there.
    #[serde(default)]
    pub github: bool,
}

/// A change to the global switches (`PATCH /api/settings`): the approval mode (admin), the
/// dispatch pause (operator). Absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// `full-auto`, `review-merge` or `review-all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ApprovalMode>)]
    pub approval_mode: Option<String>,
    /// Pause (true) or resume (false) dispatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// Ask the controller to deal now with what ended tasks left on GitHub (`POST /api/cleanup`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupRequest {
    /// Only this repository (`owner/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Ignore the age the policy waits for (kinds the policy never sweeps stay untouched).
    #[serde(default)]
    pub now: bool,
}

/// What one cleanup did to one ended task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CleanedTask {
    /// Task id.
    pub task: i64,
    /// `owner/name`.
    pub repo: String,
    /// How it ended.
    #[schema(value_type = TaskStatus)]
    pub status: String,
    /// The PR closed (it was still open).
    pub pr_closed: Option<i64>,
    /// The branch deleted (or found gone).
    pub branch_deleted: Option<String>,
    /// Why it could not be cleaned now (the next sweep tries again).
    pub error: Option<String>,
}

/// A user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// Id.
    pub id: i64,
    /// Name.
    pub username: String,
    /// Role.
    #[schema(value_type = Role)]
    pub role: String,
    /// Disabled.
    pub disabled: bool,
}

/// `POST /api/users`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewUser {
    /// Name: 1 to 64 letters, digits, `.`, `_` or `-`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub username: String,
    /// Password (at least 12 characters).
    #[schema(min_length = 12)]
    pub password: String,
    /// Role.
    #[schema(value_type = Role)]
    pub role: String,
}

/// `PATCH /api/users/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UserPatch {
    /// New role.
    #[schema(value_type = Option<Role>)]
    pub role: Option<String>,
    /// Disable or enable.
    pub disabled: Option<bool>,
}

/// `POST /api/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    /// Label (not blank).
    pub name: String,
}

/// An API token (the secret only once, at creation).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    /// Id.
    pub id: i64,
    /// Label.
    pub name: String,
    /// The secret: shown once.
    pub secret: Option<String>,
    /// Revoked.
    pub revoked: bool,
    /// Last used.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An audit entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Id.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// How it went.
    pub outcome: String,
}

/// Statistics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// Merged tasks.
    pub merged: i64,
    /// Failed tasks.
    pub failed: i64,
    /// Canceled tasks.
    pub canceled: i64,
    /// Live tasks.
    pub live: i64,
    /// merged / (merged + failed).
    pub success_rate: Option<f64>,
    /// Mean seconds to merge.
    pub avg_seconds_to_merge: Option<f64>,
    /// Share of ended tasks that retried.
    pub retry_rate: Option<f64>,
    /// Mean cost per ended task, micro-dollars.
    pub avg_cost_microusd: Option<f64>,
    /// Total spending, micro-dollars.
    pub total_cost_microusd: i64,
    /// All spending (failed and canceled tasks too) over the merged PRs, micro-dollars.
    #[serde(default)]
    pub cost_per_merged_microusd: Option<f64>,
    /// Spending per model, dearest first.
    #[serde(default)]
    pub by_model: Vec<ModelCost>,
    /// Today's daily budget (the repository's when filtered by one, else the fleet's).
    #[serde(default)]
    pub budget_today: BudgetToday,
    /// Per repository and day.
    pub by_day: Vec<DayStats>,
    /// The tasks that ended in the same window of days: for the fleet, per repository and per
    /// model, with the time to merge as percentiles.
    #[serde(default)]
    pub window: Vec<GroupStats>,
}

/// Tasks ended in a window of days, for one group.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupStats {
    /// `all`, `repo` or `model`.
    pub by: String,
    /// The repository or model (`""` for `all`).
    pub key: String,
    /// Merged.
    pub merged: i64,
    /// Failed.
    pub failed: i64,
    /// Median seconds from creation to merge.
    pub merge_seconds_p50: Option<f64>,
    /// 90th percentile of the seconds from creation to merge.
    pub merge_seconds_p90: Option<f64>,
    /// Cost of the tasks that ended (canceled ones too), micro-dollars.
    pub cost_microusd: i64,
    /// That cost over the merged count, micro-dollars.
    pub per_merged_microusd: Option<f64>,
}

/// Spending on one model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelCost {
    /// Model.
    pub model: String,
    /// Spent, micro-dollars.
    pub cost_microusd: i64,
    /// Its share of a merged PR, micro-dollars.
    pub per_merged_microusd: Option<f64>,
}

/// Today's figures of a daily budget (UTC day), micro-dollars.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct BudgetToday {
    /// The daily budget, if set.
    pub budget_microusd: Option<i64>,
    /// Spent today.
    pub spent_microusd: i64,
    /// Granted to attempts still running.
    pub granted_microusd: i64,
}

/// One repository-day.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DayStats {
    /// Repository.
    pub repo: String,
    /// Day.
    pub day: chrono::NaiveDate,
    /// Merged.
    pub merged: i64,
    /// Failed.
    pub failed: i64,
    /// Spending, micro-dollars.
    pub cost_microusd: i64,
}

/// `GET /api/activity`: what every live task, the controller's own agents and each runner are
/// doing now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Activity {
    /// Live tasks, oldest first, each with its stage and since when.
    pub tasks: Vec<LiveTask>,
    /// The controller's agents: `triage`, `review`, `reflection`.
    pub agents: Vec<AgentActivity>,
    /// Every runner and the tasks it holds.
    pub runners: Vec<RunnerActivity>,
}

/// A live task in the pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LiveTask {
    /// Id.
    pub id: i64,
    /// Repository.
    pub repo: String,
    /// Title.
    pub title: String,
    /// Status: the stage it is in.
    #[schema(value_type = TaskStatus)]
    pub status: String,
    /// Hold overlay.
    pub hold: Option<String>,
    /// Model.
    pub model: String,
    /// Attempt.
    pub attempt: i32,
    /// Runner of its lease, while it has one.
    pub runner_id: Option<i64>,
    /// When it entered its status.
    pub since: DateTime<Utc>,
    /// Who works on it now: `runner`, `controller` (a stage worker holds it), `triage`,
    /// `reflection`, or `waiting`.
    pub worked_by: String,
}

/// One of the controller's own agents.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentActivity {
    /// `triage`, `review` or `reflection`.
    pub name: String,
    /// Tasks it works on now.
    pub working: Vec<i64>,
    /// Tasks waiting for it.
    pub waiting: Vec<i64>,
    /// Its last model call.
    pub last_call: Option<AgentCall>,
    /// Its calls in the last hour.
    pub calls_last_hour: i64,
}

/// A model call the controller made.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentCall {
    /// When.
    pub at: DateTime<Utc>,
    /// For which task.
    pub task: Option<i64>,
    /// Model.
    pub model: String,
    /// Cost, micro-dollars.
    pub cost_microusd: i64,
}

/// A runner and what it runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunnerActivity {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// `active`, `draining`, `disabled`.
    #[schema(value_type = RunnerState)]
    pub state: String,
    /// Tasks at once.
    pub capacity: i32,
    /// Last contact.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// The tasks it holds (ids of `tasks`).
    pub tasks: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each plan action takes exactly its own field: the others, a missing one and an unknown
    /// action are refused by the decoding, which is what the document states.
    #[test]
    fn a_plan_decision_takes_exactly_its_actions_field() {
        let ok = |v: serde_json::Value| serde_json::from_value::<PlanDecision>(v).unwrap();
        let bad = |v: serde_json::Value| serde_json::from_value::<PlanDecision>(v).unwrap_err();
        assert_eq!(
            ok(serde_json::json!({"action": "approve"})),
            PlanDecision::Approve {}
        );
        assert_eq!(
            ok(serde_json::json!({"action": "edit", "text": "do x"})),
            PlanDecision::Edit {
                text: "do x".into()
            }
        );
        assert_eq!(
            ok(serde_json::json!({"action": "reject", "reason": "no"})),
            PlanDecision::Reject {
                reason: "no".into()
            }
        );
        for (v, says) in [
            (serde_json::json!({"action": "edit"}), "text"),
            (serde_json::json!({"action": "reject"}), "reason"),
            (
                serde_json::json!({"action": "approve", "text": "x"}),
                "text",
            ),
            (
                serde_json::json!({"action": "edit", "text": "x", "reason": "y"}),
                "reason",
            ),
            (serde_json::json!({"action": "merge"}), "merge"),
            (serde_json::json!({"text": "x"}), "action"),
        ] {
            let e = bad(v.clone()).to_string();
            assert!(e.contains(says), "{v} refused with `{e}`");
        }
    }
}
