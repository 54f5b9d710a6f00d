//! Intake: GitHub webhooks turned into tasks.
//!
//! A delivery is accepted only with a valid `X-Hub-Signature-256` (HMAC-SHA256 of the body with
//! the shared secret); a redelivery (same `X-GitHub-Delivery`) is acknowledged and ignored; events
//! other than `issues` are acknowledged and ignored. An issue becomes a task when it carries the
//! `backporcher` label and its author is on the allowlist; its title and body are snapshotted at
//! that moment, cleaned of hidden HTML comments, invisible and control characters, and hashed.
//! At most one live task exists per issue (the store refuses a second one).

use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::Digest;

use crate::store::tasks::NewTask;
use crate::store::{Error, Store, Task};

/// The label that asks for a task.
pub const TRIGGER_LABEL: &str = "backporcher";
/// The label that asks for the stronger model.
pub const OPUS_LABEL: &str = "opus";

/// What intake needs to decide.
#[derive(Debug, Clone, Default)]
pub struct IntakeConfig {
    /// Shared webhook secret.
    pub webhook_secret: String,
    /// GitHub logins whose issues may start tasks (empty: nobody).
    pub allowed_users: Vec<String>,
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// A task was created.
    Created(i64),
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
}

/// Checks `X-Hub-Signature-256` (`sha256=<hex>`) in constant time.
pub fn signature_valid(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Cleans untrusted issue text (see the `textguard` crate).
pub fn clean_text(text: &str) -> String {
    textguard::clean(text)
}

/// Handles one delivery.
pub async fn handle(
    store: &Store,
    config: &IntakeConfig,
    event: &str,
    delivery: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Intake, IntakeError> {
    if config.webhook_secret.is_empty() || !signature_valid(&config.webhook_secret, body, signature)
    {
        return Err(IntakeError::BadSignature);
    }
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| IntakeError::BadPayload(e.to_string()))?;
    let fresh = sqlx::query("INSERT INTO webhook_deliveries (delivery_id, event) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(delivery)
        .bind(event)
        .execute(store.pool())
        .await
        .map_err(Error::from)?
        .rows_affected()
        == 1;
    if !fresh {
        return Ok(Intake::Duplicate);
    }
    if event != "issues" {
        return Ok(Intake::Ignored(format!("event `{event}` is not handled")));
    }
    let issue = &payload["issue"];
    let action = payload["action"].as_str().unwrap_or_default();
    if !matches!(action, "opened" | "labeled" | "reopened") {
        return Ok(Intake::Ignored(format!(
            "issue action `{action}` starts nothing"
        )));
    }
    let labels: Vec<&str> = issue["labels"]
        .as_array()
        .map(|l| l.iter().filter_map(|l| l["name"].as_str()).collect())
        .unwrap_or_default();
    if !labels.contains(&TRIGGER_LABEL) {
        return Ok(Intake::Ignored(
            "the issue has no `backporcher` label".into(),
        ));
    }
    if issue.get("pull_request").is_some() {
        return Ok(Intake::Ignored("pull requests are not tasks".into()));
    }
    let author = issue["user"]["login"].as_str().unwrap_or_default();
    if !config
        .allowed_users
        .iter()
        .any(|u| u.eq_ignore_ascii_case(author))
    {
        tracing::warn!(author, "issue author is not on the allowlist; no task");
        return Ok(Intake::Ignored(format!(
            "author `{author}` is not on the allowlist"
        )));
    }
    let full_name = payload["repository"]["full_name"]
        .as_str()
        .unwrap_or_default();
    let repo = match store.repo_by_name(full_name).await {
        Ok(r) => r,
        Err(Error::RepoNotFound(_)) => {
            return Ok(Intake::Ignored(format!(
                "repository `{full_name}` is not registered"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let number = issue["number"]
        .as_i64()
        .ok_or_else(|| IntakeError::BadPayload("issue.number is missing".into()))?;
    let title = clean_text(issue["title"].as_str().unwrap_or_default());
    let body_text = clean_text(issue["body"].as_str().unwrap_or_default());
    let hash = hex::encode(sha2::Sha256::digest(
        format!("{title}\n{body_text}").as_bytes(),
    ));
    let mut task = NewTask::for_issue(repo.id, number, &title, &body_text);
    task.author = Some(author.to_owned());
    task.content_hash = Some(hash);
    task.created_by = "github:webhook".into();
    if labels.contains(&OPUS_LABEL) {
        task.model = "opus".into();
    }
    match store.create_task(&task).await {
        Ok(Task { id, .. }) => {
            tracing::info!(
                task = id,
                repo = full_name,
                issue = number,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(clean_text("open <!-- never closed"), "open ");
    }
}
