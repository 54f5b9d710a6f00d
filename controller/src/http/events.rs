//! Task changes for live views: the process's one LISTEN connection ([`crate::signals`]) names
//! each task that changed; it is read and serialised once here and fanned out to every SSE
//! subscriber as a delta (one task), so a change costs one query however many dashboards watch.

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::signals::Signals;
use crate::store::Store;

/// The fan-out.
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

    /// Turns task ids from `signals` into task deltas until `shutdown`.
    pub async fn run(self, store: Store, signals: Signals, shutdown: CancellationToken) {
        let mut changes = signals.changes();
        loop {
            let id = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = changes.recv() => r,
            };
            let id = match id {
                Ok(id) => id,
                // This reader fell behind: every subscriber reloads.
                Err(RecvError::Lagged(_)) => {
                    let _ = self.tx.send(RESYNC.to_owned());
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if self.tx.receiver_count() == 0 {
                continue;
            }
            if let Ok(task) = store.task(id).await {
                let repo = store
                    .repo(task.repo_id)
                    .await
                    .map(|r| r.name)
                    .unwrap_or_default();
                if let Ok(json) = serde_json::to_string(&super::views::task_view(&task, &repo)) {
                    let _ = self.tx.send(json);
                }
            }
        }
    }
}
