//! A controller in-process on loopback ports, on a fresh database of the test PostgreSQL, and
//! helpers to enroll and run real runners against it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use controller::config::Config;
use controller::pki::Pki;
use controller::server::Listeners;
use controller::store::repos::{NewRepo, Repo};
use controller::store::tasks::{NewTask, Triage};
use controller::store::{MIGRATOR, Note, Store, Task};
use runner::identity::{Identity, Ticket};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::executor::ScriptExecutor;

/// Timings of a test controller.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lease length.
    pub lease: Duration,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Grace given to live leases at start.
    pub restart_grace: Duration,
    /// Client certificate validity.
    pub cert_validity: Duration,
    /// Further configuration (GitHub, model API, pipeline timings).
    pub configure: Configure,
}

/// A function that adjusts the controller's configuration before it starts.
#[derive(Clone, Default)]
pub struct Configure(pub Option<ConfigFn>);

/// The adjusting function.
pub type ConfigFn = std::sync::Arc<dyn Fn(&mut Config) + Send + Sync>;

impl std::fmt::Debug for Configure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Configure(..)"
        } else {
            "Configure(none)"
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(3),
            heartbeat: Duration::from_secs(1),
            restart_grace: Duration::from_secs(10),
            cert_validity: Duration::from_secs(3600),
            configure: Configure::default(),
        }
    }
}

/// A running controller.
pub struct TestController {
    /// Its store (same database).
    pub store: Store,
    /// Runner gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    db_url: String,
    options: Options,
    shutdown: CancellationToken,
    running: Option<controller::server::Running>,
}

/// Installs the ring provider for code that builds rustls configs without naming one.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl TestController {
    /// Starts a controller on a fresh database.
    pub async fn start(options: Options) -> Self {
        init();
        let db = pgembed::testing::cluster()
            .await
            .fresh_database(&MIGRATOR)
            .await
            .expect("database");
        Self::start_on(db.url, None, None, options).await
    }

    /// Starts a controller on a fresh database, listening on `grpc` and `http` (addresses of a
    /// test network, say).
    pub async fn start_at(grpc: SocketAddr, http: SocketAddr, options: Options) -> Self {
        init();
        let db = pgembed::testing::cluster()
            .await
            .fresh_database(&MIGRATOR)
            .await
            .expect("database");
        Self::start_on(db.url, Some(grpc), Some(http), options).await
    }

    /// Starts a controller on the (empty or migrated) database at `db_url`.
    pub async fn start_on_database(db_url: String, options: Options) -> Self {
        init();
        Self::start_on(db_url, None, None, options).await
    }

    async fn start_on(
        db_url: String,
        grpc: Option<SocketAddr>,
        http: Option<SocketAddr>,
        options: Options,
    ) -> Self {
        let grpc_listener =
            TcpListener::bind(grpc.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
                .await
                .expect("bind grpc");
        let http_listener =
            TcpListener::bind(http.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
                .await
                .expect("bind http");
        let grpc = grpc_listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();
        let mut config = Config {
            database_url: Some(db_url.clone()),
            lease: options.lease,
            heartbeat_interval: options.heartbeat,
            restart_grace: options.restart_grace,
            client_cert_validity: options.cert_validity,
            reaper_interval: Duration::from_millis(500),
            lease_wait: Duration::from_secs(5),
            data_dir: state_dir("controller"),
            ..Config::default()
        };
        if let Some(f) = &options.configure.0 {
            f(&mut config);
        }
        let shutdown = CancellationToken::new();
        let listeners = Listeners {
            http: http_listener,
            grpc: grpc_listener,
        };
        // Serving when started: the CA exists and both listeners accept.
        let running = controller::server::start(config, listeners, shutdown.clone())
            .await
            .expect("the controller starts");
        let store = Store::connect(&db_url, 10).await.expect("store");
        Self {
            store,
            grpc,
            http,
            db_url,
            options,
            shutdown,
            running: Some(running),
        }
    }

    /// A handle on a controller running elsewhere (another process) on `store`'s database:
    /// the helpers work, `stop`/`restart` do not apply.
    pub fn attach(store: Store, grpc: SocketAddr) -> Self {
        Self {
            store,
            grpc,
            http: grpc,
            db_url: String::new(),
            options: Options::default(),
            shutdown: CancellationToken::new(),
            running: None,
        }
    }

    /// The database's URL (for another replica on the same database).
    pub fn db_url(&self) -> &str {
        &self.db_url
    }

    /// The runner endpoint URL.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.grpc.port())
    }

    /// Waits until task `id` satisfies `cond` and returns it. Fails after `timeout`, or as soon as
    /// the task has ended (failed or cancelled) without satisfying it, with its timeline and log
    /// tail.
    pub async fn wait_for(
        &self,
        id: i64,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Task) -> bool,
    ) -> Task {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let t = self.store.task(id).await.expect("the task exists");
            if cond(&t) {
                return t;
            }
            let ended = t.status.is_terminal() && t.status != controller::store::Status::Merged;
            if ended || tokio::time::Instant::now() >= deadline {
                panic!(
                    "gave up after {timeout:?} waiting for {what}: task {id} is {} ({:?}, error {:?})\n{}",
                    t.status,
                    t.terminal_reason.0,
                    t.error,
                    self.diagnosis(&t).await
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Everything attempt `attempt` of task `id` logged, as text.
    pub async fn log_text(&self, id: i64, attempt: i32) -> String {
        self.store
            .log_chunks(id, attempt)
            .await
            .expect("log chunks")
            .iter()
            .map(|(_, _, d)| String::from_utf8_lossy(d).into_owned())
            .collect()
    }

    /// Waits until task `id` has status `status` (see [`Self::wait_for`]).
    pub async fn wait_status(&self, id: i64, status: &str, timeout: Duration) -> Task {
        self.wait_for(id, &format!("status {status}"), timeout, |t| {
            t.status.as_str() == status
        })
        .await
    }

    /// A task's timeline and the head and tail of its logs, for a failing test's message.
    async fn diagnosis(&self, t: &Task) -> String {
        let timeline: Vec<String> = self
            .store
            .timeline(t.id)
            .await
            .unwrap_or_default()
            .iter()
            .map(|e| {
                format!(
                    "{} → {} ({}, {}) {}",
                    e.from_status.clone().unwrap_or_default(),
                    e.to_status,
                    e.reason,
                    e.actor,
                    e.data.as_ref().map(|d| d.0.to_string()).unwrap_or_default()
                )
            })
            .collect();
        let mut logs = String::new();
        for attempt in 1..=t.attempt {
            for (_, stream, data) in self
                .store
                .log_chunks(t.id, attempt)
                .await
                .unwrap_or_default()
            {
                logs.push_str(&format!(
                    "[{attempt} {stream}] {}",
                    String::from_utf8_lossy(&data)
                ));
            }
        }
        let n = logs.chars().count();
        let logs = if n > 8000 {
            let head: String = logs.chars().take(4000).collect();
            let end: String = logs.chars().skip(n - 4000).collect();
            format!("{head}\n[…]\n{end}")
        } else {
            logs
        };
        format!("timeline:\n{}\nlog tail:\n{logs}", timeline.join("\n"))
    }

    /// Stops the controller (the database stays).
    pub async fn stop(self) -> (String, SocketAddr, SocketAddr, Options) {
        self.shutdown.cancel();
        if let Some(running) = self.running {
            running.stopped().await.expect("controller ran");
        }
        self.store.close().await;
        (self.db_url, self.grpc, self.http, self.options)
    }

    /// Stops and starts again on the same database and ports.
    pub async fn restart(self) -> Self {
        let (db, grpc, http, options) = self.stop().await;
        Self::start_on(db, Some(grpc), Some(http), options).await
    }

    /// Starts again after [`TestController::stop`].
    pub async fn start_again(
        db: String,
        grpc: SocketAddr,
        http: SocketAddr,
        options: Options,
    ) -> Self {
        Self::start_on(db, Some(grpc), Some(http), options).await
    }

    /// A join ticket (token + CA fingerprint) with `labels`.
    pub async fn ticket(&self, labels: &[&str]) -> String {
        let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        let token = self
            .store
            .create_join_token("user:admin", Duration::from_secs(600), &labels)
            .await
            .expect("token");
        let pki = Pki::load_or_create(&self.store, Duration::from_secs(3600))
            .await
            .expect("pki");
        pki.join_ticket(&token)
    }

    /// A repository.
    pub async fn repo(&self, name: &str) -> Repo {
        self.store
            .add_repo(&NewRepo {
                name: name.into(),
                clone_url: format!("https://example.invalid/{name}.git"),
                default_branch: "main".into(),
            })
            .await
            .expect("repo")
    }

    /// A queued task whose title scripts the executor.
    pub async fn task(&self, repo: &Repo, script: &str) -> Task {
        let mut t = NewTask::for_issue(repo.id, 0, script, "scripted");
        t.issue_number = None;
        let t = self.store.create_task(&t).await.expect("task");
        // The controller's own triage may have queued it already.
        match self
            .store
            .triage(t.id, &Triage::default(), &Note::new("test", "triaged"))
            .await
        {
            Ok(t) => t,
            Err(controller::store::Error::IllegalTransition { .. }) => {
                self.store.task(t.id).await.expect("task")
            }
            Err(e) => panic!("triage: {e}"),
        }
    }
}

/// A fresh state directory.
pub fn state_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bp-e2e-{}-{name}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Enrolls a runner named `name` through the real join flow.
pub async fn enroll(c: &TestController, name: &str, labels: &[&str]) -> (Identity, PathBuf) {
    let dir = state_dir(name);
    let ticket: Ticket = c.ticket(labels).await.parse().expect("ticket");
    let id = runner::identity::join(&c.url(), &ticket, name, &dir)
        .await
        .expect("join");
    (id, dir)
}

/// A runner identity made directly with the CA (no join round trip): for benchmarks that need
/// hundreds of runners.
pub async fn quick_identity(c: &TestController, name: &str, capacity: i32) -> Identity {
    let runner = c
        .store
        .register_runner(name, &[], capacity)
        .await
        .expect("runner");
    let pki = Pki::load_or_create(&c.store, Duration::from_secs(3600))
        .await
        .expect("pki");
    let (key_pem, csr_pem) = runner::identity::new_key_and_csr().expect("csr");
    let cert = pki.sign_runner(&csr_pem, runner.id).expect("sign");
    c.store
        .set_runner_cert(runner.id, &cert.serial, cert.not_after)
        .await
        .expect("cert");
    Identity {
        runner_id: runner.id,
        controller: c.url(),
        name: name.to_owned(),
        cert_pem: cert.pem,
        key_pem,
        ca_pem: pki.ca_pem().to_owned(),
        replicas: Vec::new(),
    }
}

/// An in-process runner daemon.
pub struct RunnerHandle {
    /// Drain/stop switches.
    pub control: runner::daemon::Control,
    /// The daemon task.
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl RunnerHandle {
    /// Stops it (work is abandoned) and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.control.stop.cancel();
        self.handle.await.expect("runner task")
    }
}

/// Runs the real runner daemon in-process.
pub fn spawn_runner(
    identity: Identity,
    state_dir: &Path,
    executor: ScriptExecutor,
    capacity: u32,
) -> RunnerHandle {
    spawn_runner_with(identity, state_dir, Arc::new(executor), capacity)
}

/// Runs the real runner daemon in-process with any executor.
pub fn spawn_runner_with(
    identity: Identity,
    state_dir: &Path,
    executor: Arc<dyn runner::executor::Executor>,
    capacity: u32,
) -> RunnerHandle {
    let control = runner::daemon::Control::default();
    let config = runner::daemon::Config {
        state_dir: state_dir.to_owned(),
        capacity,
        labels: vec![],
    };
    let handle = tokio::spawn(runner::daemon::run(
        config,
        identity,
        executor,
        control.clone(),
    ));
    RunnerHandle { control, handle }
}

pub use sim::kit::eventually;

/// Sends `sig` (`-STOP`, `-CONT`, `-KILL`…) to process `pid`; whether `kill` said it was sent.
pub fn signal(pid: u32, sig: &str) -> bool {
    xcmd::Cmd::new("kill", std::env::temp_dir())
        .args([sig, &pid.to_string()])
        .to_std()
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the Docker tests are skipped (`BP_SKIP_DOCKER=1`); CI never sets it.
pub fn skip_docker() -> bool {
    std::env::var("BP_SKIP_DOCKER").is_ok_and(|v| v == "1")
}

/// A git repository to act as a task's remote: `origin.git` (bare) with `files` committed on
/// `main`. Returns its path (usable as a clone URL).
pub fn fixture_repo(files: &[(&str, &str)]) -> PathBuf {
    let dir = state_dir("repo");
    let origin = dir.join("origin.git");
    let work = dir.join("seed");
    let git = |cwd: &Path, args: &[&str]| {
        let out = xcmd::Cmd::new("git", cwd)
            .args([
                "-c",
                "user.name=Fixture",
                "-c",
                "user.email=fixture@localhost",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .to_std()
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(
        &dir,
        &["init", "--quiet", "--bare", origin.to_str().unwrap()],
    );
    git(&dir, &["init", "--quiet", work.to_str().unwrap()]);
    for (name, content) in files {
        let p = work.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "initial"]);
    git(
        &work,
        &[
            "push",
            "--quiet",
            origin.to_str().unwrap(),
            "HEAD:refs/heads/main",
        ],
    );
    origin
}

/// A free TCP port on all interfaces.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
