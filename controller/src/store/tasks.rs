//! Task lifecycle operations driven by the controller and by users: creation, triage, pipeline
//! steps, retries with per-mode budgets, failure, cancel, holds, requeue and edits.
//!
//! Runner-side writes live in [`super::claims`], [`super::logs`] and [`super::completion`].

use serde_json::{Value, json};
use sqlx::{Postgres, Transaction};

use super::lifecycle::{
    self, FailureMode, HoldKind, RepoId, Status, Step, Task, TaskEvent, TaskId, TerminalReason,
    status_texts, task_columns,
};
use super::{BindNote, Error, Note, Result, Store, is_fk_violation, is_unique_violation};

/// A task to create.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Repository.
    pub repo_id: RepoId,
    /// Issue number; `None` for tasks created through the API.
    pub issue_number: Option<i64>,
    /// Title snapshot.
    pub title: String,
    /// Body snapshot (already sanitised).
    pub body: String,
    /// Issue author.
    pub author: Option<String>,
    /// Content hash of the snapshot.
    pub content_hash: Option<String>,
    /// Initial priority (lower runs first).
    pub priority: i32,
    /// Initial model.
    pub model: String,
    /// Agent backend.
    pub agent: String,
    /// Runner labels required; `None` takes the repository's.
    pub required_labels: Option<Vec<String>>,
    /// Who created it.
    pub created_by: String,
    /// Data for the creation event on the timeline (e.g. what cleaning removed from the issue).
    pub note: Option<serde_json::Value>,
    /// Best-of-N: candidates per round (1..=5); `None` takes the repository's setting.
    pub best_of: Option<i32>,
}

impl NewTask {
    /// A task for an issue with default model, agent and priority.
    pub fn for_issue(repo_id: RepoId, number: i64, title: &str, body: &str) -> Self {
        Self {
            repo_id,
            issue_number: Some(number),
            title: title.to_owned(),
            body: body.to_owned(),
            author: None,
            content_hash: None,
            priority: 100,
            model: "sonnet".to_owned(),
            agent: "claude".to_owned(),
            required_labels: None,
            best_of: None,
            created_by: "intake".to_owned(),
            note: None,
        }
    }
}

pub use super::repos::MAX_BEST_OF;

/// The task branch the controller names: `backporcher/<task>-<slug of the title>`. The only
/// branch a task's bundle may carry, the controller pushes, or it deletes.
pub fn task_branch(task_id: TaskId, title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_matches('-');
    if slug.is_empty() {
        format!("backporcher/{task_id}")
    } else {
        format!("backporcher/{task_id}-{slug}")
    }
}

/// Whether `branch` is a task branch the controller may write to or delete: named by
/// [`task_branch`] (under `backporcher/`, plain characters) and not the repository's default branch.
pub fn is_task_branch(branch: &str, default_branch: &str) -> bool {
    let Some(rest) = branch.strip_prefix("backporcher/") else {
        return false;
    };
    branch != default_branch
        && !rest.is_empty()
        && !rest.contains("..")
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/')
}

/// What triage decided for one task.
#[derive(Debug, Clone, Default)]
pub struct Triage {
    /// Model to start with (`None` keeps the current one).
    pub model: Option<String>,
    /// Priority (`None` keeps the current one).
    pub priority: Option<i32>,
    /// Tasks that must merge first.
    pub depends_on: Vec<TaskId>,
    /// Tasks that must end first (however they end): likely to touch the same files.
    pub after: Vec<TaskId>,
    /// A hold to start with (review-all mode: dispatch approval).
    pub hold: Option<HoldKind>,
    /// Whether triage called the issue a bug (`None`: unknown, which counts as not a bug for
    /// reproduce-first).
    pub bug: Option<bool>,
}

/// Controller pipeline steps that only move the status (plus PR fields).
#[derive(Debug, Clone)]
pub enum Advance {
    /// The branch is pushed and the PR exists.
    PrOpened {
        /// PR number.
        number: i64,
        /// PR URL.
        url: String,
    },
    /// The reviewer starts.
    StartReview,
    /// The reviewer approved (or failed open).
    ReviewApproved,
    /// The review could not run; it will be tried again.
    ReviewDeferred,
    /// The PR's head moved after the review: review again.
    ReviewAgain,
    /// Checks are green and a human must approve the merge.
    AwaitApproval,
    /// The merge starts (refused while the task is held).
    StartMerge,
    /// The merge did not happen for a transient reason.
    MergeDeferred,
    /// The forge merged the PR.
    Merged,
}

impl Advance {
    /// The step this is.
    pub fn step(&self) -> Step {
        match self {
            Advance::PrOpened { .. } => lifecycle::PR_OPENED,
            Advance::StartReview => lifecycle::START_REVIEW,
            Advance::ReviewApproved => lifecycle::REVIEW_APPROVED,
            Advance::ReviewDeferred => lifecycle::REVIEW_DEFERRED,
            Advance::ReviewAgain => lifecycle::REVIEW_AGAIN,
            Advance::AwaitApproval => lifecycle::AWAIT_APPROVAL,
            Advance::StartMerge => lifecycle::START_MERGE,
            Advance::MergeDeferred => lifecycle::MERGE_DEFERRED,
            Advance::Merged => lifecycle::MERGED,
        }
    }
}

/// Retry budgets per failure mode and the model escalation on agent failure.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Agent failures (and timeouts) retried before failing.
    pub agent: i32,
    /// Verify failures retried (from scratch) before failing.
    pub verify: i32,
    /// Reviewer rejections retried before failing.
    pub review: i32,
    /// CI failures retried before failing.
    pub ci: i32,
    /// Merge conflicts re-queued before failing.
    pub conflict: i32,
    /// Model escalation on agent failure: (from, to).
    pub escalation: Vec<(String, String)>,
    /// Leases a task may lose in a row (expired, runner gone) before it fails; losses spend no
    /// other retry.
    pub lease_losses: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            agent: 3,
            verify: 1,
            review: 3,
            ci: 3,
            conflict: 3,
            escalation: vec![("sonnet".into(), "opus".into())],
            lease_losses: 3,
        }
    }
}

impl RetryPolicy {
    /// The budget of `mode`.
    pub fn budget(&self, mode: FailureMode) -> i32 {
        match mode {
            FailureMode::Agent => self.agent,
            FailureMode::Verify => self.verify,
            FailureMode::Review => self.review,
            FailureMode::Ci => self.ci,
            FailureMode::Conflict => self.conflict,
        }
    }
}

/// A failure to retry or, when its budget is spent, end the task with.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Which budget it spends.
    pub mode: FailureMode,
    /// Terminal reason if the budget is spent (defaults to the mode's).
    pub reason: Option<TerminalReason>,
    /// Human-readable error.
    pub error: String,
    /// Context for the next run (review feedback, CI log excerpt, verify output, diagnosis).
    pub context: Option<Value>,
}

/// Edits a user may make to a task that has not started.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    /// New model.
    pub model: Option<String>,
    /// New priority.
    pub priority: Option<i32>,
    /// New prompt (replaces the issue text).
    pub prompt: Option<String>,
    /// New agent backend (`claude` or `codex`).
    pub agent: Option<String>,
}

/// Refuses an agent backend no runner has.
pub fn check_agent(agent: Option<&str>) -> Result<()> {
    match agent {
        Some(a) if !super::repos::AGENTS.contains(&a) => Err(Error::Invalid(format!(
            "agent backend `{a}` is not one of: {}",
            super::repos::AGENTS.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// What cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task is canceled now.
    Canceled,
    /// The task is on a runner; it is canceled when the runner stops (or its lease expires).
    Requested,
}

// One statement per failure mode: the counter column differs, everything else is shared.
// Whether the task has budget left for another attempt: its cost so far (every attempt and the
// controller's calls for it) under its repository's task budget, else the fleet's default.
macro_rules! budget_left {
    () => {
        "cost_microusd < (SELECT COALESCE(r.budget_task_microusd, (SELECT budget_task_microusd FROM settings)) \
         FROM repos r WHERE r.id = tasks.repo_id)"
    };
}

macro_rules! retry_sql {
    ($col:literal) => {
        concat!(
            "UPDATE tasks SET ",
            "status = CASE WHEN ", $col, " < $3 AND ", budget_left!(), " THEN 'queued' ELSE 'failed' END, ",
            "terminal_reason = CASE WHEN ", $col, " < $3 AND ", budget_left!(), " THEN NULL ",
            "  WHEN ", $col, " < $3 THEN 'budget_exceeded' ELSE $4 END, ",
            "error = CASE WHEN ", $col, " < $3 AND NOT ", budget_left!(),
            "  THEN 'the task spent its budget (' || cost_microusd || ' micro-dollars); raise the repository''s task budget, then requeue it. Last error: ' || $5 ",
            "  ELSE $5 END, ",
            $col, " = ", $col, " + CASE WHEN ", $col, " < $3 AND ", budget_left!(), " THEN 1 ELSE 0 END, ",
            "model = CASE WHEN ", $col, " < $3 THEN COALESCE((SELECT e.t FROM unnest($6::text[], $7::text[]) AS e(f, t) WHERE e.f = tasks.model), model) ELSE model END, ",
            "retry_context = CASE WHEN $8::jsonb IS NULL THEN retry_context ELSE retry_context || jsonb_build_array($8::jsonb) END, ",
            "resume_branch = $9, ",
            "pr_number = CASE WHEN $9 THEN pr_number END, ",
            "pr_url = CASE WHEN $9 THEN pr_url END, ",
            "lease_token = NULL, lease_expires_at = NULL, lost_count = 0, ",
            "ev_seq = ev_seq + 1, ev_actor = $10, ",
            "ev_reason = CASE WHEN ", $col, " < $3 AND ", budget_left!(), " THEN $11 ",
            "  WHEN ", $col, " < $3 THEN 'budget_exceeded' ELSE $4 END, ev_data = $12 ",
            "WHERE id = $1 AND status = ANY($2) RETURNING ",
            task_columns!()
        )
    };
}

impl Store {
    /// Creates a task in `new`. An issue with a live task gets [`Error::DuplicateIssue`].
    pub async fn create_task(&self, t: &NewTask) -> Result<Task> {
        check_agent(Some(&t.agent))?;
        if let Some(n) = t.best_of
            && !(1..=MAX_BEST_OF).contains(&n)
        {
            return Err(Error::Invalid(format!(
                "best-of-{n} is out of range: run between 1 and {MAX_BEST_OF} candidates"
            )));
        }
        if t.title.trim().is_empty() && t.body.trim().is_empty() {
            return Err(Error::Invalid(
                "a task needs a title or a body that says what to do".into(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query_as::<_, Task>(concat!(
            "INSERT INTO tasks (repo_id, source, issue_number, issue_title, issue_body, issue_author, ",
            "issue_hash, priority, model, agent, required_labels, created_by, ev_actor, ev_reason, ev_data, ",
            "best_of, best_of_models) ",
            "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, COALESCE($11, r.runner_labels), $12, $12, 'created', $13, ",
            "COALESCE($14, r.best_of), r.best_of_models ",
            "FROM repos r WHERE r.id = $1 RETURNING ",
            task_columns!()
        ))
        .bind(t.repo_id)
        .bind(if t.issue_number.is_some() { "issue" } else { "api" })
        .bind(t.issue_number)
        .bind(&t.title)
        .bind(&t.body)
        .bind(&t.author)
        .bind(&t.content_hash)
        .bind(t.priority)
        .bind(&t.model)
        .bind(&t.agent)
        .bind(&t.required_labels)
        .bind(&t.created_by)
        .bind(&t.note)
        .bind(t.best_of)
        .fetch_optional(&mut *tx)
        .await;
        match res {
            Ok(Some(task)) => {
                // The controller names the branch (it is never taken from a runner).
                let task = sqlx::query_as::<_, Task>(concat!(
                    "UPDATE tasks SET branch = $2 WHERE id = $1 RETURNING ",
                    task_columns!()
                ))
                .bind(task.id)
                .bind(task_branch(task.id, &task.issue_title))
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(task)
            }
            Ok(None) => Err(Error::RepoNotFound(t.repo_id.to_string())),
            Err(e) if is_unique_violation(&e, "tasks_live_issue") => {
                Err(self.duplicate_issue(t.repo_id, t.issue_number).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The error for a second live task of an issue, naming the live one.
    async fn duplicate_issue(&self, repo: RepoId, issue: Option<i64>) -> Error {
        let existing = sqlx::query_scalar::<_, TaskId>(
            "SELECT id FROM tasks WHERE repo_id = $1 AND issue_number = $2 \
             AND status <> ALL($3)",
        )
        .bind(repo)
        .bind(issue)
        .bind(status_texts(Status::TERMINAL))
        .fetch_one(&self.pool)
        .await;
        match existing {
            Ok(existing) => Error::DuplicateIssue {
                issue: issue.unwrap_or_default(),
                existing,
            },
            Err(e) => e.into(),
        }
    }

    /// Reads one task.
    pub async fn task(&self, id: TaskId) -> Result<Task> {
        sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::TaskNotFound(id))
    }

    /// The task's timeline, oldest first.
    pub async fn timeline(&self, id: TaskId) -> Result<Vec<TaskEvent>> {
        Ok(sqlx::query_as::<_, TaskEvent>(
            "SELECT id, task_id, at, actor, from_status, to_status, reason, attempt, data \
             FROM task_events WHERE task_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The tasks `id` waits for.
    pub async fn dependencies(&self, id: TaskId) -> Result<Vec<TaskId>> {
        Ok(sqlx::query_scalar(
            "SELECT depends_on FROM task_dependencies WHERE task_id = $1 ORDER BY depends_on",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every dependency edge that touches a task of repository `repo` (at most
    /// [`MAX_DEPENDENCY_EDGES`], newest tasks first), for planning and the dependency view.
    pub async fn dependency_edges(&self, repo: RepoId) -> Result<Vec<DependencyEdge>> {
        Ok(sqlx::query_as::<_, DependencyEdge>(
            "SELECT d.task_id AS task, d.depends_on, d.soft FROM task_dependencies d \
             JOIN tasks t ON t.id = d.task_id WHERE t.repo_id = $1 \
             ORDER BY d.task_id DESC LIMIT $2",
        )
        .bind(repo)
        .bind(MAX_DEPENDENCY_EDGES)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The tasks with these ids (missing ones are left out).
    pub async fn tasks_by_id(&self, ids: &[TaskId]) -> Result<Vec<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = ANY($1) ORDER BY id"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Moves one `new` task to the queue with its triage decision.
    pub async fn triage(&self, id: TaskId, decision: &Triage, note: &Note) -> Result<Task> {
        let mut out = self.triage_batch(&[(id, decision.clone())], note).await?;
        Ok(out.remove(0))
    }

    /// Moves a batch of `new` tasks to the queue in one transaction, dependencies included:
    /// no claimer can see a task of the batch before its dependencies exist.
    pub async fn triage_batch(&self, batch: &[(TaskId, Triage)], note: &Note) -> Result<Vec<Task>> {
        let mut tx = self.pool.begin().await?;
        for (id, decision) in batch {
            for dep in &decision.depends_on {
                add_dependency(&mut tx, *id, *dep).await?;
            }
            for dep in decision
                .after
                .iter()
                .filter(|d| !decision.depends_on.contains(d))
            {
                add_soft_dependency(&mut tx, *id, *dep).await?;
            }
        }
        let mut out = Vec::with_capacity(batch.len());
        for (id, decision) in batch {
            let row = sqlx::query_as::<_, Task>(concat!(
                "UPDATE tasks SET status = 'queued', model = COALESCE($3, model), ",
                "priority = COALESCE($4, priority), hold_kind = $5, is_bug = COALESCE($9, is_bug), ",
                "hold_by = CASE WHEN $5::text IS NULL THEN NULL ELSE $6 END, ",
                "ev_seq = ev_seq + 1, ev_actor = $6, ev_reason = $7, ev_data = $8 ",
                "WHERE id = $1 AND status = ANY($2) RETURNING ",
                task_columns!()
            ))
            .bind(id)
            .bind(status_texts(lifecycle::TRIAGE.from))
            .bind(&decision.model)
            .bind(decision.priority)
            .bind(decision.hold.map(|h| h.as_str()))
            .bind(&note.actor)
            .bind(&note.reason)
            .bind(triage_data(decision, note))
            .bind(decision.bug)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(t) => out.push(t),
                None => {
                    drop(tx);
                    return Err(self.refused(*id, lifecycle::TRIAGE).await);
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// A controller pipeline step.
    pub async fn advance(&self, id: TaskId, advance: &Advance, note: &Note) -> Result<Task> {
        let step = advance.step();
        let (pr_number, pr_url, terminal) = match advance {
            Advance::PrOpened { number, url } => (Some(*number), Some(url.as_str()), None),
            Advance::Merged => (None, None, Some(TerminalReason::Succeeded)),
            _ => (None, None, None),
        };
        let needs_release = matches!(advance, Advance::StartMerge);
        let row = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET status = $3, terminal_reason = $4, ",
            "pr_number = COALESCE($5, pr_number), pr_url = COALESCE($6, pr_url), ",
            "ev_seq = ev_seq + 1, ev_actor = $7, ev_reason = $8, ev_data = $9 ",
            "WHERE id = $1 AND status = ANY($2) AND (NOT $10 OR hold_kind IS NULL) RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(status_texts(step.from))
        .bind(step.to.as_str())
        .bind(terminal.map(|r| r.as_str()))
        .bind(pr_number)
        .bind(pr_url)
        .bind_note(note)
        .bind(needs_release)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(t) => Ok(t),
            None => Err(self.refused(id, step).await),
        }
    }

    /// A failure of the review, CI or merge stage: re-queue spending one retry of `failure.mode`,
    /// or fail (and cascade) when that budget is spent. CI and conflict retries keep the PR and
    /// continue its branch; a review rejection drops the PR (the caller closes it) and starts over.
    pub async fn retry_or_fail(
        &self,
        id: TaskId,
        failure: &Failure,
        policy: &RetryPolicy,
        note: &Note,
    ) -> Result<Task> {
        if matches!(failure.mode, FailureMode::Agent | FailureMode::Verify) {
            return Err(Error::Invalid(
                "agent and verify failures are reported by the runner's completion".into(),
            ));
        }
        let mut conn = self.pool.acquire().await?;
        let row = retry_in(&mut conn, id, failure, policy, note).await?;
        match row {
            Some(t) => Ok(t),
            None => Err(self.refused(id, lifecycle::retry_step(failure.mode)).await),
        }
    }

    /// Ends a live task as failed with `reason`; its dependents fail with it.
    pub async fn fail(
        &self,
        id: TaskId,
        reason: TerminalReason,
        error: &str,
        note: &Note,
    ) -> Result<Task> {
        if matches!(
            reason,
            TerminalReason::Succeeded | TerminalReason::CanceledByUser
        ) {
            return Err(Error::Invalid(format!(
                "`{reason}` is not a failure reason"
            )));
        }
        let row = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET status = 'failed', terminal_reason = $3, error = $4, ",
            "lease_token = NULL, lease_expires_at = NULL, ",
            "ev_seq = ev_seq + 1, ev_actor = $5, ev_reason = $6, ev_data = $7 ",
            "WHERE id = $1 AND status = ANY($2) RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(status_texts(lifecycle::FAIL.from))
        .bind(reason.as_str())
        .bind(error)
        .bind_note(note)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(t) => Ok(t),
            None => Err(self.refused(id, lifecycle::FAIL).await),
        }
    }

    /// Cancels a task. Not on a runner: canceled now (dependents fail). On a runner: the request
    /// is recorded, the runner is told, and the task becomes `canceled` when the runner stops or
    /// its lease expires — never anything else.
    pub async fn cancel(&self, id: TaskId, note: &Note) -> Result<(CancelOutcome, Task)> {
        let row = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET ",
            "cancel_requested_at = COALESCE(cancel_requested_at, now()), ",
            "cancel_requested_by = COALESCE(cancel_requested_by, $4), ",
            "status = CASE WHEN status = ANY($3) THEN status ELSE 'canceled' END, ",
            "terminal_reason = CASE WHEN status = ANY($3) THEN NULL ELSE 'canceled_by_user' END, ",
            "lease_token = CASE WHEN status = ANY($3) THEN lease_token END, ",
            "lease_expires_at = CASE WHEN status = ANY($3) THEN lease_expires_at END, ",
            "ev_seq = ev_seq + 1, ev_actor = $4, ",
            "ev_reason = CASE WHEN status = ANY($3) THEN 'cancel_requested' ELSE $5 END, ev_data = $6 ",
            "WHERE id = $1 AND status = ANY($2) RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(status_texts(lifecycle::CANCEL.from))
        .bind(status_texts(Status::ACTIVE))
        .bind_note(note)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(t) if t.status == Status::Canceled => Ok((CancelOutcome::Canceled, t)),
            Some(t) => Ok((CancelOutcome::Requested, t)),
            None => Err(self.refused(id, lifecycle::CANCEL).await),
        }
    }

    /// Puts a hold on a live task. A different hold already in place is reported, not replaced.
    pub async fn hold(
        &self,
        id: TaskId,
        kind: HoldKind,
        until: Option<chrono::DateTime<chrono::Utc>>,
        note: &Note,
    ) -> Result<Task> {
        let row = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET hold_kind = $3, hold_until = $4, hold_by = $5, ",
            "ev_seq = ev_seq + 1, ev_actor = $5, ev_reason = $6, ev_data = $7 ",
            "WHERE id = $1 AND status = ANY($2) AND (hold_kind IS NULL OR hold_kind = $3) RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(status_texts(&Status::live()))
        .bind(kind.as_str())
        .bind(until)
        .bind_note(note)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(t) => Ok(t),
            None => {
                let t = self.task(id).await?;
                match t.hold_kind.0 {
                    Some(kind) if !t.status.is_terminal() => Err(Error::Held { task: id, kind }),
                    _ => Err(Error::IllegalTransition {
                        task: id,
                        step: "hold",
                        current: t.status,
                        expected: "any live status".into(),
                    }),
                }
            }
        }
    }

    /// Removes the hold of a live task.
    pub async fn release(&self, id: TaskId, note: &Note) -> Result<Task> {
        self.release_kind(id, None, note).await
    }

    /// Takes a hold off a live task — only a hold of `kind`, when given (another kind is refused
    /// as [`Error::Held`], checked in the same statement).
    pub async fn release_kind(
        &self,
        id: TaskId,
        kind: Option<HoldKind>,
        note: &Note,
    ) -> Result<Task> {
        let row = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET hold_kind = NULL, hold_until = NULL, hold_by = NULL, ",
            // A stage that waited on the hold is looked at again now.
            "stage_due_at = CASE WHEN stage_due_at IS NULL THEN NULL ELSE now() END, stage_lease_until = NULL, ",
            "ev_seq = ev_seq + 1, ev_actor = $3, ev_reason = $4, ev_data = $5 ",
            "WHERE id = $1 AND status = ANY($2) AND hold_kind IS NOT NULL ",
            "AND ($6::text IS NULL OR hold_kind = $6) RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(status_texts(&Status::live()))
        .bind_note(note)
        .bind(kind.map(|k| k.as_str()))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(t) => Ok(t),
            None => {
                let t = self.task(id).await?;
                if let (Some(want), Some(held)) = (kind, t.hold_kind.0)
                    && want != held
                    && !t.status.is_terminal()
                {
                    return Err(Error::Held {
                        task: id,
                        kind: held,
                    });
                }
                if t.status.is_terminal() {
                    Err(Error::IllegalTransition {
                        task: id,
                        step: "release",
                        current: t.status,
                        expected: "any live status".into(),
                    })
                } else {
                    Err(Error::NotHeld(id))
                }
            }
        }
    }

    /// Puts an ended task back in the queue with fresh retry budgets, optionally edited.
    /// Refused while a dependency has ended without merging.
    pub async fn requeue(&self, id: TaskId, edits: &Edits, note: &Note) -> Result<Task> {
        check_agent(edits.agent.as_deref())?;
        let res = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET status = 'queued', terminal_reason = NULL, error = NULL, ",
            "hold_kind = NULL, hold_until = NULL, hold_by = NULL, ",
            "cancel_requested_at = NULL, cancel_requested_by = NULL, ",
            "agent_retries = 0, verify_retries = 0, review_retries = 0, ci_retries = 0, conflict_retries = 0, lost_count = 0, ",
            "lease_token = NULL, runner_id = NULL, leased_at = NULL, lease_expires_at = NULL, ",
            "resume_branch = false, retry_context = '[]', pr_number = NULL, pr_url = NULL, head_sha = NULL, ",
            "model = COALESCE($3, model), priority = COALESCE($4, priority), ",
            "prompt_override = COALESCE($5, prompt_override), agent = COALESCE($10, agent), ",
            "ev_seq = ev_seq + 1, ev_actor = $6, ev_reason = $7, ev_data = $8 ",
            "WHERE id = $1 AND status = ANY($2) AND NOT EXISTS (",
            "  SELECT 1 FROM task_dependencies d JOIN tasks x ON x.id = d.depends_on ",
            "  WHERE d.task_id = tasks.id AND x.status = ANY($9)) RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(status_texts(lifecycle::REQUEUE.from))
        .bind(&edits.model)
        .bind(edits.priority)
        .bind(&edits.prompt)
        .bind_note(note)
        .bind(status_texts(Status::UNSUCCESSFUL))
        .bind(&edits.agent)
        .fetch_optional(&self.pool)
        .await;
        match res {
            Ok(Some(t)) => Ok(t),
            Ok(None) => {
                let dead: Option<TaskId> = sqlx::query_scalar(
                    "SELECT d.depends_on FROM task_dependencies d JOIN tasks x ON x.id = d.depends_on \
                     WHERE d.task_id = $1 AND x.status = ANY($2) LIMIT 1",
                )
                .bind(id)
                .bind(status_texts(Status::UNSUCCESSFUL))
                .fetch_optional(&self.pool)
                .await?;
                let t = self.task(id).await?;
                match dead {
                    Some(dependency) if t.status.is_terminal() => Err(Error::DependencyFailed {
                        task: id,
                        dependency,
                    }),
                    _ => Err(self.refused(id, lifecycle::REQUEUE).await),
                }
            }
            Err(e) if is_unique_violation(&e, "tasks_live_issue") => {
                let t = self.task(id).await?;
                Err(self.duplicate_issue(t.repo_id, t.issue_number).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Edits a task that has not started (`new` or `queued`).
    pub async fn edit(&self, id: TaskId, edits: &Edits, note: &Note) -> Result<Task> {
        check_agent(edits.agent.as_deref())?;
        if let Some(p) = &edits.prompt
            && p.trim().is_empty()
        {
            return Err(Error::Invalid("the prompt must not be empty".into()));
        }
        const EDIT: Step = Step {
            name: "edit",
            from: &[Status::New, Status::Queued],
            to: Status::Queued,
        };
        let row = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET model = COALESCE($3, model), priority = COALESCE($4, priority), ",
            "prompt_override = COALESCE($5, prompt_override), agent = COALESCE($9, agent), ",
            "ev_seq = ev_seq + 1, ev_actor = $6, ev_reason = $7, ev_data = $8 ",
            "WHERE id = $1 AND status = ANY($2) RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(status_texts(EDIT.from))
        .bind(&edits.model)
        .bind(edits.priority)
        .bind(&edits.prompt)
        .bind(&note.actor)
        .bind(&note.reason)
        .bind(json!({"model": edits.model, "priority": edits.priority, "prompt_edited": edits.prompt.is_some(), "agent": edits.agent}))
        .bind(&edits.agent)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(t) => Ok(t),
            None => Err(self.refused(id, EDIT).await),
        }
    }

    /// Moves a queued task to the front of the queue and approves its dispatch. It still waits for
    /// its dependencies, the per-repo cap and a global pause; a user hold must be released first.
    pub async fn dispatch_now(&self, id: TaskId, note: &Note) -> Result<Task> {
        const DISPATCH: Step = Step {
            name: "dispatch_now",
            from: &[Status::Queued],
            to: Status::Queued,
        };
        let row = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET hold_kind = NULL, hold_until = NULL, hold_by = NULL, ",
            "priority = LEAST(priority, GREATEST((SELECT COALESCE(min(priority), 0)::bigint FROM tasks WHERE status = 'queued') - 1, -2147483648)::int), ",
            "ev_seq = ev_seq + 1, ev_actor = $3, ev_reason = $4, ev_data = $5 ",
            "WHERE id = $1 AND status = ANY($2) AND (hold_kind IS NULL OR hold_kind <> 'user') RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(status_texts(DISPATCH.from))
        .bind_note(note)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(t) => Ok(t),
            None => Err(self.refused(id, DISPATCH).await),
        }
    }

    /// Re-opens a task on its existing branch with new context (comments on its PR). Spends no
    /// retry budget: a human asked for it.
    pub async fn reopen(&self, id: TaskId, context: &Value, note: &Note) -> Result<Task> {
        let mut conn = self.pool.acquire().await?;
        match reopen_in(&mut conn, id, context, note).await? {
            Some(t) => Ok(t),
            None => Err(self.refused(id, lifecycle::REOPEN).await),
        }
    }
}

/// The reopen statement, on any connection (a transaction in `reopen_once`).
pub(crate) async fn reopen_in(
    conn: &mut sqlx::PgConnection,
    id: TaskId,
    context: &Value,
    note: &Note,
) -> Result<Option<Task>> {
    Ok(sqlx::query_as::<_, Task>(concat!(
        "UPDATE tasks SET status = 'queued', resume_branch = true, ",
        "retry_context = retry_context || jsonb_build_array($3::jsonb), ",
        "ev_seq = ev_seq + 1, ev_actor = $4, ev_reason = $5, ev_data = $6 ",
        "WHERE id = $1 AND status = ANY($2) RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(status_texts(lifecycle::REOPEN.from))
    .bind(context)
    .bind_note(note)
    .fetch_optional(conn)
    .await?)
}

fn triage_data(decision: &Triage, note: &Note) -> Value {
    let mut v = json!({
        "model": decision.model,
        "priority": decision.priority,
        "depends_on": decision.depends_on,
        "after": decision.after,
        "hold": decision.hold.map(|h| h.as_str()),
        "bug": decision.bug,
    });
    if let (Some(extra), Some(obj)) = (&note.data, v.as_object_mut()) {
        obj.insert("note".into(), extra.clone());
    }
    v
}

async fn add_dependency(
    tx: &mut Transaction<'_, Postgres>,
    task: TaskId,
    dependency: TaskId,
) -> Result<()> {
    if task == dependency {
        return Err(Error::DependencyCycle { task, dependency });
    }
    if would_close_cycle(tx, task, dependency).await? {
        return Err(Error::DependencyCycle { task, dependency });
    }
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM tasks WHERE id = $1")
        .bind(dependency)
        .fetch_optional(&mut **tx)
        .await?;
    match status.map(|s| s.parse::<Status>()).transpose() {
        Ok(None) => return Err(Error::TaskNotFound(dependency)),
        Ok(Some(s)) if Status::UNSUCCESSFUL.contains(&s) => {
            return Err(Error::DependencyFailed { task, dependency });
        }
        Ok(Some(_)) => {}
        Err(e) => return Err(Error::Database(sqlx::Error::Decode(Box::new(e)))),
    }
    let res = sqlx::query(
        "INSERT INTO task_dependencies (task_id, depends_on) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(task)
    .bind(dependency)
    .execute(&mut **tx)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if is_fk_violation(&e) => Err(Error::TaskNotFound(task)),
        Err(e) => Err(e.into()),
    }
}

/// Whether `dependency` already waits (transitively) for `task`, so that `task` waiting for it
/// would close a cycle. The planner checks the same on its graph first
/// ([`crate::pipeline::dependencies`]); this check, inside the transaction that adds the edge, is
/// the one that holds when two plans race.
async fn would_close_cycle(
    tx: &mut Transaction<'_, Postgres>,
    task: TaskId,
    dependency: TaskId,
) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "WITH RECURSIVE up(id) AS ( \
           SELECT depends_on FROM task_dependencies WHERE task_id = $1 \
           UNION SELECT d.depends_on FROM task_dependencies d JOIN up ON d.task_id = up.id) \
         SELECT EXISTS (SELECT 1 FROM up WHERE id = $2)",
    )
    .bind(dependency)
    .bind(task)
    .fetch_one(&mut **tx)
    .await?)
}

/// Orders `task` after `earlier` without tying their fates (cycles are refused like hard ones).
async fn add_soft_dependency(
    tx: &mut Transaction<'_, Postgres>,
    task: TaskId,
    earlier: TaskId,
) -> Result<()> {
    if task == earlier {
        return Ok(());
    }
    if would_close_cycle(tx, task, earlier).await? {
        return Err(Error::DependencyCycle {
            task,
            dependency: earlier,
        });
    }
    sqlx::query(
        "INSERT INTO task_dependencies (task_id, depends_on, soft) VALUES ($1, $2, true) ON CONFLICT DO NOTHING",
    )
    .bind(task)
    .bind(earlier)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The shared retry statement, on any connection (a transaction in `complete`).
pub(crate) async fn retry_in(
    conn: &mut sqlx::PgConnection,
    id: TaskId,
    failure: &Failure,
    policy: &RetryPolicy,
    note: &Note,
) -> Result<Option<Task>> {
    let sql = match failure.mode {
        FailureMode::Agent => retry_sql!("agent_retries"),
        FailureMode::Verify => retry_sql!("verify_retries"),
        FailureMode::Review => retry_sql!("review_retries"),
        FailureMode::Ci => retry_sql!("ci_retries"),
        FailureMode::Conflict => retry_sql!("conflict_retries"),
    };
    let (from, to): (Vec<&str>, Vec<&str>) = if failure.mode == FailureMode::Agent {
        policy
            .escalation
            .iter()
            .map(|(f, t)| (f.as_str(), t.as_str()))
            .unzip()
    } else {
        (Vec::new(), Vec::new())
    };
    // CI fixes continue the branch; a conflict that the controller could not merge away starts
    // over from a fresh base (the same branch name, so the open PR is found and reused).
    let keep_branch = matches!(failure.mode, FailureMode::Ci);
    let context = failure
        .context
        .as_ref()
        .map(|c| json!({"kind": failure.mode.as_str(), "error": failure.error, "detail": c}));
    let reason = failure.reason.unwrap_or(failure.mode.exhausted_reason());
    Ok(sqlx::query_as::<_, Task>(sql)
        .bind(id)
        .bind(status_texts(lifecycle::retry_step(failure.mode).from))
        .bind(policy.budget(failure.mode))
        .bind(reason.as_str())
        .bind(&failure.error)
        .bind(from)
        .bind(to)
        .bind(context)
        .bind(keep_branch)
        .bind_note(note)
        .fetch_optional(conn)
        .await?)
}

/// Most dependency edges read for one repository.
pub const MAX_DEPENDENCY_EDGES: i64 = 20_000;

/// One edge of the dependency graph: `task` waits for `depends_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct DependencyEdge {
    /// The waiting task.
    pub task: TaskId,
    /// The task it waits for.
    pub depends_on: TaskId,
    /// Ordering only (the fates are not tied: a failed `depends_on` does not fail `task`).
    pub soft: bool,
}

/// Filters of a task list.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only these statuses.
    pub status: Option<Status>,
    /// Only this repository.
    pub repo: Option<RepoId>,
    /// Only tasks not ended.
    pub live: bool,
    /// Most rows.
    pub limit: i64,
    /// Only ids below this (paging, newest first).
    pub before: Option<i64>,
}

impl Store {
    /// Tasks, newest first, filtered.
    pub async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR repo_id = $2) ",
            "AND (NOT $3 OR status <> ALL($6)) AND ($5::bigint IS NULL OR id < $5) ",
            "ORDER BY id DESC LIMIT $4"
        ))
        .bind(f.status.map(|s| s.as_str()))
        .bind(f.repo)
        .bind(f.live)
        .bind(f.limit.clamp(1, 1000))
        .bind(f.before)
        .bind(status_texts(Status::TERMINAL))
        .fetch_all(&self.pool)
        .await?)
    }
}
