//! The switches (pause, resume, settings), statistics, users, API tokens and the audit log.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::auth::{Caller, Role, check_password};
use super::views::*;
use super::{ApiError, ApiJson, ApiResult, AppState, audited};

pub(super) async fn settings(State(s): State<AppState>, _c: Caller) -> ApiResult<api::Settings> {
    let st = s.store.settings().await?;
    Ok(Json(api::Settings {
        paused: st.queue_paused,
        approval_mode: st.approval_mode,
    }))
}

pub(super) async fn pause(State(s): State<AppState>, c: Caller) -> ApiResult<api::Settings> {
    c.require(&s, Role::Operator, "pause", None).await?;
    let st = s.store.pause(&format!("user:{}", c.user.username)).await?;
    s.store.audit(&c.actor(), "pause", None, "ok", None).await?;
    s.store
        .enqueue_notification(
            "paused",
            None,
            &format!("dispatch paused by {}", c.user.username),
        )
        .await?;
    Ok(Json(api::Settings {
        paused: st.queue_paused,
        approval_mode: st.approval_mode,
    }))
}

pub(super) async fn resume(State(s): State<AppState>, c: Caller) -> ApiResult<api::Settings> {
    c.require(&s, Role::Operator, "resume", None).await?;
    let st = s.store.resume().await?;
    s.store
        .audit(&c.actor(), "resume", None, "ok", None)
        .await?;
    Ok(Json(api::Settings {
        paused: st.queue_paused,
        approval_mode: st.approval_mode,
    }))
}

/// The filters of `GET /api/stats`.
#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct StatsQuery {
    /// Only this repository (`owner/name`).
    repo: Option<String>,
    /// Days of `by_day`.
    days: Option<i32>,
}

pub(super) async fn stats(
    State(s): State<AppState>,
    _c: Caller,
    Query(q): Query<StatsQuery>,
) -> ApiResult<api::Stats> {
    let repo = match q.repo.as_deref() {
        Some(name) => Some(s.store.repo_by_name(name).await?.id),
        None => None,
    };
    let st = s.store.stats(repo).await?;
    let by_model = s
        .store
        .cost_by_model(repo)
        .await?
        .into_iter()
        .map(|m| api::ModelCost {
            per_merged_microusd: (st.merged > 0).then(|| m.cost_microusd as f64 / st.merged as f64),
            model: m.model,
            cost_microusd: m.cost_microusd,
        })
        .collect();
    let day = match repo {
        Some(id) => s.store.repo_day(id).await?,
        None => s.store.fleet_day().await?,
    };
    let by_day = s
        .store
        .stats_by_day(q.days.unwrap_or(14))
        .await?
        .into_iter()
        .map(|d| api::DayStats {
            repo: d.repo,
            day: d.day,
            merged: d.merged,
            failed: d.failed,
            cost_microusd: d.cost_microusd,
        })
        .collect();
    Ok(Json(api::Stats {
        merged: st.merged,
        failed: st.failed,
        canceled: st.canceled,
        live: st.live,
        success_rate: st.success_rate,
        avg_seconds_to_merge: st.avg_seconds_to_merge,
        retry_rate: st.retry_rate,
        avg_cost_microusd: st.avg_cost_microusd,
        total_cost_microusd: st.total_cost_microusd,
        cost_per_merged_microusd: st.cost_per_merged_microusd,
        by_model,
        budget_today: api::BudgetToday {
            budget_microusd: day.budget_microusd,
            spent_microusd: day.spent_microusd,
            granted_microusd: day.granted_microusd,
        },
        by_day,
    }))
}

pub(super) async fn list_users(State(s): State<AppState>, c: Caller) -> ApiResult<Vec<api::User>> {
    c.require(&s, Role::Admin, "list_users", None).await?;
    Ok(Json(
        s.store.users().await?.into_iter().map(user_view).collect(),
    ))
}

pub(super) async fn add_user(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<api::NewUser>,
) -> ApiResult<api::User> {
    let target = format!("user:{}", req.username);
    c.require(&s, Role::Admin, "add_user", Some(&target))
        .await?;
    let result = async {
        check_password(&req.password)?;
        let hash = s.guard.passwords.hash(&req.password).await?;
        Ok(user_view(
            s.store.create_user(&req.username, &hash, &req.role).await?,
        ))
    }
    .await;
    audited(&s, &c.actor(), "add_user", &target, result)
        .await
        .map(Json)
}

pub(super) async fn update_user(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
    ApiJson(req): ApiJson<api::UserPatch>,
) -> ApiResult<api::User> {
    let target = format!("user-id:{id}");
    c.require(&s, Role::Admin, "update_user", Some(&target))
        .await?;
    let demotes_self = id == c.user.id
        && (req.disabled == Some(true) || req.role.as_deref().is_some_and(|r| r != "admin"));
    let result = if demotes_self {
        Err(ApiError::Conflict(
            "you cannot disable yourself or give up your admin role (the last admin could lock everyone out); another admin must".into(),
        ))
    } else {
        s.store
            .update_user(id, req.role.as_deref(), req.disabled)
            .await
            .map(user_view)
            .map_err(ApiError::from)
    };
    audited(&s, &c.actor(), "update_user", &target, result)
        .await
        .map(Json)
}

pub(super) async fn list_tokens(
    State(s): State<AppState>,
    c: Caller,
) -> ApiResult<Vec<api::Token>> {
    Ok(Json(
        s.store
            .api_tokens(Some(c.user.id))
            .await?
            .into_iter()
            .map(|t| token_view(t, None))
            .collect(),
    ))
}

pub(super) async fn add_token(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<api::NewToken>,
) -> ApiResult<api::Token> {
    if req.name.trim().is_empty() {
        return Err(ApiError::Invalid(
            "a token needs a name (where it is used)".into(),
        ));
    }
    let (t, secret) = s.store.create_api_token(c.user.id, req.name.trim()).await?;
    s.store
        .audit(
            &c.actor(),
            "add_token",
            Some(&format!("token:{}", t.id)),
            "ok",
            None,
        )
        .await?;
    Ok(Json(token_view(t, Some(secret))))
}

pub(super) async fn revoke_token(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let owner = if c.role == Role::Admin {
        None
    } else {
        Some(c.user.id)
    };
    let target = format!("token:{id}");
    let result = match s.store.revoke_api_token(id, owner).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::NotFound(format!("you have no token {id}"))),
    };
    audited(&s, &c.actor(), "revoke_token", &target, result).await
}

/// A page of the audit log.
#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct AuditQuery {
    /// At most this many (default 200; at most 1000 are returned).
    limit: Option<i64>,
    /// Only entries with a smaller id (the next page).
    before: Option<i64>,
}

pub(super) async fn audit(
    State(s): State<AppState>,
    c: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Vec<api::AuditEntry>> {
    c.require(&s, Role::Operator, "read_audit", None).await?;
    Ok(Json(
        s.store
            .audit_log(q.limit.unwrap_or(200), q.before)
            .await?
            .into_iter()
            .map(|a| api::AuditEntry {
                id: a.id,
                at: a.at,
                actor: a.actor,
                action: a.action,
                target: a.target,
                outcome: a.outcome,
            })
            .collect(),
    ))
}
