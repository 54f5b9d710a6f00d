//! Who is calling and what they may do. Cookie sessions (from a password login, argon2-hashed
//! passwords) need the session's CSRF token in `X-CSRF-Token` on every mutating request; API
//! tokens (`Authorization: Bearer bpt_…`) are for the CLI and scripts. Roles are ordered
//! viewer < operator < admin. Password hashing ([`Passwords`]) runs on the blocking pool, a few at
//! a time, and costs the same whether or not the user exists; the login limits are in
//! [`super::session`].

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, header};

use super::{ApiError, AppState};
use crate::store::ops::Actor;
use crate::store::users::User;

/// Session cookie name.
pub const COOKIE: &str = "bp_session";

/// A role, ordered by what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and steers tasks.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    fn of(s: &str) -> Role {
        match s {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            _ => Role::Viewer,
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user.
    pub user: User,
    /// Their role.
    pub role: Role,
    /// The session's CSRF token (cookie sessions).
    pub csrf: Option<String>,
    /// `session` or `token`.
    pub via: &'static str,
}

impl Caller {
    /// The audit actor.
    pub fn actor(&self) -> Actor {
        Actor {
            name: format!("user:{}", self.user.username),
            user_id: Some(self.user.id),
        }
    }

    /// Refuses (and audits) an action that needs `role`.
    pub async fn require(
        &self,
        state: &AppState,
        role: Role,
        action: &str,
        target: Option<&str>,
    ) -> Result<(), ApiError> {
        if self.role >= role {
            return Ok(());
        }
        let _ = state
            .store
            .audit(
                &self.actor(),
                action,
                target,
                "refused: forbidden for role",
                None,
            )
            .await;
        Err(ApiError::Forbidden(format!(
            "`{action}` needs the {} role; you are {}. Ask an admin.",
            match role {
                Role::Viewer => "viewer",
                Role::Operator => "operator",
                Role::Admin => "admin",
            },
            self.user.role
        )))
    }
}

/// Password hashing and checking off the async workers: each runs on the blocking pool while it
/// holds one of a few slots (argon2 takes 19 MiB and tens of milliseconds a call). When every slot
/// stays taken for `wait`, the call is refused ([`ApiError::Unavailable`]) instead of queueing
/// without end. A check for a user that does not exist (or may not log in) verifies against a
/// fixed dummy hash, so it costs what a real one costs.
pub struct Passwords {
    slots: tokio::sync::Semaphore,
    wait: Duration,
    verified: AtomicU64,
}

/// A hash of a password nobody knows, with the parameters real hashes have: what a login for an
/// unknown user is checked against.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    hash_password(&crate::store::runners::new_secret("dummy-")).expect("argon2 hashes a password")
});

impl Passwords {
    /// At most `slots` hashes at once; a caller waits at most `wait` for a slot.
    pub fn new(slots: usize, wait: Duration) -> Self {
        Self {
            slots: tokio::sync::Semaphore::new(slots.max(1)),
            wait,
            verified: AtomicU64::new(0),
        }
    }

    /// Slots as many as the machine has cores, at most four; a caller waits up to two seconds.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores.min(4), Duration::from_secs(2))
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let slot = tokio::time::timeout(self.wait, self.slots.acquire())
            .await
            .map_err(|_| {
                ApiError::Unavailable(
                    "the controller is busy checking other passwords; retry in a few seconds"
                        .into(),
                )
            })?
            .map_err(|_| ApiError::Internal("the password slots are closed".into()))?;
        let out = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ApiError::Internal(format!("a password hash task failed: {e}")))?;
        drop(slot);
        Ok(out)
    }

    /// Whether `password` matches `hash`; `None` (no such user) checks against the dummy hash
    /// and is always false. Exactly one argon2 verification either way.
    pub async fn verify(&self, password: &str, hash: Option<String>) -> Result<bool, ApiError> {
        let password = password.to_owned();
        let known = hash.is_some();
        let ok = self
            .run(move || {
                let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
                verify_password(&password, &hash)
            })
            .await?;
        self.verified.fetch_add(1, Ordering::Relaxed);
        Ok(ok && known)
    }

    /// Hashes a password (argon2id, random salt).
    pub async fn hash(&self, password: &str) -> Result<String, ApiError> {
        let password = password.to_owned();
        self.run(move || hash_password(&password)).await?
    }

    /// Password verifications done so far (`/metrics`: `backporcher_password_checks_total`).
    pub fn verifications(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    /// Makes the dummy hash now (at startup), not in the first login for an unknown user.
    pub fn warm_up() {
        LazyLock::force(&DUMMY_HASH);
    }
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing a password failed: {e}")))
}

/// Checks a password against its stored hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// A password good enough to set.
pub fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < 12 {
        return Err(ApiError::Invalid(
            "a password needs at least 12 characters".into(),
        ));
    }
    Ok(())
}

fn cookie(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(token) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            let user = state
                .store
                .user_by_api_token(token.trim())
                .await?
                .ok_or_else(|| ApiError::Unauthorized("the API token is unknown, revoked or expired; mint a new one with `backporcher login`".into()))?;
            return Ok(Caller {
                role: Role::of(&user.role),
                user,
                csrf: None,
                via: "token",
            });
        }
        let Some(secret) = cookie(parts, COOKIE) else {
            return Err(ApiError::Unauthorized(
                "log in first (POST /api/login) or send an API token as `Authorization: Bearer …`"
                    .into(),
            ));
        };
        let (user, csrf) =
            state.store.session(&secret).await?.ok_or_else(|| {
                ApiError::Unauthorized("the session expired; log in again".into())
            })?;
        let mutating = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if mutating {
            let sent = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
                return Err(ApiError::Forbidden(
                    "missing or wrong X-CSRF-Token; reload the page (the token comes with GET /api/me)".into(),
                ));
            }
        }
        Ok(Caller {
            role: Role::of(&user.role),
            user,
            csrf: Some(csrf),
            via: "session",
        })
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(check_password("short").is_err());
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }

    #[tokio::test]
    async fn unknown_users_cost_one_verification_and_full_slots_refuse_at_once() {
        let p = Passwords::new(1, Duration::ZERO);
        let h = p.hash("correct horse battery").await.unwrap();
        assert!(
            p.verify("correct horse battery", Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(!p.verify("wrong", Some(h)).await.unwrap());
        assert!(!p.verify("correct horse battery", None).await.unwrap());
        assert_eq!(p.verifications(), 3, "one argon2 verification per check");
        let _held = p.slots.try_acquire().unwrap();
        match p.verify("x", None).await {
            Err(ApiError::Unavailable(m)) => assert!(m.contains("retry"), "{m}"),
            other => panic!("expected busy, got {other:?}"),
        }
        assert_eq!(p.verifications(), 3, "a refused check verifies nothing");
    }
}
