//! Sessions: log in (limited, audited), log out, and who is calling.
//!
//! A login is counted before its password is checked, against two keys at once by one statement
//! ([`crate::store::Store::count_login_attempt`]): the client address ([`ClientAddr`]; at most
//! [`ADDR_ATTEMPTS`] per window, whatever the user names) and the user name from that address
//! (at most [`LOGIN_ATTEMPTS`]). Concurrent attempts cannot all pass, windows expire, and an
//! attacker's failures lock a user out only from the attacker's own address. Every login past the
//! limit checks one password — the user's hash, or a dummy one for unknown and disabled users —
//! so the time taken does not tell which names exist.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::{COOKIE, Caller};
use super::guard::ClientAddr;
use super::{ApiError, ApiJson, ApiResult, AppState};
use crate::store::ops::Actor;

/// Session lifetime.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed logins for one user name from one address within [`LOGIN_WINDOW`].
pub const LOGIN_ATTEMPTS: i64 = 5;
/// Failed logins from one address within [`LOGIN_WINDOW`], whatever the user names.
pub const ADDR_ATTEMPTS: i64 = 30;
/// How long the failed logins of a key count; the window starts at its first attempt.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(300);
/// Longest user name a login looks up (longer names cannot exist).
const MAX_USERNAME: usize = 64;

pub(super) async fn login(
    State(s): State<AppState>,
    addr: ClientAddr,
    ApiJson(req): ApiJson<api::LoginRequest>,
) -> Result<Response, ApiError> {
    if req.username.len() > MAX_USERNAME {
        return Err(ApiError::Invalid(format!(
            "a user name has at most {MAX_USERNAME} characters"
        )));
    }
    let target = format!("user:{}", req.username);
    let addr_key = addr.key();
    // Per address as the address limit counts it (an IPv6 host's /64, not each of its addresses).
    let user_key = format!("user:{}@{}", req.username, addr.key());
    let keys = [addr_key.as_str(), user_key.as_str()];
    let counts = s.store.count_login_attempt(&keys, LOGIN_WINDOW).await?;
    let anon = Actor {
        name: format!("anonymous@{}", addr.0),
        user_id: None,
    };
    if counts[0] > ADDR_ATTEMPTS || counts[1] > LOGIN_ATTEMPTS {
        s.store
            .audit(&anon, "login", Some(&target), "refused: rate limited", None)
            .await?;
        return Err(ApiError::TooMany(format!(
            "too many failed logins from your address{}; wait {} minutes",
            if counts[1] > LOGIN_ATTEMPTS {
                " for this user"
            } else {
                ""
            },
            LOGIN_WINDOW.as_secs() / 60
        )));
    }
    let found = s.store.user_for_login(&req.username).await?;
    // One verification whatever was found: a disabled user's hash is checked too, an unknown
    // user's password against the dummy hash.
    let (user, hash) = match found {
        Some((u, hash)) => (Some(u), Some(hash)),
        None => (None, None),
    };
    let matches = match s.guard.passwords.verify(&req.password, hash).await {
        Ok(m) => m,
        Err(e) => {
            // Nothing was checked (busy): the attempt does not count against anyone.
            s.store.forgive_login_attempt(&keys).await?;
            return Err(e);
        }
    };
    let user = match user {
        Some(u) if matches && !u.disabled => u,
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
    s.store.forgive_login_attempt(&keys).await?;
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
