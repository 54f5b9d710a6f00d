//! LISTEN/NOTIFY: the store announces changes so claimers and loops wake at once instead of
//! waiting for their next sweep. Every channel is named here ([`Channel`]); triggers in
//! `migrations/` and the few statements that notify by hand use these names.
//!
//! Timeline entries are not announced by NOTIFY (migration 0038): a transaction that notifies
//! takes PostgreSQL's one notify lock from before its commit until its commit record is written,
//! so a NOTIFY per entry (one per claim) made every claim of the fleet commit in turn. The live
//! views read the timeline's id sequence instead ([`Store::timeline_after`]).

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{Result, Store};

/// A notification channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `bp_queue`: claimable work may exist (payload: repository id or `resume`).
    Queue,
    /// `bp_cancel`: cancellation requested for a task on a runner (payload: task id).
    Cancel,
    /// `bp_stage`: a controller stage became due.
    Stage,
    /// `bp_new`: a task arrived for triage.
    New,
    /// `bp_forge`: a milestone waits to be reflected on GitHub.
    Forge,
    /// `bp_notify`: a chat notification waits in the outbox.
    Notify,
    /// `bp_runner`: a runner's state, certificate, labels or capacity changed (payload: runner
    /// id); what a controller remembers of the registry is stale.
    Runner,
}

impl Channel {
    /// Every channel.
    pub const ALL: &'static [Channel] = &[
        Channel::Queue,
        Channel::Cancel,
        Channel::Stage,
        Channel::New,
        Channel::Forge,
        Channel::Notify,
        Channel::Runner,
    ];

    /// The channel's name in the database.
    pub const fn name(self) -> &'static str {
        match self {
            Channel::Queue => "bp_queue",
            Channel::Cancel => "bp_cancel",
            Channel::Stage => "bp_stage",
            Channel::New => "bp_new",
            Channel::Forge => "bp_forge",
            Channel::Notify => "bp_notify",
            Channel::Runner => "bp_runner",
        }
    }

    fn from_name(name: &str) -> Option<Channel> {
        Channel::ALL.iter().copied().find(|c| c.name() == name)
    }
}

/// A listener on the store's channels.
#[derive(Debug)]
pub struct Waker {
    listener: PgListener,
}

/// What woke a waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// Something changed on a channel.
    Notified {
        /// Channel.
        channel: Channel,
        /// Payload.
        payload: String,
    },
    /// The timeout passed (the sweep backstop).
    Timeout,
}

impl Store {
    /// Listens on `channels` (the process's one listener: [`crate::fanout`]).
    pub async fn waker(&self, channels: &[Channel]) -> Result<Waker> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all(channels.iter().map(|c| c.name()))
            .await?;
        Ok(Waker { listener })
    }
}

/// A timeline entry: its id (the order entries were made in, not always the order they
/// committed in) and its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct TimelineEntry {
    /// Entry id.
    pub id: i64,
    /// The task it belongs to.
    pub task_id: i64,
}

impl Store {
    /// The highest timeline entry id committed so far (0 for none): where a reader of
    /// [`Store::timeline_after`] starts.
    pub async fn timeline_head(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM task_events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Timeline entries after `after` (at most `limit`, in id order), and those among `missing`
    /// (ids below `after` the reader has not seen yet: their transactions may still have been
    /// open). Two primary-key range reads; nothing is locked or written.
    pub async fn timeline_after(
        &self,
        after: i64,
        missing: &[i64],
        limit: i64,
    ) -> Result<Vec<TimelineEntry>> {
        Ok(sqlx::query_as(
            "(SELECT id, task_id FROM task_events WHERE id > $1 ORDER BY id LIMIT $3) \
             UNION ALL (SELECT id, task_id FROM task_events WHERE id = ANY($2) AND id <= $1) \
             ORDER BY id",
        )
        .bind(after)
        .bind(missing)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

impl Waker {
    /// Waits for a notification or `timeout`, whichever comes first. A lost connection is
    /// re-established by the listener; notifications sent meanwhile are covered by the sweep.
    pub async fn wait(&mut self, timeout: Duration) -> Result<Wake> {
        match tokio::time::timeout(timeout, self.listener.recv()).await {
            Ok(Ok(n)) => match Channel::from_name(n.channel()) {
                Some(channel) => Ok(Wake::Notified {
                    channel,
                    payload: n.payload().to_owned(),
                }),
                None => Ok(Wake::Timeout),
            },
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Ok(Wake::Timeout),
        }
    }
}
