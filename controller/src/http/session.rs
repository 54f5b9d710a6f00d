//! Sessions: log in (rate-limited, audited), log out, and who is calling.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::{COOKIE, Caller, LOGIN_ATTEMPTS, verify_password};
use super::{ApiError, ApiJson, ApiResult, AppState};
use crate::store::ops::Actor;

/// Session lifetime.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

pub(super) async fn login(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<api::LoginRequest>,
) -> Result<Response, ApiError> {
    let target = format!("user:{}", req.username);
    let recent = s
        .store
        .recent_refusals("login", &target, Duration::from_secs(300))
        .await?;
    let anon = Actor {
        name: "anonymous".into(),
        user_id: None,
    };
    if recent >= LOGIN_ATTEMPTS {
        s.store
            .audit(&anon, "login", Some(&target), "refused: rate limited", None)
            .await?;
        return Err(ApiError::TooMany(
            "too many failed logins for this user; wait five minutes".into(),
        ));
    }
    let found = s.store.user_for_login(&req.username).await?;
    let user = match found {
        Some((u, hash)) if !u.disabled && verify_password(&req.password, &hash) => u,
        _ => {
            s.store
                .audit(
                    &anon,
                    "login",
                    Some(&target),
                    "refused: bad credentials",
                    None,
                )
                .await?;
            return Err(ApiError::Unauthorized("wrong user name or password".into()));
        }
    };
    let (secret, csrf) = s.store.create_session(user.id, SESSION_TTL).await?;
    let actor = Actor {
        name: format!("user:{}", user.username),
        user_id: Some(user.id),
    };
    s.store
        .audit(&actor, "login", Some(&target), "ok", None)
        .await?;
    let cookie = format!(
        "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if s.secure_cookies { "; Secure" } else { "" }
    );
    let body = api::Me {
        id: user.id,
        username: user.username,
        role: user.role,
        csrf_token: Some(csrf),
    };
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok(resp)
}

pub(super) async fn logout(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(secret) = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(';').find_map(|kv| {
                kv.trim()
                    .strip_prefix(&format!("{COOKIE}="))
                    .map(str::to_owned)
            })
        })
    {
        s.store.end_session(&secret).await?;
    }
    s.store
        .audit(&caller.actor(), "logout", None, "ok", None)
        .await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("bp_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(resp)
}

pub(super) async fn me(caller: Caller) -> ApiResult<api::Me> {
    Ok(Json(api::Me {
        id: caller.user.id,
        username: caller.user.username,
        role: caller.user.role,
        csrf_token: caller.csrf,
    }))
}
