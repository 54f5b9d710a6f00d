//! LISTEN/NOTIFY: the store announces changes so claimers and loops wake at once instead of
//! waiting for their next sweep. Every channel is named here ([`Channel`]); triggers in
//! `migrations/` and the few statements that notify by hand use these names.

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
    /// `bp_events`: a task got a timeline entry (payload: task id).
    Events,
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
        Channel::Events,
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
            Channel::Events => "bp_events",
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
