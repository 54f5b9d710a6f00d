//! Operations people perform on tasks, each recorded in the audit log with who did it and how it
//! went — refused attempts included.

use serde_json::Value;

use super::tasks::Advance;
use super::{Error, HoldKind, Note, Result, Status, Store, Task, TaskId};

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

    /// Approves what a task waits for: its merge (`approval_hold` → `merging`) or its dispatch
    /// (a `dispatch_approval` hold). Audited either way.
    pub async fn approve(&self, id: TaskId, actor: &Actor) -> Result<Task> {
        let note = Note::new(actor.name.clone(), "approved");
        let result = async {
            let task = self.task(id).await?;
            if task.status == Status::ApprovalHold {
                self.advance(id, &Advance::StartMerge, &note).await
            } else if task.hold_kind.0 == Some(HoldKind::DispatchApproval) {
                self.release(id, &note).await
            } else {
                Err(Error::Invalid(format!(
                    "task {id} is {} and waits for no approval",
                    task.status
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
