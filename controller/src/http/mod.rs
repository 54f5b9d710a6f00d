//! The controller's HTTP surface: health, the GitHub webhook, and the REST API under `/api`
//! (documented at `/api/openapi.json`) that the dashboard and the CLI use. Handlers are thin:
//! they authenticate ([`auth`]), check the role, call the store, and convert domain types to the
//! `api` crate's wire types. Errors are JSON (`api::ErrorBody`) with a message that says what to
//! do; internal errors are logged once and reported without detail.

mod admin;
pub mod auth;
pub mod events;
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
            | ApiError::Internal(m) => f.write_str(m),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::TaskNotFound(_) | Error::RepoNotFound(_) | Error::RunnerNotFound(_) => {
                ApiError::NotFound(e.to_string())
            }
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
        let (status, kind, message) = match self {
            ApiError::Invalid(m) => (StatusCode::BAD_REQUEST, "invalid", m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::TooMany(m) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", m),
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
        (
            status,
            Json(api::ErrorBody {
                error: kind.into(),
                message,
            }),
        )
            .into_response()
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

/// The `/api` routes.
pub fn api_router(state: AppState) -> Router {
    routes::router().with_state(state)
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
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(ApiError::Invalid(format!(
                "the request body is not what this endpoint takes: {}; see /api/openapi.json",
                e.body_text()
            ))),
        }
    }
}
