//! The reaper: a singleton loop that takes expired leases back, settles best-of-N rounds whose
//! candidates it took back, ends tasks past their deadline (every 15 s at most) and denies plans
//! nobody decided on in time.
//!
//! It sleeps until the earliest live lease could expire (at most `interval`), then re-queues what
//! expired as `lease_expired` (or cancels it when cancellation was pending). Several controller
//! replicas may run it; a PostgreSQL advisory lock ([`crate::loops::lead`]) lets one of them work
//! at a time, proved alive before every sweep.
//!
//! A database outage costs no work: runners keep working while PostgreSQL is away, but their
//! renewals cannot be stored, so leases run out on paper. The replica that leads first reaches the
//! database; when that took longer than an outage's threshold, or its last sweep failed, or it
//! takes the lead again after losing the lock's session (a database restart), live leases get
//! the restart grace before anything is reaped, as a controller start does, and the runners' next
//! heartbeats renew them. A replica that does not lead grants nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::loops::{Leading, LoopCtx, Next, every, lead, singleton};
use crate::store::{SingletonLock, Store};

/// What the reaper keeps between sweeps.
#[derive(Default)]
struct State {
    /// The advisory lock's connection while this replica is the reaper.
    lock: Option<SingletonLock>,
    /// The last sweep could not reach the database.
    outage: bool,
    /// This process has led before (a lead taken again follows a lost session: an outage).
    led: bool,
    /// When this replica last ended tasks past their deadline.
    deadline_swept: Option<std::time::Instant>,
}

/// Deadlines are at least a minute long ([`Store::set_task_deadline`]); their sweep reads every
/// live task, so it runs at most this often rather than at every lease sweep.
const DEADLINE_SWEEP: Duration = Duration::from_secs(15);

/// Reaching the database taking longer than this counts as an outage.
const OUTAGE: Duration = Duration::from_secs(2);

/// Runs until `shutdown` is cancelled.
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    let interval = ctx.config.reaper_interval;
    let grace = ctx.config.restart_grace;
    let policy = ctx.config.pipeline.retry.clone();
    let state: Arc<Mutex<State>> = Arc::default();
    every("reaper", Vec::new(), interval, shutdown, || {
        let (store, state, policy) = (ctx.store.clone(), state.clone(), policy.clone());
        async move {
            let mut state = state.lock().await;
            match sweep(&store, &mut state, interval, grace, &policy).await {
                Ok(pause) => Ok(Next::WaitAtMost(pause)),
                Err(e) => {
                    // The lock's connection may be gone with the error: take it again; and
                    // leases may run out on paper meanwhile.
                    state.lock = None;
                    state.outage = true;
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
    state: &mut State,
    interval: Duration,
    grace: Duration,
    policy: &crate::store::tasks::RetryPolicy,
) -> Result<Duration, crate::store::Error> {
    let asked = std::time::Instant::now();
    store.ping().await?;
    let slow = asked.elapsed() > OUTAGE;
    let leading = lead(store, singleton::REAPER, &mut state.lock).await?;
    if leading == Leading::No {
        return Ok(interval);
    }
    // Taking the lead again means the lock's session was lost (the database restarted, the
    // connection was cut): as an outage. The first lead follows the start, which granted grace.
    let retaken = leading == Leading::Now && state.led;
    if leading == Leading::Now {
        tracing::info!("this controller runs the reaper");
        state.led = true;
    }
    if state.outage || slow || retaken {
        let extended = store.grant_grace(grace).await?;
        state.outage = false;
        tracing::warn!(
            leases = extended,
            grace_s = grace.as_secs(),
            "the database is back or the reaper changed hands; live leases get the restart grace before anything is reaped"
        );
    }
    let pruned = store.prune_work_claims().await?;
    if pruned > 0 {
        tracing::info!(pruned, "work claims of controllers that are gone removed");
    }
    // Best-of-N rounds whose candidates the reaper took back, or past the deadline with a
    // candidate that succeeded (ranked rather than failed), move on before the deadline sweep.
    for t in store.settle_candidates(policy, 100).await? {
        tracing::info!(task = t.id, status = %t.status, "best-of-N round settled");
    }
    if state
        .deadline_swept
        .is_none_or(|at| at.elapsed() >= DEADLINE_SWEEP)
    {
        for t in store.fail_past_deadline(100).await? {
            tracing::warn!(task = t, "task ran past its deadline; failed");
        }
        state.deadline_swept = Some(std::time::Instant::now());
    }
    // Plan gate: a plan nobody decided on by its due time is denied (never waits for ever).
    for t in store.deny_overdue_plans(100).await? {
        tracing::warn!(task = t, "plan approval timed out; task failed");
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
    for t in store.settle_candidates(policy, 100).await? {
        tracing::info!(task = t.id, status = %t.status, "best-of-N round settled");
    }
    // Sleep until the next lease could expire, bounded by the interval.
    Ok(match store.next_lease_expiry().await? {
        Some(secs) if secs > 0.0 => Duration::from_secs_f64(secs + 0.01).min(interval),
        Some(_) => Duration::from_millis(10),
        None => interval,
    })
}
