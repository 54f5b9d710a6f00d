//! The plan gate: a task of a repository with `plan_gate` on is first claimed for a read-only
//! plan run ([`super::claims`] decides it in the claim statement and records it as
//! `tasks.plan_attempt`); the plan it delivers ([`super::completion`]) is kept here, the task
//! waits in `plan_hold`, and only an approved plan (by a person, or by the repository's
//! blast-radius threshold) lets it back on the queue — now claimable for implementation.
//! A rejected plan, or one nobody decided on within the repository's timeout, fails the task.
//!
//! What a runner sends is untrusted: the plan is parsed into four bounded sections, cleaned of
//! invisible characters, and rendered here as the text people see and the implementation run and
//! the reviewer get.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::lifecycle::{self, Status, Task, TaskId, TerminalReason, status_texts, task_columns};
use super::ops::Actor;
use super::{Error, Result, Store};

/// Most files a plan names.
pub const MAX_FILES: usize = 100;
/// Most risks or tests a plan lists.
pub const MAX_ITEMS: usize = 30;
/// Longest path, risk or test entry, characters.
pub const MAX_ITEM_CHARS: usize = 500;
/// Longest approach, characters.
pub const MAX_APPROACH_CHARS: usize = 8000;
/// Longest plan text (rendered or edited), bytes (the table's check agrees).
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
/// Longest reason a person gives for a rejection, characters.
pub const MAX_REASON_CHARS: usize = 2000;

/// A plan: what the plan run says it will change and how.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanDoc {
    /// Files it expects to change (paths relative to the repository root).
    pub files: Vec<String>,
    /// How.
    pub approach: String,
    /// What could go wrong.
    pub risks: Vec<String>,
    /// How the change will be tested.
    pub tests: Vec<String>,
}

impl PlanDoc {
    /// Parses the agent's plan JSON (`{"files", "approach", "risks", "tests"}`), cleaned and
    /// bounded; the error says what was wrong.
    pub fn parse(raw: &str) -> std::result::Result<PlanDoc, String> {
        if raw.len() > 4 * MAX_TEXT_BYTES {
            return Err(format!(
                "the plan is {} bytes; at most {} are read",
                raw.len(),
                4 * MAX_TEXT_BYTES
            ));
        }
        let doc: PlanDoc = serde_json::from_str(raw).map_err(|e| {
            format!(
                "the plan is not JSON with files, approach, risks and tests ({e}); write it as the prompt says"
            )
        })?;
        let clean = |s: &str, max: usize| -> String {
            let c = textguard::clean_plain(s.trim());
            c.chars().take(max).collect()
        };
        let list = |v: &[String], max: usize| -> Vec<String> {
            v.iter()
                .map(|s| clean(s, MAX_ITEM_CHARS))
                .filter(|s| !s.is_empty())
                .take(max)
                .collect()
        };
        let mut files = list(&doc.files, MAX_FILES);
        files.iter_mut().for_each(|f| {
            *f = f
                .trim_start_matches("./")
                .trim_start_matches('/')
                .to_owned();
        });
        files.sort();
        files.dedup();
        let plan = PlanDoc {
            files,
            approach: clean(&doc.approach, MAX_APPROACH_CHARS),
            risks: list(&doc.risks, MAX_ITEMS),
            tests: list(&doc.tests, MAX_ITEMS),
        };
        if plan.approach.is_empty() {
            return Err("the plan has no approach".into());
        }
        Ok(plan)
    }

    /// The plan as Markdown sections, as posted on the issue.
    pub fn render(&self) -> String {
        let items = |v: &[String], code: bool| -> String {
            if v.is_empty() {
                return "- (none named)\n".into();
            }
            v.iter()
                .map(|s| {
                    if code {
                        format!("- `{}`\n", s.replace('`', "'"))
                    } else {
                        format!("- {s}\n")
                    }
                })
                .collect()
        };
        let text = format!(
            "### Files\n{}\n### Approach\n{}\n\n### Risks\n{}\n### Tests\n{}",
            items(&self.files, true),
            self.approach,
            items(&self.risks, false),
            items(&self.tests, false)
        );
        bounded(&text)
    }
}

/// `text` cut to [`MAX_TEXT_BYTES`] at a character boundary.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_TEXT_BYTES - 32;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[… plan cut …]", &text[..end])
}

/// What a runner reports at the end of a plan run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanReport {
    /// The agent's plan, as JSON text (parsed by [`PlanDoc::parse`]).
    pub plan_json: String,
    /// Predicted blast radius (files named plus files impacted); `None` when unknown.
    pub blast_radius: Option<i32>,
    /// The blast radius rendered.
    pub blast_text: String,
    /// Paths the run changed in its workspace (discarded).
    pub discarded: Vec<String>,
}

/// A task's plan as stored.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Plan {
    /// Task.
    pub task_id: TaskId,
    /// The plan run's attempt.
    pub attempt: i32,
    /// The structured plan.
    pub plan: sqlx::types::Json<PlanDoc>,
    /// The text posted (or as a person edited it).
    pub text: String,
    /// Predicted blast radius.
    pub blast_radius: Option<i32>,
    /// Paths the plan run changed in its workspace (discarded, never pushed).
    pub discarded: Vec<String>,
    /// `pending`, `approved`, `rejected` or `timed_out`.
    pub state: String,
    /// A person replaced the text.
    pub edited: bool,
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

/// A person's decision on a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Approve it as it is.
    Approve,
    /// Replace its text, then approve it.
    Edit(String),
    /// Reject it: the task fails with the reason.
    Reject(String),
}

impl Decision {
    /// The audit name.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Approve => "plan_approve",
            Decision::Edit(_) => "plan_edit",
            Decision::Reject(_) => "plan_reject",
        }
    }
}

/// The columns [`Plan`] reads.
const PLAN_SQL: &str = "SELECT task_id, attempt, plan, text, blast_radius, discarded, state, edited, \
     decided_by, decided_at, note, posted_at, due_at FROM task_plans WHERE task_id = $1";

/// Stores the plan of a plan run that delivered one (in the completion's transaction) and moves
/// the task to `plan_hold`; approves it at once when the repository's threshold allows. Returns
/// the task as it is then.
pub(super) async fn deliver(
    tx: &mut sqlx::PgConnection,
    task: TaskId,
    attempt: i32,
    doc: &PlanDoc,
    report: &PlanReport,
    actor: &str,
) -> Result<Task> {
    let text = doc.render();
    let discarded: Vec<String> = report
        .discarded
        .iter()
        .take(MAX_FILES)
        .map(|p| {
            textguard::clean_plain(p)
                .chars()
                .take(MAX_ITEM_CHARS)
                .collect()
        })
        .collect();
    sqlx::query(
        "INSERT INTO task_plans (task_id, attempt, plan, text, blast_radius, discarded, state, due_at) \
         SELECT t.id, $2, $3, $4, $5, $6, 'pending', now() + make_interval(secs => r.plan_timeout_secs) \
         FROM tasks t JOIN repos r ON r.id = t.repo_id WHERE t.id = $1 \
         ON CONFLICT (task_id) DO UPDATE SET attempt = EXCLUDED.attempt, plan = EXCLUDED.plan, \
           text = EXCLUDED.text, blast_radius = EXCLUDED.blast_radius, discarded = EXCLUDED.discarded, \
           state = 'pending', edited = false, decided_by = NULL, decided_at = NULL, note = NULL, \
           posted_at = now(), due_at = EXCLUDED.due_at",
    )
    .bind(task)
    .bind(attempt)
    .bind(sqlx::types::Json(doc))
    .bind(&text)
    .bind(report.blast_radius)
    .bind(&discarded)
    .execute(&mut *tx)
    .await?;
    let held = sqlx::query_as::<_, Task>(concat!(
        "UPDATE tasks SET status = 'plan_hold', plan_state = 'pending', lost_count = 0, ",
        "lease_token = NULL, lease_expires_at = NULL, error = NULL, ",
        "ev_seq = ev_seq + 1, ev_actor = $2, ev_reason = 'plan_ready', ",
        "ev_data = jsonb_build_object('files', $3::int, 'blast_radius', $4::int, 'discarded', $5::text[]) ",
        "WHERE id = $1 RETURNING ",
        task_columns!()
    ))
    .bind(task)
    .bind(actor)
    .bind(doc.files.len() as i32)
    .bind(report.blast_radius)
    .bind(&discarded)
    .fetch_one(&mut *tx)
    .await?;
    let threshold: Option<i32> = sqlx::query_scalar(
        "SELECT r.plan_auto_blast FROM tasks t JOIN repos r ON r.id = t.repo_id WHERE t.id = $1",
    )
    .bind(task)
    .fetch_one(&mut *tx)
    .await?;
    let (Some(threshold), Some(blast)) = (threshold, report.blast_radius) else {
        return Ok(held);
    };
    if blast > threshold || !discarded.is_empty() {
        return Ok(held);
    }
    let note = format!(
        "approved automatically: its predicted blast radius ({blast} files) is within the repository's threshold ({threshold})"
    );
    let task = decide_in(tx, task, "policy", &Decision::Approve, Some(&note)).await?;
    sqlx::query(
        "INSERT INTO audit_log (actor, action, target, outcome, data) VALUES ('policy', 'plan_approve', $1, 'ok', $2)",
    )
    .bind(format!("task:{task_id}", task_id = task.id))
    .bind(json!({"note": note, "blast_radius": blast, "threshold": threshold}))
    .execute(&mut *tx)
    .await?;
    Ok(task)
}

/// Applies a decision to a task in `plan_hold` (its plan `pending`), in `tx`.
async fn decide_in(
    tx: &mut sqlx::PgConnection,
    id: TaskId,
    by: &str,
    decision: &Decision,
    note: Option<&str>,
) -> Result<Task> {
    let (state, text) = match decision {
        Decision::Approve => ("approved", None),
        Decision::Edit(t) => ("approved", Some(t.as_str())),
        Decision::Reject(_) => ("rejected", None),
    };
    let why = match decision {
        Decision::Reject(r) => Some(r.as_str()),
        _ => note,
    };
    let updated = sqlx::query(
        "UPDATE task_plans SET state = $2, text = COALESCE($3, text), edited = edited OR $3 IS NOT NULL, \
           decided_by = $4, decided_at = now(), note = $5 \
         WHERE task_id = $1 AND state = 'pending' \
           AND EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND status = 'plan_hold')",
    )
    .bind(id)
    .bind(state)
    .bind(text)
    .bind(by)
    .bind(why)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(not_waiting(tx, id).await);
    }
    let row = match decision {
        Decision::Approve | Decision::Edit(_) => {
            sqlx::query_as::<_, Task>(concat!(
                "UPDATE tasks SET status = $2, plan_state = 'approved', ",
                "ev_seq = ev_seq + 1, ev_actor = $3, ev_reason = $4, ",
                "ev_data = jsonb_build_object('edited', $5::bool, 'note', $6::text) ",
                "WHERE id = $1 AND status = ANY($7) RETURNING ",
                task_columns!()
            ))
            .bind(id)
            .bind(lifecycle::PLAN_APPROVED.to.as_str())
            .bind(by)
            .bind(if by == "policy" {
                "plan_auto_approved"
            } else {
                lifecycle::PLAN_APPROVED.name
            })
            .bind(matches!(decision, Decision::Edit(_)))
            .bind(note)
            .bind(status_texts(lifecycle::PLAN_APPROVED.from))
            .fetch_optional(&mut *tx)
            .await?
        }
        Decision::Reject(reason) => sqlx::query_as::<_, Task>(concat!(
            "UPDATE tasks SET status = 'failed', plan_state = 'rejected', terminal_reason = $2, ",
            "error = $3, lease_token = NULL, lease_expires_at = NULL, ",
            "ev_seq = ev_seq + 1, ev_actor = $4, ev_reason = 'plan_rejected', ",
            "ev_data = jsonb_build_object('reason', $5::text) ",
            "WHERE id = $1 AND status = 'plan_hold' RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(TerminalReason::PlanRejected.as_str())
        .bind(format!(
            "{by} rejected the plan: {reason}; requeue the task for a new plan run"
        ))
        .bind(by)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?,
    };
    match row {
        Some(t) => Ok(t),
        None => Err(not_waiting(tx, id).await),
    }
}

async fn not_waiting(tx: &mut sqlx::PgConnection, id: TaskId) -> Error {
    let row: std::result::Result<Option<(String, Option<String>)>, sqlx::Error> =
        sqlx::query_as("SELECT status, plan_state FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await;
    match row {
        Err(e) => e.into(),
        Ok(None) => Error::TaskNotFound(id),
        Ok(Some((status, plan))) => Error::Conflict(format!(
            "task {id} is {status} and has no plan waiting for a decision (plan: {})",
            plan.as_deref().unwrap_or("none")
        )),
    }
}

impl Store {
    /// The plan of a task, if its plan run delivered one.
    pub async fn plan(&self, id: TaskId) -> Result<Option<Plan>> {
        Ok(sqlx::query_as(PLAN_SQL)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The files of `changed` that a plan approved by the repository's policy does not name
    /// (among its files, or in what its tests say), for the task (or a candidate's parent).
    /// Empty when the plan was approved by a person, or there is none: the policy approved the
    /// agent's own word about what it would touch, and a change beyond it is not covered.
    pub async fn beyond_policy_plan(&self, id: TaskId, changed: &[String]) -> Result<Vec<String>> {
        let plan: Option<sqlx::types::Json<PlanDoc>> = sqlx::query_scalar(
            "SELECT p.plan FROM tasks t JOIN task_plans p ON p.task_id = COALESCE(t.parent_id, t.id) \
             WHERE t.id = $1 AND p.state = 'approved' AND p.decided_by = 'policy'",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(plan) = plan else {
            return Ok(Vec::new());
        };
        let named = |f: &str| {
            plan.files
                .iter()
                .any(|p| p.trim_start_matches("./").trim_start_matches('/') == f)
                || plan.tests.iter().any(|t| t.contains(f))
        };
        Ok(changed.iter().filter(|f| !named(f)).cloned().collect())
    }

    /// The approved plan's text, if the task (or, for a candidate, its parent) has one.
    pub async fn approved_plan(&self, id: TaskId) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT p.text FROM tasks t JOIN task_plans p ON p.task_id = COALESCE(t.parent_id, t.id) \
             WHERE t.id = $1 AND p.state = 'approved'",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A person's decision on the plan a task waits with; audited, refusals included.
    pub async fn decide_plan(
        &self,
        id: TaskId,
        decision: &Decision,
        actor: &Actor,
    ) -> Result<Task> {
        // What a person sent, cleaned and bounded; a refusal is audited like a decision.
        let checked = match decision {
            Decision::Approve => Ok(Decision::Approve),
            Decision::Edit(text) => {
                let text = textguard::clean(text.trim());
                if text.is_empty() {
                    Err("an edited plan needs text; send the plan as it should be followed".into())
                } else if text.len() > MAX_TEXT_BYTES {
                    Err(format!(
                        "the edited plan is {} bytes; at most {MAX_TEXT_BYTES} are kept, shorten it",
                        text.len()
                    ))
                } else {
                    Ok(Decision::Edit(text))
                }
            }
            Decision::Reject(reason) => {
                let reason: String = textguard::clean_plain(reason.trim())
                    .chars()
                    .take(MAX_REASON_CHARS)
                    .collect();
                if reason.is_empty() {
                    Err("a rejection needs a reason; say what is wrong with the plan".into())
                } else {
                    Ok(Decision::Reject(reason))
                }
            }
        };
        let decision = match checked {
            Ok(d) => d,
            Err(why) => {
                return self
                    .audited_plan(id, decision, actor, Err(Error::Invalid(why)))
                    .await;
            }
        };
        let result = async {
            let mut tx = self.pool.begin().await?;
            let t = decide_in(&mut tx, id, &actor.name, &decision, None).await?;
            tx.commit().await?;
            Ok(t)
        }
        .await;
        self.audited_plan(id, &decision, actor, result).await
    }

    async fn audited_plan(
        &self,
        id: TaskId,
        decision: &Decision,
        actor: &Actor,
        result: Result<Task>,
    ) -> Result<Task> {
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("refused: {e}"),
        };
        let data = match decision {
            Decision::Reject(r) => Some(json!({"reason": r})),
            Decision::Edit(t) => Some(json!({"edited_bytes": t.len()})),
            Decision::Approve => None,
        };
        self.audit(
            actor,
            decision.name(),
            Some(&format!("task:{id}")),
            &outcome,
            data.as_ref(),
        )
        .await?;
        result
    }

    /// Denies plans nobody decided on by their due time: the task fails (`plan_timed_out`),
    /// saying so. At most `limit` per call; returns the tasks failed.
    pub async fn deny_overdue_plans(&self, limit: i64) -> Result<Vec<TaskId>> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<TaskId> = sqlx::query_scalar(
            "UPDATE task_plans SET state = 'timed_out', decided_by = 'system', decided_at = now(), \
               note = 'nobody decided on the plan before its timeout' \
             WHERE task_id IN (SELECT p.task_id FROM task_plans p JOIN tasks t ON t.id = p.task_id \
               WHERE p.state = 'pending' AND p.due_at <= now() AND t.status = 'plan_hold' \
               ORDER BY p.due_at LIMIT $1 FOR UPDATE OF p, t SKIP LOCKED) \
             RETURNING task_id",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE tasks t SET status = 'failed', plan_state = 'timed_out', terminal_reason = $2, \
                   error = format('plan approval timed out: nobody approved, edited or rejected the plan within %s \
(the repository''s plan_timeout_secs); requeue the task for a new plan run', \
                     justify_interval(make_interval(secs => r.plan_timeout_secs))), \
                   ev_seq = t.ev_seq + 1, ev_actor = 'system', ev_reason = 'plan_timed_out', ev_data = NULL \
                 FROM repos r WHERE r.id = t.repo_id AND t.id = ANY($1) AND t.status = $3",
            )
            .bind(&ids)
            .bind(TerminalReason::PlanTimedOut.as_str())
            .bind(Status::PlanHold.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_parsed_cleaned_bounded_and_rendered_in_sections() {
        let raw = json!({
            "files": ["./src/a.rs", "src/a.rs", "/src/b\u{200b}.rs", ""],
            "approach": "Change a.\u{202e}",
            "risks": ["r".repeat(MAX_ITEM_CHARS + 10)],
            "tests": (0..MAX_ITEMS + 5).map(|i| format!("t{i}")).collect::<Vec<_>>(),
        })
        .to_string();
        let doc = PlanDoc::parse(&raw).unwrap();
        assert_eq!(doc.files, vec!["src/a.rs", "src/b.rs"]);
        assert_eq!(doc.approach, "Change a.");
        assert_eq!(doc.risks[0].chars().count(), MAX_ITEM_CHARS);
        assert_eq!(doc.tests.len(), MAX_ITEMS);
        let text = doc.render();
        for section in ["### Files", "### Approach", "### Risks", "### Tests"] {
            assert!(text.contains(section), "{text}");
        }
        assert!(text.contains("- `src/b.rs`"), "{text}");
    }

    #[test]
    fn a_plan_that_is_not_a_plan_says_what_is_wrong() {
        assert!(PlanDoc::parse("not json").unwrap_err().contains("not JSON"));
        assert!(
            PlanDoc::parse(r#"{"files": [], "approach": "  "}"#)
                .unwrap_err()
                .contains("no approach")
        );
        let huge = format!(r#"{{"approach": "{}"}}"#, "x".repeat(5 * MAX_TEXT_BYTES));
        assert!(PlanDoc::parse(&huge).unwrap_err().contains("bytes"));
        let long = PlanDoc {
            approach: "y".repeat(MAX_TEXT_BYTES * 2),
            ..Default::default()
        };
        assert!(long.render().len() <= MAX_TEXT_BYTES);
    }
}
