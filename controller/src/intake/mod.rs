//! Intake: GitHub webhooks turned into tasks.
//!
//! A delivery is accepted only with a valid `X-Hub-Signature-256` (HMAC-SHA256 of the body with
//! the shared secret). A delivery is recorded once its effect is done (every effect is idempotent
//! by key: one live task per issue, one re-open per comment or review, one hold), so a redelivery
//! of one that failed is processed and a redelivery of one that succeeded is acknowledged and
//! ignored. An issue becomes a task when it carries the `backporcher` label and both its author
//! and whoever opened or labelled it (the event's sender; for the poller, the actor of the label
//! event) are on the allowlist; its title and body are snapshotted at that moment, cleaned of
//! what GitHub hides and of invisible and control characters (what was removed goes on the
//! task's timeline), and hashed. A body edited afterwards by someone off the allowlist holds the
//! task for a person. At most one live task exists per issue (the store refuses a second one).
//! The ETag poller ([`mod@poller`]) feeds the same [`accept_issue`]; the webhook route and its
//! decoding live in [`webhook`].
//!
//! On a task's pull request, an allowlisted user's comment that mentions `@backporcher`, or a
//! submitted review (its body and every line comment together, as one request), re-opens the task
//! on its branch with that text as context — once per comment or review, however often GitHub
//! delivers it.

use sha2::Digest;

use crate::forge::{Feedback, Issue, labels};
use crate::store::tasks::NewTask;
use crate::store::{Error, Note, Store, Task};

pub mod poller;
pub mod webhook;

pub use webhook::{Decoded, decode, handle, signature_valid};

/// The label that asks for a task.
pub const TRIGGER_LABEL: &str = labels::TRIGGER;
/// The label that asks for the stronger model.
pub const OPUS_LABEL: &str = labels::OPUS;

/// The agent backend an issue's task starts with: a `codex` or `claude` label wins (`codex` if
/// both), else the repository's setting.
pub fn agent_for(issue_labels: &[String], repo_default: &str) -> String {
    if issue_labels.iter().any(|l| l == labels::CODEX) {
        "codex".into()
    } else if issue_labels.iter().any(|l| l == labels::CLAUDE) {
        "claude".into()
    } else {
        repo_default.to_owned()
    }
}

/// What intake needs to decide.
#[derive(Debug, Clone, Default)]
pub struct IntakeConfig {
    /// Shared webhook secret.
    pub webhook_secret: String,
    /// GitHub logins whose issues may start tasks (empty: nobody).
    pub allowed_users: Vec<String>,
    /// The model new tasks start with (the `opus` label wins).
    pub default_model: String,
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// A task was created.
    Created(i64),
    /// A task was re-opened by feedback on its PR.
    Reopened(i64),
    /// A task was held for a person (its issue was edited by someone off the allowlist).
    Held(i64),
    /// Already seen (same delivery id).
    Duplicate,
    /// Accepted but nothing to do, with why.
    Ignored(String),
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The signature is missing or wrong.
    #[error("webhook signature missing or invalid")]
    BadSignature,
    /// The body is not the JSON GitHub sends.
    #[error("webhook body is not valid JSON: {0}")]
    BadPayload(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
    /// Reading from GitHub failed (the delivery should be retried).
    #[error("reading from GitHub failed: {0}")]
    Forge(String),
}

/// Cleans untrusted issue text (see the `textguard` crate).
pub fn clean_text(text: &str) -> String {
    textguard::clean(text)
}

/// The registered repository `full_name`, or why the delivery is ignored.
pub(super) async fn registered(
    store: &Store,
    full_name: &str,
) -> Result<Result<crate::store::repos::Repo, Intake>, IntakeError> {
    match store.repo_by_name(full_name).await {
        Ok(r) => Ok(Ok(r)),
        Err(Error::RepoNotFound(_)) => Ok(Err(Intake::Ignored(format!(
            "repository `{full_name}` is not registered"
        )))),
        Err(e) => Err(e.into()),
    }
}

/// Whether a comment addresses the bot (`@backporcher` as a word).
pub fn mentions_us(text: &str) -> bool {
    text.match_indices("@backporcher").any(|(i, m)| {
        !text[i + m.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_')
    })
}

/// Whether `login` is on the allowlist.
pub fn allowed(config: &IntakeConfig, login: &str) -> bool {
    !login.is_empty()
        && config
            .allowed_users
            .iter()
            .any(|u| u.eq_ignore_ascii_case(login))
}

/// The hash of a task's issue snapshot (its cleaned title and body), as recorded with the task.
pub fn snapshot_hash(title: &str, body: &str) -> String {
    hex::encode(sha2::Sha256::digest(format!("{title}\n{body}").as_bytes()))
}

/// Turns a labelled issue into a task, the same way for webhooks and the poller: the trigger
/// label, an allowlisted author, a registered repository, at most one live task per issue.
pub async fn accept_issue(
    store: &Store,
    config: &IntakeConfig,
    full_name: &str,
    issue: &Issue,
    created_by: &str,
) -> Result<Intake, IntakeError> {
    if !issue.labels.iter().any(|l| l == TRIGGER_LABEL) {
        return Ok(Intake::Ignored(
            "the issue has no `backporcher` label".into(),
        ));
    }
    if issue.is_pull {
        return Ok(Intake::Ignored("pull requests are not tasks".into()));
    }
    if issue.state != "open" {
        return Ok(Intake::Ignored("the issue is closed".into()));
    }
    if !allowed(config, &issue.author) {
        tracing::warn!(
            author = issue.author,
            issue = issue.number,
            "issue author is not on the allowlist; no task"
        );
        return Ok(Intake::Ignored(format!(
            "author `{}` is not on the allowlist",
            issue.author
        )));
    }
    let repo = match registered(store, full_name).await? {
        Ok(r) => r,
        Err(ignored) => return Ok(ignored),
    };
    if !repo.enabled {
        return Ok(Intake::Ignored(format!(
            "repository `{full_name}` is disabled"
        )));
    }
    let title = textguard::clean_report(&issue.title, textguard::Format::Plain);
    let body = textguard::clean_report(&issue.body, textguard::Format::Markdown);
    let body_text = textguard::cap(&body.text);
    let hash = snapshot_hash(&title.text, &body_text);
    let mut task = NewTask::for_issue(repo.id, issue.number, &title.text, &body_text);
    if !config.default_model.is_empty() {
        task.model = config.default_model.clone();
    }
    let removed = textguard::Removed {
        comments: title.removed.comments + body.removed.comments,
        comment_chars: title.removed.comment_chars + body.removed.comment_chars,
        invisible: title.removed.invisible + body.removed.invisible,
        controls: title.removed.controls + body.removed.controls,
    };
    if !removed.is_empty() {
        tracing::warn!(issue = issue.number, removed = %removed.describe(), "the issue carried hidden content");
        task.note = Some(serde_json::json!({
            "hidden_content": removed.describe(),
            "comments": removed.comments,
            "invisible": removed.invisible,
            "controls": removed.controls,
        }));
    }
    task.author = Some(issue.author.clone());
    task.content_hash = Some(hash);
    task.created_by = created_by.into();
    if issue.labels.iter().any(|l| l == OPUS_LABEL) {
        task.model = "opus".into();
    }
    task.agent = agent_for(&issue.labels, &repo.agent);
    task.best_of = best_of_label(&issue.labels);
    match store.create_task(&task).await {
        Ok(Task { id, .. }) => {
            tracing::info!(
                task = id,
                repo = full_name,
                issue = issue.number,
                via = created_by,
                "issue accepted"
            );
            Ok(Intake::Created(id))
        }
        Err(Error::DuplicateIssue { existing, .. }) => Ok(Intake::Ignored(format!(
            "issue already has live task {existing}"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// A human asked for changes on a task's PR: the task goes back to the queue on the same branch
/// with the request as context, once per comment or review.
pub(super) async fn reopen_for_feedback(
    store: &Store,
    config: &IntakeConfig,
    full_name: &str,
    pr_number: i64,
    feedback: &Feedback,
) -> Result<Intake, IntakeError> {
    if !allowed(config, &feedback.author) {
        return Ok(Intake::Ignored(format!(
            "`{}` is not on the allowlist",
            feedback.author
        )));
    }
    let Some(task) = store.task_by_pr(full_name, pr_number).await? else {
        return Ok(Intake::Ignored(format!(
            "{full_name}#{pr_number} is not a live task's pull request"
        )));
    };
    let comments: Vec<String> = feedback
        .comments
        .iter()
        .map(|c| textguard::clean(c))
        .collect();
    let context = serde_json::json!({
        "kind": "pr_feedback",
        "source": feedback.kind,
        "author": feedback.author,
        "comments": comments,
    });
    let key = format!("{}:{}", feedback.kind, feedback.id);
    match store
        .reopen_once(
            task.id,
            &key,
            &context,
            &Note::new(format!("github:{}", feedback.author), "pr_feedback")
                .with_data(context.clone()),
        )
        .await
    {
        Ok(Some(t)) => {
            tracing::info!(
                task = t.id,
                pr = pr_number,
                kind = feedback.kind,
                "task re-opened by PR feedback"
            );
            Ok(Intake::Reopened(t.id))
        }
        Ok(None) => Ok(Intake::Duplicate),
        Err(Error::IllegalTransition { current, .. }) => Ok(Intake::Ignored(format!(
            "task {} is {current}; feedback is read while its PR waits for review, CI or approval",
            task.id
        ))),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{KeyInit, Mac};

    #[test]
    fn signatures_and_cleaning() {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s").unwrap();
        mac.update(b"body");
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_valid("s", b"body", Some(&good)));
        assert!(!signature_valid("s", b"body2", Some(&good)));
        assert!(!signature_valid("other", b"body", Some(&good)));
        assert!(!signature_valid("s", b"body", None));
        assert!(!signature_valid("s", b"body", Some("sha1=abc")));
        assert_eq!(
            clean_text("a<!-- hidden -->b\u{200B}c\u{0007}\nd"),
            "abc\nd"
        );
        assert_eq!(
            clean_text("open <!-- never closed"),
            "open <!-- never closed"
        );
    }
}

/// The issue's `best-of-N` label (N from 1 to the most candidates a task runs), if any; the
/// highest wins when several are set. Others (`best-of-9`, `best-of-x`) are ignored.
pub fn best_of_label(labels: &[String]) -> Option<i32> {
    labels
        .iter()
        .filter_map(|l| l.strip_prefix("best-of-")?.parse::<i32>().ok())
        .filter(|n| (1..=crate::store::tasks::MAX_BEST_OF).contains(n))
        .max()
}

#[cfg(test)]
mod best_of_tests {
    use super::best_of_label;

    #[test]
    fn the_best_of_label_is_read_within_bounds() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(best_of_label(&l(&["backporcher", "best-of-3"])), Some(3));
        assert_eq!(best_of_label(&l(&["best-of-2", "best-of-4"])), Some(4));
        assert_eq!(
            best_of_label(&l(&["best-of-9", "best-of-x", "best-of-0"])),
            None
        );
        assert_eq!(best_of_label(&l(&["backporcher"])), None);
    }
}
