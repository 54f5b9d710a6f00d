//! LISTEN/NOTIFY: the store announces queue changes so claimers and loops wake at once instead
//! of waiting for their next sweep.
//!
//! Channels: `bp_queue` (a task became claimable, a lease ended, the queue resumed; payload: repo
//! id or `resume`) and `bp_cancel` (cancellation requested for a task on a runner; payload: task id).

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{Result, Store};

/// Channel announcing that claimable work may exist.
pub const QUEUE_CHANNEL: &str = "bp_queue";
/// Channel announcing a cancellation for a task on a runner.
pub const CANCEL_CHANNEL: &str = "bp_cancel";
/// Channel naming each task that got a timeline entry (payload: task id).
pub const EVENTS_CHANNEL: &str = "bp_events";

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
        /// Channel name.
        channel: String,
        /// Payload.
        payload: String,
    },
    /// The timeout passed (the sweep backstop).
    Timeout,
}

impl Store {
    /// Listens on `channels`.
    pub async fn waker(&self, channels: &[&str]) -> Result<Waker> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen_all(channels.iter().copied()).await?;
        Ok(Waker { listener })
    }
}

impl Waker {
    /// Waits for a notification or `timeout`, whichever comes first. A lost connection is
    /// re-established by the listener; notifications sent meanwhile are covered by the sweep.
    pub async fn wait(&mut self, timeout: Duration) -> Result<Wake> {
        match tokio::time::timeout(timeout, self.listener.recv()).await {
            Ok(Ok(n)) => Ok(Wake::Notified {
                channel: n.channel().to_owned(),
                payload: n.payload().to_owned(),
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Ok(Wake::Timeout),
        }
    }
}

/// Waits until `waker` reports anything (a notification or its timeout) or, without a working
/// listener, sleeps `sweep`: the shared pause of the controller's background loops.
pub async fn pause(waker: &mut Option<Waker>, sweep: Duration) {
    match waker.as_mut() {
        Some(w) => {
            if w.wait(sweep).await.is_err() {
                tokio::time::sleep(sweep).await;
            }
        }
        None => tokio::time::sleep(sweep).await,
    }
}
