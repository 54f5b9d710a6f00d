//! The multi-host rig and the chaos run on it. Every part is a process on a host of its own (a
//! network namespace with its own address on one bridge, [`crate::netns`]): two controller
//! replicas (`e2e-controller`) and three runners (`e2e-runner`, the real daemon with a paced
//! executor that logs, commits and bundles like an agent's run), all over real mTLS with each
//! controller's certificate checked against the address dialed. PostgreSQL, the GitHub simulator
//! and the scripted model API are on the rig's own host (the bridge address; PostgreSQL through a
//! forwarder, since it listens on loopback). Any part can be killed, restarted, frozen (SIGSTOP)
//! or cut off.
//!
//! [`run`] files labelled issues across repositories and, while they go through the whole
//! pipeline, injects the faults of [`Fault`] one after another, each at a moment when it hurts (a
//! runner's fault while it runs an attempt); it measures how long the fleet took to recover from
//! each and how much agent work was lost to it, and returns what the run left behind for the
//! caller to check: every task's end, the simulators' requests and comments, every attempt's
//! start and end as the runners recorded them, and the results the controller accepted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use controller::store::Store;
use runner::executor::{Executor, TaskContext};
use runner::task::{ExecResult, Outcome};

use crate::fleet::{CommitExecutor, Sims};
use crate::harness::{free_port, state_dir};
use crate::netns::{Host, Net};

/// What a controller process needs (written as JSON for `e2e-controller --spec <file>`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ControllerSpec {
    /// Database URL.
    pub database_url: String,
    /// Runner listener.
    pub grpc: SocketAddr,
    /// HTTP listener.
    pub http: SocketAddr,
    /// Lease length.
    pub lease: Duration,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Grace for live leases at start.
    pub restart_grace: Duration,
    /// GitHub simulator's URL.
    pub github_url: String,
    /// Its token.
    pub github_token: String,
    /// The model API's URL and key, if any.
    pub model: Option<(String, String)>,
    /// Webhook secret.
    pub webhook_secret: String,
    /// Who may trigger work.
    pub allowed_users: Vec<String>,
    /// State directory.
    pub data_dir: PathBuf,
}

impl ControllerSpec {
    /// The controller's configuration: as the tests' in-process controllers, on the rig.
    pub fn config(&self) -> controller::config::Config {
        let mut config = controller::config::Config {
            database_url: Some(self.database_url.clone()),
            grpc_listen: self.grpc,
            http_listen: self.http,
            server_names: vec![self.grpc.ip().to_string()],
            lease: self.lease,
            heartbeat_interval: self.heartbeat,
            restart_grace: self.restart_grace,
            reaper_interval: Duration::from_millis(500),
            lease_wait: Duration::from_secs(5),
            data_dir: self.data_dir.clone(),
            webhook_secret: self.webhook_secret.clone(),
            allowed_users: self.allowed_users.clone(),
            github: Some(controller::forge::github::GitHubConfig::with_token(
                &self.github_url,
                &self.github_token,
            )),
            poll_interval: Duration::from_secs(3600),
            max_db_connections: 20,
            ..controller::config::Config::default()
        };
        if let Some((url, key)) = &self.model {
            config.model = Some(controller::llm::ModelConfig {
                base_url: url.clone(),
                api_key: key.clone(),
                timeout: Duration::from_secs(30),
                cli: None,
            });
        }
        config.pipeline.ci_poll = Duration::from_millis(200);
        config.pipeline.concurrency = 4;
        config
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An executor that works like an agent's run at the least cost: it logs `lines` numbered lines
/// spread over `agent` (stopping when cancelled), then commits a file and hands back a real
/// bundle ([`CommitExecutor`]). Every start and end is recorded with its time in `record`
/// (`start|end task attempt pid unix-ms [outcome]`), shared by every runner process.
pub struct PacedExecutor {
    inner: CommitExecutor,
    record: PathBuf,
    agent: Duration,
    lines: u32,
}

impl PacedExecutor {
    /// Works under `work`, records in `record`.
    pub fn new(work: PathBuf, record: PathBuf, agent: Duration, lines: u32) -> Self {
        Self {
            inner: CommitExecutor::new(work),
            record,
            agent,
            lines,
        }
    }

    fn note(&self, line: String) {
        crate::executor::append_line(&self.record, &line);
    }
}

/// The line a paced run logs as its `i`-th.
pub fn paced_line(i: u32) -> String {
    format!("agent step {i}\n")
}

#[async_trait::async_trait]
impl Executor for PacedExecutor {
    fn backends(&self) -> Vec<String> {
        vec!["claude".into()]
    }

    async fn run(&self, ctx: TaskContext) -> ExecResult {
        let lease = ctx.assignment.lease.clone();
        let pid = std::process::id();
        self.note(format!(
            "start {} {} {pid} {}",
            lease.task_id,
            lease.attempt,
            now_ms()
        ));
        let step = self.agent / self.lines.max(1);
        let mut canceled = false;
        for i in 0..self.lines {
            ctx.log("stdout", paced_line(i).as_bytes());
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = ctx.cancelled().cancelled() => { canceled = true; break; }
            }
        }
        let result = match canceled {
            true => ExecResult::new(Outcome::Canceled),
            false => self.inner.run(ctx).await,
        };
        self.note(format!(
            "end {} {} {pid} {} {:?}",
            lease.task_id,
            lease.attempt,
            now_ms(),
            result.outcome
        ));
        result
    }
}

/// An attempt as the runners recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Task.
    pub task: i64,
    /// Attempt.
    pub attempt: i32,
    /// The runner process.
    pub pid: u32,
    /// Start, unix ms.
    pub started: u64,
    /// End, unix ms, and outcome; `None` while running or when its process died.
    pub ended: Option<(u64, String)>,
}

/// Reads a [`PacedExecutor`] record.
pub fn attempts(record: &Path) -> Vec<Attempt> {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    let mut all: Vec<Attempt> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(kind), Some(task), Some(attempt), Some(pid), Some(at)) = (
            f.first(),
            f.get(1).and_then(|v| v.parse().ok()),
            f.get(2).and_then(|v| v.parse().ok()),
            f.get(3).and_then(|v| v.parse().ok()),
            f.get(4).and_then(|v| v.parse().ok()),
        ) else {
            continue;
        };
        match *kind {
            "start" => all.push(Attempt {
                task,
                attempt,
                pid,
                started: at,
                ended: None,
            }),
            "end" => {
                if let Some(a) = all
                    .iter_mut()
                    .find(|a| a.task == task && a.attempt == attempt && a.pid == pid)
                {
                    a.ended = Some((at, f.get(5).unwrap_or(&"").to_string()));
                }
            }
            _ => {}
        }
    }
    all
}

/// A process on a host of the rig.
struct Proc {
    child: std::process::Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) -> bool {
        crate::harness::signal(self.pid(), sig)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A frozen process must be thawed to die cleanly.
        let _ = self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The faults a chaos run injects, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// PostgreSQL stops for `db_outage` and starts again on its port.
    DatabaseRestart,
    /// A controller replica is killed (SIGKILL) and started again on its addresses.
    ControllerRestart,
    /// A runner is killed (SIGKILL) while it runs an attempt, and started again.
    RunnerKilled,
    /// A runner's link is cut while it runs an attempt, until its task has gone to another
    /// runner, then healed.
    RunnerPartitioned,
    /// A runner is frozen (SIGSTOP) while it runs an attempt, until its task has gone to
    /// another runner, then resumed.
    RunnerFrozen,
}

impl Fault {
    /// Every fault, in the order a run injects them.
    pub const ALL: &'static [Fault] = &[
        Fault::DatabaseRestart,
        Fault::ControllerRestart,
        Fault::RunnerKilled,
        Fault::RunnerPartitioned,
        Fault::RunnerFrozen,
    ];
}

/// The size and timings of a chaos run.
#[derive(Debug, Clone)]
pub struct Chaos {
    /// Labelled issues filed.
    pub issues: usize,
    /// Repositories they are spread over.
    pub repos: usize,
    /// Runner hosts (at least 3: one per runner fault).
    pub runners: usize,
    /// Controller replicas (at least 2).
    pub controllers: usize,
    /// How long each attempt works before it commits.
    pub agent: Duration,
    /// Log lines each attempt writes over that time.
    pub lines: u32,
    /// Lease length.
    pub lease: Duration,
    /// How long PostgreSQL stays down.
    pub db_outage: Duration,
    /// The faults to inject (in [`Fault::ALL`]'s order).
    pub faults: Vec<Fault>,
    /// Longest the run may take before what is left counts as stuck.
    pub limit: Duration,
    /// The `e2e-controller` and `e2e-runner` binaries (`env!("CARGO_BIN_EXE_…")` of the caller).
    pub bins: (PathBuf, PathBuf),
}

/// One injected fault, measured.
#[derive(Debug, Clone)]
pub struct FaultFigure {
    /// Which.
    pub fault: Fault,
    /// When it struck, unix ms.
    pub at: u64,
    /// The attempt it hit on purpose (a runner's fault): task and attempt.
    pub hit: Option<(i64, i32)>,
    /// From the fault until the fleet had recovered from it: for a runner's fault, until its
    /// task ran again elsewhere; for a controller's, until it served again; for the database's,
    /// until it was back and every controller ready on it again (`/readyz`).
    pub recovered: Duration,
    /// Agent work lost to it: the attempts it ended early, from their starts to the fault.
    pub lost_work: Duration,
    /// Attempts it cost (taken back or killed).
    pub lost_attempts: usize,
    /// For a partition or a freeze: from the heal (resume) until the cut-off attempt stopped.
    pub stopped_after_heal: Option<Duration>,
}

impl FaultFigure {
    fn new(fault: Fault, at: u64, recovered: Duration) -> Self {
        Self {
            fault,
            at,
            hit: None,
            recovered,
            lost_work: Duration::ZERO,
            lost_attempts: 0,
            stopped_after_heal: None,
        }
    }
}

/// What a chaos run left behind.
pub struct ChaosReport {
    /// From the first issue filed to the last task ended.
    pub wall: Duration,
    /// Every task: id, status, attempt, error.
    pub tasks: Vec<(i64, String, i32, Option<String>)>,
    /// The faults, measured (a fault that found no moment to strike within the limit is absent).
    pub faults: Vec<FaultFigure>,
    /// Every attempt the runners recorded.
    pub attempts: Vec<Attempt>,
    /// Runner processes killed on purpose (their attempts have no end).
    pub killed_pids: Vec<u32>,
    /// Results the controller accepted: (task, attempt).
    pub results: Vec<(i64, i32)>,
    /// Attempts taken back (lease expired, runner lost) that no fault hit on purpose: what the
    /// restarts cost. Each is also counted in the figure of the restart it followed.
    pub taken_back_unplanned: Vec<(i64, i32)>,
    /// Per task, its final attempt's log: whether every line arrived, or a gap is recorded.
    pub logs_incomplete: Vec<(i64, i32)>,
    /// The simulators and the issues filed.
    pub sims: Sims,
    /// The issues filed.
    pub issues: Vec<(String, u64)>,
}

const TOKEN: &str = "ghs_chaos";
const SECRET: &str = "whsec-chaos";

/// The rig: its network, its processes, what they need.
struct Rig {
    net: Net,
    db: pgembed::ServerConfig,
    db_port: u16,
    server: Option<pgembed::Server>,
    _db_forward: tokio::task::JoinHandle<()>,
    store: Store,
    controllers: Vec<(Host, ControllerSpec, PathBuf, Option<Proc>)>,
    runners: Vec<RunnerHost>,
    record: PathBuf,
    chaos: Chaos,
}

struct RunnerHost {
    host: Host,
    dir: PathBuf,
    controllers: String,
    proc: Option<Proc>,
}

impl Rig {
    fn spawn_controller(&mut self, i: usize) {
        let (host, _, spec_file, proc) = &mut self.controllers[i];
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(spec_file.with_extension("log"))
            .unwrap();
        let child = host
            .command(&self.chaos.bins.0, spec_file.parent().unwrap())
            .arg("--spec")
            .arg(&*spec_file)
            .env("RUST_LOG", "info")
            .to_std()
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the controller starts in its namespace");
        *proc = Some(Proc { child });
    }

    fn spawn_runner(&mut self, i: usize) {
        let r = &mut self.runners[i];
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(r.dir.join("runner.log"))
            .unwrap();
        let child = r
            .host
            .command(&self.chaos.bins.1, &r.dir)
            .arg(&r.dir)
            .arg(&self.record)
            .arg("1")
            .env(
                "RUST_LOG",
                std::env::var("BP_CHAOS_RUNNER_LOG").unwrap_or("info".into()),
            )
            .env("E2E_EXECUTOR", "paced")
            .env("E2E_AGENT_MS", self.chaos.agent.as_millis().to_string())
            .env("E2E_AGENT_LINES", self.chaos.lines.to_string())
            .env("BACKPORCHER_CONTROLLERS", &r.controllers)
            .to_std()
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the runner starts in its namespace");
        r.proc = Some(Proc { child });
    }

    /// Waits until controller `i` answers on its HTTP address.
    async fn controller_ready(&self, i: usize, within: Duration) -> bool {
        let addr = self.controllers[i].1.http;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if http_ok(addr, "/readyz").await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// An attempt runner `i` has just started (as its executor recorded), a quarter of the way
    /// in: a moment when a fault costs work. Waits up to `within` for one.
    async fn running_on(&self, i: usize, within: Duration) -> Option<(i64, i32)> {
        let pid = self.runners[i].proc.as_ref()?.pid();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let fresh = attempts(&self.record).into_iter().find(|a| {
                a.pid == pid
                    && a.ended.is_none()
                    && now_ms().saturating_sub(a.started) < self.chaos.agent.as_millis() as u64 / 8
            });
            if let Some(a) = fresh {
                let at = a.started + self.chaos.agent.as_millis() as u64 / 4;
                tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
                return Some((a.task, a.attempt));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits until task `task` runs (or has gone further) on an attempt after `attempt`.
    async fn ran_again(&self, task: i64, attempt: i32, within: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            let row: Option<(String, i32)> =
                sqlx::query_as("SELECT status, attempt FROM tasks WHERE id = $1")
                    .bind(task)
                    .fetch_optional(self.store.pool())
                    .await
                    .ok()
                    .flatten();
            if let Some((status, now)) = row
                && now > attempt
                && status != "leased"
            {
                return Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Waits until the runners' record shows `task`/`attempt` ended.
    async fn attempt_ended(&self, task: i64, attempt: i32, within: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if attempts(&self.record)
                .iter()
                .any(|a| a.task == task && a.attempt == attempt && a.ended.is_some())
            {
                return Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Work lost: of the attempts `lost` (task, attempt), from their start to `at` (unix ms).
    fn lost_work(&self, lost: &[(i64, i32)], at: u64) -> Duration {
        attempts(&self.record)
            .iter()
            .filter(|a| lost.contains(&(a.task, a.attempt)))
            .map(|a| Duration::from_millis(at.saturating_sub(a.started)))
            .sum()
    }

    async fn inject(&mut self, fault: Fault) -> Option<FaultFigure> {
        let within = self.chaos.limit / 4;
        match fault {
            Fault::DatabaseRestart => {
                self.running_any(within).await?;
                let started = now_ms();
                let t0 = Instant::now();
                self.server.take()?.stop().await.expect("PostgreSQL stops");
                tokio::time::sleep(self.chaos.db_outage).await;
                let mut config = self.db.clone();
                config.port = Some(self.db_port);
                self.server = Some(
                    pgembed::Server::start(&config)
                        .await
                        .expect("PostgreSQL starts again on its port"),
                );
                for i in 0..self.controllers.len() {
                    if !self.controller_ready(i, within).await {
                        return None;
                    }
                }
                Some(FaultFigure::new(fault, started, t0.elapsed()))
            }
            Fault::ControllerRestart => {
                self.running_any(within).await?;
                let started = now_ms();
                let t0 = Instant::now();
                if let Some(p) = self.controllers[0].3.take() {
                    p.kill();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.spawn_controller(0);
                let ready = self.controller_ready(0, within).await;
                assert!(ready, "the restarted controller never served again");
                Some(FaultFigure::new(fault, started, t0.elapsed()))
            }
            Fault::RunnerKilled => {
                let (task, attempt) = self.running_on(0, within).await?;
                let at = now_ms();
                let t0 = Instant::now();
                if let Some(p) = self.runners[0].proc.take() {
                    p.kill();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.spawn_runner(0);
                self.ran_again(task, attempt, within).await?;
                Some(FaultFigure {
                    hit: Some((task, attempt)),
                    lost_work: self.lost_work(&[(task, attempt)], at),
                    lost_attempts: 1,
                    ..FaultFigure::new(fault, at, t0.elapsed())
                })
            }
            Fault::RunnerPartitioned | Fault::RunnerFrozen => {
                let i = if fault == Fault::RunnerPartitioned {
                    1
                } else {
                    2
                };
                let (task, attempt) = self.running_on(i, within).await?;
                let at = now_ms();
                match fault {
                    Fault::RunnerPartitioned => self.net.link(&self.runners[i].host, false),
                    _ => assert!(self.runners[i].proc.as_ref()?.signal("-STOP"), "SIGSTOP"),
                }
                let recovered = self.ran_again(task, attempt, within).await;
                match fault {
                    Fault::RunnerPartitioned => self.net.link(&self.runners[i].host, true),
                    _ => assert!(self.runners[i].proc.as_ref()?.signal("-CONT"), "SIGCONT"),
                }
                let recovered = recovered?;
                let stopped = self.attempt_ended(task, attempt, within).await;
                Some(FaultFigure {
                    hit: Some((task, attempt)),
                    lost_work: self.lost_work(&[(task, attempt)], at),
                    lost_attempts: 1,
                    stopped_after_heal: Some(stopped.unwrap_or(within)),
                    ..FaultFigure::new(fault, at, recovered)
                })
            }
        }
    }

    /// Waits until some task is running.
    async fn running_any(&self, within: Duration) -> Option<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'running'")
                .fetch_one(self.store.pool())
                .await
                .unwrap_or(0);
            if n > 0 {
                tokio::time::sleep(self.chaos.agent / 4).await;
                return Some(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// Whether `GET path` at `addr` answers 200.
async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut head)).await,
        Ok(Ok(_))
    ) && head.starts_with(b"HTTP/1.1 200")
}

/// Builds the rig, files the issues, injects the faults, waits until every task has ended (or
/// the limit passed) and reports. Needs root and iproute2 ([`crate::netns::available`]).
pub async fn run(chaos: Chaos) -> ChaosReport {
    crate::harness::init();
    assert!(chaos.runners >= 3 && chaos.controllers >= 2);
    let mut net = Net::create();
    let own = net.own_addr();
    let dir = state_dir("chaos");
    std::fs::create_dir_all(&dir).unwrap();

    // PostgreSQL on the rig's own host, reached through the bridge address.
    let db = pgembed::ServerConfig {
        data_dir: dir.join("pg"),
        port: None,
        bin_dir: None,
        durable: false,
        password: None,
    };
    let server = pgembed::Server::start(&db)
        .await
        .expect("PostgreSQL starts");
    let db_port = server.port();
    server.ensure_database("bp").await.unwrap();
    let store = Store::connect(&server.url("bp"), 5).await.expect("store");
    store.migrate().await.expect("migrate");
    let forward_port = free_port();
    let db_forward = crate::netns::forward(
        SocketAddr::new(own, forward_port),
        SocketAddr::new("127.0.0.1".parse().unwrap(), db_port),
    )
    .await
    .expect("the database forwarder binds");
    let database_url = format!("postgres://postgres@{own}:{forward_port}/bp");

    let sims = Sims::start(own, TOKEN, chaos.repos, chaos.issues, true).await;
    sims.add_repos(&store).await;

    // Controllers, each on its host.
    let mut controllers = Vec::new();
    for i in 0..chaos.controllers {
        let host = net.add_host(&format!("c{i}"), 11 + i as u8);
        let spec = ControllerSpec {
            database_url: database_url.clone(),
            grpc: SocketAddr::new(host.addr, 7443),
            http: SocketAddr::new(host.addr, 8080),
            lease: chaos.lease,
            heartbeat: Duration::from_secs(1),
            restart_grace: Duration::from_secs(10),
            github_url: sims.gh_url.clone(),
            github_token: TOKEN.into(),
            model: sims
                .model_url
                .clone()
                .map(|u| (u, crate::fleet::MODEL_KEY.into())),
            webhook_secret: SECRET.into(),
            allowed_users: vec!["alice".into()],
            data_dir: dir.join(format!("c{i}")),
        };
        std::fs::create_dir_all(&spec.data_dir).unwrap();
        let file = spec.data_dir.join("spec.json");
        std::fs::write(&file, serde_json::to_vec(&spec).unwrap()).unwrap();
        controllers.push((host, spec, file, None));
    }
    let record = dir.join("attempts.record");
    let mut rig = Rig {
        net,
        db,
        db_port,
        server: Some(server),
        _db_forward: db_forward,
        store: store.clone(),
        controllers,
        runners: Vec::new(),
        record,
        chaos: chaos.clone(),
    };
    for i in 0..chaos.controllers {
        rig.spawn_controller(i);
    }
    for i in 0..chaos.controllers {
        assert!(
            rig.controller_ready(i, Duration::from_secs(60)).await,
            "controller {i} never served; its log: {}",
            std::fs::read_to_string(rig.controllers[i].2.with_extension("log")).unwrap_or_default()
        );
    }

    // Runners, each on its host, enrolled with one replica and told of the others.
    let urls: Vec<String> = rig
        .controllers
        .iter()
        .map(|(_, s, _, _)| format!("https://{}", s.grpc))
        .collect();
    for i in 0..chaos.runners {
        let host = rig.net.add_host(&format!("r{i}"), 21 + i as u8);
        let rdir = dir.join(format!("r{i}"));
        std::fs::create_dir_all(&rdir).unwrap();
        let home = &urls[i % urls.len()];
        let ticket: runner::identity::Ticket = ticket(&store, &[]).await.parse().unwrap();
        runner::identity::join(home, &ticket, &format!("chaos-r{i}"), &rdir)
            .await
            .expect("join over the bridge");
        let others: Vec<String> = urls.iter().filter(|u| *u != home).cloned().collect();
        rig.runners.push(RunnerHost {
            host,
            dir: rdir,
            controllers: others.join(","),
            proc: None,
        });
        rig.spawn_runner(i);
    }

    let t0 = Instant::now();
    let webhooks: Vec<String> = rig
        .controllers
        .iter()
        .map(|(_, s, _, _)| format!("http://{}/api/github/webhook", s.http))
        .collect();
    let issues = sims.file_issues(chaos.issues, SECRET, &webhooks).await;

    let mut figures = Vec::new();
    let mut killed_pids = Vec::new();
    for &fault in &chaos.faults {
        if fault == Fault::RunnerKilled
            && let Some(p) = &rig.runners[0].proc
        {
            killed_pids.push(p.pid());
        }
        match rig.inject(fault).await {
            Some(f) => {
                tracing::info!(?fault, recovered = ?f.recovered, "fault recovered");
                figures.push(f);
            }
            None => tracing::warn!(?fault, "found no moment to inject the fault"),
        }
    }

    // Every task ends.
    let deadline = t0 + chaos.limit;
    let terminal = controller::store::lifecycle::status_texts(controller::store::Status::TERMINAL);
    loop {
        let (total, open): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status <> ALL($1)) FROM tasks")
                .bind(&terminal)
                .fetch_one(store.pool())
                .await
                .unwrap_or((0, 1));
        if (total as usize >= chaos.issues && open == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = t0.elapsed();
    // Long enough for any attempt still working somewhere to hear that its lease is gone, and for
    // the milestones to catch up: GitHub comments follow the timeline, and a walk the killed
    // replica had claimed waits for its claim to run out (`work::CLAIM_TTL`).
    tokio::time::sleep(chaos.lease + Duration::from_secs(2)).await;
    let settle = Instant::now() + controller::store::work::CLAIM_TTL + Duration::from_secs(15);
    while !sims.effects_not_once(&issues).is_empty() && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let tasks: Vec<(i64, String, i32, Option<String>)> =
        sqlx::query_as("SELECT id, status, attempt, error FROM tasks ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let results: Vec<(i64, i32)> =
        sqlx::query_as("SELECT task_id, attempt FROM task_results ORDER BY 1, 2")
            .fetch_all(store.pool())
            .await
            .unwrap();
    // Leases taken back other than those hit on purpose: a restart's cost, counted in the
    // figure of the last restart before it.
    let taken_back: Vec<(i64, i32, f64)> = sqlx::query_as(
        "SELECT task_id, attempt, EXTRACT(EPOCH FROM at)::float8 * 1000 FROM task_events \
         WHERE reason IN ('lease_expired', 'runner_lost') ORDER BY at",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let hit: Vec<(i64, i32)> = figures.iter().filter_map(|f| f.hit).collect();
    let mut taken_back_unplanned = Vec::new();
    for (task, attempt, at) in taken_back {
        if hit.contains(&(task, attempt)) {
            continue;
        }
        taken_back_unplanned.push((task, attempt));
        let restart = figures
            .iter()
            .filter(|f| f.hit.is_none() && (f.at as f64) <= at)
            .max_by_key(|f| f.at)
            .map(|f| f.fault);
        let lost = rig.lost_work(&[(task, attempt)], at as u64);
        if let Some(f) = figures.iter_mut().find(|f| Some(f.fault) == restart) {
            f.lost_attempts += 1;
            f.lost_work += lost;
        }
    }
    let mut logs_incomplete = Vec::new();
    for (id, status, attempt, _) in &tasks {
        if status != "merged" {
            continue;
        }
        let text: String = store
            .log_chunks(*id, *attempt)
            .await
            .unwrap_or_default()
            .iter()
            .map(|(_, _, d)| String::from_utf8_lossy(d).into_owned())
            .collect();
        let complete = (0..chaos.lines).all(|i| text.contains(&paced_line(i)));
        let gap = !store
            .log_gaps(*id, *attempt)
            .await
            .unwrap_or_default()
            .is_empty();
        if !complete && !gap {
            logs_incomplete.push((*id, *attempt));
        }
    }
    let attempts = attempts(&rig.record);
    for r in &mut rig.runners {
        r.proc.take();
    }
    for c in &mut rig.controllers {
        c.3.take();
    }
    if let Some(s) = rig.server.take() {
        let _ = s.stop().await;
    }
    drop(rig);
    ChaosReport {
        wall,
        tasks,
        faults: figures,
        attempts,
        killed_pids,
        results,
        taken_back_unplanned,
        logs_incomplete,
        sims,
        issues,
    }
}

/// A join ticket for a runner, from the shared CA.
async fn ticket(store: &Store, labels: &[&str]) -> String {
    let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
    let token = store
        .create_join_token("user:admin", Duration::from_secs(600), &labels)
        .await
        .expect("token");
    let pki = controller::pki::Pki::load_or_create(store, Duration::from_secs(3600))
        .await
        .expect("pki");
    pki.join_ticket(&token)
}

/// Agent work in a report: every attempt's time, and the part lost (attempts that did not
/// produce their task's result).
pub fn work(report: &ChaosReport) -> (Duration, Duration) {
    let kept: std::collections::HashSet<(i64, i32)> = report.results.iter().copied().collect();
    let mut all = Duration::ZERO;
    let mut lost = Duration::ZERO;
    for a in &report.attempts {
        let end = a.ended.as_ref().map(|e| e.0).unwrap_or(a.started);
        let d = Duration::from_millis(end.saturating_sub(a.started));
        all += d;
        if !kept.contains(&(a.task, a.attempt)) {
            lost += d;
        }
    }
    (all, lost)
}
