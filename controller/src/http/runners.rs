//! Runners: the fleet, join tickets, and drain/enable/disable.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::json;

use super::auth::{Caller, Role};
use super::views::*;
use super::{ApiError, ApiJson, ApiResult, AppState, audited};

pub(super) async fn list_runners(
    State(s): State<AppState>,
    _c: Caller,
) -> ApiResult<Vec<api::Runner>> {
    let mut out = Vec::new();
    for r in s.store.runners().await? {
        let leases = s.store.runner_lease_count(r.id).await?;
        out.push(runner_view(r, leases));
    }
    Ok(Json(out))
}

pub(super) async fn runner_token(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<api::JoinTokenRequest>,
) -> ApiResult<api::JoinTicket> {
    c.require(&s, Role::Admin, "runner_token", None).await?;
    let minutes = req.ttl_minutes.unwrap_or(60);
    if !(1..=api::MAX_JOIN_TTL_MINUTES).contains(&minutes) {
        return Err(ApiError::Invalid(format!(
            "ttl_minutes {minutes} is out of range; a join ticket lives 1 to {} minutes (a week)",
            api::MAX_JOIN_TTL_MINUTES
        )));
    }
    let ttl = Duration::from_secs(minutes * 60);
    let token = s
        .store
        .create_join_token(&format!("user:{}", c.user.username), ttl, &req.labels)
        .await?;
    s.store
        .audit(
            &c.actor(),
            "runner_token",
            None,
            "ok",
            Some(&json!({"labels": req.labels})),
        )
        .await?;
    Ok(Json(api::JoinTicket {
        ticket: s.pki.join_ticket(&token),
    }))
}

/// `POST /api/runners/{id}/{state}`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
pub(super) struct StatePath {
    /// The runner.
    id: i64,
    /// What to do.
    #[param(value_type = api::RunnerAction)]
    state: String,
}

pub(super) async fn runner_state(
    State(s): State<AppState>,
    c: Caller,
    Path(StatePath { id, state }): Path<StatePath>,
) -> ApiResult<api::Runner> {
    let target = format!("runner:{id}");
    let wanted = match state.as_str() {
        "drain" => "draining",
        "disable" => "disabled",
        "enable" => "active",
        other => {
            return Err(ApiError::NotFound(format!(
                "no runner action `{other}`; use drain, disable or enable"
            )));
        }
    };
    c.require(&s, Role::Admin, &format!("runner_{state}"), Some(&target))
        .await?;
    let result = s
        .store
        .set_runner_state(id, wanted)
        .await
        .map_err(ApiError::from);
    let (r, _) = audited(&s, &c.actor(), &format!("runner_{state}"), &target, result).await?;
    let leases = s.store.runner_lease_count(r.id).await?;
    Ok(Json(runner_view(r, leases)))
}
