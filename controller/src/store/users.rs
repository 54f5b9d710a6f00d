//! People and their credentials: users with roles, login sessions (hashed cookie tokens with a
//! CSRF token each), API tokens (hashed, revocable), and the login limits (attempts counted per
//! key in windows that expire, each attempt counted and recorded by one statement).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::runners::{new_secret, secret_hash};
use super::{Error, Result, Store, is_unique_violation};

/// A user.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct User {
    /// Id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Disabled users cannot log in or use tokens.
    pub disabled: bool,
    /// Created at.
    pub created_at: DateTime<Utc>,
}

/// A user with one more column (`extra`): a password hash, a session's CSRF token.
#[derive(sqlx::FromRow)]
struct UserAnd {
    #[sqlx(flatten)]
    user: User,
    extra: String,
}

/// An API token as listed (never its secret).
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct ApiToken {
    /// Id.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// Label.
    pub name: String,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Last used.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revoked at.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Creates a user with an already-hashed password.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: &str,
    ) -> Result<User> {
        if !matches!(role, "viewer" | "operator" | "admin") {
            return Err(Error::Invalid(format!(
                "role `{role}` is not one of: viewer, operator, admin"
            )));
        }
        if username.is_empty()
            || username.len() > 64
            || !username
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(Error::Invalid(
                "a username is 1–64 letters, digits, `.`, `_` or `-`".into(),
            ));
        }
        sqlx::query_as(
            "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3) \
             RETURNING id, username, role, disabled, created_at",
        )
        .bind(username)
        .bind(password_hash)
        .bind(role)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e, "users_username_key") {
                Error::Conflict(format!("user `{username}` exists already"))
            } else {
                e.into()
            }
        })
    }

    /// Whether any admin exists (bootstrap runs only before the first).
    pub async fn has_admin(&self) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin')")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Sets `username`'s password hash and ends their sessions (a lost password's reset from
    /// the command line); the user, or `None` when there is none by that name.
    pub async fn set_password(&self, username: &str, password_hash: &str) -> Result<Option<User>> {
        let user: Option<User> = sqlx::query_as(
            "UPDATE users SET password_hash = $2 WHERE username = $1 \
             RETURNING id, username, role, disabled, created_at",
        )
        .bind(username)
        .bind(password_hash)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(u) = &user {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(u.id)
                .execute(&self.pool)
                .await?;
        }
        Ok(user)
    }

    /// A user and their password hash, by name.
    pub async fn user_for_login(&self, username: &str) -> Result<Option<(User, String)>> {
        let row: Option<UserAnd> = sqlx::query_as(
            "SELECT id, username, role, disabled, created_at, password_hash AS extra \
             FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.user, r.extra)))
    }

    /// Every user.
    pub async fn users(&self) -> Result<Vec<User>> {
        Ok(sqlx::query_as(
            "SELECT id, username, role, disabled, created_at FROM users ORDER BY username",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Changes a user's role or disabled flag.
    pub async fn update_user(
        &self,
        id: i64,
        role: Option<&str>,
        disabled: Option<bool>,
    ) -> Result<User> {
        if let Some(r) = role
            && !matches!(r, "viewer" | "operator" | "admin")
        {
            return Err(Error::Invalid(format!(
                "role `{r}` is not one of: viewer, operator, admin"
            )));
        }
        let user: Option<User> = sqlx::query_as(
            "UPDATE users SET role = COALESCE($2, role), disabled = COALESCE($3, disabled) WHERE id = $1 \
             RETURNING id, username, role, disabled, created_at",
        )
        .bind(id)
        .bind(role)
        .bind(disabled)
        .fetch_optional(&self.pool)
        .await?;
        if disabled == Some(true) {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        user.ok_or(Error::UserNotFound(id))
    }

    /// Opens a session; returns (cookie secret, CSRF token).
    pub async fn create_session(
        &self,
        user: i64,
        ttl: std::time::Duration,
    ) -> Result<(String, String)> {
        let secret = new_secret("bps_");
        let csrf = new_secret("csrf_");
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, csrf_token, expires_at) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        )
        .bind(secret_hash(&secret))
        .bind(user)
        .bind(&csrf)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok((secret, csrf))
    }

    /// The live session of a cookie secret: its (enabled) user and CSRF token.
    pub async fn session(&self, secret: &str) -> Result<Option<(User, String)>> {
        let row: Option<UserAnd> = sqlx::query_as(
            "UPDATE sessions s SET last_seen_at = now() FROM users u \
             WHERE s.token_hash = $1 AND s.expires_at > now() AND u.id = s.user_id AND NOT u.disabled \
             RETURNING u.id, u.username, u.role, u.disabled, u.created_at, s.csrf_token AS extra",
        )
        .bind(secret_hash(secret))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.user, r.extra)))
    }

    /// Ends a session.
    pub async fn end_session(&self, secret: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(secret_hash(secret))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Mints an API token for `user`; the secret is returned once.
    pub async fn create_api_token(&self, user: i64, name: &str) -> Result<(ApiToken, String)> {
        let secret = new_secret("bpt_");
        let token = sqlx::query_as(
            "INSERT INTO api_tokens (user_id, name, token_hash) VALUES ($1, $2, $3) \
             RETURNING id, user_id, name, created_at, last_used_at, revoked_at",
        )
        .bind(user)
        .bind(name)
        .bind(secret_hash(&secret))
        .fetch_one(&self.pool)
        .await?;
        Ok((token, secret))
    }

    /// The (enabled) user of a live API token.
    pub async fn user_by_api_token(&self, secret: &str) -> Result<Option<User>> {
        Ok(sqlx::query_as(
            "WITH t AS (UPDATE api_tokens SET last_used_at = now() WHERE token_hash = $1 AND revoked_at IS NULL \
               AND (expires_at IS NULL OR expires_at > now()) RETURNING user_id) \
             SELECT u.id, u.username, u.role, u.disabled, u.created_at FROM users u JOIN t ON t.user_id = u.id \
             WHERE NOT u.disabled",
        )
        .bind(secret_hash(secret))
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Tokens of a user (all users: `None`).
    pub async fn api_tokens(&self, user: Option<i64>) -> Result<Vec<ApiToken>> {
        Ok(sqlx::query_as(
            "SELECT id, user_id, name, created_at, last_used_at, revoked_at FROM api_tokens \
             WHERE $1::bigint IS NULL OR user_id = $1 ORDER BY id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes a token (only its owner's, unless `owner` is `None`).
    pub async fn revoke_api_token(&self, id: i64, owner: Option<i64>) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2)",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Counts one login attempt against each of `keys` and returns the attempts of each key in
    /// its current window (in the order of `keys`), this one included. One statement counts and
    /// records: concurrent attempts queue on the row lock, so no two of them see the same count.
    /// A window older than `window` starts again at this attempt.
    pub async fn count_login_attempt(
        &self,
        keys: &[&str],
        window: std::time::Duration,
    ) -> Result<Vec<i64>> {
        // One order for every caller, so two attempts never lock the same rows crosswise.
        let mut sorted: Vec<&str> = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let rows: Vec<(String, i32)> = sqlx::query_as(
            "INSERT INTO login_limits AS l (key, window_start, attempts) \
             SELECT k, now(), 1 FROM unnest($1::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n \
             ON CONFLICT (key) DO UPDATE SET \
               window_start = CASE WHEN l.window_start <= now() - make_interval(secs => $2) \
                 THEN now() ELSE l.window_start END, \
               attempts = CASE WHEN l.window_start <= now() - make_interval(secs => $2) \
                 THEN 1 ELSE l.attempts + 1 END \
             RETURNING key, attempts",
        )
        .bind(&sorted)
        .bind(window.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(keys
            .iter()
            .map(|k| {
                rows.iter()
                    .find(|(key, _)| key == k)
                    .map_or(0, |(_, n)| i64::from(*n))
            })
            .collect())
    }

    /// Takes back an attempt counted by [`Store::count_login_attempt`] that succeeded: only
    /// failures count against a key.
    pub async fn forgive_login_attempt(&self, keys: &[&str]) -> Result<()> {
        sqlx::query(
            "UPDATE login_limits SET attempts = greatest(attempts - 1, 0) WHERE key = ANY($1)",
        )
        .bind(keys)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes at most `batch` login limit rows whose window ended (they would start again at
    /// their next attempt anyway); returns how many.
    pub async fn prune_login_limits(&self, window: std::time::Duration, batch: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM login_limits WHERE key IN (SELECT key FROM login_limits \
             WHERE window_start <= now() - make_interval(secs => $1) LIMIT $2)",
        )
        .bind(window.as_secs_f64())
        .bind(batch)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
