//! Task changes for live views: one LISTEN on `bp_events` per controller process; each change is
//! read and serialised once and fanned out to every SSE subscriber as a delta (one task), so a
//! change costs one query however many dashboards watch.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::store::wake::Wake;

/// The fan-out.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<String>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(4096).0,
        }
    }
}

impl Events {
    /// A new subscriber (JSON of `api::Task` per change).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tx.subscribe()
    }

    /// Listens until `shutdown`, reconnecting after a pause when the connection drops.
    pub async fn run(self, store: Store, shutdown: CancellationToken) {
        loop {
            let mut waker = match store.waker(&["bp_events"]).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for task events; retrying in 1 s");
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
                    Ok(Wake::Notified { payload, .. }) => {
                        let Ok(id) = payload.parse::<i64>() else {
                            continue;
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
                            if let Ok(json) =
                                serde_json::to_string(&super::routes::task_view(&task, &repo))
                            {
                                let _ = self.tx.send(json);
                            }
                        }
                    }
                    Ok(Wake::Timeout) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "task event listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}
