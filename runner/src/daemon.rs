//! The runner daemon: handshake, the session that renews every lease at a third of its length,
//! lease long-polls up to capacity, and one worker per task that runs the executor, ships its log,
//! uploads its bundle and completes it — retrying through controller outages, and stopping the
//! work at once when the lease is lost or a cancel arrives.
//!
//! Drain finishes current work and takes no more; stop cancels current work (reported as
//! abandoned, which re-queues it without spending a retry) and exits.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::client::{Client, Down, HelloInfo, LeaseState};
use crate::executor::{Executor, TaskContext};
use crate::identity::{self, Identity};
use crate::retry::{Backoff, transient};
use crate::spool::Spool;
use crate::task::{Assignment, ExecResult, Lease, Outcome};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory (identity, spools, work dirs).
    pub state_dir: PathBuf,
    /// Tasks at once.
    pub capacity: u32,
    /// Labels reported to the controller (it decides the effective ones).
    pub labels: Vec<String>,
}

/// Ways to end the daemon from outside.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Finish current work, take no more, then return.
    pub drain: CancellationToken,
    /// Cancel current work (reported as abandoned) and return.
    pub stop: CancellationToken,
}

/// Why a call to the controller gave up.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The lease is gone (ABORTED): stop the work.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The daemon or the work is stopping.
    #[error("stopped")]
    Stopped,
    /// The controller refused the call for good.
    #[error("{0}")]
    Refused(Status),
}

struct Slot {
    lease: Lease,
    cancel: CancellationToken,
    lost: AtomicBool,
    user_cancel: AtomicBool,
}

/// State shared by the daemon's loops and workers.
pub struct Shared {
    config: Config,
    client: RwLock<Client>,
    /// The controller's addresses and the one in use: an address that does not answer is left
    /// for the next (a replica of the same controller).
    endpoints: Vec<String>,
    endpoint: std::sync::atomic::AtomicUsize,
    identity: Mutex<Identity>,
    slots: Mutex<HashMap<(i64, i32), Arc<Slot>>>,
    freed: Notify,
    draining: AtomicBool,
    heartbeat: Mutex<Duration>,
    stop: CancellationToken,
}

impl Shared {
    /// The current controller client (replaced when the certificate is renewed, or when the
    /// controller address in use stops answering and another replica's is tried).
    pub fn client(&self) -> Client {
        self.client.read().expect("client lock").clone()
    }

    /// Moves on to the controller's next address after the one in use did not answer (nothing
    /// to do with a single address).
    fn fail_over(&self) {
        if self.endpoints.len() < 2 {
            return;
        }
        let next = (self.endpoint.fetch_add(1, Ordering::AcqRel) + 1) % self.endpoints.len();
        let url = &self.endpoints[next];
        let identity = self.identity.lock().expect("identity lock").clone();
        match identity.connect_to(url) {
            Ok(c) => {
                tracing::info!(controller = %url, "controller unreachable; trying another of its addresses");
                *self.client.write().expect("client lock") = c;
            }
            Err(e) => {
                tracing::warn!(controller = %url, error = %e, "cannot use a controller address")
            }
        }
    }

    /// A client for the address in use, with `identity` (after a certificate renewal).
    fn connect_current(&self, identity: &Identity) -> anyhow::Result<Client> {
        let i = self.endpoint.load(Ordering::Acquire) % self.endpoints.len().max(1);
        match self.endpoints.get(i) {
            Some(url) => identity.connect_to(url),
            None => identity.connect(),
        }
    }

    fn active(&self) -> Vec<Lease> {
        self.slots
            .lock()
            .expect("slots lock")
            .values()
            .map(|s| s.lease.clone())
            .collect()
    }

    fn slot(&self, task: i64, attempt: i32) -> Option<Arc<Slot>> {
        self.slots
            .lock()
            .expect("slots lock")
            .get(&(task, attempt))
            .cloned()
    }
}

/// Calls the controller until it answers, backing off through outages. ABORTED means the lease is
/// gone; other non-transient errors are final.
/// Every call is tried at least once; retries end when the daemon stops.
pub(crate) async fn call<T, F, Fut>(shared: &Shared, what: &str, mut f: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = Backoff::default();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(s) if s.code() == Code::Aborted => {
                return Err(CallError::LeaseLost(s.message().to_owned()));
            }
            Err(s) if transient(&s) => {
                tracing::debug!(what, error = %s.message(), "controller unreachable; retrying");
                if s.code() == Code::Unavailable {
                    shared.fail_over();
                }
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = shared.stop.cancelled() => return Err(CallError::Stopped),
                }
            }
            Err(s) => {
                tracing::error!(what, code = ?s.code(), error = %s.message(), "controller refused the call");
                return Err(CallError::Refused(s));
            }
        }
    }
}

/// Whether a refusal is about this runner itself (disabled, superseded certificate, another
/// protocol version) rather than about one call.
fn identity_refused(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        s.code(),
        PermissionDenied | Unauthenticated | FailedPrecondition
    )
}

/// Runs the daemon until drained or stopped. Returns an error when the controller refuses this
/// runner (disabled, not enrolled, incompatible).
pub async fn run(
    config: Config,
    identity: Identity,
    executor: Arc<dyn Executor>,
    control: Control,
) -> anyhow::Result<()> {
    let client = identity.connect()?;
    crate::redact::remember(&identity.key_pem);
    let endpoints = identity.endpoints();
    let shared = Arc::new(Shared {
        config,
        client: RwLock::new(client),
        endpoints,
        endpoint: std::sync::atomic::AtomicUsize::new(0),
        identity: Mutex::new(identity),
        slots: Mutex::new(HashMap::new()),
        freed: Notify::new(),
        draining: AtomicBool::new(false),
        heartbeat: Mutex::new(Duration::from_secs(10)),
        stop: control.stop.clone(),
    });
    let boot_id = uuid::Uuid::new_v4().to_string();
    let info = HelloInfo {
        labels: shared.config.labels.clone(),
        capacity: shared.config.capacity,
        backends: executor.backends(),
        boot_id,
        active: Vec::new(),
    };
    let hello = {
        let shared2 = shared.clone();
        let info = info.clone();
        call(&shared, "hello", move || {
            let c = shared2.client();
            let info = info.clone();
            async move { c.hello(&info).await }
        })
        .await
    };
    let hello = match hello {
        Ok(h) => h,
        Err(CallError::Stopped) => return Ok(()),
        Err(e) => anyhow::bail!("the controller refused this runner: {e}"),
    };
    *shared.heartbeat.lock().expect("heartbeat lock") = hello.heartbeat_interval;
    if hello.drain {
        shared.draining.store(true, Ordering::Release);
    }
    tracing::info!(labels = ?hello.labels, heartbeat_ms = hello.heartbeat_interval.as_millis() as u64, "runner connected");

    let session_stop = CancellationToken::new();
    let session = tokio::spawn(session_loop(shared.clone(), session_stop.clone()));
    let mut workers = JoinSet::new();
    let mut backoff = Backoff::default();
    loop {
        if control.stop.is_cancelled()
            || control.drain.is_cancelled()
            || shared.draining.load(Ordering::Acquire)
        {
            break;
        }
        while workers.try_join_next().is_some() {}
        let busy = shared.slots.lock().expect("slots lock").len() as u32;
        if busy >= shared.config.capacity {
            tokio::select! {
                _ = shared.freed.notified() => {}
                _ = control.stop.cancelled() => {}
                _ = control.drain.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let client = shared.client();
        let res = tokio::select! {
            r = client.lease(hello.lease_wait) => r,
            _ = control.stop.cancelled() => break,
            _ = control.drain.cancelled() => break,
        };
        match res {
            Ok((Some(assignment), _)) => {
                backoff.reset();
                // Register before anything else so the next heartbeat renews it.
                let slot = Arc::new(Slot {
                    lease: assignment.lease.clone(),
                    cancel: control.stop.child_token(),
                    lost: AtomicBool::new(false),
                    user_cancel: AtomicBool::new(false),
                });
                shared.slots.lock().expect("slots lock").insert(
                    (assignment.lease.task_id, assignment.lease.attempt),
                    slot.clone(),
                );
                tracing::info!(
                    task = assignment.lease.task_id,
                    attempt = assignment.lease.attempt,
                    "task leased"
                );
                workers.spawn(work(shared.clone(), executor.clone(), assignment, slot));
            }
            Ok((None, true)) => {
                tracing::info!("the controller asks this runner to drain");
                shared.draining.store(true, Ordering::Release);
            }
            Ok((None, false)) => backoff.reset(),
            Err(s) if transient(&s) => {
                tracing::debug!(error = %s.message(), "lease call failed; retrying");
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = control.stop.cancelled() => {}
                }
            }
            // Who this runner is or which protocol it speaks is refused: nothing it leases
            // could be reported, so it stops and says why.
            Err(s) if identity_refused(&s) => {
                control.stop.cancel();
                while workers.join_next().await.is_some() {}
                session_stop.cancel();
                let _ = session.await;
                anyhow::bail!("the controller refused this runner: {}", s.message());
            }
            // Anything else (an assignment it cannot read, say) is about one call: back off and
            // ask again, keeping the work in hand.
            Err(s) => {
                tracing::error!(code = ?s.code(), error = %s.message(), "the lease call failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay().max(Duration::from_secs(1))) => {}
                    _ = control.stop.cancelled() => {}
                }
            }
        }
    }
    tracing::info!(
        in_flight = workers.len(),
        "not taking more work; finishing what is running"
    );
    while workers.join_next().await.is_some() {}
    session_stop.cancel();
    let _ = session.await;
    tracing::info!("runner stopped");
    Ok(())
}

async fn session_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    let mut seq = 0u64;
    loop {
        if stop.is_cancelled() {
            return;
        }
        renew_certificate_if_due(&shared).await;
        let (tx, rx) = mpsc::channel(8);
        let client = shared.client();
        let stream = tokio::select! {
            s = client.session(rx) => s,
            _ = stop.cancelled() => return,
        };
        let mut stream = match stream {
            Ok(s) => Box::pin(s),
            Err(e) => {
                tracing::debug!(error = %e.message(), "session failed to open; retrying");
                if e.code() == Code::Unavailable {
                    shared.fail_over();
                }
                tokio::select! { _ = backoff.wait() => continue, _ = stop.cancelled() => return }
            }
        };
        let mut next_beat = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(next_beat) => {
                    if certificate_due(&shared) {
                        // Renew at the top of the outer loop, then reconnect with the new one.
                        break;
                    }
                    seq += 1;
                    let active = shared.active();
                    let free = shared.config.capacity.saturating_sub(active.len() as u32);
                    if tx.send((seq, active, free)).await.is_err() {
                        break;
                    }
                    next_beat = tokio::time::Instant::now() + *shared.heartbeat.lock().expect("heartbeat lock");
                }
                msg = stream.next() => match msg {
                    Some(Ok(down)) => {
                        backoff.reset();
                        handle_down(&shared, down);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e.message(), "session broke; reconnecting");
                        break;
                    }
                    None => break,
                },
            }
        }
        if certificate_due(&shared) {
            continue;
        }
        tokio::select! { _ = backoff.wait() => {}, _ = stop.cancelled() => return }
    }
}

fn handle_down(shared: &Shared, down: Down) {
    match down {
        Down::Reply(reply) => {
            *shared.heartbeat.lock().expect("heartbeat lock") = reply.heartbeat_interval;
            if reply.drain && !shared.draining.swap(true, Ordering::AcqRel) {
                tracing::info!("the controller asks this runner to drain");
            }
            for (task, attempt, state) in reply.leases {
                let Some(slot) = shared.slot(task, attempt) else {
                    continue;
                };
                match state {
                    LeaseState::Active => {}
                    LeaseState::Cancel => cancel_slot(&slot, true, "cancel requested (heartbeat)"),
                    LeaseState::Lost => {
                        slot.lost.store(true, Ordering::Release);
                        cancel_slot(&slot, false, "lease lost");
                    }
                }
            }
        }
        Down::Cancel { task_id, attempt } => {
            if let Some(slot) = shared.slot(task_id, attempt) {
                cancel_slot(&slot, true, "cancel requested (pushed)");
            }
        }
        Down::Drain => {
            shared.draining.store(true, Ordering::Release);
        }
    }
}

fn cancel_slot(slot: &Slot, by_user: bool, why: &str) {
    if by_user {
        slot.user_cancel.store(true, Ordering::Release);
    }
    if !slot.cancel.is_cancelled() {
        tracing::info!(
            task = slot.lease.task_id,
            attempt = slot.lease.attempt,
            why,
            "stopping task work"
        );
        slot.cancel.cancel();
    }
}

fn certificate_due(shared: &Shared) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    shared
        .identity
        .lock()
        .expect("identity lock")
        .needs_renewal(now)
}

async fn renew_certificate_if_due(shared: &Arc<Shared>) {
    if !certificate_due(shared) {
        return;
    }
    let identity = shared.identity.lock().expect("identity lock").clone();
    let (key_pem, csr_pem) = match identity::new_key_and_csr() {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "cannot make a key for certificate renewal");
            return;
        }
    };
    crate::redact::remember(&key_pem);
    match shared.client().renew_certificate(&csr_pem).await {
        Ok((cert_pem, ca_pem)) => {
            let renewed = Identity {
                cert_pem,
                key_pem,
                ca_pem,
                ..identity
            };
            if let Err(e) = renewed.save(&shared.config.state_dir) {
                tracing::warn!(error = %e, "cannot save the renewed certificate");
                return;
            }
            match shared.connect_current(&renewed) {
                Ok(c) => *shared.client.write().expect("client lock") = c,
                Err(e) => tracing::warn!(error = %e, "cannot use the renewed certificate"),
            }
            *shared.identity.lock().expect("identity lock") = renewed;
            tracing::info!("client certificate renewed");
        }
        Err(e) => tracing::warn!(error = %e.message(), "certificate renewal failed; will retry"),
    }
}

async fn work(
    shared: Arc<Shared>,
    executor: Arc<dyn Executor>,
    assignment: Assignment,
    slot: Arc<Slot>,
) {
    let lease = assignment.lease.clone();
    let key = (lease.task_id, lease.attempt);
    let dir = shared
        .config
        .state_dir
        .join("work")
        .join(format!("{}-{}", lease.task_id, lease.attempt));
    let result = run_task(&shared, executor, assignment, &slot, &dir).await;
    match result {
        Ok(()) => {}
        Err(CallError::LeaseLost(why)) => tracing::warn!(
            task = lease.task_id,
            attempt = lease.attempt,
            why,
            "lease lost; work dropped"
        ),
        Err(CallError::Stopped) => tracing::info!(
            task = lease.task_id,
            "runner stopping; task left to its lease"
        ),
        Err(CallError::Refused(s)) => {
            tracing::error!(task = lease.task_id, error = %s.message(), "controller refused the task's report")
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    shared.slots.lock().expect("slots lock").remove(&key);
    shared.freed.notify_waiters();
}

async fn run_task(
    shared: &Arc<Shared>,
    executor: Arc<dyn Executor>,
    assignment: Assignment,
    slot: &Arc<Slot>,
    dir: &std::path::Path,
) -> Result<(), CallError> {
    let lease = assignment.lease.clone();
    let cancel = slot.cancel.clone();
    let stage_client = shared.clone();
    let l2 = lease.clone();
    call(shared, "report stage", move || {
        let c = stage_client.client();
        let l = l2.clone();
        async move { c.report_stage(&l, false).await }
    })
    .await?;
    let spool = Arc::new(
        Spool::create(&dir.join("spool"))
            .map_err(|e| CallError::Refused(Status::internal(e.to_string())))?,
    );
    let finish = CancellationToken::new();
    let shipper = tokio::spawn(ship(
        shared.clone(),
        lease.clone(),
        spool.clone(),
        finish.clone(),
        slot.clone(),
    ));
    let reporter = shared.clone();
    let report_lease = lease.clone();
    let ctx = TaskContext {
        assignment,
        work_dir: dir.join("work"),
        spool: spool.clone(),
        cancel: cancel.clone(),
        report_stage: Arc::new(move |verifying| {
            let shared = reporter.clone();
            let lease = report_lease.clone();
            Box::pin(async move {
                let s = shared.clone();
                call(&shared, "report stage", move || {
                    let client = s.client();
                    let lease = lease.clone();
                    async move { client.report_stage(&lease, verifying).await }
                })
                .await
                .is_ok()
            })
        }),
    };
    let mut result = executor.run(ctx).await;
    if let Err(e) = spool.finish() {
        tracing::warn!(task = lease.task_id, error = %e, "cannot close the log spool");
    }
    result.scrub();
    finish.cancel();
    let shipped = shipper.await.unwrap_or(Err(CallError::Stopped));
    if slot.lost.load(Ordering::Acquire) {
        return Err(CallError::LeaseLost("lease lost while working".into()));
    }
    shipped?;
    if slot.user_cancel.load(Ordering::Acquire) {
        result.outcome = Outcome::Canceled;
    } else if cancel.is_cancelled() && shared.stop.is_cancelled() {
        result.outcome = Outcome::Abandoned;
    }
    if let Some(bundle) = result.bundle.take() {
        let s = shared.clone();
        let l = lease.clone();
        let uploaded = call(shared, "upload bundle", move || {
            let c = s.client();
            let l = l.clone();
            let b = bundle.clone();
            async move { c.upload_bundle(&l, &b).await }
        })
        .await;
        match uploaded {
            Ok(_) => {}
            // A result the controller will never take ends this attempt as the agent's failure
            // (its budget is spent): it is not dropped to run again for free.
            Err(CallError::Refused(s)) if s.code() == Code::InvalidArgument => {
                result = refused_result(&result, "bundle", &s);
            }
            Err(e) => return Err(e),
        }
    }
    // Completion is idempotent: retry until the controller has it.
    let mut duplicate = complete(shared, &lease, &result).await;
    if let Err(CallError::Refused(s)) = &duplicate
        && s.code() == Code::InvalidArgument
        && result.outcome != Outcome::AgentFailed
    {
        let refused = refused_result(&result, "completion", s);
        duplicate = complete(shared, &lease, &refused).await;
    }
    let duplicate = duplicate?;
    tracing::info!(task = lease.task_id, attempt = lease.attempt, outcome = ?result.outcome, duplicate, "task completed");
    Ok(())
}

/// Reports `result` (idempotent: retried until the controller has it); `Ok(true)` for a duplicate.
async fn complete(
    shared: &Arc<Shared>,
    lease: &Lease,
    result: &ExecResult,
) -> Result<bool, CallError> {
    let s = shared.clone();
    let l = lease.clone();
    let r = result.clone();
    call(shared, "complete", move || {
        let c = s.client();
        let l = l.clone();
        let r = r.clone();
        async move { c.complete(&l, &r).await }
    })
    .await
}

/// The attempt's result when the controller refused `what` for good: the agent failed, with the
/// controller's reason, the usage kept (it was spent) and nothing else.
fn refused_result(result: &ExecResult, what: &str, s: &Status) -> ExecResult {
    tracing::error!(error = %s.message(), what, "the controller refused the result; the attempt fails");
    let mut failed = ExecResult::new(Outcome::AgentFailed);
    failed.usage = result.usage;
    failed.error = Some(format!(
        "the controller refused the {what}: {}",
        s.message()
    ));
    failed
}

/// Sends the spool to the controller in order until `finish` fires and everything is acknowledged.
async fn ship(
    shared: Arc<Shared>,
    lease: Lease,
    spool: Arc<Spool>,
    finish: CancellationToken,
    slot: Arc<Slot>,
) -> Result<(), CallError> {
    let mut offset = 0u64;
    loop {
        let (batch, next) = spool.read_from(offset, 512 * 1024, 500).map_err(|e| {
            CallError::Refused(Status::internal(format!("cannot read the log spool: {e}")))
        })?;
        if batch.is_empty() {
            if finish.is_cancelled() && offset >= spool.written() {
                return Ok(());
            }
            tokio::select! {
                _ = spool.appended() => {}
                _ = finish.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        if slot.lost.load(Ordering::Acquire) {
            return Err(CallError::LeaseLost("lease lost".into()));
        }
        let s = shared.clone();
        let l = lease.clone();
        let res = call(&shared, "append logs", move || {
            let c = s.client();
            let l = l.clone();
            let b = batch.clone();
            async move { c.append_logs(&l, b).await }
        })
        .await;
        match res {
            Ok(_) => offset = next,
            Err(CallError::Refused(s)) if s.code() == Code::InvalidArgument => {
                // A batch the controller will never take: skip it; the gap shows on the controller.
                tracing::error!(task = lease.task_id, error = %s.message(), "log batch refused; skipping it");
                offset = next;
            }
            Err(e) => return Err(e),
        }
    }
}
