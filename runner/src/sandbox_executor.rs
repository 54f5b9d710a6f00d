//! The production executor: a task in the Docker sandbox.
//!
//! For one attempt: check out the task branch from the repository's mirror, write the prompt and
//! the agent CLI's trusted configuration (from the default branch, [`crate::agent_config`]), run
//! the agent CLI in a container with the model gateway as its only model access, run the verify
//! command in the same kind of container and give its output back to the agent while it fails
//! (bounded), then commit what the agent left and make a git bundle of the branch against its base.
//!
//! Nothing the sandbox wrote is ever opened by path on the host. The finish step — the commit,
//! the bundle, the diff statistics — runs in a container too, with the *trusted* git directory of
//! [`crate::workspace`] (so no config, hook or driver the agent planted in its `.git` is honoured)
//! and the work tree mounted read-only; it hands its outputs back as a tar archive on its standard
//! output, which the runner reads with a cap and takes apart entry by entry
//! ([`crate::bounded::read_outputs`]): regular files with known names under their caps, nothing
//! else. Every other stream out of a container is bounded too (lines, verify output).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::agent::{AgentBackend, AgentEvent};
use crate::bounded::{Capped, LineSplitter, Tail, read_outputs};
use crate::executor::{Executor, TaskContext};
use crate::firewall::Firewall;
use crate::gateway::Gateway;
use crate::prompt;
use crate::reproduce;
use crate::sandbox::{Egress, Ended, RunSpec, Sandbox, Stream};
use crate::task::{ExecResult, Outcome, Usage};
use crate::workspace::{Checkout, MIRROR_OBJECTS, Workspaces};

/// Longest line of agent output handled as one line; longer ones are cut.
pub const MAX_LINE: usize = 1 << 20;
/// Verify output kept in memory (the tail given back to the agent is shorter).
const VERIFY_TAIL_BYTES: usize = 256 * 1024;
/// Characters of verify output given to the agent and the controller.
const VERIFY_TAIL_CHARS: usize = 16_000;
/// Largest diff statistics and `-U0` diff read back from the finish step.
const MAX_DIFF_BYTES: u64 = 4_000_000;
/// Changed files listed in a result (the count is always exact).
const MAX_FILES_LISTED: usize = 2_000;

/// How the executor runs tasks.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// State directory (mirrors and the gateway socket live here).
    pub state_dir: PathBuf,
    /// Wall-clock limit of one agent run.
    pub agent_timeout: Duration,
    /// Longest an agent run may go without an event (output or model traffic through the
    /// gateway) before it is killed as stalled.
    pub stall_timeout: Duration,
    /// Wall-clock limit of one verify run.
    pub verify_timeout: Duration,
    /// Wall-clock limit of the verify run on the base, before the agent (for the evidence
    /// record; a base that fails or runs out of time is recorded as such, the attempt goes on).
    pub base_verify_timeout: Duration,
    /// Wall-clock limit of a repository environment's setup.
    pub setup_timeout: Duration,
    /// Environment snapshots unused this long are removed.
    pub env_max_age: Duration,
    /// Disk the environment snapshots may take before the least recently used go, bytes.
    pub env_disk_budget: u64,
    /// Repository mirrors (with their code-graph indexes) unused this long are removed.
    pub repo_max_age: Duration,
    /// Disk mirrors and indexes may take before the least recently used go, bytes.
    pub repo_disk_budget: u64,
    /// Certificate authorities an environment's setup trusts for the package registries (the
    /// host's bundle by default: a proxy in the way is trusted as the host trusts it). Public
    /// certificates only; mounted read-only.
    pub setup_ca_bundle: Option<PathBuf>,
    /// Agent re-runs with the verify output before giving up.
    pub max_verify_fixes: u32,
    /// Port of the gateway's TCP listeners (on the bridge addresses).
    pub gateway_port: u16,
    /// Longest code-graph build before the task goes on without it.
    pub graph_timeout: Duration,
    /// How often the sandbox firewall is checked (and repaired) while the runner runs.
    pub firewall_check: Duration,
    /// Ranges (CIDRs) an `open` sandbox may reach although they are private or link-local.
    pub open_allow: Vec<String>,
}

impl ExecConfig {
    /// The defaults for a runner with state in `state_dir` and its gateway on `gateway_port`.
    pub fn new(state_dir: PathBuf, gateway_port: u16) -> Self {
        Self {
            state_dir,
            agent_timeout: Duration::from_secs(3600),
            stall_timeout: Duration::from_secs(600),
            verify_timeout: Duration::from_secs(1800),
            base_verify_timeout: Duration::from_secs(600),
            setup_timeout: Duration::from_secs(1800),
            env_max_age: Duration::from_secs(14 * 24 * 3600),
            env_disk_budget: 20 << 30,
            repo_max_age: Duration::from_secs(30 * 24 * 3600),
            repo_disk_budget: 50 << 30,
            setup_ca_bundle: Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt"))
                .filter(|p| p.exists()),
            max_verify_fixes: 2,
            gateway_port,
            graph_timeout: Duration::from_secs(120),
            firewall_check: Duration::from_secs(15),
            open_allow: Vec::new(),
        }
    }
}

/// Gateway addresses as the containers see them.
#[derive(Debug, Clone)]
struct GatewayUrls {
    socket_dir: PathBuf,
    gateway_only: String,
    open: String,
}

/// The Docker executor.
pub struct SandboxExecutor {
    config: ExecConfig,
    sandbox: Sandbox,
    gateway: Gateway,
    urls: GatewayUrls,
    workspaces: Workspaces,
    graphs: crate::graphs::Graphs,
    backends: HashMap<&'static str, Arc<dyn AgentBackend>>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    firewall: Firewall,
    /// Why the sandbox networks are unsafe now (the firewall could not be put back), if they are.
    unsafe_network: Arc<std::sync::Mutex<Option<String>>>,
}

impl Drop for SandboxExecutor {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.abort();
        }
        self.firewall.remove_port_rules();
    }
}

impl SandboxExecutor {
    /// Prepares the host: removes orphan containers, creates the gateway-only network and its
    /// firewall guard, and starts the gateway on a unix socket and the bridge addresses.
    pub async fn start(
        config: ExecConfig,
        sandbox: Sandbox,
        gateway: Gateway,
    ) -> anyhow::Result<Self> {
        let orphans = sandbox.remove_orphans().await?;
        if orphans > 0 {
            tracing::info!(orphans, "removed containers of an earlier runner process");
        }
        let work = config.state_dir.join("work");
        if work.exists() {
            // Checkouts of an earlier process: their leases are gone with it.
            let _ = tokio::fs::remove_dir_all(&work).await;
        }
        sandbox.check_engine().await?;
        let (gw_ip, open_ip) = sandbox.ensure_networks().await?;
        let firewall = Firewall::new(config.gateway_port, config.open_allow.clone());
        firewall.ensure()?;
        let socket_dir = config.state_dir.join("gateway");
        tokio::fs::create_dir_all(&socket_dir).await?;
        set_mode(&socket_dir, 0o755)?;
        let socket = socket_dir.join("gateway.sock");
        let _ = tokio::fs::remove_file(&socket).await;
        let mut listeners = Vec::new();
        let unix = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        set_mode(&socket, 0o666)?;
        listeners.push(gateway.serve_unix(unix));
        for ip in [&gw_ip, &open_ip] {
            let addr = format!("{ip}:{}", config.gateway_port);
            let l = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the model gateway; choose another --gateway-port"))?;
            listeners.push(gateway.serve_tcp(l));
        }
        let urls = GatewayUrls {
            socket_dir,
            gateway_only: format!("http://{gw_ip}:{}", config.gateway_port),
            open: format!("http://{open_ip}:{}", config.gateway_port),
        };
        let mut backends: HashMap<&'static str, Arc<dyn AgentBackend>> = HashMap::new();
        for backend in crate::agent::available(&gateway) {
            backends.insert(backend.name(), backend);
        }
        let unsafe_network = Arc::new(std::sync::Mutex::new(None));
        listeners.push(tokio::spawn(keep_firewall(
            firewall.clone(),
            config.firewall_check,
            unsafe_network.clone(),
        )));
        Ok(Self {
            firewall,
            unsafe_network,
            workspaces: Workspaces::new(config.state_dir.join("mirrors")),
            graphs: crate::graphs::Graphs::new(&config.state_dir.join("graphs")),
            config,
            sandbox,
            gateway,
            urls,
            backends,
            listeners,
        })
    }

    fn egress(&self, policy: &str) -> (Egress, String) {
        match policy {
            "none" => (
                Egress::None {
                    socket_dir: self.urls.socket_dir.clone(),
                },
                "http://127.0.0.1:4180".into(),
            ),
            "open" => (Egress::Open, self.urls.open.clone()),
            _ => (Egress::GatewayOnly, self.urls.gateway_only.clone()),
        }
    }

    /// One attempt; what it learns of the repository's environment goes to `report`, whatever
    /// the outcome.
    async fn attempt(
        &self,
        ctx: &TaskContext,
        report: &mut Option<crate::environment::Report>,
    ) -> anyhow::Result<ExecResult> {
        let spec = &ctx.assignment.spec;
        let lease = &ctx.assignment.lease;
        let backend = self
            .backends
            .get(spec.agent.as_str())
            .cloned()
            .with_context(|| {
                let mut has: Vec<&str> = self.backends.keys().copied().collect();
                has.sort_unstable();
                format!(
                    "agent backend `{}` is not available on this runner (it has: {})",
                    spec.agent,
                    has.join(", ")
                )
            })?;
        ctx.log(
            "runner",
            format!("preparing {} (fetching the mirror)\n", spec.repo).as_bytes(),
        );
        let repo_dir = ctx.work_dir.join("repo");
        let checkout = self
            .workspaces
            .checkout(spec, lease.task_id, &repo_dir)
            .await?;
        // This attempt's mirror is in use now: the others may go by age and the disk budget.
        let pruned = self
            .workspaces
            .prune(
                &self.config.state_dir.join("graphs"),
                self.config.repo_max_age,
                self.config.repo_disk_budget,
            )
            .await;
        if !pruned.repos.is_empty() {
            tracing::info!(repos = ?pruned.repos, bytes = pruned.bytes, "mirrors and code-graph indexes pruned");
        }
        let agent_config =
            crate::agent_config::load(&checkout.mirror, &checkout.default_head, spec.agent_hooks)
                .await;
        ctx.log(
            "runner",
            format!(
                "checked out {} at {}\n",
                checkout.branch,
                &checkout.base[..12.min(checkout.base.len())]
            )
            .as_bytes(),
        );
        let task_dir = ctx.work_dir.join("task");
        tokio::fs::create_dir_all(&task_dir).await?;
        backend.write_config(&agent_config, &task_dir.join("agent"))?;
        for note in &agent_config.notes {
            ctx.log(
                "runner",
                format!("agent configuration: {note}\n").as_bytes(),
            );
        }
        let token = self.gateway.register_api(
            lease.task_id,
            spec.budget_microusd,
            spec.prices.clone(),
            backend.api(),
        );
        let (egress, gateway_url) = self.egress(&spec.egress_policy);
        if !matches!(egress, Egress::None { .. })
            && let Some(why) = self.unsafe_network.lock().expect("network lock").clone()
        {
            anyhow::bail!(
                "the sandbox firewall is not in place ({why}); this runner starts no networked sandbox until it is"
            );
        }
        let labels = HashMap::from([
            ("backporcher.task".to_string(), lease.task_id.to_string()),
            ("backporcher.attempt".to_string(), lease.attempt.to_string()),
        ]);
        let mut spec = spec.clone();
        if spec.stack.is_none() {
            spec.stack = prompt::detect_stack(&repo_dir);
        }
        // The repository's environment, from its default branch: set up once and snapshotted.
        let environment = match crate::environment::describe(
            &checkout.mirror,
            &checkout.default_head,
            spec.environment.as_ref(),
            &crate::environment::scope(&spec.repo, &spec.setup_secrets),
        )
        .await
        {
            Ok(e) => e,
            Err(why) => {
                *report = Some(crate::environment::Report {
                    commit: checkout.default_head.clone(),
                    error: Some(why.clone()),
                    ..Default::default()
                });
                return Ok(setup_failed(ctx, why));
            }
        };
        let rep = report.insert(crate::environment::Report::of(
            &checkout.default_head,
            environment.as_ref(),
        ));
        let mut env_image = None;
        let mut env_vars: Vec<String> = Vec::new();
        if let Some(environment) = &environment {
            for note in &environment.notes {
                ctx.log("runner", format!("environment: {note}\n").as_bytes());
            }
            match (&spec.verify_command, &environment.verify) {
                (None, Some(v)) => {
                    ctx.log("runner", format!("verify command from .backporcher.toml: `{v}` (the repository's settings set none)\n").as_bytes());
                    spec.verify_command = Some(v.clone());
                    rep.verify_from = Some(".backporcher.toml");
                }
                (Some(_), Some(v)) => {
                    let note = format!(
                        "verify command from the repository's settings; .backporcher.toml's `{v}` is overridden (settings win)"
                    );
                    ctx.log("runner", format!("{note}\n").as_bytes());
                    rep.notes.push(note);
                }
                _ => {}
            }
            if !environment.image.is_empty() {
                match self.environment(environment, &checkout, ctx).await? {
                    Ok((tag, reused)) => {
                        rep.snapshot = Some(tag.clone());
                        rep.setup = Some(if reused { "reused" } else { "ran" });
                        env_image = Some(tag);
                    }
                    Err(why) => {
                        rep.setup = Some("failed");
                        rep.error = Some(why.clone());
                        return Ok(setup_failed(ctx, why));
                    }
                }
                env_vars = environment
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
            }
        }
        if let Some(v) = &spec.verify_command {
            rep.verify = Some(v.clone());
            rep.verify_from.get_or_insert("the repository's settings");
        }
        let env_mounts: Vec<(PathBuf, String, bool)> = match env_image {
            Some(_) => vec![(
                crate::environment::agent_files_dir(&self.config.state_dir),
                "/opt/bp".into(),
                true,
            )],
            None => Vec::new(),
        };
        // The graph reads the checkout before the agent can touch it.
        let graph = match self
            .graphs
            .prepare(
                &spec.repo,
                &checkout.dir,
                self.config.graph_timeout,
                ctx.cancelled(),
            )
            .await
        {
            Ok((g, summary)) => {
                ctx.log("runner", format!("{summary}\n").as_bytes());
                if !spec.navigation_off {
                    spec.navigation = g.navigation(&format!("{}\n{}", spec.title, spec.body));
                } else {
                    ctx.log("runner", b"navigation map off (the controller's setting)\n");
                }
                Some(g)
            }
            Err(e) => {
                ctx.log(
                    "runner",
                    format!("code graph unavailable: {e:#}\n").as_bytes(),
                );
                None
            }
        };
        let spec = &spec;
        if spec.plan_run {
            let run = PlanRun {
                checkout: &checkout,
                task_dir: &task_dir,
                backend: backend.as_ref(),
                env: &env_vars,
                env_mounts: &env_mounts,
                image: env_image.as_ref(),
                egress: &egress,
                gateway_url: &gateway_url,
                labels: &labels,
                graph: graph.as_ref(),
            };
            return self.plan_run(ctx, spec, &run, &token).await;
        }
        // Evidence: what runs in the sandbox, and verify on the base before the agent.
        let mut commands = crate::evidence::Commands::default();
        let verify_before = match &spec.verify_command {
            Some(v) => {
                let base = BaseVerify {
                    command: v,
                    image: env_image.clone(),
                    env: env_vars.clone(),
                    mounts: env_mounts.clone(),
                    egress: egress.clone(),
                    labels: &labels,
                };
                let r = self.verify_base(ctx, &checkout, &base, &mut commands).await;
                if ctx.cancelled().is_cancelled() {
                    return Ok(self.result(Outcome::Canceled, None, &token));
                }
                r
            }
            None => json!({"status": "not_run", "why": "the repository has no verify command"}),
        };
        let mut verify_after = verify_before_none(spec);
        let mut extra: Vec<String> = Vec::new();
        if let Some(e) = environment.as_ref().filter(|e| !e.protected.is_empty()) {
            extra.push(format!(
                "The repository protects these paths; a change that touches any of them is refused: {}",
                e.protected.join(", ")
            ));
        }
        let mut rounds = 0;
        let mut verify_output = String::new();
        let mut reproduction = None;
        loop {
            tokio::fs::write(task_dir.join("prompt.md"), prompt::build(spec, &extra)).await?;
            if rounds > 0 && !ctx.stage(false).await {
                return Ok(ExecResult::new(Outcome::Abandoned));
            }
            let mut env = env_vars.clone();
            env.extend(backend.env(&spec.model));
            env.extend(backend.gateway_env(&gateway_url, token.token()));
            let run = RunSpec {
                name: format!("{}-{}-agent{rounds}", lease.task_id, lease.attempt),
                cmd: backend.command(),
                env,
                mounts: [
                    vec![
                        (checkout.dir.clone(), "/workspace".into(), false),
                        (task_dir.clone(), "/task".into(), true),
                        (checkout.mirror_objects.clone(), MIRROR_OBJECTS.into(), true),
                    ],
                    env_mounts.clone(),
                ]
                .concat(),
                egress: egress.clone(),
                labels: step_labels(&labels, "agent"),
                wall: self.config.agent_timeout,
                idle: self.config.agent_timeout,
                image: env_image.clone(),
                commit_to: None,
            };
            // Stop the container when the task's budget runs out mid-run, or when the agent
            // shows no sign of life (no output, no model traffic) for the stall limit.
            let stop = ctx.cancelled().child_token();
            let last_output = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
            let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let watcher = {
                let stop = stop.clone();
                let used = self.gateway.clone();
                let tok = token.token().to_owned();
                let (last_output, stalled) = (last_output.clone(), stalled.clone());
                let stall = self.config.stall_timeout;
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if used.usage_of(&tok).over_budget {
                            stop.cancel();
                            return;
                        }
                        let output = *last_output.lock().expect("activity lock");
                        let last = used.activity_of(&tok).map_or(output, |g| g.max(output));
                        if last.elapsed() > stall {
                            stalled.store(true, std::sync::atomic::Ordering::Release);
                            stop.cancel();
                            return;
                        }
                    }
                })
            };
            let mut final_result: Option<AgentEvent> = None;
            let mut rate_limited = None;
            let mut lines = LineSplitter::new(MAX_LINE);
            let agent_started = std::time::Instant::now();
            let ended = self
                .sandbox
                .run(&run, &stop, |stream, bytes| {
                    *last_output.lock().expect("activity lock") = std::time::Instant::now();
                    match stream {
                        Stream::Stdout => {
                            for line in lines.push(bytes) {
                                ctx.log("agent", backend.log_line(&line).as_bytes());
                                for ev in backend.parse_line(&line) {
                                    match ev {
                                        AgentEvent::Result { .. } => final_result = Some(ev),
                                        AgentEvent::RateLimited(m) => rate_limited = Some(m),
                                        _ => {}
                                    }
                                }
                            }
                        }
                        Stream::Stderr => ctx.log("agent.stderr", bytes),
                    }
                })
                .await;
            watcher.abort();
            if let Some(last) = lines.rest() {
                ctx.log("agent", backend.log_line(&last).as_bytes());
                for ev in backend.parse_line(&last) {
                    if let AgentEvent::Result { .. } = ev {
                        final_result = Some(ev);
                    }
                }
            }
            let ended = ended?;
            commands.push("agent", rounds, &run.cmd, &ended, agent_started.elapsed());
            if stalled.load(std::sync::atomic::Ordering::Acquire) {
                let why = format!(
                    "the agent showed no sign of life (no output, no model traffic) for {:?}; its container was killed",
                    self.config.stall_timeout
                );
                ctx.log("runner", format!("{why}\n").as_bytes());
                return Ok(self.result(Outcome::Stalled, Some(why), &token));
            }
            let used = token.used();
            if used.over_budget {
                return Ok(self.result(
                    Outcome::BudgetExceeded,
                    Some("the task reached its cost budget".into()),
                    &token,
                ));
            }
            match ended {
                Ended::Cancelled => return Ok(self.result(Outcome::Canceled, None, &token)),
                Ended::TimedOut => {
                    return Ok(self.result(
                        Outcome::TimedOut,
                        Some(format!(
                            "the agent ran past {:?}",
                            self.config.agent_timeout
                        )),
                        &token,
                    ));
                }
                // The sandbox's own silence limit is the wall clock here: the watcher above
                // decides on stalls, counting model traffic too.
                Ended::Idle => {
                    return Ok(self.result(
                        Outcome::Stalled,
                        Some(format!(
                            "the agent printed nothing for {:?}",
                            self.config.agent_timeout
                        )),
                        &token,
                    ));
                }
                Ended::Exited(code) => {
                    let failed = code != 0
                        || matches!(
                            final_result,
                            Some(AgentEvent::Result { is_error: true, .. }) | None
                        );
                    if failed {
                        let why = match (&rate_limited, &final_result) {
                            (Some(m), _) => format!("rate limited by the model API: {m}"),
                            (None, Some(AgentEvent::Result { text, .. })) => {
                                format!("the agent failed (exit {code}): {}", truncate(text, 500))
                            }
                            (None, _) => {
                                format!("the agent exited with code {code} without a result")
                            }
                        };
                        let mut r = self.result(Outcome::AgentFailed, Some(why), &token);
                        r.data = Some(json!({"rate_limited": rate_limited.is_some()}));
                        return Ok(r);
                    }
                }
            }
            if spec.reproduce_first {
                // Reproduce-first: the agent's test must pass on the head and fail on the base.
                let test = TestRun {
                    ctx,
                    checkout: &checkout,
                    labels: &labels,
                    env: &env_vars,
                    env_mounts: &env_mounts,
                    image: env_image.as_ref(),
                    egress: &egress,
                };
                match self.reproduce(&test).await? {
                    Reproduce::Done(r) => reproduction = Some(r),
                    Reproduce::FailsOnHead(request, head) => {
                        if rounds < self.config.max_verify_fixes {
                            rounds += 1;
                            let note = format!(
                                "the reproduction test fails on the change; giving its output to the agent (fix round {rounds})\n"
                            );
                            ctx.log("runner", note.as_bytes());
                            extra.push(reproduce::fix_round(&request, &head));
                            continue;
                        }
                        let why = format!(
                            "the reproduction test still fails on the change after {rounds} fix rounds"
                        );
                        let mut r = self.result(Outcome::VerifyFailed, Some(why), &token);
                        r.context = Some(json!({"reproduction_output": head.output_tail}));
                        r.reproduction =
                            Some(reproduce::Reproduction::not_fixed(&request, head, rounds));
                        return Ok(r);
                    }
                }
            }
            let Some(verify) = spec.verify_command.clone() else {
                break;
            };
            if !ctx.stage(true).await {
                return Ok(ExecResult::new(Outcome::Abandoned));
            }
            ctx.log("runner", format!("verifying with `{verify}`\n").as_bytes());
            let mut output = Tail::new(VERIFY_TAIL_BYTES);
            let run = RunSpec {
                name: format!("{}-{}-verify{rounds}", lease.task_id, lease.attempt),
                cmd: vec!["bash".into(), "-c".into(), verify],
                env: env_vars.clone(),
                mounts: [
                    vec![
                        (checkout.dir.clone(), "/workspace".into(), false),
                        (checkout.mirror_objects.clone(), MIRROR_OBJECTS.into(), true),
                    ],
                    env_mounts.clone(),
                ]
                .concat(),
                egress: egress.clone(),
                labels: step_labels(&labels, "verify"),
                wall: self.config.verify_timeout,
                idle: self.config.verify_timeout,
                image: env_image.clone(),
                commit_to: None,
            };
            let verify_started = std::time::Instant::now();
            let ended = self
                .sandbox
                .run(&run, ctx.cancelled(), |_, bytes| {
                    ctx.log("verify", bytes);
                    output.push(bytes);
                })
                .await?;
            commands.push("verify", rounds, &run.cmd, &ended, verify_started.elapsed());
            verify_output = tail(&output.text(), VERIFY_TAIL_CHARS);
            verify_after =
                crate::evidence::verify_run(Ok(&ended), verify_started.elapsed(), &verify_output);
            match ended {
                Ended::Exited(0) => {
                    ctx.log("runner", b"verify passed\n");
                    break;
                }
                Ended::Cancelled => return Ok(self.result(Outcome::Canceled, None, &token)),
                _ if rounds < self.config.max_verify_fixes => {
                    rounds += 1;
                    ctx.log(
                        "runner",
                        format!(
                            "verify failed; giving the output to the agent (fix round {rounds})\n"
                        )
                        .as_bytes(),
                    );
                    extra.push(format!("The verify command failed ({ended:?}). Fix the change so it passes. Its output:\n{verify_output}"));
                }
                _ => {
                    let mut r = self.result(
                        Outcome::VerifyFailed,
                        Some(format!(
                            "verification still failed after {rounds} fix rounds"
                        )),
                        &token,
                    );
                    r.context = Some(json!({"verify_output": verify_output}));
                    r.verify_output = verify_output;
                    return Ok(r);
                }
            }
        }
        let finish_started = std::time::Instant::now();
        let last_verify = verify_output.clone();
        let (mut result, diff0) = self
            .finish(ctx, &checkout, &labels, &token, verify_output)
            .await?;
        if result.outcome == Outcome::Succeeded {
            result.reproduction = reproduction;
        }
        commands.push(
            "finish",
            rounds,
            &["finish: commit, bundle, diff (the runner's script)".to_string()],
            &Ended::Exited(0),
            finish_started.elapsed(),
        );
        // The reviewer gets the blast radius of the diff, computed on the graph of the base.
        let mut coverage = serde_json::Value::Null;
        let mut graph_tests: Vec<(String, String)> = Vec::new();
        if let (Some(g), Some(serde_json::Value::Object(data))) = (&graph, result.data.as_mut())
            && let Some((blast, b, c)) = g.blast_and_coverage(&diff0)
        {
            data.insert("blast_radius".into(), serde_json::Value::String(blast));
            coverage = crate::evidence::coverage(&c);
            graph_tests = b
                .changed
                .iter()
                .filter(|s| s.kind == Some(codegraph::facts::SymbolKind::Test))
                .map(|s| (s.path.clone(), s.name.clone()))
                .collect();
        }
        if result.outcome == Outcome::Succeeded
            && let Some(serde_json::Value::Object(data)) = result.data.as_mut()
        {
            let files: Vec<String> = data["files"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let u = result.usage;
            data.insert(
                "evidence".into(),
                json!({
                    "commands": commands.0,
                    "verify_command": spec.verify_command,
                    "verify_before": verify_before,
                    "verify_after": verify_after,
                    "tests": crate::evidence::tests(&files, &diff0, &graph_tests, &last_verify),
                    "coverage": coverage,
                    "agent_usage": {
                        "input_tokens": u.input_tokens,
                        "output_tokens": u.output_tokens,
                        "cache_read_tokens": u.cache_read_tokens,
                        "cache_write_tokens": u.cache_write_tokens,
                        "cost_microusd": u.cost_microusd,
                    },
                }),
            );
        }
        Ok(result)
    }

    /// Runs the verify command on a fresh tree of the base (never the agent's checkout), bounded
    /// by `base_verify_timeout`; whatever happens is recorded, nothing stops the attempt.
    async fn verify_base(
        &self,
        ctx: &TaskContext,
        checkout: &Checkout,
        base: &BaseVerify<'_>,
        commands: &mut crate::evidence::Commands,
    ) -> serde_json::Value {
        let lease = &ctx.assignment.lease;
        let cmd = vec![
            "bash".to_string(),
            "-c".to_string(),
            base.command.to_owned(),
        ];
        let started = std::time::Instant::now();
        let dir = ctx.work_dir.join("base");
        if let Err(e) = crate::workspace::sandbox_tree(&checkout.mirror, &checkout.base, &dir).await
        {
            let why = format!("cannot check out the base: {e:#}");
            ctx.log(
                "runner",
                format!("verify on the base not run: {why}\n").as_bytes(),
            );
            commands.push_error("verify_base", 0, &cmd, &why, started.elapsed());
            return crate::evidence::verify_run(Err(why.as_str()), started.elapsed(), "");
        }
        ctx.log(
            "runner",
            format!(
                "verifying the base with `{}` (for the evidence record)\n",
                base.command
            )
            .as_bytes(),
        );
        let run = RunSpec {
            name: format!("{}-{}-verifybase", lease.task_id, lease.attempt),
            cmd: cmd.clone(),
            env: base.env.clone(),
            mounts: [
                vec![
                    (dir.clone(), "/workspace".into(), false),
                    (checkout.mirror_objects.clone(), MIRROR_OBJECTS.into(), true),
                ],
                base.mounts.clone(),
            ]
            .concat(),
            egress: base.egress.clone(),
            labels: step_labels(base.labels, "verify_base"),
            wall: self.config.base_verify_timeout,
            idle: self.config.base_verify_timeout,
            image: base.image.clone(),
            commit_to: None,
        };
        let mut output = Tail::new(VERIFY_TAIL_BYTES);
        let ended = self
            .sandbox
            .run(&run, ctx.cancelled(), |_, bytes| {
                ctx.log("verify", bytes);
                output.push(bytes);
            })
            .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let took = started.elapsed();
        let text = tail(&output.text(), VERIFY_TAIL_CHARS);
        match ended {
            Ok(e) => {
                commands.push("verify_base", 0, &cmd, &e, took);
                ctx.log(
                    "runner",
                    format!("verify on the base ended: {e:?}\n").as_bytes(),
                );
                crate::evidence::verify_run(Ok(&e), took, &text)
            }
            Err(e) => {
                let why = format!("{e:#}");
                ctx.log(
                    "runner",
                    format!("verify on the base could not run: {why}\n").as_bytes(),
                );
                commands.push_error("verify_base", 0, &cmd, &why, took);
                crate::evidence::verify_run(Err(why.as_str()), took, &text)
            }
        }
    }

    /// Commits the work tree with the trusted git directory and reads the outputs back from the
    /// container's standard output. Returns the result and the `-U0` diff (for the blast radius).
    async fn finish(
        &self,
        ctx: &TaskContext,
        checkout: &Checkout,
        labels: &HashMap<String, String>,
        token: &crate::gateway::TaskToken,
        verify_output: String,
    ) -> anyhow::Result<(ExecResult, String)> {
        let spec = &ctx.assignment.spec;
        let lease = &ctx.assignment.lease;
        // The issue's title, without anything that would switch the repository's CI off.
        let title = textguard::without_ci_skips(&spec.title);
        let message = if spec.issue_number > 0 {
            format!(
                "{} (#{})\n\nBackporcher task {}, attempt {}.",
                truncate(&title, 72),
                spec.issue_number,
                lease.task_id,
                lease.attempt
            )
        } else {
            format!(
                "{}\n\nBackporcher task {}, attempt {}.",
                truncate(&title, 72),
                lease.task_id,
                lease.attempt
            )
        };
        let max_bundle = proto::limits::MAX_BUNDLE_BYTES as u64;
        let run = RunSpec {
            name: format!("{}-{}-finish", lease.task_id, lease.attempt),
            cmd: vec!["bash".into(), "-c".into(), FINISH_SCRIPT.into()],
            env: vec![
                format!("BP_MESSAGE={message}"),
                format!("BP_BASE={}", checkout.base),
                format!("BP_BRANCH={}", checkout.branch),
                format!("BP_MAX_BUNDLE={max_bundle}"),
                format!("BP_MAX_DIFF={MAX_DIFF_BYTES}"),
                format!(
                    "BP_UNTRACK={}",
                    if spec.reproduce_first {
                        reproduce::REPRO_FILE
                    } else {
                        ""
                    }
                ),
            ],
            mounts: vec![
                (checkout.dir.clone(), "/workspace".into(), true),
                (checkout.git_dir.clone(), "/git".into(), false),
                (checkout.mirror_objects.clone(), MIRROR_OBJECTS.into(), true),
            ],
            egress: Egress::None {
                socket_dir: self.urls.socket_dir.clone(),
            },
            labels: step_labels(labels, "finish"),
            wall: Duration::from_secs(300),
            idle: Duration::from_secs(300),
            image: None,
            commit_to: None,
        };
        let caps: [(&str, u64); 5] = [
            ("status", 256),
            ("head", 256),
            ("numstat", MAX_DIFF_BYTES),
            ("diff0", MAX_DIFF_BYTES),
            ("result.bundle", max_bundle),
        ];
        let mut archive = Capped::new(caps.iter().map(|(_, c)| *c as usize + 4096).sum());
        let ended = self
            .sandbox
            .run(&run, ctx.cancelled(), |stream, bytes| match stream {
                Stream::Stdout => archive.push(bytes),
                Stream::Stderr => ctx.log("runner", bytes),
            })
            .await?;
        match ended {
            Ended::Exited(0) => {}
            Ended::Cancelled => {
                return Ok((self.result(Outcome::Canceled, None, token), String::new()));
            }
            other => anyhow::bail!("committing the change failed ({other:?})"),
        }
        anyhow::ensure!(
            archive.dropped() == 0,
            "the finish step printed more than its outputs can hold ({} bytes over)",
            archive.dropped()
        );
        let outputs = read_outputs(&archive.into_inner(), &caps)?;
        let text = |name: &str| {
            outputs
                .get(name)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let status = text("status");
        let status = status.trim();
        if status == "none" {
            return Ok((
                self.result(
                    Outcome::AgentFailed,
                    Some("the agent produced no changes".into()),
                    token,
                ),
                String::new(),
            ));
        }
        if let Some(size) = status.strip_prefix("too-large ") {
            return Ok((
                self.result(
                    Outcome::AgentFailed,
                    Some(format!(
                        "the change makes a {} byte bundle, over the {} MiB limit; make it smaller (no generated or vendored files)",
                        size.trim(),
                        max_bundle >> 20
                    )),
                    token,
                ),
                String::new(),
            ));
        }
        anyhow::ensure!(
            status == "ok",
            "the finish step reported `{}`",
            textguard::clean_plain(status)
        );
        let head = text("head").trim().to_owned();
        anyhow::ensure!(
            matches!(head.len(), 40 | 64) && head.bytes().all(|b| b.is_ascii_hexdigit()),
            "the finish step reported a head that is not a commit id"
        );
        let bundle = outputs
            .get("result.bundle")
            .cloned()
            .context("the result bundle is missing")?;
        let (mut ins, mut del) = (0i64, 0i64);
        let mut files: Vec<String> = Vec::new();
        let mut total_files = 0usize;
        for l in text("numstat").lines() {
            let mut it = l.split('\t');
            let (Some(a), Some(d), Some(path)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            ins += a.parse::<i64>().unwrap_or(0);
            del += d.parse::<i64>().unwrap_or(0);
            total_files += 1;
            if files.len() < MAX_FILES_LISTED {
                files.push(path.to_owned());
            }
        }
        ctx.log(
            "runner",
            format!("committed {head}: {total_files} files, +{ins} -{del}\n").as_bytes(),
        );
        let mut r = self.result(Outcome::Succeeded, None, token);
        r.bundle = Some(bundle);
        r.head_sha = Some(head);
        r.branch = Some(checkout.branch.clone());
        r.verify_output = verify_output;
        r.summary = format!("{total_files} files changed, +{ins} -{del}");
        r.data = Some(json!({
            "base": checkout.base,
            "files": files,
            "files_total": total_files,
            "insertions": ins,
            "deletions": del
        }));
        Ok((r, text("diff0")))
    }

    /// The snapshot of `environment`: reused when it exists, else set up now (streamed to the
    /// task log) and committed: its tag, and whether it was reused. `Ok(Err(why))` is a setup the
    /// repository must fix.
    async fn environment(
        &self,
        environment: &crate::environment::Environment,
        checkout: &crate::workspace::Checkout,
        ctx: &TaskContext,
    ) -> anyhow::Result<Result<(String, bool), String>> {
        let tag = environment.tag();
        let bp = crate::environment::agent_files_dir(&self.config.state_dir);
        self.sandbox
            .export_agent_files(&bp)
            .await
            .context("cannot make the agent CLI available to repository environments")?;
        let used = crate::environment::Usage::new(&self.config.state_dir);
        if self.sandbox.has_image(&tag).await {
            used.touch(&tag);
            ctx.log(
                "runner",
                format!(
                    "environment {tag} from {} reused (no setup)\n",
                    environment.source
                )
                .as_bytes(),
            );
            return Ok(Ok((tag, true)));
        }
        if !self.sandbox.has_image(&environment.image).await {
            return Ok(Err(format!(
                "the environment's image `{}` (from {}) is not on this runner; build it here (no registry is used: see deploy/env/build-offline.sh) or name another in {}",
                environment.image, environment.source, environment.source
            )));
        }
        let setup_network = environment.setup_network;
        if setup_network
            && let Some(why) = self.unsafe_network.lock().expect("network lock").clone()
        {
            anyhow::bail!(
                "the sandbox firewall is not in place ({why}); this runner starts no networked sandbox until it is"
            );
        }
        ctx.log(
            "runner",
            format!(
                "environment {tag}: setting up from {} on {} ({} commands, network {})\n",
                environment.source,
                environment.image,
                environment.setup.len(),
                if setup_network { "open" } else { "none" }
            )
            .as_bytes(),
        );
        // Setup sees the default branch, in a checkout of its own.
        let dir = ctx.work_dir.join("setup");
        let _ = tokio::fs::remove_dir_all(&dir).await;
        crate::workspace::sandbox_tree(&checkout.mirror, &checkout.default_head, &dir).await?;
        // Granted secrets reach setup as a read-only file it sources: never the container's
        // environment or command, which the snapshot would keep.
        let secrets_dir = ctx.work_dir.join("setup-secrets");
        let mut granted = String::new();
        for name in &environment.secrets {
            let Some((_, value)) = ctx
                .assignment
                .spec
                .setup_secrets
                .0
                .iter()
                .find(|(n, _)| n == name)
            else {
                return Ok(Err(format!(
                    "{} grants setup the secret `{name}`, but the repository has no secret of that name; set it (PUT /api/repos/<id>/secrets/{name}), then requeue the task",
                    environment.source
                )));
            };
            granted.push_str(&format!(
                "export {name}='{}'\n",
                value.replace('\'', "'\\''")
            ));
        }
        let mut script = String::from("set -u\n");
        if !granted.is_empty() {
            tokio::fs::create_dir_all(&secrets_dir).await?;
            tokio::fs::write(secrets_dir.join("env"), &granted).await?;
            crate::workspace::give_file_to_sandbox(&secrets_dir).await?;
            script.push_str(". /run/bp-secrets/env\n");
        }
        for (i, cmd) in environment.setup.iter().enumerate() {
            let quoted = format!("'{}'", cmd.replace('\'', "'\\''"));
            script.push_str(&format!(
                "printf '\\n$ %s\\n' {quoted}\nbash -c {quoted} || {{ code=$?; printf 'setup command %s failed with exit %s\\n' {} \"$code\"; exit 97; }}\n",
                i + 1
            ));
        }
        let mut env: Vec<String> = environment
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push("HOME=/home/agent".into());
        env.push("PATH=/opt/bp:/opt/env/bin:/usr/local/bin:/usr/bin:/bin".into());
        let snapshot_env = env.clone();
        let mut mounts = vec![
            (dir.clone(), "/workspace".into(), false),
            (checkout.mirror_objects.clone(), MIRROR_OBJECTS.into(), true),
            (bp, "/opt/bp".into(), true),
        ];
        if let Some(ca) = &self.config.setup_ca_bundle {
            const CA: &str = "/etc/ssl/certs/bp-setup-ca.crt";
            mounts.push((ca.clone(), CA.into(), true));
            // Exported by the script, not set on the container: the snapshot must not keep them.
            for var in [
                "SSL_CERT_FILE",
                "PIP_CERT",
                "REQUESTS_CA_BUNDLE",
                "CARGO_HTTP_CAINFO",
                "GIT_SSL_CAINFO",
                "NODE_EXTRA_CA_CERTS",
            ] {
                script = format!("export {var}={CA}\n{script}");
            }
        }
        if !granted.is_empty() {
            mounts.push((secrets_dir.clone(), "/run/bp-secrets".into(), true));
        }
        let labels = HashMap::from([
            (
                crate::sandbox::ENV_LABEL.to_string(),
                environment.key.clone(),
            ),
            (
                "backporcher.env.source".to_string(),
                environment.source.to_string(),
            ),
        ]);
        let run = RunSpec {
            name: format!(
                "{}-{}-setup",
                ctx.assignment.lease.task_id, ctx.assignment.lease.attempt
            ),
            cmd: vec!["bash".into(), "-c".into(), script],
            env,
            mounts,
            egress: if setup_network {
                Egress::Open
            } else {
                Egress::None {
                    socket_dir: self.urls.socket_dir.clone(),
                }
            },
            labels: step_labels(
                &HashMap::from([
                    (
                        "backporcher.task".to_string(),
                        ctx.assignment.lease.task_id.to_string(),
                    ),
                    (
                        "backporcher.attempt".to_string(),
                        ctx.assignment.lease.attempt.to_string(),
                    ),
                ]),
                "setup",
            ),
            wall: self.config.setup_timeout,
            idle: self.config.setup_timeout,
            image: Some(environment.image.clone()),
            commit_to: Some(crate::sandbox::Snapshot {
                tag: tag.clone(),
                labels,
                env: snapshot_env,
            }),
        };
        let mut output = Tail::new(VERIFY_TAIL_BYTES);
        let ended = self
            .sandbox
            .run(&run, ctx.cancelled(), |_, bytes| {
                ctx.log("setup", bytes);
                output.push(bytes);
            })
            .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let _ = tokio::fs::remove_dir_all(&secrets_dir).await;
        let text = output.text();
        let failing = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("$ "))
            .unwrap_or("(before the first command)")
            .to_owned();
        let why = match ended? {
            Ended::Exited(0) => {
                used.touch(&tag);
                ctx.log(
                    "runner",
                    format!("environment {tag} snapshotted\n").as_bytes(),
                );
                self.prune_environments(&tag).await;
                return Ok(Ok((tag, false)));
            }
            Ended::Cancelled => anyhow::bail!("cancelled during the environment's setup"),
            Ended::TimedOut | Ended::Idle => format!(
                "setup command `{failing}` ran past {:?}",
                self.config.setup_timeout
            ),
            Ended::Exited(code) => format!("setup command `{failing}` failed (exit {code})"),
        };
        Ok(Err(format!(
            "{why}; fix the environment in {} on the default branch, then requeue the task. Output:\n{}",
            environment.source,
            tail(&text, 2000)
        )))
    }

    /// Removes environment snapshots unused for too long, then the least recently used ones
    /// while they take more than the disk budget (never `keep`).
    async fn prune_environments(&self, keep: &str) {
        let Ok(images) = self.sandbox.env_images().await else {
            return;
        };
        let used = crate::environment::Usage::new(&self.config.state_dir);
        for tag in crate::environment::to_prune(
            &images,
            &used.read(),
            std::time::SystemTime::now(),
            self.config.env_max_age,
            self.config.env_disk_budget,
            keep,
        ) {
            match self.sandbox.remove_image(&tag).await {
                Ok(()) => tracing::info!(image = tag, "environment snapshot pruned"),
                Err(e) => {
                    tracing::warn!(image = tag, error = %e, "cannot prune an environment snapshot")
                }
            }
        }
    }

    fn result(
        &self,
        outcome: Outcome,
        error: Option<String>,
        token: &crate::gateway::TaskToken,
    ) -> ExecResult {
        let used = token.used();
        let mut r = ExecResult::new(outcome);
        r.error = error;
        r.usage = Usage {
            input_tokens: used.input_tokens,
            output_tokens: used.output_tokens,
            cache_read_tokens: used.cache_read_tokens,
            cache_write_tokens: used.cache_write_tokens,
            cost_microusd: used.cost_microusd.round() as i64,
        };
        r
    }
}

#[async_trait::async_trait]
impl Executor for SandboxExecutor {
    fn backends(&self) -> Vec<String> {
        self.backends.keys().map(|k| k.to_string()).collect()
    }

    async fn run(&self, ctx: TaskContext) -> ExecResult {
        let mut report = None;
        let mut r = match self.attempt(&ctx, &mut report).await {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("{e:#}");
                ctx.log("runner", format!("error: {msg}\n").as_bytes());
                if ctx.cancelled().is_cancelled() {
                    return ExecResult::new(Outcome::Canceled);
                }
                let mut r = ExecResult::new(Outcome::AgentFailed);
                r.error = Some(msg);
                r
            }
        };
        // Whatever the outcome, the result says what the environment was.
        if let Some(report) = report
            && let Ok(report) = serde_json::to_value(report)
        {
            match &mut r.data {
                Some(serde_json::Value::Object(data)) => {
                    data.insert("environment".into(), report);
                }
                _ => r.data = Some(json!({ "environment": report })),
            }
        }
        r
    }
}

/// What a plan run needs of its attempt.
struct PlanRun<'a> {
    checkout: &'a Checkout,
    task_dir: &'a Path,
    backend: &'a dyn AgentBackend,
    env: &'a [String],
    env_mounts: &'a [(PathBuf, String, bool)],
    image: Option<&'a String>,
    egress: &'a Egress,
    gateway_url: &'a str,
    labels: &'a HashMap<String, String>,
    graph: Option<&'a crate::graphs::TaskGraph>,
}

/// Most bytes of `git status` read back after a plan run.
const MAX_STATUS_BYTES: usize = 64 * 1024;
/// Most characters of the agent's final text searched for the plan.
const MAX_PLAN_TEXT: usize = 128 * 1024;

impl SandboxExecutor {
    /// Plan gate: the agent runs once with the workspace mounted read-only and its editing tools
    /// off, and answers with a plan; whatever the run changed anyway is listed and thrown away
    /// (no commit, no bundle). The plan's predicted blast radius comes from the code graph.
    async fn plan_run(
        &self,
        ctx: &TaskContext,
        spec: &crate::task::TaskSpec,
        p: &PlanRun<'_>,
        token: &crate::gateway::TaskToken,
    ) -> anyhow::Result<ExecResult> {
        let lease = &ctx.assignment.lease;
        tokio::fs::write(p.task_dir.join("prompt.md"), prompt::build(spec, &[])).await?;
        ctx.log(
            "runner",
            b"plan run: the workspace is read-only and the editing tools are off\n",
        );
        let mut env = p.env.to_vec();
        env.extend(p.backend.env(&spec.model));
        env.extend(p.backend.plan_env());
        env.extend(p.backend.gateway_env(p.gateway_url, token.token()));
        let run = RunSpec {
            name: format!("{}-{}-plan", lease.task_id, lease.attempt),
            cmd: p.backend.command(),
            env,
            mounts: [
                vec![
                    (p.checkout.dir.clone(), "/workspace".into(), true),
                    (p.task_dir.to_path_buf(), "/task".into(), true),
                    (
                        p.checkout.mirror_objects.clone(),
                        MIRROR_OBJECTS.into(),
                        true,
                    ),
                ],
                p.env_mounts.to_vec(),
            ]
            .concat(),
            egress: p.egress.clone(),
            labels: step_labels(p.labels, "plan"),
            wall: self.config.agent_timeout,
            idle: self.config.stall_timeout,
            image: p.image.cloned(),
            commit_to: None,
        };
        let mut final_text: Option<(bool, String)> = None;
        let mut lines = LineSplitter::new(MAX_LINE);
        let ended = self
            .sandbox
            .run(&run, ctx.cancelled(), |stream, bytes| match stream {
                Stream::Stdout => {
                    for line in lines.push(bytes) {
                        ctx.log("agent", p.backend.log_line(&line).as_bytes());
                        for ev in p.backend.parse_line(&line) {
                            if let AgentEvent::Result { is_error, text, .. } = ev {
                                final_text = Some((is_error, text));
                            }
                        }
                    }
                }
                Stream::Stderr => ctx.log("agent.stderr", bytes),
            })
            .await;
        if let Some(last) = lines.rest() {
            ctx.log("agent", p.backend.log_line(&last).as_bytes());
            for ev in p.backend.parse_line(&last) {
                if let AgentEvent::Result { is_error, text, .. } = ev {
                    final_text = Some((is_error, text));
                }
            }
        }
        let ended = ended?;
        // Whatever happened, the workspace is checked: a change is reported and discarded.
        let discarded = self.workspace_changes(ctx, p).await?;
        if !discarded.is_empty() {
            ctx.log(
                "runner",
                format!(
                    "plan run: {} path(s) changed in the read-only workspace; discarded: {}\n",
                    discarded.len(),
                    discarded.join(", ")
                )
                .as_bytes(),
            );
        }
        if token.used().over_budget {
            return Ok(self.result(
                Outcome::BudgetExceeded,
                Some("the task reached its cost budget during its plan run".into()),
                token,
            ));
        }
        let text = match (ended, final_text) {
            (Ended::Cancelled, _) => return Ok(self.result(Outcome::Canceled, None, token)),
            (Ended::TimedOut, _) => {
                return Ok(self.result(
                    Outcome::TimedOut,
                    Some(format!(
                        "the plan run ran past {:?}",
                        self.config.agent_timeout
                    )),
                    token,
                ));
            }
            (Ended::Idle, _) => {
                return Ok(self.result(
                    Outcome::Stalled,
                    Some(format!(
                        "the plan run printed nothing for {:?}",
                        self.config.stall_timeout
                    )),
                    token,
                ));
            }
            (Ended::Exited(0), Some((false, text))) => text,
            (Ended::Exited(code), _) => {
                return Ok(self.result(
                    Outcome::AgentFailed,
                    Some(format!("the plan run failed (exit {code}) without a plan")),
                    token,
                ));
            }
        };
        let Some(plan_json) = plan_json(&text) else {
            let mut r = self.result(
                Outcome::AgentFailed,
                Some(format!(
                    "the plan run ended without a plan (no JSON object at the end of its answer): {}",
                    truncate(&text, 300)
                )),
                token,
            );
            r.context = Some(json!({"plan_error": "no plan JSON in the final answer"}));
            return Ok(r);
        };
        let files: Vec<String> = serde_json::from_str::<serde_json::Value>(&plan_json)
            .ok()
            .and_then(|v| {
                v.get("files").and_then(|f| f.as_array()).map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .take(100)
                        .map(|x| x.trim_start_matches("./").to_owned())
                        .collect()
                })
            })
            .unwrap_or_default();
        let (blast_radius, blast_text) = match p.graph {
            Some(g) => {
                let (n, text) = g.plan_blast(&files);
                (Some(n), text)
            }
            None => (None, String::new()),
        };
        let mut r = self.result(Outcome::Succeeded, None, token);
        r.summary = format!("plan: {} file(s)", files.len());
        r.plan = Some(crate::task::PlanResult {
            plan_json,
            blast_radius,
            blast_text,
            discarded,
        });
        Ok(r)
    }

    /// Paths that differ from the checkout's commit in its work tree, read by `git status` in a
    /// container with the trusted git directory and everything mounted read-only.
    async fn workspace_changes(
        &self,
        ctx: &TaskContext,
        p: &PlanRun<'_>,
    ) -> anyhow::Result<Vec<String>> {
        let lease = &ctx.assignment.lease;
        let run = RunSpec {
            name: format!("{}-{}-plancheck", lease.task_id, lease.attempt),
            cmd: vec![
                "bash".into(),
                "-c".into(),
                concat!(
                    "export GIT_DIR=/git GIT_WORK_TREE=/workspace GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null ",
                    "GIT_ATTR_NOSYSTEM=1 GIT_NO_REPLACE_OBJECTS=1 GIT_TERMINAL_PROMPT=0 HOME=/tmp && cd /workspace && ",
                    "git --no-optional-locks status --porcelain=v1 --untracked-files=all --ignored=no"
                )
                .into(),
            ],
            env: Vec::new(),
            mounts: vec![
                (p.checkout.dir.clone(), "/workspace".into(), true),
                (p.checkout.git_dir.clone(), "/git".into(), true),
                (
                    p.checkout.mirror_objects.clone(),
                    MIRROR_OBJECTS.into(),
                    true,
                ),
            ],
            egress: Egress::None {
                socket_dir: self.urls.socket_dir.clone(),
            },
            labels: step_labels(p.labels, "plancheck"),
            wall: Duration::from_secs(120),
            idle: Duration::from_secs(120),
            image: None,
            commit_to: None,
        };
        let mut out = Capped::new(MAX_STATUS_BYTES);
        let ended = self
            .sandbox
            .run(&run, ctx.cancelled(), |stream, bytes| match stream {
                Stream::Stdout => out.push(bytes),
                Stream::Stderr => ctx.log("runner", bytes),
            })
            .await?;
        if ended != Ended::Exited(0) {
            anyhow::bail!("cannot check the plan run's workspace for changes ({ended:?})");
        }
        Ok(String::from_utf8_lossy(&out.into_inner())
            .lines()
            .filter_map(|l| l.get(3..))
            .map(|p| p.trim_matches('"').to_owned())
            .filter(|p| !p.is_empty())
            .take(100)
            .collect())
    }
}

/// The plan in an agent's final answer: the last JSON object in it (the prompt asks for the plan
/// as the last thing written).
fn plan_json(text: &str) -> Option<String> {
    let text = if text.len() > MAX_PLAN_TEXT {
        let mut start = text.len() - MAX_PLAN_TEXT;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        &text[start..]
    } else {
        text
    };
    let end = text.rfind('}')?;
    // The largest object that ends at the last brace: try each opening brace from the first.
    text[..end]
        .match_indices('{')
        .take(2000)
        .map(|(i, _)| &text[i..=end])
        .find(|candidate| {
            serde_json::from_str::<serde_json::Value>(candidate).is_ok_and(|v| v.is_object())
        })
        .map(str::to_owned)
}

/// What a reproduce-first test run needs of its attempt.
struct TestRun<'a> {
    ctx: &'a TaskContext,
    checkout: &'a Checkout,
    labels: &'a HashMap<String, String>,
    /// The environment's variables.
    env: &'a [String],
    /// The environment's extra mounts.
    env_mounts: &'a [(PathBuf, String, bool)],
    /// The environment's snapshot, if any.
    image: Option<&'a String>,
    egress: &'a Egress,
}

/// Where one reproduce-first check ended.
enum Reproduce {
    /// A record: reproduced, not reproduced, or no test.
    Done(reproduce::Reproduction),
    /// The test fails on the head: a fix round, if one is left.
    FailsOnHead(reproduce::Request, reproduce::Run),
}

/// Reads the agent's `repro.json` (a regular file; a symlink or anything else is not read) and
/// prints at most one byte more than the cap, so an oversized file is seen as such.
const READ_REPRO_SCRIPT: &str = r#"f="/workspace/$BP_REPRO_FILE"
if [ -L /workspace/.backporcher ] || [ -L "$f" ] || [ ! -f "$f" ]; then exit 3; fi
head -c "$BP_MAX" "$f""#;

/// Copies the named test files from the head (`/head`, read-only) into the base tree
/// (`/workspace`): regular files only, each must exist in the change.
const COPY_TEST_FILES_SCRIPT: &str = r#"set -u
while IFS= read -r f; do
  [ -n "$f" ] || continue
  if [ -L "/head/$f" ] || [ ! -f "/head/$f" ]; then
    printf 'test file %s is not a regular file in the change\n' "$f"; exit 3
  fi
  rm -rf -- "/workspace/$f"
  mkdir -p -- "$(dirname -- "/workspace/$f")" && cp -- "/head/$f" "/workspace/$f" || exit 4
done <<< "$BP_REPRO_FILES"
"#;

impl SandboxExecutor {
    /// Reproduce-first after the agent (and verify): reads the agent's test, runs it on the head
    /// and — when it passes there — on a fresh checkout of the base with only the test's files
    /// copied in. Everything runs in the sandbox; only `repro.json` comes back, capped.
    async fn reproduce(&self, t: &TestRun<'_>) -> anyhow::Result<Reproduce> {
        let ctx = t.ctx;
        let lease = &ctx.assignment.lease;
        let none = Egress::None {
            socket_dir: self.urls.socket_dir.clone(),
        };
        let mut json = Capped::new(reproduce::MAX_REPRO_JSON + 1);
        let read = RunSpec {
            name: format!("{}-{}-repro-read", lease.task_id, lease.attempt),
            cmd: vec!["bash".into(), "-c".into(), READ_REPRO_SCRIPT.into()],
            env: vec![
                format!("BP_REPRO_FILE={}", reproduce::REPRO_FILE),
                format!("BP_MAX={}", reproduce::MAX_REPRO_JSON + 1),
            ],
            mounts: vec![(t.checkout.dir.clone(), "/workspace".into(), true)],
            egress: none.clone(),
            labels: step_labels(t.labels, "repro"),
            wall: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            image: None,
            commit_to: None,
        };
        let ended = self
            .sandbox
            .run(&read, ctx.cancelled(), |stream, bytes| {
                if let Stream::Stdout = stream {
                    json.push(bytes)
                }
            })
            .await?;
        let request = match ended {
            Ended::Exited(0) => reproduce::parse(&json.into_inner()),
            Ended::Exited(3) => Err(format!(
                "the agent wrote no {} naming a test that exposes the issue",
                reproduce::REPRO_FILE
            )),
            Ended::Cancelled => anyhow::bail!("cancelled during reproduce-first"),
            other => Err(format!(
                "{} could not be read ({other:?})",
                reproduce::REPRO_FILE
            )),
        };
        let request = match request {
            Ok(r) => r,
            Err(why) => {
                ctx.log("runner", format!("reproduce-first: {why}\n").as_bytes());
                return Ok(Reproduce::Done(reproduce::Reproduction::no_test(why)));
            }
        };
        ctx.log(
            "runner",
            format!(
                "reproduce-first: running `{}` on the change\n",
                request.command
            )
            .as_bytes(),
        );
        let head = self
            .test_run(t, &request, &t.checkout.dir, "repro-head")
            .await?;
        if !head.passed() {
            return Ok(Reproduce::FailsOnHead(request, head));
        }
        // The base: a fresh checkout of it, plus only the files the test needs, copied in the
        // sandbox from the (read-only) head.
        let base_dir = ctx.work_dir.join("repro-base");
        crate::workspace::sandbox_tree(&t.checkout.mirror, &t.checkout.base, &base_dir).await?;
        let mut copy_out = Tail::new(8 * 1024);
        let copy = RunSpec {
            name: format!("{}-{}-repro-copy", lease.task_id, lease.attempt),
            cmd: vec!["bash".into(), "-c".into(), COPY_TEST_FILES_SCRIPT.into()],
            env: vec![format!("BP_REPRO_FILES={}", request.files.join("\n"))],
            mounts: vec![
                (base_dir.clone(), "/workspace".into(), false),
                (t.checkout.dir.clone(), "/head".into(), true),
            ],
            egress: none,
            labels: step_labels(t.labels, "repro"),
            wall: Duration::from_secs(120),
            idle: Duration::from_secs(120),
            image: None,
            commit_to: None,
        };
        let copied = self
            .sandbox
            .run(&copy, ctx.cancelled(), |_, bytes| copy_out.push(bytes))
            .await?;
        let result = match copied {
            Ended::Exited(0) => {
                ctx.log(
                    "runner",
                    format!(
                        "reproduce-first: running `{}` on the base with the test's files\n",
                        request.command
                    )
                    .as_bytes(),
                );
                let base = self.test_run(t, &request, &base_dir, "repro-base").await?;
                let r = reproduce::Reproduction::judged(&request, head, base);
                ctx.log(
                    "runner",
                    format!("reproduce-first: {}\n", r.note).as_bytes(),
                );
                r
            }
            Ended::Cancelled => anyhow::bail!("cancelled during reproduce-first"),
            other => {
                let why = format!(
                    "the test's files could not be put on the base ({other:?}): {}",
                    tail(copy_out.text().trim(), 500)
                );
                ctx.log("runner", format!("reproduce-first: {why}\n").as_bytes());
                reproduce::Reproduction {
                    head: Some(head),
                    command: request.command.clone(),
                    files: request.files.clone(),
                    ..reproduce::Reproduction::no_test(why)
                }
            }
        };
        let _ = tokio::fs::remove_dir_all(&base_dir).await;
        Ok(Reproduce::Done(result))
    }

    /// Runs the test command in `tree` (mounted at `/workspace`) like verify: the environment's
    /// image, variables and egress, the verify time limit.
    async fn test_run(
        &self,
        t: &TestRun<'_>,
        request: &reproduce::Request,
        tree: &Path,
        step: &str,
    ) -> anyhow::Result<reproduce::Run> {
        let lease = &t.ctx.assignment.lease;
        let mut env = t.env.to_vec();
        env.push(format!("BP_REPRO_COMMAND={}", request.command));
        let run = RunSpec {
            name: format!("{}-{}-{step}", lease.task_id, lease.attempt),
            cmd: vec![
                "bash".into(),
                "-c".into(),
                "cd /workspace && bash -c \"$BP_REPRO_COMMAND\"".into(),
            ],
            env,
            mounts: [
                vec![
                    (tree.to_path_buf(), "/workspace".into(), false),
                    (
                        t.checkout.mirror_objects.clone(),
                        MIRROR_OBJECTS.into(),
                        true,
                    ),
                ],
                t.env_mounts.to_vec(),
            ]
            .concat(),
            egress: t.egress.clone(),
            labels: step_labels(t.labels, step),
            wall: self.config.verify_timeout,
            idle: self.config.verify_timeout,
            image: t.image.cloned(),
            commit_to: None,
        };
        let mut output = Tail::new(VERIFY_TAIL_BYTES);
        let started = std::time::Instant::now();
        let ended = self
            .sandbox
            .run(&run, t.ctx.cancelled(), |_, bytes| {
                t.ctx.log(step, bytes);
                output.push(bytes);
            })
            .await?;
        let (exit_code, timed_out) = match ended {
            Ended::Exited(code) => (code as i32, false),
            Ended::TimedOut | Ended::Idle => (-1, true),
            Ended::Cancelled => anyhow::bail!("cancelled during reproduce-first"),
        };
        Ok(reproduce::Run {
            exit_code,
            timed_out,
            output_tail: tail(&output.text(), reproduce::OUTPUT_TAIL_CHARS),
            duration: started.elapsed(),
        })
    }
}

/// Checks the firewall every `every` and puts back what is missing; while it cannot, the
/// networks are marked unsafe and no networked sandbox starts.
async fn keep_firewall(
    firewall: Firewall,
    every: Duration,
    unsafe_network: Arc<std::sync::Mutex<Option<String>>>,
) {
    loop {
        tokio::time::sleep(every).await;
        let fw = firewall.clone();
        let checked = tokio::task::spawn_blocking(move || fw.ensure()).await;
        let state = match checked {
            Ok(Ok(0)) => None,
            Ok(Ok(missing)) => {
                tracing::warn!(
                    missing,
                    "sandbox firewall rules were missing (a firewall reload?); put back"
                );
                None
            }
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "the sandbox firewall cannot be put back; no networked sandbox starts until it is");
                Some(format!("{e:#}"))
            }
            Err(e) => Some(e.to_string()),
        };
        *unsafe_network.lock().expect("network lock") = state;
    }
}

/// How to run verify on the base: what the attempt's verify runs use.
struct BaseVerify<'a> {
    command: &'a str,
    image: Option<String>,
    env: Vec<String>,
    mounts: Vec<(PathBuf, String, bool)>,
    egress: Egress,
    labels: &'a HashMap<String, String>,
}

/// The verify-after entry before any verify ran.
fn verify_before_none(spec: &crate::task::TaskSpec) -> serde_json::Value {
    match spec.verify_command {
        Some(_) => json!({"status": "not_run", "why": "no verify run reached"}),
        None => json!({"status": "not_run", "why": "the repository has no verify command"}),
    }
}

fn step_labels(base: &HashMap<String, String>, step: &str) -> HashMap<String, String> {
    let mut l = base.clone();
    l.insert("backporcher.step".into(), step.into());
    l
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn tail(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        s.to_owned()
    } else {
        format!("[…]{}", s.chars().skip(count - n).collect::<String>())
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// The finish step. Runs with the trusted git directory at `/git` (its configuration written by
/// the runner: no hooks, drivers, fsmonitor or outside attribute files), the work tree read-only
/// at `/workspace`, no network. Everything it says goes to standard error except the tar archive
/// of its outputs, which is the only thing on standard output.
const FINISH_SCRIPT: &str = r#"set -euo pipefail
exec 3>&1 1>&2
export GIT_DIR=/git GIT_WORK_TREE=/workspace GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_ATTR_NOSYSTEM=1 GIT_NO_REPLACE_OBJECTS=1 GIT_TERMINAL_PROMPT=0 HOME=/tmp
out=/tmp/out
mkdir -p "$out"
cd /workspace
git add -A
if [ -n "${BP_UNTRACK:-}" ]; then git reset -q -- "$BP_UNTRACK" 2>/dev/null || true; fi
if ! git diff --cached --quiet; then
  git commit -q --no-verify -m "$BP_MESSAGE"
fi
head=$(git rev-parse HEAD)
if [ "$head" = "$BP_BASE" ]; then
  echo none > "$out/status"
else
  git bundle create "$out/result.bundle" "$BP_BRANCH" "^$BP_BASE"
  size=$(stat -c %s "$out/result.bundle")
  if [ "$size" -gt "$BP_MAX_BUNDLE" ]; then
    rm -f "$out/result.bundle"
    echo "too-large $size" > "$out/status"
  else
    git diff --numstat --no-ext-diff --no-textconv "$BP_BASE" HEAD | head -c "$BP_MAX_DIFF" > "$out/numstat" || true
    git diff -U0 --no-color --no-ext-diff --no-textconv "$BP_BASE" HEAD | head -c "$BP_MAX_DIFF" > "$out/diff0" || true
    echo "$head" > "$out/head"
    echo ok > "$out/status"
  fi
fi
tar -C "$out" -cf - . >&3
"#;

/// The attempt's end when the repository's environment cannot be set up: the task fails with
/// what to change (no agent runs in a broken environment).
fn setup_failed(ctx: &TaskContext, why: String) -> ExecResult {
    ctx.log("runner", format!("environment: {why}\n").as_bytes());
    let mut r = ExecResult::new(Outcome::SetupFailed);
    r.error = Some(why);
    r
}

#[cfg(test)]
mod tests {
    use super::plan_json;

    #[test]
    fn the_plan_is_the_last_json_object_of_the_answer() {
        let text = "I read {the code}. Plan:\n{\"files\": [\"a.rs\"], \"approach\": \"x {y}\"}\n";
        let got = plan_json(text).unwrap();
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["files"][0], "a.rs");
        assert_eq!(v["approach"], "x {y}");
        assert!(plan_json("no plan here").is_none());
        assert!(
            plan_json("[1, 2] }").is_none(),
            "an array or a stray brace is no plan"
        );
        let long = format!("{}{{\"approach\": \"end\"}}", "é".repeat(200_000));
        assert!(
            plan_json(&long).unwrap().contains("end"),
            "a long answer is searched from its end"
        );
    }
}
