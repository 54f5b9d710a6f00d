//! Live runner session streams, so the controller can push a message (a cancellation) to the
//! runner holding a task the moment it is asked for. Only connections live here, never state:
//! whatever is pushed is also in the database and repeated in every heartbeat reply.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::fanout::Fanout;
use crate::store::{RunnerId, Store};

/// Sender half of a session's downstream.
pub type Downstream = mpsc::Sender<Result<proto::SessionDown, Status>>;

/// Open sessions by runner.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    open: Mutex<HashMap<RunnerId, (u64, Downstream)>>,
}

impl Sessions {
    /// Registers a runner's session (replacing an older one); returns its handle.
    pub fn open(&self, runner: RunnerId, tx: Downstream) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .expect("sessions lock")
            .insert(runner, (id, tx));
        id
    }

    /// Forgets a session, unless a newer one replaced it.
    pub fn close(&self, runner: RunnerId, id: u64) {
        let mut open = self.open.lock().expect("sessions lock");
        if open.get(&runner).is_some_and(|(current, _)| *current == id) {
            open.remove(&runner);
        }
    }

    /// The downstream of a runner's session, if it has one.
    pub fn get(&self, runner: RunnerId) -> Option<Downstream> {
        self.open
            .lock()
            .expect("sessions lock")
            .get(&runner)
            .map(|(_, tx)| tx.clone())
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.open.lock().expect("sessions lock").len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pushes each requested cancellation down the session of the runner holding the task.
pub async fn push_cancels(
    store: Store,
    sessions: std::sync::Arc<Sessions>,
    fanout: Fanout,
    shutdown: CancellationToken,
) {
    let mut cancels = fanout.cancels();
    loop {
        let task = tokio::select! {
            _ = shutdown.cancelled() => return,
            t = cancels.recv() => t,
        };
        let task = match task {
            Ok(t) => t,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                // Heartbeat replies carry every pending cancel, so nothing is lost, only later.
                tracing::warn!(
                    missed = n,
                    "cancel fan-out lagged; heartbeats will deliver them"
                );
                continue;
            }
            Err(_) => return,
        };
        let row = match store.live_lease_of(task).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(task, error = %e, "cannot look up a canceled task; its heartbeat will deliver the cancel");
                continue;
            }
        };
        let Some((Some(runner), attempt)) = row else {
            continue;
        };
        if let Some(tx) = sessions.get(runner) {
            let msg = proto::SessionDown {
                msg: Some(proto::session_down::Msg::Cancel(proto::Cancel {
                    task_id: task,
                    attempt,
                })),
            };
            if tx.send(Ok(msg)).await.is_ok() {
                tracing::info!(task, runner, "cancel pushed to the runner");
            }
        }
    }
}
