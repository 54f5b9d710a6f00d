//! Global switches: the dispatch pause and the default approval mode.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Error, Result, Store};

/// The global settings row.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Settings {
    /// No new claims while true; running work finishes.
    pub queue_paused: bool,
    /// When it was paused.
    pub paused_at: Option<DateTime<Utc>>,
    /// Who paused it.
    pub paused_by: Option<String>,
    /// `full-auto`, `review-merge` or `review-all`.
    pub approval_mode: String,
}

impl Store {
    /// The settings.
    pub async fn settings(&self) -> Result<Settings> {
        Ok(sqlx::query_as::<_, Settings>(
            "SELECT queue_paused, paused_at, paused_by, approval_mode FROM settings",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Stops dispatch: no claim succeeds until [`Store::resume`].
    pub async fn pause(&self, actor: &str) -> Result<Settings> {
        Ok(sqlx::query_as::<_, Settings>(
            "UPDATE settings SET queue_paused = true, paused_at = COALESCE(paused_at, now()), \
             paused_by = COALESCE(paused_by, $1), updated_at = now() \
             RETURNING queue_paused, paused_at, paused_by, approval_mode",
        )
        .bind(actor)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Resumes dispatch and wakes waiting claimers.
    pub async fn resume(&self) -> Result<Settings> {
        let mut tx = self.pool.begin().await?;
        let s = sqlx::query_as::<_, Settings>(
            "UPDATE settings SET queue_paused = false, paused_at = NULL, paused_by = NULL, updated_at = now() \
             RETURNING queue_paused, paused_at, paused_by, approval_mode",
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, 'resume')")
            .bind(super::wake::Channel::Queue.name())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(s)
    }

    /// Sets the default approval mode.
    pub async fn set_approval_mode(&self, mode: &str) -> Result<Settings> {
        if !matches!(mode, "full-auto" | "review-merge" | "review-all") {
            return Err(Error::Invalid(format!(
                "approval mode `{mode}` is not one of: full-auto, review-merge, review-all"
            )));
        }
        Ok(sqlx::query_as::<_, Settings>(
            "UPDATE settings SET approval_mode = $1, updated_at = now() \
             RETURNING queue_paused, paused_at, paused_by, approval_mode",
        )
        .bind(mode)
        .fetch_one(&self.pool)
        .await?)
    }
}
