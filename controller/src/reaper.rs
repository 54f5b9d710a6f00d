//! The reaper: a singleton loop that takes expired leases back.
//!
//! It sleeps until the earliest live lease could expire (at most `interval`), then re-queues what
//! expired as `lease_expired` (or cancels it when cancellation was pending). Several controller
//! replicas may run it; a PostgreSQL advisory lock lets one of them work at a time.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{SingletonLock, Store};

/// Advisory lock key of the reaper (an arbitrary constant shared by all replicas).
const REAPER_LOCK: i64 = 0x6270_7265_6170; // "bpreap"

/// Runs until `shutdown` is cancelled.
pub async fn run(store: Store, interval: Duration, shutdown: CancellationToken) {
    let mut lock: Option<SingletonLock> = None;
    loop {
        let pause = match sweep(&store, &mut lock, interval).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reaper sweep failed; retrying");
                lock = None;
                interval
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
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
