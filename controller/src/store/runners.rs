//! The runner registry: enrollment tokens, who may lease work with which labels and capacity, the
//! certificate each runner currently holds, and its state (`active`, `draining`, `disabled`).
//!
//! Labels are server-authoritative: they come from the join token (and admins), not from what a
//! runner process says about itself; what it says is kept as `reported_labels` for people to see.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::Digest;

use super::claims::Reaped;
use super::lifecycle::RunnerId;
use super::{Error, Result, Store};

/// One registered runner.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Runner {
    /// Id (also the identity in its client certificate).
    pub id: RunnerId,
    /// Unique name.
    pub name: String,
    /// Labels, authoritative on the server side.
    pub labels: Vec<String>,
    /// Labels the runner process reported.
    pub reported_labels: Vec<String>,
    /// Tasks it may run at once.
    pub capacity: i32,
    /// Agent backends it offers.
    pub backends: Vec<String>,
    /// Its software version.
    pub version: Option<String>,
    /// Host it runs on.
    pub hostname: Option<String>,
    /// `active`, `draining` or `disabled`.
    pub state: String,
    /// Serial (hex) of the only client certificate accepted for it.
    pub cert_serial: Option<String>,
    /// When that certificate expires.
    pub cert_not_after: Option<DateTime<Utc>>,
    /// Process id of its current runner process.
    pub boot_id: Option<String>,
    /// Last contact.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Enrolled at.
    pub registered_at: DateTime<Utc>,
}

impl Runner {
    /// Whether a caller presenting the certificate with `serial` is this runner: the runner is
    /// not disabled and that certificate is the one it currently holds.
    pub fn admits(&self, serial: &str) -> Result<()> {
        if self.state == "disabled" {
            return Err(Error::RunnerDisabled(self.id));
        }
        if self.cert_serial.as_deref() != Some(serial) {
            return Err(Error::CertificateSuperseded(self.id));
        }
        Ok(())
    }
}

const RUNNER_COLUMNS: &str = "id, name, labels, reported_labels, capacity, backends, version, hostname, state, \
    cert_serial, cert_not_after, boot_id, last_seen_at, registered_at";

/// What a runner process says about itself in its handshake.
#[derive(Debug, Clone)]
pub struct HelloInfo<'a> {
    /// Random per process.
    pub boot_id: &'a str,
    /// Labels it reports.
    pub labels: &'a [String],
    /// Capacity it offers.
    pub capacity: i32,
    /// Backends it offers.
    pub backends: &'a [String],
    /// Software version.
    pub version: &'a str,
    /// Host name.
    pub hostname: &'a str,
}

/// SHA-256 of a secret, as stored.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    sha2::Sha256::digest(secret.as_bytes()).to_vec()
}

/// A new random secret with a recognisable prefix.
pub fn new_secret(prefix: &str) -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("{prefix}{}{}", a.simple(), b.simple())
}

impl Store {
    /// Mints a one-time join token valid for `ttl`; only its hash is stored. Returns the secret.
    pub async fn create_join_token(
        &self,
        created_by: &str,
        ttl: Duration,
        labels: &[String],
    ) -> Result<String> {
        let secret = new_secret("bpj_");
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, labels, created_by, expires_at) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        )
        .bind(secret_hash(&secret))
        .bind(labels)
        .bind(created_by)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(secret)
    }

    /// Spends a join token and registers the runner it enrolls, in one transaction. A token works
    /// once, before it expires.
    pub async fn redeem_join_token(
        &self,
        secret: &str,
        name: &str,
        hostname: &str,
    ) -> Result<Runner> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(Error::Invalid(
                "a runner name must be 1 to 200 characters".into(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        let token: Option<(i64, Vec<String>, bool, bool)> = sqlx::query_as(
            "SELECT id, labels, used_at IS NOT NULL, expires_at <= now() FROM join_tokens \
             WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(secret_hash(secret))
        .fetch_optional(&mut *tx)
        .await?;
        let (token_id, labels) = match token {
            None => {
                return Err(Error::JoinToken(
                    "unknown join token; ask an admin for a new one".into(),
                ));
            }
            Some((_, _, true, _)) => {
                return Err(Error::JoinToken(
                    "join token was already used; ask an admin for a new one".into(),
                ));
            }
            Some((_, _, _, true)) => {
                return Err(Error::JoinToken(
                    "join token has expired; ask an admin for a new one".into(),
                ));
            }
            Some((id, labels, false, false)) => (id, labels),
        };
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM runners WHERE name = $1)")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        if exists {
            return Err(Error::Invalid(format!(
                "a runner named `{name}` is already enrolled; choose another name or disable that one first"
            )));
        }
        let runner = sqlx::query_as::<_, Runner>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO runners (name, hostname, labels) VALUES ($1, $2, $3) RETURNING {RUNNER_COLUMNS}"
        )))
        .bind(name)
        .bind(hostname)
        .bind(&labels)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE join_tokens SET used_at = now(), used_by = $2 WHERE id = $1")
            .bind(token_id)
            .bind(runner.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(runner)
    }

    /// Records the certificate a runner now holds; earlier certificates stop working.
    pub async fn set_runner_cert(
        &self,
        id: RunnerId,
        serial: &str,
        not_after: DateTime<Utc>,
    ) -> Result<()> {
        let n =
            sqlx::query("UPDATE runners SET cert_serial = $2, cert_not_after = $3 WHERE id = $1")
                .bind(id)
                .bind(serial)
                .bind(not_after)
                .execute(&self.pool)
                .await?
                .rows_affected();
        if n == 0 {
            return Err(Error::RunnerNotFound(id.to_string()));
        }
        Ok(())
    }

    /// Records a runner process's handshake. When the process is a new one (another boot id),
    /// the leases of the previous process are taken back at once as `runner_lost`.
    pub async fn runner_hello(
        &self,
        id: RunnerId,
        hello: &HelloInfo<'_>,
    ) -> Result<(Runner, Vec<Reaped>)> {
        // Read the previous boot id and write the new one under the row lock, so two processes
        // saying hello at once agree on which one replaced the other.
        let mut tx = self.pool.begin().await?;
        let previous: Option<Option<String>> =
            sqlx::query_scalar("SELECT boot_id FROM runners WHERE id = $1 FOR NO KEY UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(previous) = previous else {
            return Err(Error::RunnerNotFound(id.to_string()));
        };
        let runner = sqlx::query_as::<_, Runner>(sqlx::AssertSqlSafe(format!(
            "UPDATE runners SET boot_id = $2, reported_labels = $3, capacity = $4, backends = $5, \
             version = $6, hostname = $7, last_seen_at = now() WHERE id = $1 RETURNING {RUNNER_COLUMNS}"
        )))
        .bind(id)
        .bind(hello.boot_id)
        .bind(hello.labels)
        .bind(hello.capacity)
        .bind(hello.backends)
        .bind(hello.version)
        .bind(hello.hostname)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let released = match previous {
            Some(old) if old != hello.boot_id => {
                self.release_runner_leases(id, "controller").await?
            }
            _ => Vec::new(),
        };
        Ok((runner, released))
    }

    /// Notes that a runner was heard from.
    pub async fn touch_runner(&self, id: RunnerId) -> Result<()> {
        sqlx::query("UPDATE runners SET last_seen_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets a runner's state. `draining`: it finishes its work and takes no more. `disabled`: its
    /// certificate is refused from the next call on, and its leases are taken back now.
    pub async fn set_runner_state(
        &self,
        id: RunnerId,
        state: &str,
    ) -> Result<(Runner, Vec<Reaped>)> {
        if !matches!(state, "active" | "draining" | "disabled") {
            return Err(Error::Invalid(format!(
                "runner state `{state}` is not one of: active, draining, disabled"
            )));
        }
        let runner = sqlx::query_as::<_, Runner>(sqlx::AssertSqlSafe(format!(
            "UPDATE runners SET state = $2 WHERE id = $1 RETURNING {RUNNER_COLUMNS}"
        )))
        .bind(id)
        .bind(state)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::RunnerNotFound(id.to_string()))?;
        let released = match state {
            "disabled" => self.release_runner_leases(id, "controller").await?,
            _ => Vec::new(),
        };
        Ok((runner, released))
    }

    /// Registers a runner directly (tests and the local single-host setup; fleets enroll with a
    /// join token). An existing runner with that name gets the labels and capacity.
    pub async fn register_runner(
        &self,
        name: &str,
        labels: &[String],
        capacity: i32,
    ) -> Result<Runner> {
        if name.trim().is_empty() {
            return Err(Error::Invalid("a runner needs a name".into()));
        }
        Ok(sqlx::query_as::<_, Runner>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO runners (name, labels, capacity) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET labels = EXCLUDED.labels, capacity = EXCLUDED.capacity \
             RETURNING {RUNNER_COLUMNS}"
        )))
        .bind(name)
        .bind(labels)
        .bind(capacity)
        .fetch_one(&self.pool)
        .await?)
    }

    /// One runner.
    pub async fn runner(&self, id: RunnerId) -> Result<Runner> {
        sqlx::query_as::<_, Runner>(sqlx::AssertSqlSafe(format!(
            "SELECT {RUNNER_COLUMNS} FROM runners WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::RunnerNotFound(id.to_string()))
    }

    /// Every runner, by name.
    pub async fn runners(&self) -> Result<Vec<Runner>> {
        Ok(sqlx::query_as::<_, Runner>(sqlx::AssertSqlSafe(format!(
            "SELECT {RUNNER_COLUMNS} FROM runners ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many leases a runner holds now (through the partial index on active tasks).
    pub async fn runner_lease_count(&self, id: RunnerId) -> Result<i64> {
        Ok(sqlx::query_scalar(RUNNER_LEASES_SQL)
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }
}

/// How many leases a runner holds: `Status::ACTIVE` written out for the `tasks_runner` index.
/// Claims not started yet count too.
const RUNNER_LEASES_SQL: &str = "SELECT (SELECT count(*) FROM task_claims WHERE runner_id = $1) \
    + count(*) FROM tasks WHERE runner_id = $1 AND status IN ('leased', 'running', 'verifying')";

#[cfg(test)]
mod tests {
    use super::super::lifecycle::{Status, sql_list};
    use super::*;

    #[test]
    fn the_written_out_list_is_the_active_set() {
        assert!(RUNNER_LEASES_SQL.ends_with(&format!("status IN {}", sql_list(Status::ACTIVE))));
    }
}
