//! Fan-out of the store's notifications inside one controller process: a single LISTEN
//! connection wakes every waiting lease long-poll (queue changes) and every runner session that
//! must push a cancellation, and names each task that changed for the live views (SSE), instead
//! of each holding a database connection of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::store::wake::{CANCEL_CHANNEL, EVENTS_CHANNEL, QUEUE_CHANNEL, Wake};

/// Shared wake-ups.
#[derive(Debug, Clone)]
pub struct Signals {
    queue: Arc<Notify>,
    cancels: broadcast::Sender<i64>,
    changes: broadcast::Sender<i64>,
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

impl Signals {
    /// Signals nobody sends yet; [`Signals::run`] feeds them from the database.
    pub fn new() -> Self {
        Self {
            queue: Arc::new(Notify::new()),
            cancels: broadcast::channel(1024).0,
            changes: broadcast::channel(4096).0,
        }
    }

    /// The queue-change notifier. Create and `enable` a `notified()` future before looking at the
    /// queue, so a change between the look and the wait is not missed.
    pub fn queue(&self) -> &Notify {
        &self.queue
    }

    /// Task ids whose cancellation was requested while on a runner.
    pub fn cancels(&self) -> broadcast::Receiver<i64> {
        self.cancels.subscribe()
    }

    /// Task ids that got a timeline entry.
    pub fn changes(&self) -> broadcast::Receiver<i64> {
        self.changes.subscribe()
    }

    /// Listens until `shutdown`; reconnects with a pause when the connection drops.
    pub async fn run(self, store: Store, shutdown: CancellationToken) {
        loop {
            let mut waker = match store
                .waker(&[QUEUE_CHANNEL, CANCEL_CHANNEL, EVENTS_CHANNEL])
                .await
            {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for notifications; retrying in 1 s");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let wake = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    w = waker.wait(Duration::from_secs(30)) => w,
                };
                match wake {
                    Ok(Wake::Notified { channel, payload }) if channel == CANCEL_CHANNEL => {
                        if let Ok(task) = payload.parse() {
                            let _ = self.cancels.send(task);
                        }
                    }
                    Ok(Wake::Notified { channel, payload }) if channel == EVENTS_CHANNEL => {
                        if let Ok(task) = payload.parse() {
                            let _ = self.changes.send(task);
                        }
                    }
                    Ok(Wake::Notified { .. }) => self.queue.notify_waiters(),
                    Ok(Wake::Timeout) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "notification listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}
