//! The process's one LISTEN connection, fanned out: it listens on every channel the store
//! notifies ([`crate::store::wake`]) and turns each notification into the wake-up of whoever
//! waits for it — the lease long-polls (queue changes), each background loop
//! ([`crate::loops`]), the runner sessions that push cancellations, the live views (a task
//! changed) and what the runner service remembers of the registry ([`RegistryGeneration`]). Nobody else holds a LISTEN connection. When the connection is (re)established,
//! everybody is woken once and the live views are told to resync, so nothing sent while it was
//! down is lost for long.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::store::wake::{Channel, Wake};

/// A change the live views hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// This task got a timeline entry.
    Task(i64),
    /// Changes may have been missed (the listener reconnected, or a reader lagged): reload.
    Resync,
}

/// Shared wake-ups of one controller process; cheap to clone.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// Lease long-polls (every waiter wakes).
    queue: Arc<Notify>,
    /// One wake-up per background loop channel (a wake sent while the loop works is kept).
    loops: Arc<[(Channel, Arc<Notify>)]>,
    cancels: broadcast::Sender<i64>,
    changes: broadcast::Sender<Change>,
    registry: Arc<RegistryGeneration>,
}

/// How current what the process remembers of the runner registry may be: a generation that
/// moves on every `bp_runner` notification and every change of the listener's connection, and
/// that reads as `None` while the listener is down (then nothing may be remembered, since a
/// change would go unheard). Something read from the registry under generation `g` is still
/// good while [`RegistryGeneration::current`] says `Some(g)`.
#[derive(Debug, Default)]
pub struct RegistryGeneration {
    n: AtomicU64,
    live: AtomicBool,
}

impl RegistryGeneration {
    /// The current generation, or `None` while changes to the registry cannot be heard.
    pub fn current(&self) -> Option<u64> {
        self.live
            .load(Ordering::Acquire)
            .then(|| self.n.load(Ordering::Acquire))
    }

    fn changed(&self) {
        self.n.fetch_add(1, Ordering::AcqRel);
    }

    fn listening(&self, live: bool) {
        // Down: stop trusting before anything else; up: move on from everything read before.
        if !live {
            self.live.store(false, Ordering::Release);
        }
        self.changed();
        if live {
            self.live.store(true, Ordering::Release);
        }
    }
}

impl Default for Fanout {
    fn default() -> Self {
        Self::new()
    }
}

impl Fanout {
    /// Wake-ups nobody sends yet; [`Fanout::run`] feeds them from the database.
    pub fn new() -> Self {
        Self {
            queue: Arc::new(Notify::new()),
            loops: Channel::ALL
                .iter()
                .map(|c| (*c, Arc::new(Notify::new())))
                .collect(),
            cancels: broadcast::channel(1024).0,
            changes: broadcast::channel(4096).0,
            registry: Arc::new(RegistryGeneration::default()),
        }
    }

    /// The generation of what may be remembered of the runner registry.
    pub fn registry(&self) -> &Arc<RegistryGeneration> {
        &self.registry
    }

    /// The queue-change notifier of lease long-polls. Create and `enable` a `notified()` future
    /// before looking at the queue, so a change between the look and the wait is not missed.
    pub fn queue(&self) -> &Notify {
        &self.queue
    }

    /// The wake-up of the loop that serves `channel`.
    pub fn wake(&self, channel: Channel) -> Arc<Notify> {
        self.loops
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, n)| n.clone())
            .expect("every channel has a wake-up")
    }

    /// Task ids whose cancellation was requested while on a runner.
    pub fn cancels(&self) -> broadcast::Receiver<i64> {
        self.cancels.subscribe()
    }

    /// Task changes for the live views.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn wake_everyone(&self) {
        self.queue.notify_waiters();
        for (_, n) in self.loops.iter() {
            n.notify_one();
        }
        let _ = self.changes.send(Change::Resync);
    }

    /// Listens until `shutdown`; reconnects with a pause when the connection drops.
    pub async fn run(self, store: Store, shutdown: CancellationToken) {
        loop {
            let mut waker = match store.waker(Channel::ALL).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for notifications; retrying in 1 s");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // Whatever was sent while nobody listened: everyone looks again.
            self.registry.listening(true);
            self.wake_everyone();
            loop {
                let wake = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    w = waker.wait(Duration::from_secs(30)) => w,
                };
                match wake {
                    Ok(Wake::Notified { channel, payload }) => match channel {
                        Channel::Cancel => {
                            if let Ok(task) = payload.parse() {
                                let _ = self.cancels.send(task);
                            }
                        }
                        Channel::Events => {
                            if let Ok(task) = payload.parse() {
                                let _ = self.changes.send(Change::Task(task));
                            }
                        }
                        Channel::Queue => {
                            self.queue.notify_waiters();
                            self.wake(Channel::Queue).notify_one();
                        }
                        Channel::Runner => self.registry.changed(),
                        other => self.wake(other).notify_one(),
                    },
                    Ok(Wake::Timeout) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "notification listener failed; reconnecting");
                        self.registry.listening(false);
                        break;
                    }
                }
            }
        }
    }
}

/// Task deltas for the live views (SSE subscribers): the JSON of each changed task, serialised
/// once by [`crate::http::events::run`] and sent to every subscriber.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<String>,
}

/// What subscribers get: a task's JSON, or word that they missed changes.
pub const RESYNC: &str = "";

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(4096).0,
        }
    }
}

impl Events {
    /// A new subscriber (JSON of `api::Task` per change; [`RESYNC`] after missed changes).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tx.subscribe()
    }

    /// The sending side (for the loop that serialises the deltas).
    pub fn sender(&self) -> &broadcast::Sender<String> {
        &self.tx
    }
}
