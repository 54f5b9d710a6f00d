//! The runner registry: who may lease work, with which labels and capacity.
//!
//! Enrollment, certificates and sessions build on these rows (runner protocol); the store only
//! keeps the registry and its state (`active`, `draining`, `disabled`).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::model::RunnerId;
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
    /// Tasks it may run at once.
    pub capacity: i32,
    /// `active`, `draining` or `disabled`.
    pub state: String,
    /// Last heartbeat.
    pub last_seen_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Registers a runner (or returns the existing one with that name, with labels updated).
    pub async fn register_runner(
        &self,
        name: &str,
        labels: &[String],
        capacity: i32,
    ) -> Result<Runner> {
        if name.trim().is_empty() {
            return Err(Error::Invalid("a runner needs a name".into()));
        }
        Ok(sqlx::query_as::<_, Runner>(
            "INSERT INTO runners (name, labels, capacity) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET labels = EXCLUDED.labels, capacity = EXCLUDED.capacity \
             RETURNING id, name, labels, capacity, state, last_seen_at",
        )
        .bind(name)
        .bind(labels)
        .bind(capacity)
        .fetch_one(&self.pool)
        .await?)
    }

    /// One runner.
    pub async fn runner(&self, id: RunnerId) -> Result<Runner> {
        sqlx::query_as::<_, Runner>(
            "SELECT id, name, labels, capacity, state, last_seen_at FROM runners WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::RunnerNotFound(id.to_string()))
    }
}
