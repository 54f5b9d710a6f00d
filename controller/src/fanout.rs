//! The process's one LISTEN connection, fanned out: it listens on every channel the store
//! notifies ([`crate::store::wake`]) and turns each notification into the wake-up of whoever
//! waits for it — the lease long-polls (queue changes), each background loop
//! ([`crate::loops`]), the runner sessions that push cancellations and what the runner service
//! remembers of the registry ([`RegistryGeneration`]). Nobody else holds a LISTEN connection. When
//! the connection is (re)established, everybody is woken once and the live views are told to
//! resync, so nothing sent while it was down is lost for long.
//!
//! The live views (a task got a timeline entry) are fed by polling instead ([`TimelineFeed`]):
//! every [`FEED_INTERVAL`] the process reads the timeline entries made since its last look, by
//! primary key. A NOTIFY per entry would make every claim commit in turn on PostgreSQL's notify
//! lock (migration 0038).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::store::wake::{Channel, TimelineEntry, Wake};

/// How often the live views' reader looks for new timeline entries: the most a live view lags.
pub const FEED_INTERVAL: Duration = Duration::from_millis(50);
/// Entries read per look (more are read at once by the next look).
const FEED_BATCH: i64 = 2000;
/// How long an id skipped by the sequence is waited for: a transaction that made the entry may
/// commit after later ones did. Past this the id is taken for rolled back, and the live views
/// resync in case it was not.
const GAP_WAIT: Duration = Duration::from_secs(10);
/// Most skipped ids waited for at once; past it the live views resync and the reader starts over
/// from the newest entry.
const MAX_GAPS: usize = 50_000;

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

    /// Listens and feeds the live views until `shutdown`.
    pub async fn run(self, store: Store, shutdown: CancellationToken) {
        tokio::join!(
            self.clone().listen(store.clone(), shutdown.clone()),
            self.feed(store, shutdown)
        );
    }

    /// Reads new timeline entries every [`FEED_INTERVAL`] and names their tasks to the live
    /// views (each task once per look); a failed read starts over with a resync.
    async fn feed(self, store: Store, shutdown: CancellationToken) {
        let mut feed: Option<TimelineFeed> = None;
        loop {
            let step = async {
                let f = match &mut feed {
                    Some(f) => f,
                    None => {
                        let head = store.timeline_head().await?;
                        let _ = self.changes.send(Change::Resync);
                        feed.insert(TimelineFeed::new(head))
                    }
                };
                let entries = store
                    .timeline_after(f.high, &f.missing(), FEED_BATCH)
                    .await?;
                let full = entries.iter().filter(|e| e.id > f.high).count() as i64 >= FEED_BATCH;
                let out = f.absorb(&entries, Instant::now());
                if out.resync {
                    let _ = self.changes.send(Change::Resync);
                }
                for task in out.tasks {
                    let _ = self.changes.send(Change::Task(task));
                }
                Ok::<bool, crate::store::Error>(full)
            };
            let more = match step.await {
                Ok(more) => more,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the timeline for the live views; retrying");
                    feed = None;
                    false
                }
            };
            if more {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(if feed.is_some() { FEED_INTERVAL } else { Duration::from_secs(1) }) => {}
            }
        }
    }

    /// Listens until `shutdown`; reconnects with a pause when the connection drops.
    async fn listen(self, store: Store, shutdown: CancellationToken) {
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

/// The live views' reader of the timeline: the highest entry id seen, and the ids below it not
/// seen yet. Ids come from a sequence in the order entries were made, but transactions commit in
/// their own order: an id skipped now may appear once its transaction commits, so it is looked for
/// again until it appears or [`GAP_WAIT`] passes.
#[derive(Debug)]
pub struct TimelineFeed {
    high: i64,
    gaps: BTreeMap<i64, Instant>,
}

/// What one look found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FeedOut {
    /// Tasks that got entries (each once, in the order of their first new entry).
    pub tasks: Vec<i64>,
    /// Entries may have been missed: the live views reload.
    pub resync: bool,
}

impl TimelineFeed {
    /// A reader that has seen every entry up to `head`.
    pub fn new(head: i64) -> Self {
        Self {
            high: head,
            gaps: BTreeMap::new(),
        }
    }

    /// The ids below the highest seen that were skipped and are still waited for.
    pub fn missing(&self) -> Vec<i64> {
        self.gaps.keys().copied().collect()
    }

    /// Takes in what a look read at `now`: entries above the highest seen and skipped ones that
    /// appeared; skipped ids waited for longer than [`GAP_WAIT`] are given up (with a resync).
    pub fn absorb(&mut self, entries: &[TimelineEntry], now: Instant) -> FeedOut {
        let mut out = FeedOut::default();
        let mut named = BTreeSet::new();
        let mut sorted: Vec<&TimelineEntry> = entries.iter().collect();
        sorted.sort_by_key(|e| e.id);
        for e in sorted {
            if e.id > self.high {
                let skipped = (e.id - self.high - 1) as usize;
                if self.gaps.len() + skipped > MAX_GAPS {
                    // Too many to wait for: start over from here, and the views reload.
                    self.gaps.clear();
                    out.resync = true;
                } else {
                    for g in self.high + 1..e.id {
                        self.gaps.insert(g, now);
                    }
                }
                self.high = e.id;
            } else if self.gaps.remove(&e.id).is_none() {
                continue;
            }
            if named.insert(e.task_id) {
                out.tasks.push(e.task_id);
            }
        }
        let before = self.gaps.len();
        self.gaps
            .retain(|_, since| now.saturating_duration_since(*since) < GAP_WAIT);
        if self.gaps.len() < before {
            tracing::debug!(
                given_up = before - self.gaps.len(),
                "timeline ids skipped for too long; the live views resync"
            );
            out.resync = true;
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: i64, task_id: i64) -> TimelineEntry {
        TimelineEntry { id, task_id }
    }

    #[test]
    fn each_task_is_named_once_per_look_and_old_entries_are_not_named_again() {
        let t0 = Instant::now();
        let mut f = TimelineFeed::new(10);
        let out = f.absorb(&[e(9, 1), e(11, 7), e(12, 8), e(13, 7)], t0);
        assert_eq!(out.tasks, vec![7, 8]);
        assert!(!out.resync);
        assert!(f.missing().is_empty());
        assert!(f.absorb(&[e(12, 8)], t0).tasks.is_empty());
    }

    #[test]
    fn an_entry_committed_after_a_later_one_is_still_named() {
        let t0 = Instant::now();
        let mut f = TimelineFeed::new(0);
        // 2 and 3 were made first but their transactions commit after 4's.
        let out = f.absorb(&[e(1, 1), e(4, 4)], t0);
        assert_eq!(out.tasks, vec![1, 4]);
        assert_eq!(f.missing(), vec![2, 3]);
        let out = f.absorb(&[e(3, 3)], t0 + Duration::from_millis(50));
        assert_eq!(out.tasks, vec![3]);
        assert_eq!(f.missing(), vec![2]);
        assert!(!out.resync);
        // 2 was rolled back: given up after the wait, and the views resync in case it was not.
        let out = f.absorb(&[], t0 + GAP_WAIT - Duration::from_millis(1));
        assert!(!out.resync);
        let out = f.absorb(&[], t0 + GAP_WAIT);
        assert!(out.resync);
        assert!(f.missing().is_empty());
        // Seen or given up: never named again.
        assert!(
            f.absorb(&[e(2, 2), e(3, 3)], t0 + GAP_WAIT)
                .tasks
                .is_empty()
        );
    }

    #[test]
    fn too_many_skipped_ids_resync_instead_of_being_waited_for() {
        let t0 = Instant::now();
        let mut f = TimelineFeed::new(0);
        let out = f.absorb(&[e(MAX_GAPS as i64 + 2, 5)], t0);
        assert_eq!(out.tasks, vec![5]);
        assert!(out.resync);
        assert!(f.missing().is_empty());
        let out = f.absorb(&[e(MAX_GAPS as i64 + 4, 6)], t0);
        assert_eq!(f.missing(), vec![MAX_GAPS as i64 + 3]);
        assert!(!out.resync);
    }
}
