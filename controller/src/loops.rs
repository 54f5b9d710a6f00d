//! The one shape of the controller's background loops: every loop has the signature
//! `async fn run(ctx: LoopCtx, shutdown: CancellationToken)`, is listed once in
//! [`crate::server::LOOPS`], runs on the server's one `TaskTracker` and stops the same way (the
//! shutdown token, then the tracker drained with a deadline). The periodic ones share
//! [`every`]: a pass now, then again whenever their wake-up from the fan-out fires or their
//! sweep interval passes.
//!
//! | loop | wakes on | does |
//! |---|---|---|
//! | [`crate::fanout::Fanout::run`] | — | the one LISTEN connection, feeding everyone else |
//! | [`crate::reaper::run`] | its own schedule | takes expired leases back (one replica at a time) |
//! | [`crate::pipeline::triage::run`] | `bp_new` | new tasks → queued, in debounced batches |
//! | [`crate::pipeline::run`] | `bp_stage` | the controller stages: push, review, CI, merge |
//! | [`crate::pipeline::feedback::run`] | `bp_queue`, `bp_notify` | reflection, learnings, breaker, chat notifications |
//! | [`crate::pipeline::guard::run`] | `bp_queue` (a merge), the CI poll while watching | the post-merge guard: watches merges, reverts a guilty one |
//! | [`crate::intake::poller::run`] | its interval | labelled issues the webhooks missed |
//! | [`crate::forge::milestones::run`] | `bp_forge` | labels and comments on the issue |
//! | [`crate::http::events::run`] | task changes | deltas for the live views (SSE) |
//! | [`crate::retention::run`] | its interval | prunes old logs, bundles, deliveries, audit rows (one replica at a time) |
//! | [`crate::http::health::run`] | its interval | computes `/metrics` (scrapes read the result) |
//! | [`crate::cleanup::run`] | its interval | closes ended tasks' PRs, deletes their branches (one replica at a time) |

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fanout::Events;
use crate::fanout::Fanout;
use crate::forge::Forge;
use crate::intake::IntakeConfig;
use crate::llm::ModelClient;
use crate::store::Store;

/// What every loop may use.
#[derive(Clone)]
pub struct LoopCtx {
    /// The store.
    pub store: Store,
    /// Wake-ups from the one LISTEN connection.
    pub fanout: Fanout,
    /// GitHub, when configured (the loops that write to it do nothing without it).
    pub forge: Option<Arc<dyn Forge>>,
    /// The model API for the controller's own calls, when configured.
    pub llm: Option<ModelClient>,
    /// The controller's configuration.
    pub config: Arc<Config>,
    /// Who may start work.
    pub intake: Arc<IntakeConfig>,
    /// Task deltas for the live views.
    pub events: Events,
    /// The last computed `/metrics` text.
    pub metrics: MetricsCache,
}

/// The last computed metrics text and when it was computed: written by the metrics loop
/// ([`crate::http::health::run`]), read by every scrape.
#[derive(Debug, Clone, Default)]
pub struct MetricsCache(Arc<std::sync::RwLock<Option<(std::time::Instant, String)>>>);

impl MetricsCache {
    /// The last computation and when it was made.
    pub fn get(&self) -> Option<(std::time::Instant, String)> {
        self.0.read().expect("metrics lock").clone()
    }

    /// Replaces the last computation.
    pub fn set(&self, text: String) {
        *self.0.write().expect("metrics lock") = Some((std::time::Instant::now(), text));
    }
}

impl LoopCtx {
    /// A context with only a store (no GitHub, no model): for tests of one loop.
    pub fn for_store(store: Store, config: Config) -> Self {
        Self {
            store,
            fanout: Fanout::new(),
            forge: None,
            llm: None,
            config: Arc::new(config),
            intake: Arc::default(),
            events: Events::default(),
            metrics: Default::default(),
        }
    }
}

/// What a pass asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// There may be more work: run again at once.
    Again,
    /// Wait for the wake-up or the sweep interval.
    Wait,
    /// Wait for the wake-up, or this long at most (shorter than the sweep).
    WaitAtMost(Duration),
}

/// The shape of every periodic loop: runs `pass` now, then again whenever one of `wakes` fires
/// or `sweep` passes, until `shutdown`. A failed pass is logged and retried at the next sweep.
pub async fn every<F, Fut>(
    name: &'static str,
    wakes: Vec<Arc<Notify>>,
    sweep: Duration,
    shutdown: CancellationToken,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Next>>,
{
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let pause = match pass().await {
            Ok(Next::Again) => continue,
            Ok(Next::Wait) => sweep,
            Ok(Next::WaitAtMost(d)) => d.min(sweep),
            Err(e) => {
                tracing::warn!(loop_name = name, error = %format!("{e:#}"), "background pass failed; retrying at the next sweep");
                sweep
            }
        };
        let woken = async {
            if wakes.is_empty() {
                std::future::pending::<()>().await;
            }
            futures::future::select_all(wakes.iter().map(|n| Box::pin(n.notified()))).await;
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = woken => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Advisory lock keys of the loops only one replica runs at a time (sweeps, whose every effect is
/// also keyed in SQL: the lock saves duplicate work, not duplicate effects).
pub mod singleton {
    /// The reaper ("bpreap").
    pub const REAPER: i64 = 0x6270_7265_6170;
    /// The intake poller ("bppoll").
    pub const POLLER: i64 = 0x6270_706f_6c6c;
    /// The budget holds sweep ("bpbudg").
    pub const BUDGETS: i64 = 0x6270_6275_6467;
    /// Retention ("bpretn").
    pub const RETENTION: i64 = 0x6270_7265_746e;
    /// The cleanup sweep ("bpclen").
    pub const CLEANUP: i64 = 0x6270_636c_656e;
}

/// Whether this replica leads a singleton loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leading {
    /// Another replica does.
    No,
    /// This one did already and still does.
    Still,
    /// This one has just taken over (from nobody, or from a replica that is gone).
    Now,
}

/// The check each pass of a singleton loop starts with: the lock held is proved alive on its own
/// session, else taken again if it is free. A lock lost without notice (the database restarted,
/// the connection was cut) is noticed here, so two replicas never lead for longer than one pass.
pub async fn lead(
    store: &Store,
    key: i64,
    lock: &mut Option<crate::store::SingletonLock>,
) -> crate::store::Result<Leading> {
    if let Some(held) = lock {
        if held.alive().await {
            return Ok(Leading::Still);
        }
        tracing::warn!(
            lock = key,
            "a singleton lock's session is gone; taking it again"
        );
        *lock = None;
    }
    *lock = store.try_singleton_lock(key).await?;
    Ok(if lock.is_some() {
        Leading::Now
    } else {
        Leading::No
    })
}
