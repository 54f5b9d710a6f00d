//! The controller's HTTP surface: health, the GitHub webhook, and the REST API under `/api`
//! (documented at `/api/openapi.json`) that the dashboard and the CLI use. Handlers are thin:
//! they authenticate ([`auth`]), check the role, call the store, and convert domain types to the
//! `api` crate's wire types. Errors are JSON (`api::ErrorBody`) with a message that says what to
//! do; internal errors are logged once and reported without detail.

mod activity;
mod admin;
pub mod auth;
pub mod events;
pub mod guard;
pub mod health;
pub mod openapi;
mod repos;
pub mod routes;
mod runners;
mod session;
mod tasks;
pub mod tls;
pub(crate) mod views;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::forge::Forge;
use crate::intake::IntakeConfig;
use crate::pki::Pki;
use crate::store::ops::Actor;
use crate::store::{Error, Store};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Webhook intake settings.
    pub intake: Arc<IntakeConfig>,
    /// GitHub, when configured.
    pub forge: Option<Arc<dyn Forge>>,
    /// The runner CA (join tickets).
    pub pki: Arc<Pki>,
    /// Task change fan-out for SSE clients.
    pub events: crate::fanout::Events,
    /// Whether the session cookie is marked `Secure` (behind HTTPS).
    pub secure_cookies: bool,
    /// Ends live streams (SSE) when the controller stops, so shutdown never waits on a client.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The last computed metrics.
    pub metrics: crate::loops::MetricsCache,
    /// The bearer token `/metrics` requires, if any.
    pub metrics_token: Option<String>,
    /// When ended tasks' PRs and branches are cleaned up (`POST /api/cleanup`).
    pub cleanup: crate::cleanup::CleanupPolicy,
    /// Bounds on password hashing and log streams, and the trusted proxies.
    pub guard: Arc<guard::Guard>,
}

/// An API error.
#[derive(Debug)]
pub enum ApiError {
    /// 400.
    Invalid(String),
    /// 401.
    Unauthorized(String),
    /// 403.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 429.
    TooMany(String),
    /// 503: busy now, retry shortly.
    Unavailable(String),
    /// 500 (logged, not shown).
    Internal(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Invalid(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::TooMany(m)
            | ApiError::Unavailable(m)
            | ApiError::Internal(m) => f.write_str(m),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::TaskNotFound(_)
            | Error::RepoNotFound(_)
            | Error::RunnerNotFound(_)
            | Error::UserNotFound(_) => ApiError::NotFound(e.to_string()),
            Error::Invalid(_) | Error::DependencyCycle { .. } | Error::DependencyFailed { .. } => {
                ApiError::Invalid(e.to_string())
            }
            Error::Database(db) => ApiError::Internal(db.to_string()),
            other => ApiError::Conflict(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = matches!(self, ApiError::Unavailable(_));
        let (status, kind, message) = match self {
            ApiError::Invalid(m) => (StatusCode::BAD_REQUEST, "invalid", m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::TooMany(m) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ApiError::Internal(m) => {
                tracing::error!(error = m, "internal error in the API");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the controller failed; it is logged — retry, and report it if it persists"
                        .to_owned(),
                )
            }
        };
        let mut resp = (
            status,
            Json(api::ErrorBody {
                error: kind.into(),
                message,
            }),
        )
            .into_response();
        if retry_after {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("2"),
            );
        }
        resp
    }
}

/// The result of an API handler.
pub type ApiResult<T> = Result<Json<T>, ApiError>;

pub(crate) async fn repo_names(state: &AppState) -> Result<HashMap<i64, String>, ApiError> {
    Ok(state
        .store
        .repos()
        .await?
        .into_iter()
        .map(|r| (r.id, r.name))
        .collect())
}

pub(crate) async fn audited<T>(
    state: &AppState,
    actor: &Actor,
    action: &str,
    target: &str,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("refused: {e}"),
    };
    state
        .store
        .audit(actor, action, Some(target), &outcome, None)
        .await?;
    result
}

/// The `/api` routes. Every error they answer is an [`api::ErrorBody`], the router's own too
/// (a path or query that does not parse, a method not allowed): [`json_errors`].
pub fn api_router(state: AppState) -> Router {
    routes::router()
        .layer(axum::middleware::from_fn(refuse_nul))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Most bytes of a plain-text rejection quoted in the JSON error that replaces it.
const MAX_REJECTION: usize = 4096;

/// Turns an error answered without a JSON body (axum's rejections of paths, queries and bodies,
/// 405) into an [`api::ErrorBody`] that quotes it, so every error has the documented shape.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (_, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let (kind, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this path does not take that method; see /api/openapi.json".to_owned(),
        ),
        StatusCode::NOT_FOUND => (
            "not_found",
            "no such API path; see /api/openapi.json".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", "the request body is too large".to_owned()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "invalid",
            format!("{text}; send JSON with `Content-Type: application/json`"),
        ),
        s if s.is_server_error() => ("internal", "the controller failed; retry".to_owned()),
        _ => (
            "invalid",
            if text.is_empty() {
                "the request is not what this endpoint takes; see /api/openapi.json".to_owned()
            } else {
                format!("{text}; see /api/openapi.json")
            },
        ),
    };
    (
        status,
        Json(api::ErrorBody {
            error: kind.into(),
            message,
        }),
    )
        .into_response()
}

/// Creates the first admin with a generated password, which is returned once. Refused once any
/// admin exists, so it cannot be used to take over a running installation.
pub async fn bootstrap_admin(store: &Store, username: &str) -> anyhow::Result<String> {
    if store.has_admin().await? {
        anyhow::bail!("an admin exists already; ask them to create your user (POST /api/users)");
    }
    let password = crate::store::runners::new_secret("");
    let hash = auth::hash_password(&password).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    store.create_user(username, &hash, "admin").await?;
    store
        .audit(
            &crate::store::ops::Actor {
                name: "bootstrap".into(),
                user_id: None,
            },
            "bootstrap_admin",
            Some(&format!("user:{username}")),
            "ok",
            None,
        )
        .await?;
    Ok(password)
}

/// Gives `username` a new generated password (ending their sessions), audited; returns it once.
/// For a lost password, from the command line of the controller's host.
pub async fn reset_password(store: &Store, username: &str) -> anyhow::Result<String> {
    let password = crate::store::runners::new_secret("");
    let hash = auth::hash_password(&password).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if store.set_password(username, &hash).await?.is_none() {
        anyhow::bail!(
            "there is no user `{username}`; `bootstrap-admin` creates the first admin when none exists"
        );
    }
    store
        .audit(
            &crate::store::ops::Actor {
                name: "command-line".into(),
                user_id: None,
            },
            "reset_password",
            Some(&format!("user:{username}")),
            "ok",
            None,
        )
        .await?;
    Ok(password)
}

/// `Json` whose rejections are API errors (JSON, saying what was wrong), not plain text.
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<serde_json::Value>::from_request(req, state).await {
            Ok(Json(v)) => object_body(v).map(ApiJson),
            Err(e) => Err(ApiError::Invalid(format!(
                "the request body is not what this endpoint takes: {}; see /api/openapi.json",
                e.body_text()
            ))),
        }
    }
}

/// A request body as `T`: a JSON object (serde would also take a struct from an array).
pub(crate) fn object_body<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: serde_json::Value,
) -> Result<T, ApiError> {
    if !v.is_object() {
        return Err(ApiError::Invalid(
            "the request body must be a JSON object; see /api/openapi.json".into(),
        ));
    }
    let body: T = serde_json::from_value(v).map_err(|e| {
        ApiError::Invalid(format!(
            "the request body is not what this endpoint takes: {e}; see /api/openapi.json"
        ))
    })?;
    // Only the fields taken count (unknown ones are ignored).
    if serde_json::to_value(&body).is_ok_and(|taken| has_nul(&taken)) {
        return Err(ApiError::Invalid(
            "a text in the request body holds a NUL character, which nothing here can store; remove it".into(),
        ));
    }
    Ok(body)
}

/// Refuses a model no task may use.
pub(crate) fn check_model(model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if !api::valid_model(m) => Err(ApiError::Invalid(format!(
            "unknown model `{m}`; use sonnet, opus, haiku or a full claude-* name"
        ))),
        _ => Ok(()),
    }
}

/// Refuses an agent backend that does not exist.
pub(crate) fn check_agent(agent: Option<&str>) -> Result<(), ApiError> {
    match agent {
        Some(a) if !api::valid_agent(a) => Err(ApiError::Invalid(format!(
            "unknown agent backend `{a}`; use claude or codex"
        ))),
        _ => Ok(()),
    }
}

/// Whether any text in `v` holds a NUL (no text the API stores may: PostgreSQL refuses it).
fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.values().any(has_nul),
        _ => false,
    }
}

/// Refuses a request whose path or query holds a NUL (`%00`), before any handler sees it.
async fn refuse_nul(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let uri = req.uri();
    let nul = |s: &str| s.to_ascii_lowercase().contains("%00");
    if nul(uri.path()) || uri.query().is_some_and(nul) {
        return ApiError::Invalid(
            "the path or query holds a NUL character (%00); no name or filter can".into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// Refuses a priority out of [`api::PRIORITY_LIMIT`].
pub(crate) fn check_priority(p: Option<i32>) -> Result<(), ApiError> {
    match p {
        Some(p) if p.abs() > api::PRIORITY_LIMIT => Err(ApiError::Invalid(format!(
            "priority {p} is out of range; use -{0} to {0} (lower runs first)",
            api::PRIORITY_LIMIT
        ))),
        _ => Ok(()),
    }
}
