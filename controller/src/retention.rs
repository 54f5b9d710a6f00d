//! The retention loop: one replica at a time ([`crate::loops::lead`]), every `retention_interval`,
//! prunes what piles up by age ([`crate::store::retention`]) in bounded batches until a pass
//! removes less than a batch of each kind (at most `MAX_BATCHES` batches per pass, so one huge
//! backlog drains over several passes and never holds the database), and login limit rows of
//! windows that ended a day ago.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::loops::{Leading, LoopCtx, Next, every, lead, singleton};
use crate::store::retention::Pruned;

/// Rows of each kind removed per statement.
const BATCH: i64 = 5_000;
/// Batches per pass.
const MAX_BATCHES: usize = 200;

/// Runs until `shutdown`.
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    let lock = Arc::new(Mutex::new(None));
    let keep = ctx.config.retention;
    every(
        "retention",
        Vec::new(),
        ctx.config.retention_interval,
        shutdown.clone(),
        || {
            let (store, lock, shutdown) = (ctx.store.clone(), lock.clone(), shutdown.clone());
            async move {
                if lead(&store, singleton::RETENTION, &mut *lock.lock().await).await? == Leading::No
                {
                    return Ok(Next::Wait);
                }
                let mut total = Pruned::default();
                for _ in 0..MAX_BATCHES {
                    if shutdown.is_cancelled() {
                        break;
                    }
                    let p = store.prune_batch(&keep, BATCH).await?;
                    total.logs += p.logs;
                    total.bundles += p.bundles;
                    total.deliveries += p.deliveries;
                    total.audit += p.audit;
                    if [p.logs, p.bundles, p.deliveries, p.audit]
                        .iter()
                        .all(|n| *n < BATCH as u64)
                    {
                        break;
                    }
                }
                // Login limit rows whose window ended long ago (a window lasts minutes).
                let limits = store
                    .prune_login_limits(std::time::Duration::from_secs(24 * 3600), BATCH)
                    .await?;
                if limits > 0 {
                    tracing::info!(
                        login_limits = limits,
                        "retention: pruned expired login limits"
                    );
                }
                if total.total() > 0 {
                    tracing::info!(
                        log_chunks = total.logs,
                        bundles = total.bundles,
                        webhook_deliveries = total.deliveries,
                        audit_rows = total.audit,
                        "retention: pruned rows past their age"
                    );
                }
                Ok(Next::Wait)
            }
        },
    )
    .await;
}
