//! The reaper: a singleton loop that takes expired leases back.
//!
//! It sleeps until the earliest live lease could expire (at most `interval`), then re-queues what
//! expired as `lease_expired` (or cancels it when cancellation was pending). Several controller
//! replicas may run it; a PostgreSQL advisory lock lets one of them work at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::loops::{LoopCtx, Next, every};
use crate::store::{SingletonLock, Store};

/// Advisory lock key of the reaper (an arbitrary constant shared by all replicas).
const REAPER_LOCK: i64 = 0x6270_7265_6170; // "bpreap"

/// Runs until `shutdown` is cancelled.
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    let interval = ctx.config.reaper_interval;
    let lock: Arc<Mutex<Option<SingletonLock>>> = Arc::default();
    every("reaper", Vec::new(), interval, shutdown, || {
        let (store, lock) = (ctx.store.clone(), lock.clone());
        async move {
            let mut held = lock.lock().await;
            match sweep(&store, &mut held, interval).await {
                Ok(pause) => Ok(Next::WaitAtMost(pause)),
                Err(e) => {
                    // The lock's connection may be gone with the error: take it again.
                    *held = None;
                    Err(e.into())
                }
            }
        }
    })
    .await;
    tracing::debug!("reaper stopped");
}

/// One sweep; returns how long to sleep before the next.
async fn sweep(
    store: &Store,
    lock: &mut Option<SingletonLock>,
    interval: Duration,
) -> Result<Duration, crate::store::Error> {
    if lock.is_none() {
        let Some(conn) = store.try_singleton_lock(REAPER_LOCK).await? else {
            return Ok(interval);
        };
        tracing::info!("this controller runs the reaper");
        *lock = Some(conn);
    }
    loop {
        let reaped = store.reap_expired(500).await?;
        for r in &reaped {
            tracing::info!(task = r.task_id, runner = ?r.runner_id, status = %r.status, "lease expired; task taken back");
        }
        if reaped.len() < 500 {
            break;
        }
    }
    // Sleep until the next lease could expire, bounded by the interval.
    Ok(match store.next_lease_expiry().await? {
        Some(secs) if secs > 0.0 => Duration::from_secs_f64(secs + 0.01).min(interval),
        Some(_) => Duration::from_millis(10),
        None => interval,
    })
}
