//! Operations people perform on tasks, each recorded in the audit log with who did it and how it
//! went — refused attempts included.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::lifecycle::{status_texts, task_columns};
use super::tasks::{Advance, CancelOutcome, Edits};
use super::{Error, HoldKind, Note, Result, Status, Store, Task, TaskId};

/// A guarded operation a person asks for.
#[derive(Debug, Clone)]
pub enum Op {
    /// Approve the merge or the dispatch.
    Approve,
    /// Put a user hold on.
    Hold,
    /// Take a hold off.
    Release,
    /// Cancel (or request the runner to stop).
    Cancel,
    /// Reject the work: cancel it, closing its PR.
    Reject,
    /// Back to the queue after it ended, optionally edited.
    Requeue(Edits),
    /// Run with a stronger model from the next attempt on.
    Escalate(String),
    /// To the front of the queue, dispatch approved.
    DispatchNow,
    /// Change prompt, model or priority before it starts.
    Edit(Edits),
}

impl Op {
    /// The audit name.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Approve => "approve",
            Op::Hold => "hold",
            Op::Release => "release",
            Op::Cancel => "cancel",
            Op::Reject => "reject",
            Op::Requeue(_) => "requeue",
            Op::Escalate(_) => "escalate",
            Op::DispatchNow => "dispatch_now",
            Op::Edit(_) => "edit",
        }
    }
}

/// Who acts.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `user:<name>`, `token:<name>`, `cli`, …
    pub name: String,
    /// The user's id, when a user acts.
    pub user_id: Option<i64>,
}

impl Store {
    /// Writes one audit entry.
    pub async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<&str>,
        outcome: &str,
        data: Option<&Value>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (user_id, actor, action, target, outcome, data) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(actor.user_id)
        .bind(&actor.name)
        .bind(action)
        .bind(target)
        .bind(outcome)
        .bind(data)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Performs `op` on task `id` as `actor`; success and refusal alike go to the audit log.
    pub async fn perform(&self, id: TaskId, op: &Op, actor: &Actor) -> Result<Task> {
        if let Op::Approve = op {
            return self.approve(id, actor).await;
        }
        let note = Note::new(actor.name.clone(), op.name());
        let result = match op {
            Op::Approve => unreachable!("handled above"),
            Op::Hold => match self.task(id).await?.hold_kind.0 {
                Some(kind) => Err(Error::Held { task: id, kind }),
                None => self.hold(id, HoldKind::User, None, &note).await,
            },
            // Release clears a user hold only; approve clears one that awaits approval.
            Op::Release => match self.task(id).await?.hold_kind.0 {
                Some(kind) if kind != HoldKind::User => {
                    Err(Error::NotReleasable { task: id, kind })
                }
                _ => self.release_kind(id, Some(HoldKind::User), &note).await,
            },
            Op::Cancel | Op::Reject => self.cancel(id, &note).await.map(|(_, t)| t),
            Op::Requeue(edits) => self.requeue(id, edits, &note).await,
            Op::Escalate(model) => self.escalate(id, model, &note).await,
            Op::DispatchNow => self.dispatch_now(id, &note).await,
            Op::Edit(edits) => self.edit(id, edits, &note).await,
        };
        let outcome = match &result {
            Ok(t) if matches!(op, Op::Cancel | Op::Reject) && t.status != Status::Canceled => {
                format!("ok: {:?}", CancelOutcome::Requested)
            }
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("refused: {e}"),
        };
        let data = match op {
            Op::Escalate(m) => Some(serde_json::json!({"model": m})),
            Op::Requeue(e) | Op::Edit(e) => Some(serde_json::json!({
                "model": e.model, "priority": e.priority, "prompt_edited": e.prompt.is_some(),
                "agent": e.agent
            })),
            _ => None,
        };
        self.audit(
            actor,
            op.name(),
            Some(&format!("task:{id}")),
            &outcome,
            data.as_ref(),
        )
        .await?;
        result
    }

    /// Sets the model of a task that has not finished running; it applies from the next attempt
    /// (or the current one, if it has not started).
    pub async fn escalate(&self, id: TaskId, model: &str, note: &Note) -> Result<Task> {
        if !api::valid_model(model) {
            return Err(Error::Invalid(format!(
                "unknown model `{model}`; use sonnet, opus, haiku or a full claude-* name"
            )));
        }
        const ESCALATE: super::lifecycle::Step = super::lifecycle::Step {
            name: "escalate",
            from: &[
                Status::New,
                Status::Queued,
                Status::Leased,
                Status::Running,
                Status::Verifying,
            ],
            to: Status::Queued,
        };
        let row = sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET model = $3, ev_seq = ev_seq + 1, ev_actor = $4, ev_reason = $5, ",
            "ev_data = jsonb_build_object('from', model, 'to', $3::text) ",
            "WHERE id = $1 AND status = ANY($2) RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(status_texts(ESCALATE.from))
        .bind(model)
        .bind(&note.actor)
        .bind(&note.reason)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(t) => Ok(t),
            None => Err(self.refused(id, ESCALATE).await),
        }
    }

    /// Approves what a task waits for: its merge (`approval_hold` → `merging`) or its dispatch
    /// (a `dispatch_approval` hold) — any hold that awaits approval, as the reference's
    /// `approve`; a user hold is `release`'s. Audited either way.
    pub async fn approve(&self, id: TaskId, actor: &Actor) -> Result<Task> {
        let note = Note::new(actor.name.clone(), "approved");
        let result = async {
            let task = self.task(id).await?;
            if task.status == Status::ApprovalHold {
                self.advance(id, &Advance::StartMerge, &note).await
            } else if task.hold_kind.0 == Some(HoldKind::DispatchApproval) {
                self.release_kind(id, Some(HoldKind::DispatchApproval), &note)
                    .await
            } else {
                Err(Error::Conflict(format!(
                    "task {id} is {} and waits for no approval{}",
                    task.status,
                    match task.hold_kind.0 {
                        Some(kind) =>
                            format!("; it has a {kind} hold: {}", super::how_to_clear(kind, id)),
                        None => String::new(),
                    }
                )))
            }
        }
        .await;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("refused: {e}"),
        };
        self.audit(
            actor,
            "approve",
            Some(&format!("task:{id}")),
            &outcome,
            None,
        )
        .await?;
        result
    }
}

/// One audit entry.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
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
    /// `ok` or `refused: …`.
    pub outcome: String,
}

impl Store {
    /// The audit log, newest first.
    pub async fn audit_log(&self, limit: i64, before: Option<i64>) -> Result<Vec<AuditEntry>> {
        Ok(sqlx::query_as(
            "SELECT id, at, actor, action, target, outcome FROM audit_log \
             WHERE $2::bigint IS NULL OR id < $2 ORDER BY id DESC LIMIT $1",
        )
        .bind(limit.clamp(1, 1000))
        .bind(before)
        .fetch_all(&self.pool)
        .await?)
    }
}
