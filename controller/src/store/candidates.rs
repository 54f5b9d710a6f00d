//! Best-of-N: a task that runs N candidates in parallel and pushes the best one.
//!
//! A candidate is a task row of its own (`parent_id`, `candidate`, `source = 'candidate'`, no
//! issue number), so [`crate::store::claims`] leases, renews, reaps and fences it like any task
//! and [`crate::store::completion`] records its result. Here: the fan-out (a claim that wins a
//! best-of-N task turns that lease into N queued candidates, each with an even share of what is
//! left of the task's budget), the settling of a parent (all candidates ended, its cost cap
//! crossed or its deadline passed → `pushing` when one succeeded, else today's failure path), and
//! the ranking record the push stage writes (`task_rankings`, migration 0032). A parent that
//! leaves `candidates` stops its live candidates by trigger (`tasks_candidates_stop`).

use serde_json::{Value, json};

use super::lifecycle::{self, FailureMode, Status, Task, TaskId, TerminalReason, task_columns};
use super::tasks::{Failure, RetryPolicy, retry_in};
use super::{Error, Note, Result, Store};

/// What the ranking needs of one candidate, read from its row and its result.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CandidateRun {
    /// The candidate's task id.
    pub task_id: TaskId,
    /// Its place among its siblings (1..N).
    pub candidate: i32,
    /// Its model.
    pub model: String,
    /// Its agent backend.
    pub agent: String,
    /// Its status (`finished` once its run ended).
    #[sqlx(try_from = "String")]
    pub status: Status,
    /// How its run ended.
    pub terminal_reason: Option<String>,
    /// What it cost.
    pub cost_microusd: i64,
    /// Its latest attempt.
    pub attempt: i32,
    /// Its result as stored (`task_results.data`), if it completed.
    pub result: Option<sqlx::types::Json<Value>>,
    /// Its reproduce-first record (`task_results.reproduction`), when it ran one.
    pub reproduction: Option<sqlx::types::Json<Value>>,
    /// Whether its latest attempt left a bundle.
    pub has_bundle: bool,
}

/// A ranking as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Ranking {
    /// The best-of-N task.
    pub task_id: TaskId,
    /// Its attempt (the round of candidates) this ranks.
    pub attempt: i32,
    /// When.
    pub ranked_at: chrono::DateTime<chrono::Utc>,
    /// How long the ranking took, microseconds.
    pub rank_micros: i64,
    /// The winning candidate (none: nothing could win).
    pub winner: Option<TaskId>,
    /// Whether and how the reviewer took part.
    pub reviewer: String,
    /// Each candidate's inputs, rank and reason.
    pub entries: sqlx::types::Json<Value>,
}

impl Store {
    /// Turns the lease a claim just took on best-of-N task `parent` into its candidates: the
    /// parent goes `leased → candidates` (its lease, slot and grant given back) and N candidates
    /// join the queue at the parent's place, cycling through the task's models, each with an even
    /// share of what is left of the task's budget. Fenced by the claim's lease: a parent that is
    /// not leased under it any more is left alone. Returns the candidates.
    pub async fn fan_out(&self, parent: &Task) -> Result<Vec<Task>> {
        let mut tx = self.pool.begin().await?;
        if let Some(lease) = super::claims::LeaseRef::of(parent) {
            Self::start_claim(&mut tx, &lease).await?;
        }
        let moved: Option<(i32, i64, i64)> = sqlx::query_as(
            "UPDATE tasks t SET status = 'candidates', lease_token = NULL, lease_expires_at = NULL, \
               ev_seq = t.ev_seq + 1, ev_actor = 'system', ev_reason = 'fan_out', \
               ev_data = jsonb_build_object('candidates', t.best_of) \
             FROM repos r, settings s \
             WHERE t.id = $1 AND t.attempt = $2 AND t.lease_token = $3 AND t.status = ANY($4) \
               AND r.id = t.repo_id \
             RETURNING t.best_of, t.cost_microusd, \
               COALESCE(r.budget_task_microusd, s.budget_task_microusd)",
        )
        .bind(parent.id)
        .bind(parent.attempt)
        .bind(parent.lease_token)
        .bind(lifecycle::status_texts(lifecycle::FAN_OUT.from))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((n, cost, budget)) = moved else {
            return Ok(Vec::new());
        };
        let share = (budget - cost).max(0) / i64::from(n.max(1));
        let children = sqlx::query_as::<_, Task>(concat!(
            "INSERT INTO tasks (repo_id, source, issue_title, issue_body, issue_author, issue_hash, ",
            "  prompt_override, status, priority, model, agent, required_labels, resume_branch, ",
            "  retry_context, branch, created_by, created_at, started_at, parent_id, candidate, ",
            "  parent_attempt, budget_task_microusd, ev_actor, ev_reason, ev_data) ",
            "SELECT p.repo_id, 'candidate', p.issue_title, p.issue_body, p.issue_author, p.issue_hash, ",
            "  p.prompt_override, 'queued', p.priority, ",
            "  COALESCE(NULLIF(btrim(p.best_of_models[1 + (i - 1) % NULLIF(cardinality(p.best_of_models), 0)]), ''), p.model), ",
            "  p.agent, p.required_labels, p.resume_branch, p.retry_context, p.branch, ",
            "  format('task:%s', p.id), p.created_at, now(), p.id, i, p.attempt, $2, ",
            "  'system', 'candidate', jsonb_build_object('parent', p.id, 'candidate', i, 'share_microusd', $2) ",
            "FROM tasks p, generate_series(1, p.best_of) AS i WHERE p.id = $1 ORDER BY i RETURNING ",
            task_columns!()
        ))
        .bind(parent.id)
        .bind(share)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            task = parent.id,
            candidates = children.len(),
            share_microusd = share,
            "best-of-N task fanned out"
        );
        Ok(children)
    }

    /// Settles the best-of-N tasks whose candidates have all ended, crossed the cost cap or
    /// passed the deadline (the sweep behind [`settle_in`], for candidates the reaper took back).
    /// Returns the tasks that moved on.
    pub async fn settle_candidates(&self, policy: &RetryPolicy, limit: i64) -> Result<Vec<Task>> {
        let ids: Vec<TaskId> = sqlx::query_scalar(
            "SELECT id FROM tasks WHERE status = 'candidates' ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut moved = Vec::new();
        for id in ids {
            let mut tx = self.pool.begin().await?;
            if let Some(t) = settle_in(&mut tx, id, policy).await? {
                moved.push(t);
            }
            tx.commit().await?;
        }
        Ok(moved)
    }

    /// The candidates of `task`'s round `attempt`, in their order, with what ranking needs.
    pub async fn candidate_runs(&self, task: TaskId, attempt: i32) -> Result<Vec<CandidateRun>> {
        Ok(sqlx::query_as(
            "SELECT c.id AS task_id, c.candidate, c.model, c.agent, c.status, c.terminal_reason, \
               c.cost_microusd, c.attempt, r.data AS result, r.reproduction, \
               EXISTS (SELECT 1 FROM task_bundles b WHERE b.task_id = c.id AND b.attempt = c.attempt) AS has_bundle \
             FROM tasks c LEFT JOIN task_results r ON r.task_id = c.id AND r.attempt = c.attempt \
             WHERE c.parent_id = $1 AND c.parent_attempt = $2 ORDER BY c.candidate",
        )
        .bind(task)
        .bind(attempt)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The candidates of `task` (every round), newest round first.
    pub async fn candidates_of(&self, task: TaskId) -> Result<Vec<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE parent_id = $1 ORDER BY parent_attempt DESC, candidate"
        ))
        .bind(task)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The ranking of `task`'s round `attempt`, if it was ranked.
    pub async fn ranking(&self, task: TaskId, attempt: i32) -> Result<Option<Ranking>> {
        Ok(sqlx::query_as(
            "SELECT task_id, attempt, ranked_at, rank_micros, winner, reviewer, entries \
             FROM task_rankings WHERE task_id = $1 AND attempt = $2",
        )
        .bind(task)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every ranking of `task`, newest first.
    pub async fn rankings(&self, task: TaskId) -> Result<Vec<Ranking>> {
        Ok(sqlx::query_as(
            "SELECT task_id, attempt, ranked_at, rank_micros, winner, reviewer, entries \
             FROM task_rankings WHERE task_id = $1 ORDER BY attempt DESC",
        )
        .bind(task)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records the ranking of `task`'s current round and makes the winner's result the task's
    /// own: its bundle, result and head under the task's attempt, which the push stage pushes.
    /// Only while the task is `pushing` in that round; a ranking recorded before is kept (the
    /// first one wins). Returns the task after it.
    pub async fn record_ranking(
        &self,
        task: &Task,
        winner: TaskId,
        reviewer: &str,
        entries: &Value,
        rank_micros: i64,
    ) -> Result<Task> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO task_rankings (task_id, attempt, rank_micros, winner, reviewer, entries) \
             SELECT id, attempt, $3, $4, $5, $6 FROM tasks WHERE id = $1 AND attempt = $2 AND status = 'pushing' \
             ON CONFLICT (task_id, attempt) DO NOTHING",
        )
        .bind(task.id)
        .bind(task.attempt)
        .bind(rank_micros)
        .bind(winner)
        .bind(reviewer)
        .bind(entries)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            let won: Option<(i32, Option<String>)> = sqlx::query_as(
                "SELECT attempt, (SELECT data->>'head_sha' FROM task_results r WHERE r.task_id = c.id AND r.attempt = c.attempt) \
                 FROM tasks c WHERE c.id = $1 AND c.parent_id = $2",
            )
            .bind(winner)
            .bind(task.id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((won_attempt, head)) = won else {
                return Err(Error::Invalid(format!(
                    "task {winner} is not a candidate of task {}",
                    task.id
                )));
            };
            sqlx::query(
                "INSERT INTO task_bundles (task_id, attempt, size, sha256, data) \
                 SELECT $1, $2, size, sha256, data FROM task_bundles WHERE task_id = $3 AND attempt = $4 \
                 ON CONFLICT (task_id, attempt) DO NOTHING",
            )
            .bind(task.id)
            .bind(task.attempt)
            .bind(winner)
            .bind(won_attempt)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO task_results (task_id, attempt, lease_token, outcome, error, data, reproduction) \
                 SELECT $1, $2, lease_token, outcome, error, data || jsonb_build_object('candidate', $3::bigint), reproduction \
                 FROM task_results WHERE task_id = $3 AND attempt = $4 \
                 ON CONFLICT (task_id, attempt) DO NOTHING",
            )
            .bind(task.id)
            .bind(task.attempt)
            .bind(winner)
            .bind(won_attempt)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE tasks SET head_sha = COALESCE($2, head_sha) WHERE id = $1")
                .bind(task.id)
                .bind(head)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.task(task.id).await
    }
}

/// The parent's figures [`settle_in`] decides on.
#[derive(sqlx::FromRow)]
struct Round {
    status: String,
    cost: i64,
    budget: i64,
    past_deadline: bool,
    live: i64,
    succeeded: i64,
    reasons: Vec<String>,
}

/// Moves best-of-N task `parent` on if its round is over (in `tx`, the parent's row locked):
/// every candidate ended, or the candidates together spent the task's budget (its cost cap), or
/// the task's deadline passed. A round with a succeeded candidate goes to `pushing` (the push
/// stage ranks it; the trigger stops the candidates still live); one without follows a single
/// attempt's failure path — another round while the retry budget lasts, else failed. Returns the
/// task when it moved.
pub(super) async fn settle_in(
    tx: &mut sqlx::PgConnection,
    parent: TaskId,
    policy: &RetryPolicy,
) -> Result<Option<Task>> {
    let round: Option<Round> = sqlx::query_as(
        "SELECT p.status, p.cost_microusd AS cost, \
           COALESCE(r.budget_task_microusd, s.budget_task_microusd) AS budget, \
           (p.started_at IS NOT NULL AND p.started_at < now() - make_interval(secs => s.task_deadline_secs)) AS past_deadline, \
           (SELECT count(*) FROM tasks c WHERE c.parent_id = p.id AND c.parent_attempt = p.attempt \
              AND c.status NOT IN ('finished', 'failed', 'canceled', 'merged')) AS live, \
           (SELECT count(*) FROM tasks c WHERE c.parent_id = p.id AND c.parent_attempt = p.attempt \
              AND c.status = 'finished' AND c.terminal_reason = 'succeeded') AS succeeded, \
           ARRAY(SELECT c.terminal_reason FROM tasks c WHERE c.parent_id = p.id AND c.parent_attempt = p.attempt \
              AND c.status = 'finished') AS reasons \
         FROM tasks p JOIN repos r ON r.id = p.repo_id CROSS JOIN settings s \
         WHERE p.id = $1 FOR UPDATE OF p",
    )
    .bind(parent)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(round) = round else {
        return Ok(None);
    };
    if round.status != Status::Candidates.as_str() {
        return Ok(None);
    }
    let capped = round.cost >= round.budget;
    if round.live > 0 && !capped && !round.past_deadline {
        return Ok(None);
    }
    let why = if round.live == 0 {
        "candidates_done"
    } else if capped {
        "cost_cap"
    } else {
        "deadline"
    };
    let data = json!({
        "succeeded": round.succeeded, "ended": round.reasons.len(), "stopped": round.live,
        "cost_microusd": round.cost, "budget_microusd": round.budget,
    });
    if round.succeeded > 0 {
        let t = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET status = 'pushing', lost_count = 0, error = NULL, ",
            "ev_seq = ev_seq + 1, ev_actor = 'controller', ev_reason = $2, ev_data = $3 ",
            "WHERE id = $1 AND status = ANY($4) RETURNING ",
            task_columns!()
        ))
        .bind(parent)
        .bind(why)
        .bind(&data)
        .bind(lifecycle::status_texts(lifecycle::CANDIDATES_DONE.from))
        .fetch_one(&mut *tx)
        .await?;
        return Ok(Some(t));
    }
    if round.live > 0 && !capped {
        // Past the deadline with nothing to show: the deadline sweep fails it as `timed_out`.
        return Ok(None);
    }
    let summary = format!(
        "no candidate of {} succeeded ({})",
        round.reasons.len(),
        round.reasons.join(", ")
    );
    if capped {
        let t = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET status = 'failed', terminal_reason = 'budget_exceeded', ",
            "error = format('the candidates spent the task''s budget (%s of %s micro-dollars) and %s; ",
            "raise the repository''s task budget or run fewer candidates, then requeue it', $3::bigint, $4::bigint, $5::text), ",
            "ev_seq = ev_seq + 1, ev_actor = 'controller', ev_reason = 'cost_cap', ev_data = $2 ",
            "WHERE id = $1 AND status = 'candidates' RETURNING ",
            task_columns!()
        ))
        .bind(parent)
        .bind(&data)
        .bind(round.cost)
        .bind(round.budget)
        .bind(&summary)
        .fetch_one(&mut *tx)
        .await?;
        return Ok(Some(t));
    }
    let all = |r: &str| !round.reasons.is_empty() && round.reasons.iter().all(|x| x == r);
    if all(TerminalReason::SetupFailed.as_str()) {
        let t = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET status = 'failed', terminal_reason = 'setup_failed', error = $2, ",
            "ev_seq = ev_seq + 1, ev_actor = 'controller', ev_reason = 'setup_failed', ev_data = $3 ",
            "WHERE id = $1 AND status = 'candidates' RETURNING ",
            task_columns!()
        ))
        .bind(parent)
        .bind(&summary)
        .bind(&data)
        .fetch_one(&mut *tx)
        .await?;
        return Ok(Some(t));
    }
    let verify = round
        .reasons
        .iter()
        .any(|r| r == TerminalReason::VerifyFailed.as_str());
    let failure = Failure {
        mode: if verify {
            FailureMode::Verify
        } else {
            FailureMode::Agent
        },
        reason: Some(if verify {
            TerminalReason::VerifyFailed
        } else {
            TerminalReason::AgentFailed
        }),
        error: summary,
        context: Some(data),
    };
    let note = Note::new("controller", "candidates_failed");
    retry_in(tx, parent, &failure, policy, &note).await
}
