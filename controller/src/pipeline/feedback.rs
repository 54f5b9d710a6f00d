//! The feedback loops around the stages: reflection on each failure before its retry, a learning
//! on every outcome, the per-repository circuit breaker, and notifications to chat webhooks.
//!
//! Each is a pass over work the store keeps (reflection holds, outcomes without a learning, the
//! notification outbox), so a restart loses nothing. Replicas: a reflection (a model call) and a
//! chat message are claimed before they are done ([`crate::store::work`]) and read again under the
//! claim; a learning is keyed by the outcome it records; the budget holds sweep runs on one
//! replica at a time.

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::llm::{Call, ModelClient};
use crate::loops::{Leading, LoopCtx, Next, every, lead, singleton};
use crate::store::wake::Channel;
use crate::store::work::{CLAIM_TTL, Work};
use crate::store::{SingletonLock, Status, Store, Task};

/// Timeout of one chat webhook POST.
const NOTIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Settings of the loops.
#[derive(Clone)]
pub struct Loops {
    /// The store.
    pub store: Store,
    /// The model for reflection (`None`: no reflection; holds release themselves).
    pub model: Option<ModelClient>,
    /// Reflection model alias (a cheap one).
    pub reflection_model: String,
    /// Slack/Discord-compatible webhook URLs.
    pub notify_urls: Vec<String>,
    /// The events sent to them (the others are dropped from the outbox unsent).
    pub notify_events: crate::config::NotifyEvents,
    /// HTTP client for notifications.
    pub http: reqwest::Client,
    /// The budget sweep's singleton lock while this replica runs it.
    pub budgets_lock: std::sync::Arc<tokio::sync::Mutex<Option<SingletonLock>>>,
}

fn reflect_system() -> String {
    format!(
        "You diagnose why an autonomous coding agent's attempt at a task failed, so the next attempt avoids it. {} \
         Answer in at most 6 short lines: the likely cause, then what the next attempt should do differently.",
        textguard::RULE
    )
}

/// The reflection request: the issue, how the attempt ended, and the end of its log.
pub fn reflection_prompt(task: &Task, failure: &str, log_tail: &str) -> String {
    format!(
        "Task {}.\n\n## Issue\n{}{}\n## How the attempt ended\n{}\n## End of the attempt's log\n{}",
        task.id,
        textguard::fence_plain("issue title", &task.issue_title),
        textguard::fence("issue", &task.issue_body),
        textguard::fence_tail("failure", failure),
        textguard::fence_tail("log", log_tail),
    )
}

impl Loops {
    /// One pass of everything; returns how many items were handled.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        let pending: Vec<i64> = self
            .store
            .reflection_pending(8)
            .await?
            .iter()
            .map(|t| t.id)
            .collect();
        let claimed = self
            .store
            .claim_work(Work::Reflection, &pending, CLAIM_TTL)
            .await?;
        let kept = self.store.keep_work(Work::Reflection, &claimed, CLAIM_TTL);
        for id in claimed {
            // Read again under the claim: another replica may have reflected already.
            let task = self.store.task(id).await;
            if let Ok(task) = &task
                && task.status == Status::Queued
                && task.hold_kind.0 == Some(crate::store::HoldKind::Reflection)
            {
                self.reflect(task).await;
                n += 1;
            }
            self.store.release_work(Work::Reflection, id).await?;
            task?;
        }
        drop(kept);
        for task in self.store.learnings_pending(32).await? {
            self.learn(&task).await?;
            n += 1;
        }
        if lead(
            &self.store,
            singleton::BUDGETS,
            &mut *self.budgets_lock.lock().await,
        )
        .await?
            != Leading::No
        {
            let (held, released) = self.store.sweep_budget_holds().await?;
            n += held.len() + released.len();
        }
        n += self.notify().await?;
        Ok(n)
    }

    async fn reflect(&self, task: &Task) {
        let Some(model) = &self.model else {
            let _ = self.store.finish_reflection(task.id, None).await;
            return;
        };
        let failure = task
            .retry_context
            .0
            .as_array()
            .and_then(|a| a.last())
            .map(|v| v.to_string())
            .unwrap_or_default();
        let logs = self.log_tail(task).await;
        let user = reflection_prompt(task, &failure, &logs);
        let diagnosis = model
            .call(&Call {
                purpose: "reflection",
                model: &self.reflection_model,
                system: &reflect_system(),
                user: &user,
                max_tokens: 400,
                task: Some(task.id),
                repo: Some(task.repo_id),
            })
            .await;
        let item = match diagnosis {
            Ok(r) => Some(
                json!({"kind": "diagnosis", "text": cap(&textguard::clean_plain(&r.text), 2000)}),
            ),
            Err(e) => {
                tracing::warn!(task = task.id, error = %e, "reflection failed; retrying without a diagnosis");
                None
            }
        };
        if let Err(e) = self.store.finish_reflection(task.id, item.as_ref()).await {
            tracing::warn!(task = task.id, error = %e, "releasing the reflection hold failed");
        }
    }

    async fn log_tail(&self, task: &Task) -> String {
        let chunks = self
            .store
            .log_tail(task.id, task.attempt, -1, 16)
            .await
            .unwrap_or_default();
        let mut text = String::new();
        for (_, _, data, _) in &chunks {
            text.push_str(&String::from_utf8_lossy(data));
        }
        let len = text.len();
        if len > 8000 {
            let mut start = len - 8000;
            while !text.is_char_boundary(start) {
                start += 1;
            }
            text = text[start..].to_owned();
        }
        text
    }

    async fn learn(&self, task: &Task) -> anyhow::Result<()> {
        let title: String = textguard::clean_plain(&task.issue_title)
            .chars()
            .take(120)
            .collect();
        let retries = [
            ("agent", task.agent_retries),
            ("verify", task.verify_retries),
            ("review", task.review_retries),
            ("ci", task.ci_retries),
            ("conflict", task.conflict_retries),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(m, n)| format!("{m}×{n}"))
        .collect::<Vec<_>>()
        .join(", ");
        let (outcome, summary) = if task.status == Status::Merged {
            let files: Vec<&str> = task
                .changed_files
                .iter()
                .take(8)
                .map(String::as_str)
                .collect();
            (
                "merged",
                format!(
                    "Merged \"{title}\" touching {}{}.",
                    if files.is_empty() {
                        "no listed files".to_owned()
                    } else {
                        files.join(", ")
                    },
                    if retries.is_empty() {
                        String::new()
                    } else {
                        format!(" after retries ({retries})")
                    }
                ),
            )
        } else {
            let reason = task
                .terminal_reason
                .0
                .map(|r| r.as_str())
                .unwrap_or("failed");
            // Only what the controller itself knows: the reason and the retries. The error text
            // and the reflection's diagnosis repeat the agent's own output, which goes back to
            // this task's retries and never into every later task's prompt.
            (
                "failed",
                format!(
                    "Failed ({reason}) on \"{title}\"{}.",
                    if retries.is_empty() {
                        String::new()
                    } else {
                        format!(" after retries ({retries})")
                    }
                ),
            )
        };
        let added = self
            .store
            .add_learning(task.repo_id, Some(task.id), outcome, &summary)
            .await?;
        if added
            && outcome == "failed"
            && let Some(until) = self.store.trip_breaker_if_needed(task.repo_id).await?
        {
            let repo = self.store.repo(task.repo_id).await?;
            tracing::warn!(repo = repo.name, %until, "circuit breaker tripped: dispatch paused");
            self.store
                .enqueue_notification(
                    "paused",
                    Some(task.repo_id),
                    &format!(
                        "[{}] too many failures: dispatch paused until {} (the breaker releases itself)",
                        repo.name,
                        until.format("%H:%M UTC")
                    ),
                )
                .await?;
        }
        Ok(())
    }

    async fn notify(&self) -> anyhow::Result<usize> {
        let listed: Vec<i64> = self
            .store
            .notifications_due(32)
            .await?
            .iter()
            .map(|n| n.id)
            .collect();
        let claimed = self
            .store
            .claim_work(Work::Notify, &listed, CLAIM_TTL)
            .await?;
        let kept = self.store.keep_work(Work::Notify, &claimed, CLAIM_TTL);
        // Read again under the claim: another replica may have sent some since they were listed.
        let due = self.store.notifications_among(&claimed).await;
        let n = claimed.len();
        let sent = self.send(due?).await;
        drop(kept);
        for id in claimed {
            self.store.release_work(Work::Notify, id).await?;
        }
        sent?;
        Ok(n)
    }

    async fn send(&self, due: Vec<crate::store::feedback::Notification>) -> anyhow::Result<()> {
        for note in due {
            if self.notify_urls.is_empty() || !self.notify_events.sends(&note.kind) {
                self.store.notification_done(note.id).await?;
                continue;
            }
            let body = json!({"text": note.text, "content": note.text});
            let mut ok = true;
            for url in &self.notify_urls {
                match self.http.post(url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        ok = false;
                        tracing::warn!(status = %r.status(), kind = note.kind, "notification refused");
                    }
                    Err(e) => {
                        ok = false;
                        tracing::warn!(error = %e, kind = note.kind, "notification not delivered");
                    }
                }
            }
            if ok || note.attempts >= 8 {
                self.store.notification_done(note.id).await?;
            } else {
                self.store.notification_retry(note.id).await?;
            }
        }
        Ok(())
    }
}

/// Runs the feedback loops until `shutdown`, woken by queue changes and the notification outbox
/// (`bp_queue`, `bp_notify`), sweeping every `sweep`.
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    let loops = Loops {
        store: ctx.store.clone(),
        model: ctx.llm.clone(),
        reflection_model: ctx.config.reflection_model.clone(),
        notify_urls: ctx.config.notify_urls.clone(),
        notify_events: ctx.config.notify_events.clone(),
        http: reqwest::Client::builder()
            .timeout(NOTIFY_TIMEOUT)
            .build()
            .unwrap_or_default(),
        budgets_lock: std::sync::Arc::default(),
    };
    let wakes = vec![
        ctx.fanout.wake(Channel::Queue),
        ctx.fanout.wake(Channel::Notify),
    ];
    every("feedback", wakes, ctx.config.sweep, shutdown, || {
        let loops = loops.clone();
        async move {
            Ok(if loops.run_once().await? > 0 {
                Next::Again
            } else {
                Next::Wait
            })
        }
    })
    .await;
}

fn cap(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut c: String = s.chars().take(max).collect();
        c.push('…');
        c
    }
}
