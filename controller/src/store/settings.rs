//! Global switches: the dispatch pause and the default approval mode — who changed each, when,
//! and how a configured approval mode meets one changed at run time
//! ([`Store::apply_configured_approval_mode`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Error, Result, Store};

/// The approval modes, strictest last.
pub const APPROVAL_MODES: [&str; 3] = ["full-auto", "review-merge", "review-all"];

/// Checks an approval mode, saying which ones exist.
pub fn check_approval_mode(mode: &str) -> Result<()> {
    if APPROVAL_MODES.contains(&mode) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "approval mode `{mode}` is not one of: full-auto, review-merge, review-all"
        )))
    }
}

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
    /// Who set the approval mode last (`config` for the configuration at a start).
    pub approval_mode_by: Option<String>,
    /// When.
    pub approval_mode_at: Option<DateTime<Utc>>,
    /// The value the configuration applied at the last start that set one.
    pub approval_mode_configured: Option<String>,
}

macro_rules! columns {
    () => {
        "queue_paused, paused_at, paused_by, approval_mode, approval_mode_by, approval_mode_at, \
         approval_mode_configured"
    };
}

/// What a start did with the configured approval mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfiguredMode {
    /// None is configured: the stored mode stays (`mode`, set by `by`).
    NotSet {
        /// The mode in force.
        mode: String,
        /// Who set it (`None`: the default).
        by: Option<String>,
    },
    /// The configured mode is new (or changed since the last start): it is now in force.
    Applied {
        /// The mode before.
        old: String,
        /// The configured mode, now in force.
        new: String,
    },
    /// The configured mode was applied at an earlier start and someone changed the mode at run
    /// time since: the run-time mode stays until the configured value changes.
    RunTimeWins {
        /// The configured mode.
        configured: String,
        /// The mode in force.
        mode: String,
        /// Who set it.
        by: Option<String>,
    },
}

impl Store {
    /// The settings.
    pub async fn settings(&self) -> Result<Settings> {
        Ok(
            sqlx::query_as::<_, Settings>(concat!("SELECT ", columns!(), " FROM settings"))
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Stops dispatch: no claim succeeds until [`Store::resume`].
    pub async fn pause(&self, actor: &str) -> Result<Settings> {
        Ok(sqlx::query_as::<_, Settings>(concat!(
            "UPDATE settings SET queue_paused = true, paused_at = COALESCE(paused_at, now()), \
             paused_by = COALESCE(paused_by, $1), updated_at = now() RETURNING ",
            columns!(),
            ""
        ))
        .bind(actor)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Resumes dispatch and wakes waiting claimers.
    pub async fn resume(&self) -> Result<Settings> {
        let mut tx = self.pool.begin().await?;
        let s = sqlx::query_as::<_, Settings>(concat!(
            "UPDATE settings SET queue_paused = false, paused_at = NULL, paused_by = NULL, \
             updated_at = now() RETURNING ",
            columns!(),
            ""
        ))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, 'resume')")
            .bind(super::wake::Channel::Queue.name())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(s)
    }

    /// Sets the default approval mode as `actor`; returns the mode before and the settings after.
    pub async fn set_approval_mode(&self, mode: &str, actor: &str) -> Result<(String, Settings)> {
        check_approval_mode(mode)?;
        let mut tx = self.pool.begin().await?;
        let old: String = sqlx::query_scalar("SELECT approval_mode FROM settings FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let s = sqlx::query_as::<_, Settings>(concat!(
            "UPDATE settings SET approval_mode = $1, approval_mode_by = $2, \
             approval_mode_at = now(), updated_at = now() RETURNING ",
            columns!(),
            ""
        ))
        .bind(mode)
        .bind(actor)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((old, s))
    }

    /// At a start: applies the configured approval mode when it differs from the one the
    /// configuration applied last (so editing the configuration takes effect), and otherwise
    /// keeps what is stored (so a change made at run time survives a restart). With none
    /// configured, the stored mode stays and the next configured value applies.
    pub async fn apply_configured_approval_mode(
        &self,
        configured: Option<&str>,
    ) -> Result<ConfiguredMode> {
        if let Some(m) = configured {
            check_approval_mode(m)?;
        }
        let mut tx = self.pool.begin().await?;
        let s = sqlx::query_as::<_, Settings>(concat!(
            "SELECT ",
            columns!(),
            " FROM settings FOR UPDATE"
        ))
        .fetch_one(&mut *tx)
        .await?;
        let outcome = match configured {
            None => {
                sqlx::query("UPDATE settings SET approval_mode_configured = NULL")
                    .execute(&mut *tx)
                    .await?;
                ConfiguredMode::NotSet {
                    mode: s.approval_mode,
                    by: s.approval_mode_by,
                }
            }
            Some(m) if s.approval_mode_configured.as_deref() == Some(m) => {
                if s.approval_mode == m {
                    ConfiguredMode::Applied {
                        old: m.to_owned(),
                        new: m.to_owned(),
                    }
                } else {
                    ConfiguredMode::RunTimeWins {
                        configured: m.to_owned(),
                        mode: s.approval_mode,
                        by: s.approval_mode_by,
                    }
                }
            }
            Some(m) => {
                sqlx::query(
                    "UPDATE settings SET approval_mode = $1, approval_mode_configured = $1, \
                     approval_mode_by = 'config', approval_mode_at = now(), updated_at = now()",
                )
                .bind(m)
                .execute(&mut *tx)
                .await?;
                ConfiguredMode::Applied {
                    old: s.approval_mode,
                    new: m.to_owned(),
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }
}
