//! The end of an attempt as the runner reports it: its stage changes (agent, verify) and its
//! completion — idempotent per attempt, a cancel requested meanwhile always winning, the outcome
//! mapped to the next status (pushing, a retry of the failure's mode, or an end).

use serde_json::{Value, json};
use uuid::Uuid;

use super::claims::LeaseRef;
use super::lifecycle::{
    self, FailureMode, RunnerId, Status, Task, TaskId, TerminalReason, status_texts, task_columns,
};
use super::plans::{PlanDoc, PlanReport};
use super::reproduction::Reproduction;
use super::tasks::{Failure, RetryPolicy, retry_in};
use super::{Error, Note, Result, Store};

/// How a run ended, as the runner saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The agent produced a result that passed verification.
    Succeeded,
    /// The agent failed (including producing no change).
    AgentFailed,
    /// Verification kept failing after the runner's own fix rounds.
    VerifyFailed,
    /// The run hit its wall-clock limit.
    TimedOut,
    /// No agent event (output or model traffic) for the runner's stall limit.
    Stalled,
    /// The repository's environment could not be set up.
    SetupFailed,
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
            Outcome::Stalled => "stalled",
            Outcome::SetupFailed => "setup_failed",
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
    /// What reproduce-first showed, when the lease asked for it.
    pub reproduction: Option<Reproduction>,
    /// What a plan run produced, when the lease was one.
    pub plan: Option<PlanReport>,
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
            reproduction: None,
            plan: None,
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

/// The lease columns `complete` locks and checks.
#[derive(sqlx::FromRow)]
struct LockedLease {
    status: String,
    attempt: i32,
    lease_token: Option<Uuid>,
    cancel_requested: bool,
    runner_id: Option<RunnerId>,
    parent_id: Option<TaskId>,
    plan_attempt: Option<i32>,
}

impl Store {
    /// The runner started (or restarted) the agent.
    pub async fn start_agent(&self, lease: &LeaseRef) -> Result<Task> {
        self.runner_step(lease, lifecycle::START_AGENT).await
    }

    /// The runner started the verify command.
    pub async fn start_verify(&self, lease: &LeaseRef) -> Result<Task> {
        self.runner_step(lease, lifecycle::START_VERIFY).await
    }

    async fn runner_step(&self, lease: &LeaseRef, step: lifecycle::Step) -> Result<Task> {
        // The runner's first report on a claim starts it (the task row takes the lease).
        let row = self
            .fenced(lease, || self.runner_step_once(lease, step))
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

    /// One try of a runner's step under its lease: the task after it, or `None` when the lease
    /// fence found nothing.
    async fn runner_step_once(
        &self,
        lease: &LeaseRef,
        step: lifecycle::Step,
    ) -> Result<Option<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
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
        // A claim completed before any step was reported (a runner that could not set up).
        Self::start_claim(&mut tx, lease).await?;
        let row: Option<LockedLease> = sqlx::query_as(
            "SELECT status, attempt, lease_token, cancel_requested_at IS NOT NULL AS cancel_requested, runner_id, parent_id, \
             plan_attempt \
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
            parent_id,
            plan_attempt,
        }) = row
        else {
            return Err(Error::TaskNotFound(lease.task_id));
        };
        let status: Status = status
            .parse()
            .map_err(|e: lifecycle::UnknownValue| Error::Invalid(e.to_string()))?;

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
            "INSERT INTO task_results (task_id, attempt, lease_token, outcome, error, data, reproduction) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(lease.token)
        .bind(c.outcome.as_str())
        .bind(&c.error)
        .bind(json!({"context": c.context, "data": c.data, "head_sha": c.head_sha, "branch": c.branch}))
        .bind(c.reproduction.clone().map(|r| sqlx::types::Json(r.bounded())))
        .execute(&mut *tx)
        .await?;
        if let Some(report) = c.data.as_ref().and_then(|d| d.pointer("/data/environment")) {
            sqlx::query(
                "INSERT INTO repo_environments (repo_id, task_id, attempt, report) \
                 SELECT repo_id, id, $2, $3 FROM tasks WHERE id = $1 \
                 ON CONFLICT (repo_id) DO UPDATE SET task_id = EXCLUDED.task_id, \
                 attempt = EXCLUDED.attempt, report = EXCLUDED.report, seen_at = now()",
            )
            .bind(lease.task_id)
            .bind(lease.attempt)
            .bind(bounded_report(report))
            .execute(&mut *tx)
            .await?;
        }
        // A candidate's cost counts against its best-of-N task's budget too.
        sqlx::query("UPDATE tasks SET cost_microusd = cost_microusd + $2 WHERE id = $1 OR id = $3")
            .bind(lease.task_id)
            .bind(c.cost_microusd)
            .bind(parent_id)
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
        if let Some(parent) = parent_id {
            let task =
                finish_candidate(&mut tx, lease.task_id, c, cancel_requested, &actor).await?;
            super::candidates::settle_in(&mut tx, parent, policy).await?;
            tx.commit().await?;
            return Ok(Completed {
                task,
                duplicate: false,
            });
        }
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
        } else if plan_attempt == Some(lease.attempt) && c.outcome == Outcome::Succeeded {
            // Plan gate: a plan run ends in `plan_hold` with its plan, never in `pushing`,
            // whatever the runner sent besides; without a valid plan it is an agent failure.
            match c.plan.as_ref().map(|p| (PlanDoc::parse(&p.plan_json), p)) {
                Some((Ok(doc), report)) => {
                    super::plans::deliver(
                        &mut tx,
                        lease.task_id,
                        lease.attempt,
                        &doc,
                        report,
                        &actor,
                    )
                    .await?
                }
                other => {
                    let why = match other {
                        Some((Err(why), _)) => why,
                        _ => "the plan run ended without a plan".to_owned(),
                    };
                    let failure = Failure {
                        mode: FailureMode::Agent,
                        reason: Some(TerminalReason::AgentFailed),
                        error: format!("the plan run produced no usable plan: {why}"),
                        context: Some(json!({"plan_error": why})),
                    };
                    let note = Note::new(actor.clone(), "plan_invalid");
                    retry_in(&mut tx, lease.task_id, &failure, policy, &note)
                        .await?
                        .ok_or(Error::TaskNotFound(lease.task_id))?
                }
            }
        } else {
            match c.outcome {
                Outcome::Succeeded => {
                    // Reproduce-first: an issue not shown to be fixed follows the repository's
                    // policy — `hold` puts a hold on the task (its PR opens, marked, and waits for
                    // a person before it merges), `proceed` only marks it.
                    // A lease that asked for it is owed a record: a runner that sends none has
                    // not shown the issue reproduced, and its result is held like one that says so.
                    let (policy, asked): (String, bool) = sqlx::query_as(
                        "SELECT r.reproduce_policy, reproduce_first_asked(r.reproduce_first, t.is_bug) \
                         FROM tasks t JOIN repos r ON r.id = t.repo_id WHERE t.id = $1",
                    )
                    .bind(lease.task_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    let missing = (asked && c.reproduction.is_none())
                        .then(super::reproduction::Reproduction::missing);
                    let (mut repro_data, mut hold) = (None, false);
                    if let Some(r) = c.reproduction.as_ref().or(missing.as_ref()) {
                        hold = !r.reproduced() && policy == "hold";
                        let message = hold.then(|| {
                            format!(
                                "{}; the repository's reproduce policy is `hold`: look at the PR, then `backporcher release {}` lets it merge",
                                r.summary(),
                                lease.task_id
                            )
                        });
                        repro_data = Some(json!({
                            "reproduction": r.status.as_str(),
                            "summary": r.summary(),
                            "policy": policy,
                            "message": message,
                        }));
                    }
                    sqlx::query_as::<_, Task>(concat!(
                        "UPDATE tasks SET status = 'pushing', lost_count = 0, ",
                        "head_sha = COALESCE($3, head_sha), lease_expires_at = NULL, error = NULL, ",
                        "hold_kind = CASE WHEN $6 THEN 'user' ELSE hold_kind END, ",
                        "hold_by = CASE WHEN $6 THEN 'system' ELSE hold_by END, ",
                        "ev_seq = ev_seq + 1, ev_actor = $4, ev_reason = 'completed', ",
                        "ev_data = NULLIF(COALESCE(CASE WHEN $2::text IS DISTINCT FROM branch ",
                        "  THEN jsonb_build_object('runner_branch', $2::text, 'branch', branch) END, '{}'::jsonb) ",
                        "  || COALESCE($5::jsonb, '{}'::jsonb), '{}'::jsonb) ",
                        "WHERE id = $1 RETURNING ",
                        task_columns!()
                    ))
                    .bind(lease.task_id)
                    .bind(&c.branch)
                    .bind(&c.head_sha)
                    .bind(&actor)
                    .bind(repro_data)
                    .bind(hold)
                    .fetch_one(&mut *tx)
                    .await?
                }
                Outcome::AgentFailed
                | Outcome::TimedOut
                | Outcome::Stalled
                | Outcome::VerifyFailed => {
                    let (mode, reason) = match c.outcome {
                        Outcome::VerifyFailed => {
                            (FailureMode::Verify, TerminalReason::VerifyFailed)
                        }
                        Outcome::TimedOut => (FailureMode::Agent, TerminalReason::TimedOut),
                        Outcome::Stalled => (FailureMode::Agent, TerminalReason::Stalled),
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
                    let task = retry_in(&mut tx, lease.task_id, &failure, policy, &note)
                        .await?
                        .ok_or(Error::TaskNotFound(lease.task_id))?;
                    let rate_limited = c.outcome == Outcome::AgentFailed
                        && c.data
                            .as_ref()
                            .and_then(|d| d.pointer("/data/rate_limited"))
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                    if rate_limited && task.status == Status::Queued {
                        fall_back(&mut tx, task, &actor).await?
                    } else {
                        task
                    }
                }
                // Nothing another attempt would change: the repository must fix its setup.
                Outcome::SetupFailed => {
                    end_lease(
                        &mut tx,
                        lease.task_id,
                        Status::Failed,
                        Some(TerminalReason::SetupFailed),
                        c.error.as_deref(),
                        &actor,
                        "setup_failed",
                    )
                    .await?
                }
                Outcome::BudgetExceeded => {
                    // The attempt ran out of its grant. If the task's own budget has room, a
                    // daily budget cut it short: it waits for the next day (or a raised budget)
                    // on the queue; otherwise the task's budget is spent.
                    let task_has_room: bool = sqlx::query_scalar(
                        "SELECT t.cost_microusd < COALESCE(r.budget_task_microusd, s.budget_task_microusd) \
                         FROM tasks t JOIN repos r ON r.id = t.repo_id CROSS JOIN settings s WHERE t.id = $1",
                    )
                    .bind(lease.task_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    if task_has_room {
                        end_lease(
                            &mut tx,
                            lease.task_id,
                            Status::Queued,
                            None,
                            Some("a daily budget ran out during this attempt; the task waits for the next day or a raised budget"),
                            &actor,
                            "daily_budget",
                        )
                        .await?
                    } else {
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
}

/// A task the model API rate-limited goes on with the other agent backend when its repository
/// allows it (`agent_fallback`), recorded on the timeline as `agent_fallback` with both names;
/// otherwise it is returned as it is.
async fn fall_back(tx: &mut sqlx::PgConnection, task: Task, actor: &str) -> Result<Task> {
    let to = super::repos::other_agent(&task.agent);
    let switched = sqlx::query_as::<_, Task>(concat!(
        "UPDATE tasks SET agent = $2, ev_seq = ev_seq + 1, ev_actor = $3, ev_reason = 'agent_fallback', ",
        "ev_data = jsonb_build_object('from', agent, 'to', $2::text, 'why', 'rate_limited') ",
        "WHERE id = $1 AND status = 'queued' ",
        "  AND (SELECT r.agent_fallback FROM repos r WHERE r.id = tasks.repo_id) RETURNING ",
        task_columns!()
    ))
    .bind(task.id)
    .bind(to)
    .bind(actor)
    .fetch_optional(tx)
    .await?;
    Ok(switched.unwrap_or(task))
}

/// The reason a candidate's run ended, from its completion's outcome.
fn candidate_reason(outcome: Outcome) -> TerminalReason {
    use Outcome as O;
    match outcome {
        O::Succeeded => TerminalReason::Succeeded,
        O::AgentFailed | O::Abandoned => TerminalReason::AgentFailed,
        O::VerifyFailed => TerminalReason::VerifyFailed,
        O::TimedOut => TerminalReason::TimedOut,
        O::Stalled => TerminalReason::Stalled,
        O::SetupFailed => TerminalReason::SetupFailed,
        O::BudgetExceeded => TerminalReason::BudgetExceeded,
        O::Canceled => TerminalReason::CanceledByUser,
    }
}

/// Ends a best-of-N candidate's run: `finished` with the reason it ended (a cancel requested
/// meanwhile wins), or back to the queue when its runner gave the work up.
async fn finish_candidate(
    tx: &mut sqlx::PgConnection,
    id: TaskId,
    c: &Completion,
    cancel_requested: bool,
    actor: &str,
) -> Result<Task> {
    if c.outcome == Outcome::Abandoned && !cancel_requested {
        return end_lease(
            tx,
            id,
            Status::Queued,
            None,
            c.error.as_deref(),
            actor,
            "abandoned",
        )
        .await;
    }
    let reason = if cancel_requested {
        TerminalReason::CanceledByUser
    } else {
        candidate_reason(c.outcome)
    };
    Ok(sqlx::query_as::<_, Task>(concat!(
        "UPDATE tasks SET status = 'finished', terminal_reason = $2, error = COALESCE($3, error), ",
        "head_sha = COALESCE($4, head_sha), lost_count = 0, lease_expires_at = NULL, ",
        "ev_seq = ev_seq + 1, ev_actor = $5, ev_reason = $6, ev_data = NULL ",
        "WHERE id = $1 RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(reason.as_str())
    .bind(&c.error)
    .bind(&c.head_sha)
    .bind(actor)
    .bind(c.outcome.as_str())
    .fetch_one(tx)
    .await?)
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

/// The largest environment report kept for a repository, bytes of JSON.
const MAX_ENVIRONMENT_REPORT: usize = 64 * 1024;

/// A runner's environment report as kept: an object no larger than [`MAX_ENVIRONMENT_REPORT`],
/// else a note saying what was dropped.
fn bounded_report(report: &Value) -> Value {
    let size = report.to_string().len();
    match report {
        Value::Object(_) if size <= MAX_ENVIRONMENT_REPORT => report.clone(),
        Value::Object(_) => json!({
            "error": format!("the runner's environment report ({size} bytes) is larger than {MAX_ENVIRONMENT_REPORT} bytes and was not kept; see the task's log")
        }),
        _ => json!({"error": "the runner's environment report is not an object"}),
    }
}

impl Store {
    /// What the latest task of `repo` reported about its environment: the task, attempt, when,
    /// and the report.
    pub async fn repo_environment(
        &self,
        repo: lifecycle::RepoId,
    ) -> Result<Option<(TaskId, i32, chrono::DateTime<chrono::Utc>, Value)>> {
        let row: Option<(
            TaskId,
            i32,
            chrono::DateTime<chrono::Utc>,
            sqlx::types::Json<Value>,
        )> = sqlx::query_as(
            "SELECT task_id, attempt, seen_at, report FROM repo_environments WHERE repo_id = $1",
        )
        .bind(repo)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(t, a, at, r)| (t, a, at, r.0)))
    }

    /// The environment report of `task`'s latest attempt that sent one.
    pub async fn task_environment(&self, task: TaskId) -> Result<Option<Value>> {
        let row: Option<(sqlx::types::Json<Value>,)> = sqlx::query_as(
            "SELECT data #> '{data,data,environment}' FROM task_results \
             WHERE task_id = $1 AND data #> '{data,data,environment}' IS NOT NULL \
             ORDER BY attempt DESC LIMIT 1",
        )
        .bind(task)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| bounded_report(&r.0)))
    }
}
