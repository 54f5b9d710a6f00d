//! The webhook: GitHub's signed deliveries (`POST /api/github/webhook`) decoded into typed
//! payloads ([`decode`], pure, fuzzed) and turned into effects — a task, a re-open, a hold. A
//! delivery is recorded only once its effect is done, so a failed one is processed again when
//! GitHub redelivers it.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use hmac::{KeyInit, Mac};
use sha2::Digest;

use super::{
    Intake, IntakeConfig, IntakeError, TRIGGER_LABEL, accept_issue, allowed, mentions_us,
    registered, reopen_for_feedback,
};
use crate::forge::{Feedback, Forge, Issue};
use crate::store::{Error, Note, Store};

/// What the webhook route needs.
#[derive(Clone)]
pub struct WebhookState {
    /// The store.
    pub store: Store,
    /// Secret and allowlist.
    pub config: Arc<IntakeConfig>,
    /// GitHub, to read a submitted review's comments (`None`: reviews are ignored).
    pub forge: Option<Arc<dyn Forge>>,
}

/// The webhook route, `POST /api/github/webhook`.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/api/github/webhook", axum::routing::post(route))
        .with_state(state)
}

async fn route(
    State(s): State<WebhookState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(event), Some(delivery)) = (header("x-github-event"), header("x-github-delivery"))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Event or X-GitHub-Delivery header".into(),
        );
    };
    match handle(
        &s.store,
        &s.config,
        s.forge.as_deref(),
        event,
        delivery,
        header("x-hub-signature-256"),
        &body,
    )
    .await
    {
        Ok(Intake::Created(task)) => (StatusCode::ACCEPTED, format!("{{\"task\":{task}}}")),
        Ok(Intake::Reopened(task)) => (StatusCode::ACCEPTED, format!("{{\"reopened\":{task}}}")),
        Ok(Intake::Held(task)) => (StatusCode::ACCEPTED, format!("{{\"held\":{task}}}")),
        Err(IntakeError::Forge(e)) => {
            tracing::warn!(event, delivery, error = %e, "webhook needs GitHub, which failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "reading from GitHub failed; redeliver the webhook later".into(),
            )
        }
        Ok(Intake::Duplicate) => (StatusCode::OK, "duplicate delivery; already handled".into()),
        Ok(Intake::Ignored(why)) => (StatusCode::ACCEPTED, why),
        Err(IntakeError::BadSignature) => {
            tracing::warn!(event, delivery, "webhook refused: bad or missing signature");
            (
                StatusCode::UNAUTHORIZED,
                "bad or missing X-Hub-Signature-256; check the webhook secret".into(),
            )
        }
        Err(IntakeError::BadPayload(e)) => (StatusCode::BAD_REQUEST, e),
        Err(IntakeError::Store(e)) => {
            tracing::error!(error = %e, "webhook intake failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the controller could not record the delivery; GitHub will retry".into(),
            )
        }
    }
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

/// Handles one delivery. `forge` is needed for review feedback (the review's line comments are
/// fetched); without it reviews are ignored.
pub async fn handle(
    store: &Store,
    config: &IntakeConfig,
    forge: Option<&dyn Forge>,
    event: &str,
    delivery: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Intake, IntakeError> {
    if config.webhook_secret.is_empty() || !signature_valid(&config.webhook_secret, body, signature)
    {
        return Err(IntakeError::BadSignature);
    }
    let decoded = decode(event, body)?;
    let digest = sha2::Sha256::digest(body);
    if store.delivery_seen(delivery, &digest).await? {
        return Ok(Intake::Duplicate);
    }
    let outcome = process(store, config, forge, decoded).await?;
    // Recorded only now: a delivery that failed above is processed when GitHub redelivers it.
    store.record_delivery(delivery, event, &digest).await?;
    Ok(outcome)
}

/// A delivery decoded into what intake acts on (pure: no IO), or refused as malformed with the
/// field that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// An `issues` event.
    Issue {
        /// `opened`, `labeled`, `edited`, …
        action: String,
        /// Who caused the event.
        sender: String,
        /// The label a `labeled` event added (`None` for other actions).
        label: Option<String>,
        /// `owner/name`.
        repo: String,
        /// The issue as the payload shows it.
        issue: Issue,
    },
    /// A new comment on a pull request that mentions `@backporcher`.
    PrComment {
        /// `owner/name`.
        repo: String,
        /// The pull request's number.
        number: i64,
        /// The request.
        feedback: Feedback,
    },
    /// A submitted review that asks for changes.
    Review {
        /// `owner/name`.
        repo: String,
        /// The pull request's number.
        number: i64,
        /// The review's id.
        review_id: u64,
        /// Who reviewed.
        author: String,
    },
    /// Nothing to do, with why.
    Ignored(String),
}

#[derive(Debug, Default, serde::Deserialize)]
struct Payload {
    #[serde(default)]
    action: String,
    sender: Option<Login>,
    repository: Option<RepoRef>,
    issue: Option<IssueJson>,
    comment: Option<CommentJson>,
    review: Option<ReviewJson>,
    pull_request: Option<NumberRef>,
    label: Option<LabelJson>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Login {
    login: String,
}

/// The issue (or pull request) of an `issues` or `issue_comment` delivery: the fields we read,
/// each required unless GitHub may send `null`.
#[derive(Debug, serde::Deserialize)]
struct IssueJson {
    number: i64,
    title: String,
    body: Option<String>,
    user: Login,
    labels: Vec<LabelJson>,
    state: String,
    /// Present (an object) on pull requests.
    pull_request: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, serde::Deserialize)]
struct LabelJson {
    name: String,
}

impl From<IssueJson> for Issue {
    fn from(i: IssueJson) -> Self {
        Self {
            number: i.number,
            title: i.title,
            body: i.body.unwrap_or_default(),
            author: i.user.login,
            labels: i.labels.into_iter().map(|l| l.name).collect(),
            state: i.state,
            is_pull: i.pull_request.is_some(),
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct RepoRef {
    full_name: String,
}

#[derive(Debug, serde::Deserialize)]
struct NumberRef {
    number: i64,
}

#[derive(Debug, serde::Deserialize)]
struct CommentJson {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    user: Option<Login>,
}

#[derive(Debug, serde::Deserialize)]
struct ReviewJson {
    id: u64,
    #[serde(default)]
    state: Option<String>,
    user: Option<Login>,
}

/// Decodes a delivery of `event`; `Err` names what is malformed.
pub fn decode(event: &str, body: &[u8]) -> Result<Decoded, IntakeError> {
    let p: Payload =
        serde_json::from_slice(body).map_err(|e| IntakeError::BadPayload(e.to_string()))?;
    let repo = || {
        p.repository
            .as_ref()
            .map(|r| r.full_name.clone())
            .ok_or_else(|| IntakeError::BadPayload("repository.full_name is missing".into()))
    };
    let action = p.action.clone();
    match event {
        "issues" => {
            let issue: Issue = p
                .issue
                .ok_or_else(|| IntakeError::BadPayload("issue is missing".into()))?
                .into();
            Ok(Decoded::Issue {
                sender: p.sender.map(|s| s.login).unwrap_or_default(),
                label: p.label.map(|l| l.name),
                repo: repo()?,
                action,
                issue,
            })
        }
        "issue_comment" => {
            let on_pull = p.issue.as_ref().is_some_and(|i| i.pull_request.is_some());
            if action != "created" || !on_pull {
                return Ok(Decoded::Ignored(
                    "only new comments on pull requests are read".into(),
                ));
            }
            let comment = p
                .comment
                .ok_or_else(|| IntakeError::BadPayload("comment is missing".into()))?;
            let text = comment.body.unwrap_or_default();
            if !mentions_us(&text) {
                return Ok(Decoded::Ignored(
                    "the comment does not mention @backporcher".into(),
                ));
            }
            let number = p
                .issue
                .as_ref()
                .map(|i| i.number)
                .ok_or_else(|| IntakeError::BadPayload("issue is missing".into()))?;
            Ok(Decoded::PrComment {
                repo: repo()?,
                number,
                feedback: Feedback {
                    author: comment.user.map(|u| u.login).unwrap_or_default(),
                    kind: "comment".into(),
                    id: comment.id,
                    comments: vec![text],
                },
            })
        }
        "pull_request_review" => {
            let review = p
                .review
                .ok_or_else(|| IntakeError::BadPayload("review is missing".into()))?;
            let state = review.state.unwrap_or_default().to_ascii_lowercase();
            if action != "submitted" || state == "approved" {
                return Ok(Decoded::Ignored(format!(
                    "review `{action}`/`{state}` asks for nothing"
                )));
            }
            let number = p
                .pull_request
                .ok_or_else(|| IntakeError::BadPayload("pull_request.number is missing".into()))?
                .number;
            Ok(Decoded::Review {
                repo: repo()?,
                number,
                review_id: review.id,
                author: review.user.map(|u| u.login).unwrap_or_default(),
            })
        }
        other => Ok(Decoded::Ignored(format!("event `{other}` is not handled"))),
    }
}

async fn process(
    store: &Store,
    config: &IntakeConfig,
    forge: Option<&dyn Forge>,
    decoded: Decoded,
) -> Result<Intake, IntakeError> {
    match decoded {
        Decoded::Issue {
            action,
            sender,
            label,
            repo,
            issue,
        } => match action.as_str() {
            "opened" | "labeled" | "reopened" => {
                // Only the person who put the trigger label on the issue may start a task: a
                // `labeled` event counts for the trigger label alone (another label added later
                // by a maintainer must not start what a stranger labelled), `opened` is sent by
                // the author who labelled it at creation, and a reopen asks GitHub who labelled
                // it, as the poller does.
                let labeller = match action.as_str() {
                    "labeled" if label.as_deref() != Some(TRIGGER_LABEL) => {
                        return Ok(Intake::Ignored(format!(
                            "the label added is `{}`, not `{TRIGGER_LABEL}`",
                            label.unwrap_or_default()
                        )));
                    }
                    "reopened" => match forge {
                        Some(forge) => forge
                            .label_actor(&repo, issue.number, TRIGGER_LABEL)
                            .await
                            .map_err(|e| IntakeError::Forge(e.to_string()))?
                            .unwrap_or_default(),
                        None => {
                            return Ok(Intake::Ignored(
                                "a reopened issue starts a task only where GitHub can say who labelled it".into(),
                            ));
                        }
                    },
                    _ => sender.clone(),
                };
                if !allowed(config, &labeller) {
                    tracing::warn!(
                        sender,
                        labeller,
                        issue = issue.number,
                        "an issue was labelled by someone off the allowlist; no task"
                    );
                    return Ok(Intake::Ignored(format!(
                        "`{labeller}` (who labelled the issue) is not on the allowlist"
                    )));
                }
                accept_issue(store, config, &repo, &issue, "github:webhook").await
            }
            "edited" => edited(store, config, &repo, &issue, &sender).await,
            _ => Ok(Intake::Ignored(format!(
                "issue action `{action}` starts nothing"
            ))),
        },
        Decoded::PrComment {
            repo,
            number,
            feedback,
        } => reopen_for_feedback(store, config, &repo, number, &feedback).await,
        Decoded::Review {
            repo,
            number,
            review_id,
            author,
        } => {
            if !allowed(config, &author) {
                return Ok(Intake::Ignored(format!(
                    "reviewer `{author}` is not on the allowlist"
                )));
            }
            let Some(forge) = forge else {
                return Ok(Intake::Ignored(
                    "no forge configured to read the review".into(),
                ));
            };
            let feedback = forge
                .review_feedback(&repo, number, review_id)
                .await
                .map_err(|e| IntakeError::Forge(e.to_string()))?;
            if feedback.comments.is_empty() {
                return Ok(Intake::Ignored("the review has no text".into()));
            }
            reopen_for_feedback(store, config, &repo, number, &feedback).await
        }
        Decoded::Ignored(why) => Ok(Intake::Ignored(why)),
    }
}

/// An issue's text changed. A live task keeps the text it was labelled with; when the editor is
/// not on the allowlist, the task is also held until a person looks.
async fn edited(
    store: &Store,
    config: &IntakeConfig,
    full_name: &str,
    issue: &Issue,
    sender: &str,
) -> Result<Intake, IntakeError> {
    let repo = match registered(store, full_name).await? {
        Ok(r) => r,
        Err(ignored) => return Ok(ignored),
    };
    let Some(task) = store.live_task_of_issue(repo.id, issue.number).await? else {
        return Ok(Intake::Ignored("no live task for the edited issue".into()));
    };
    if allowed(config, sender) {
        return Ok(Intake::Ignored(format!(
            "edited by `{sender}`; task {} keeps the text it was labelled with",
            task.id
        )));
    }
    let note = Note::new(format!("github:{sender}"), "edited_off_allowlist").with_data(
        serde_json::json!({
            "editor": sender,
            "message": format!("the issue was edited by `{sender}`, who is not on the allowlist, after the label; a person must release the task"),
        }),
    );
    match store
        .hold(task.id, crate::store::HoldKind::User, None, &note)
        .await
    {
        Ok(_) | Err(Error::Held { .. }) => {
            tracing::warn!(
                task = task.id,
                editor = sender,
                "issue edited off the allowlist after the label; task held"
            );
            Ok(Intake::Held(task.id))
        }
        Err(Error::IllegalTransition { .. }) => Ok(Intake::Ignored(format!(
            "task {} is no longer live",
            task.id
        ))),
        Err(e) => Err(e.into()),
    }
}
