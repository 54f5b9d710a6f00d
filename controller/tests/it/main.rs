//! Controller integration tests, on a real PostgreSQL (a private server per test binary, a fresh
//! database per test; `DATABASE_URL` to use another server).

mod agents;
mod api;
mod best_of;
mod ci_gate;
mod claims;
mod cleanup;
mod config;
mod contract;
mod evidence;
mod forge;
mod guard;
mod intake;
mod leases;
mod lifecycle;
mod loops;
mod merge_queue;
mod parity;
mod password;
mod plan_gate;
mod postmerge;
mod redteam;
mod replicas;
mod reproduce;
mod server;
mod shapes;
mod stats;
mod transitions;

use std::time::Duration;

use controller::store::claims::{ClaimRequest, LeaseRef};
use controller::store::lifecycle::status_texts;
use controller::store::repos::{NewRepo, Repo};
use controller::store::tasks::{NewTask, Triage};
use controller::store::{MIGRATOR, Note, RunnerId, Status, Store, Task};

/// A store on a fresh, migrated database, and the database's URL.
pub async fn store_and_url() -> (Store, String) {
    // Whatever a test builds next (an HTTP client for a webhook, a TLS server), the process has
    // its crypto provider, however the tests are filtered or ordered.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = pgembed::testing::cluster()
        .await
        .fresh_database(&MIGRATOR)
        .await
        .expect("fresh database");
    (
        Store::connect(&db.url, 40).await.expect("connect"),
        db.url.clone(),
    )
}

/// A store on a fresh, migrated database.
pub async fn store() -> Store {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = pgembed::testing::cluster()
        .await
        .fresh_database(&MIGRATOR)
        .await
        .expect("fresh database");
    Store::connect(&db.url, 40).await.expect("connect")
}

pub async fn repo(store: &Store, name: &str) -> Repo {
    store
        .add_repo(&NewRepo {
            name: name.into(),
            clone_url: format!("https://example.invalid/{name}.git"),
            default_branch: "main".into(),
        })
        .await
        .expect("add repo")
}

pub async fn runner(store: &Store, name: &str) -> RunnerId {
    store
        .register_runner(name, &[], 4)
        .await
        .expect("register runner")
        .id
}

pub fn note(reason: &str) -> Note {
    Note::new("user:test", reason)
}

/// A task created through the API (no issue number) and moved to `queued`.
pub async fn queued(store: &Store, repo: &Repo, title: &str) -> Task {
    queued_with(store, repo, title, Triage::default()).await
}

pub async fn queued_with(store: &Store, repo: &Repo, title: &str, triage: Triage) -> Task {
    let mut t = NewTask::for_issue(repo.id, 0, title, "body");
    t.issue_number = None;
    let task = store.create_task(&t).await.expect("create task");
    store
        .triage(task.id, &triage, &note("triaged"))
        .await
        .expect("triage")
}

pub fn claim_req(runner: RunnerId) -> ClaimRequest<'static> {
    ClaimRequest {
        runner_id: runner,
        labels: &[],
        lease: Duration::from_secs(60),
        capacity: None,
    }
}

/// Claims the next task for `runner`, expecting one, and starts the claim as a runner's first
/// report does: the task row is `leased` under the returned lease.
pub async fn claim(store: &Store, runner: RunnerId) -> (Task, LeaseRef) {
    let t = store
        .claim(&claim_req(runner))
        .await
        .expect("claim")
        .expect("a task to claim");
    let lease = LeaseRef::of(&t).expect("lease token");
    assert!(
        store
            .start_claim_now(&lease)
            .await
            .expect("start the claim"),
        "the claim starts"
    );
    (t, lease)
}

/// Puts a task straight into `status` (test setup only), keeping the row consistent: a lease for
/// active statuses, a terminal reason for terminal ones, best-of-N for `candidates`, a (self)
/// parent for a `finished` candidate (the repository's active count is counted
/// from the tasks; a capped repository's slots are not taken).
pub async fn force_status(store: &Store, id: i64, status: Status, runner: RunnerId) -> Task {
    sqlx::query(
        "UPDATE tasks SET status = $2, \
           terminal_reason = CASE $2 WHEN 'merged' THEN 'succeeded' WHEN 'failed' THEN 'agent_failed' \
                                     WHEN 'canceled' THEN 'canceled_by_user' WHEN 'finished' THEN 'succeeded' END, \
           best_of = CASE WHEN $2 = 'candidates' THEN 2 ELSE best_of END, \
           parent_id = CASE WHEN $2 = 'finished' THEN id ELSE parent_id END, \
           candidate = CASE WHEN $2 = 'finished' THEN 1 ELSE candidate END, \
           parent_attempt = CASE WHEN $2 = 'finished' THEN 0 ELSE parent_attempt END, \
           attempt = CASE WHEN $2 = ANY($3) THEN attempt + 1 ELSE attempt END, \
           lease_token = CASE WHEN $2 = ANY($3) THEN gen_random_uuid() END, \
           runner_id = CASE WHEN $2 = ANY($3) THEN $4 ELSE runner_id END, \
           lease_expires_at = CASE WHEN $2 = ANY($3) THEN now() + interval '1 hour' END, \
           ev_seq = ev_seq + 1, ev_actor = 'test', ev_reason = 'forced' \
         WHERE id = $1",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(status_texts(Status::ACTIVE))
    .bind(runner)
    .execute(store.pool())
    .await
    .unwrap();
    store.task(id).await.unwrap()
}

/// A controller serving one test on loopback ports.
pub struct Serving {
    /// Its HTTP address.
    pub addr: std::net::SocketAddr,
    /// Cancel to stop it.
    pub shutdown: tokio_util::sync::CancellationToken,
    running: controller::server::Running,
}

impl Serving {
    /// Starts a controller on `config`; it serves when this returns.
    pub async fn start(config: controller::config::Config) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = http.local_addr().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = controller::server::start(
            config,
            controller::server::Listeners { http, grpc },
            shutdown.clone(),
        )
        .await
        .expect("the controller starts");
        Self {
            addr,
            shutdown,
            running,
        }
    }

    /// Stops it and checks it stopped cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.running
            .stopped()
            .await
            .expect("the controller stops cleanly");
    }
}

pub use sim::kit::eventually;

/// Makes a task's lease expire now (test setup only).
pub async fn expire_now(store: &Store, id: i64) {
    sqlx::query("UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
}
