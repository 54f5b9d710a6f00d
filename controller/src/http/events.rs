//! Task changes for live views: the process's one reader of the timeline ([`crate::fanout`])
//! names each task that got an entry; it is read and serialised once here and fanned out to every SSE
//! subscriber as a delta (one task), so a change costs one query however many dashboards watch.

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::fanout::{Change, RESYNC};
use crate::loops::LoopCtx;

/// Turns the fan-out's task changes into task deltas for every subscriber until `shutdown`; a
/// missed change (the listener reconnected, this reader lagged) becomes a resync.
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    let (store, events) = (ctx.store.clone(), ctx.events.clone());
    let mut changes = ctx.fanout.changes();
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = changes.recv() => r,
        };
        let id = match change {
            Ok(Change::Task(id)) => id,
            Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                let _ = events.sender().send(RESYNC.to_owned());
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if events.sender().receiver_count() == 0 {
            continue;
        }
        if let Ok(task) = store.task(id).await {
            let repo = store
                .repo(task.repo_id)
                .await
                .map(|r| r.name)
                .unwrap_or_default();
            if let Ok(json) = serde_json::to_string(&super::views::task_view(&task, &repo)) {
                let _ = events.sender().send(json);
            }
        }
    }
}
