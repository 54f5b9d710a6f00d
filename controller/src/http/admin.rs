//! The switches (pause, resume, settings), statistics, users, API tokens and the audit log.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::auth::{Caller, Role, check_password};
use super::views::*;
use super::{ApiError, ApiJson, ApiResult, AppState, audited};

fn settings_view(s: &AppState, st: crate::store::settings::Settings) -> api::Settings {
    api::Settings {
        paused: st.queue_paused,
        approval_mode: st.approval_mode,
        github: s.forge.is_some(),
    }
}

pub(super) async fn settings(State(s): State<AppState>, _c: Caller) -> ApiResult<api::Settings> {
    Ok(Json(settings_view(&s, s.store.settings().await?)))
}

pub(super) async fn pause(State(s): State<AppState>, c: Caller) -> ApiResult<api::Settings> {
    c.require(&s, Role::Operator, "pause", None).await?;
    set_paused(&s, &c, true).await.map(Json)
}

pub(super) async fn resume(State(s): State<AppState>, c: Caller) -> ApiResult<api::Settings> {
    c.require(&s, Role::Operator, "resume", None).await?;
    set_paused(&s, &c, false).await.map(Json)
}

/// Pauses or resumes dispatch as `c` (whose role was checked): audited, and announced to the
/// notification webhooks (the `paused` event) when it changes anything.
async fn set_paused(s: &AppState, c: &Caller, paused: bool) -> Result<api::Settings, ApiError> {
    let was = s.store.settings().await?.queue_paused;
    let (st, action) = if paused {
        (s.store.pause(&c.actor().name).await?, "pause")
    } else {
        (s.store.resume().await?, "resume")
    };
    s.store
        .audit(
            &c.actor(),
            action,
            Some("settings"),
            "ok",
            Some(&serde_json::json!({"old": was, "new": paused})),
        )
        .await?;
    if was != paused {
        s.store
            .enqueue_notification(
                if paused { "paused" } else { "resumed" },
                None,
                &format!(
                    "dispatch {} by {}",
                    if paused { "paused" } else { "resumed" },
                    c.user.username
                ),
            )
            .await?;
    }
    Ok(settings_view(s, st))
}

/// `PATCH /api/settings`: the approval mode needs an admin, the pause an operator; both are
/// checked before anything changes. Each change is audited (who, old → new) and announced.
pub(super) async fn update_settings(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<api::SettingsPatch>,
) -> ApiResult<api::Settings> {
    if req.approval_mode.is_none() && req.paused.is_none() {
        // A patch that names nothing changes nothing: the switches as they are.
        return Ok(Json(settings_view(&s, s.store.settings().await?)));
    }
    if req.approval_mode.is_some() {
        c.require(&s, Role::Admin, "set_approval_mode", Some("settings"))
            .await?;
    }
    if let Some(p) = req.paused {
        c.require(
            &s,
            Role::Operator,
            if p { "pause" } else { "resume" },
            Some("settings"),
        )
        .await?;
    }
    if let Some(mode) = &req.approval_mode {
        if let Err(e) = crate::store::settings::check_approval_mode(mode) {
            let e = ApiError::from(e);
            s.store
                .audit(
                    &c.actor(),
                    "set_approval_mode",
                    Some("settings"),
                    &format!("refused: {e}"),
                    None,
                )
                .await?;
            return Err(e);
        }
        let (old, _) = s.store.set_approval_mode(mode, &c.actor().name).await?;
        s.store
            .audit(
                &c.actor(),
                "set_approval_mode",
                Some("settings"),
                "ok",
                Some(&serde_json::json!({"old": old, "new": mode})),
            )
            .await?;
        if old != *mode {
            s.store
                .enqueue_notification(
                    "settings",
                    None,
                    &format!("approval mode {old} → {mode} (by {})", c.user.username),
                )
                .await?;
        }
    }
    if let Some(p) = req.paused {
        set_paused(&s, &c, p).await?;
    }
    Ok(Json(settings_view(&s, s.store.settings().await?)))
}

/// `POST /api/cleanup`: one sweep now ([`crate::cleanup::sweep`]), by the policy's ages or
/// (`now`) regardless of them; audited with what it did.
pub(super) async fn cleanup(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<api::CleanupRequest>,
) -> ApiResult<Vec<api::CleanedTask>> {
    let target = req
        .repo
        .as_deref()
        .map(|r| format!("repo:{r}"))
        .unwrap_or_else(|| "fleet".into());
    c.require(&s, Role::Operator, "cleanup", Some(&target))
        .await?;
    let result = async {
        let Some(forge) = s.forge.clone() else {
            return Err(ApiError::Conflict(
                "no GitHub is configured, so there is nothing on GitHub to clean up (set GITHUB_TOKEN or the GitHub App settings)".into(),
            ));
        };
        let repo = match req.repo.as_deref() {
            Some(name) => Some(s.store.repo_by_name(name).await?.id),
            None => None,
        };
        let ages = if req.now {
            s.cleanup.immediate()
        } else {
            s.cleanup.sweep
        };
        let swept = crate::cleanup::sweep(&s.store, forge.as_ref(), &ages, repo).await?;
        Ok(swept
            .into_iter()
            .map(|t| api::CleanedTask {
                task: t.task,
                repo: t.repo,
                status: t.status.to_string(),
                pr_closed: t.pr_closed,
                branch_deleted: t.branch_deleted,
                error: t.error,
            })
            .collect::<Vec<_>>())
    }
    .await;
    let (outcome, data) = match &result {
        Ok(v) => (
            "ok".to_owned(),
            Some(serde_json::json!({
                "cleaned": v.iter().filter(|t| t.error.is_none()).map(|t| t.task).collect::<Vec<_>>(),
                "not_now": v.iter().filter(|t| t.error.is_some()).map(|t| t.task).collect::<Vec<_>>(),
            })),
        ),
        Err(e) => (format!("refused: {e}"), None),
    };
    s.store
        .audit(
            &c.actor(),
            "cleanup",
            Some(&target),
            &outcome,
            data.as_ref(),
        )
        .await?;
    result.map(Json)
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
    let window = s
        .store
        .window_stats(q.days.unwrap_or(14), repo)
        .await?
        .into_iter()
        .map(|g| api::GroupStats {
            per_merged_microusd: (g.merged > 0).then(|| g.cost_microusd as f64 / g.merged as f64),
            by: g.by,
            key: g.key,
            merged: g.merged,
            failed: g.failed,
            merge_seconds_p50: g.merge_seconds_p50,
            merge_seconds_p90: g.merge_seconds_p90,
            cost_microusd: g.cost_microusd,
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
        window,
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
