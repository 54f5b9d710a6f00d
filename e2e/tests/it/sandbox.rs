//! Runner execution for real: Docker, the agent image, the real Claude Code CLI driven by the
//! scripted model server through the runner's model gateway. Skipped with `BP_SKIP_DOCKER=1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::store::repos::RepoSettings;
use controller::store::{Note, TerminalReason};
use e2e::harness::{
    Options, RunnerHandle, TestController, enroll, fixture_repo, free_port, skip_docker,
    spawn_runner_with,
};
use runner::gateway::Credential;
use runner::sandbox::{Sandbox, SandboxConfig};
use runner::sandbox_executor::ExecConfig;
use sim::model::{Match, ModelSim, Script, Step, ToolCall};

pub(crate) const REAL_KEY: &str = "sk-real-secret-never-in-a-container";

pub(crate) struct Env {
    pub c: TestController,
    pub sim: ModelSim,
    pub repo: controller::store::repos::Repo,
    pub origin: std::path::PathBuf,
    pub runner: RunnerHandle,
    pub name: String,
    pub state_dir: std::path::PathBuf,
    pub gateway_port: u16,
}

pub(crate) struct Setup {
    pub files: Vec<(&'static str, &'static str)>,
    pub verify: Option<&'static str>,
    pub egress: &'static str,
    pub agent_timeout: Duration,
    pub stall_timeout: Duration,
    pub budget: Option<i64>,
    pub agent_hooks: bool,
    pub firewall_check: Duration,
    pub max_verify_fixes: u32,
    pub capacity: u32,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            files: vec![("README.md", "hello\n")],
            verify: None,
            egress: "gateway-only",
            agent_timeout: Duration::from_secs(120),
            stall_timeout: Duration::from_secs(120),
            budget: None,
            agent_hooks: false,
            firewall_check: Duration::from_secs(15),
            max_verify_fixes: 2,
            capacity: 2,
        }
    }
}

pub(crate) async fn setup(tag: &str, s: Setup) -> Env {
    let c = TestController::start(Options {
        lease: Duration::from_secs(30),
        heartbeat: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let sim = ModelSim::new(Some(REAL_KEY.into()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_url = format!("http://{}", l.local_addr().unwrap());
    sim.serve(l);
    let origin = fixture_repo(&s.files);
    let repo = c
        .store
        .add_repo(&controller::store::repos::NewRepo {
            name: format!("acme/{tag}"),
            clone_url: origin.to_string_lossy().into_owned(),
            default_branch: "main".into(),
        })
        .await
        .unwrap();
    c.store
        .update_repo(
            repo.id,
            &RepoSettings {
                verify_command: s.verify.map(str::to_owned),
                egress_policy: Some(s.egress.into()),
                budget_task_microusd: s.budget,
                agent_hooks: Some(s.agent_hooks),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
    let name = format!("sbx-{tag}-{}", std::process::id());
    let (id, dir) = enroll(&c, &name, &[]).await;
    let gateway_port = free_port();
    let exec = runner::start::executor(runner::start::Setup {
        name: name.clone(),
        image: None,
        model_api: sim_url.clone(),
        credential: Credential::ApiKey(REAL_KEY.into()),
        openai: None,
        exec: ExecConfig {
            agent_timeout: s.agent_timeout,
            stall_timeout: s.stall_timeout,
            verify_timeout: Duration::from_secs(120),
            max_verify_fixes: s.max_verify_fixes,
            firewall_check: s.firewall_check,
            ..ExecConfig::new(dir.clone(), gateway_port)
        },
    })
    .await
    .expect("docker, the agent image, and the executor starts");
    let runner = spawn_runner_with(id, &dir, Arc::new(exec), s.capacity);
    Env {
        c,
        sim,
        repo,
        origin,
        runner,
        name,
        state_dir: dir,
        gateway_port,
    }
}

impl Env {
    /// Creates a task and queues it.
    pub async fn task(&self, title: &str, body: &str) -> controller::store::Task {
        let t = self.new_task(title, body).await;
        self.queue(&t).await
    }

    /// Creates a task without queueing it (to change it first).
    pub async fn new_task(&self, title: &str, body: &str) -> controller::store::Task {
        let mut t = controller::store::tasks::NewTask::for_issue(self.repo.id, 0, title, body);
        t.issue_number = None;
        self.c.store.create_task(&t).await.unwrap()
    }

    /// Queues a task made with [`Env::new_task`].
    pub async fn queue(&self, t: &controller::store::Task) -> controller::store::Task {
        // The controller's own triage may have queued it already.
        match self
            .c
            .store
            .triage(t.id, &Default::default(), &Note::new("test", "triaged"))
            .await
        {
            Ok(t) => t,
            Err(controller::store::Error::IllegalTransition { .. }) => {
                self.c.store.task(t.id).await.unwrap()
            }
            Err(e) => panic!("triage: {e}"),
        }
    }

    /// Every log line of every attempt of `task`, as text.
    pub async fn logs(&self, task: i64) -> String {
        let t = self.c.store.task(task).await.unwrap();
        let mut out = String::new();
        for attempt in 1..=t.attempt.max(1) {
            for (_, stream, data) in self.c.store.log_chunks(task, attempt).await.unwrap() {
                out.push_str(&format!("[{stream}] {}", String::from_utf8_lossy(&data)));
            }
        }
        out
    }

    pub async fn finish(self) {
        self.runner.stop().await.unwrap();
        self.c.stop().await;
    }
}

pub(crate) use sim::kit::git_out as git;

#[tokio::test]
async fn the_real_cli_edits_the_checkout_verify_fails_once_and_the_fix_comes_back_in_the_bundle() {
    if skip_docker() {
        return;
    }
    let env = setup(
        "edit",
        Setup {
            verify: Some("grep -q 'hello world' hello.txt"),
            ..Setup::default()
        },
    )
    .await;
    env.sim.add_script(Script {
        selector: "MARK-EDIT".into(),
        steps: vec![
            Step {
                when: Match {
                    tool_result: Some(false),
                    ..Match::default()
                },
                tools: vec![ToolCall::write("/workspace/hello.txt", "hello wrld\n")],
                ..Step::default()
            },
            Step {
                when: Match {
                    tool_result: Some(true),
                    ..Match::default()
                },
                text: "Wrote hello.txt.".into(),
                ..Step::default()
            },
            Step {
                when: Match {
                    contains: Some("verify command failed".into()),
                    ..Match::default()
                },
                tools: vec![ToolCall::edit("/workspace/hello.txt", "wrld", "world")],
                ..Step::default()
            },
            Step {
                when: Match {
                    tool_result: Some(true),
                    ..Match::default()
                },
                text: "Fixed the typo.".into(),
                ..Step::default()
            },
        ],
    });
    let t = env
        .task("Say hello MARK-EDIT", "Create hello.txt saying hello world")
        .await;
    env.c
        .wait_status(t.id, "pushing", Duration::from_secs(120))
        .await;
    let task = env.c.store.task(t.id).await.unwrap();
    assert!(task.cost_microusd > 0, "the gateway metered the calls");
    let stages: Vec<String> = env
        .c
        .store
        .timeline(t.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.to_status)
        .collect();
    assert_eq!(
        stages,
        vec![
            "new",
            "queued",
            "leased",
            "running",
            "verifying",
            "running",
            "verifying",
            "pushing"
        ]
    );
    // Every model call reached the model with the real key, none with anything else.
    let received = env.sim.received();
    assert!(received.len() >= 4, "{} calls", received.len());
    assert!(received.iter().all(|r| r.credential == REAL_KEY));
    assert!(
        received
            .iter()
            .any(|r| r.last_user_text.contains("verify command failed")),
        "the verify output reached the agent"
    );
    // The bundle holds the fixed file on the task branch, on top of main.
    let (_, bundle) = env
        .c
        .store
        .bundle(t.id, task.attempt)
        .await
        .unwrap()
        .expect("bundle");
    let check = e2e::harness::state_dir("check");
    std::fs::write(check.join("result.bundle"), &bundle).unwrap();
    git(
        &check,
        &["clone", "--quiet", env.origin.to_str().unwrap(), "repo"],
    );
    let repo = check.join("repo");
    git(&repo, &["bundle", "verify", "../result.bundle"]);
    let branch = task.branch.clone().expect("branch recorded");
    assert!(
        branch.starts_with(&format!("backporcher/{}-say-hello", t.id)),
        "{branch}"
    );
    git(
        &repo,
        &[
            "fetch",
            "--quiet",
            "../result.bundle",
            &format!("{branch}:check"),
        ],
    );
    assert_eq!(git(&repo, &["show", "check:hello.txt"]), "hello world\n");
    let log = git(&repo, &["log", "--format=%s", "main..check"]);
    assert!(log.contains("Say hello MARK-EDIT"), "{log}");
    let verify_logs = env
        .c
        .store
        .log_chunks(t.id, task.attempt)
        .await
        .unwrap()
        .iter()
        .filter(|c| c.1 == "agent")
        .count();
    assert!(verify_logs > 0, "stream-json events were logged");
    env.finish().await;
}

const PROBE: &str = r#"echo "uid=$(id -u)"; grep CapEff /proc/self/status;
needle=sk-real-; needle="${needle}secret";
echo "secrets_in_env=$(env | grep -c -i -E "github_token|gh_token|$needle")";
echo "secrets_in_fs=$(grep -rls "$needle" /workspace /task /home /tmp /etc /run /usr/local 2>/dev/null | wc -l)";
gw=${ANTHROPIC_BASE_URL#http://}; h=${gw%:*}; p=${gw##*:};
if (exec 3<>/dev/tcp/$h/$p) 2>/dev/null; then echo gateway=open; else echo gateway=closed; fi;
if timeout 3 bash -c 'exec 3<>/dev/tcp/OTHER_HOST/OTHER_PORT' 2>/dev/null; then echo other=open; else echo other=closed; fi;
if timeout 3 bash -c 'exec 3<>/dev/tcp/GWTCP_HOST/GWTCP_PORT' 2>/dev/null; then echo gwtcp=open; else echo gwtcp=closed; fi;
if touch /probe 2>/dev/null; then echo rootfs=writable; else echo rootfs=readonly; fi"#;

#[tokio::test]
async fn inside_the_sandbox_no_secret_no_root_no_capability_and_only_the_allowed_network() {
    if skip_docker() {
        return;
    }
    // Another service on the host that no sandbox should reach (except with `open`).
    let other = tokio::net::TcpListener::bind("172.17.0.1:0")
        .await
        .expect("docker0 address");
    let other_addr = other.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let _ = other.accept().await;
        }
    });
    for egress in ["none", "gateway-only", "open"] {
        let env = setup(
            &format!("probe-{egress}"),
            Setup {
                egress,
                ..Setup::default()
            },
        )
        .await;
        let marker = format!("MARK-PROBE-{egress}");
        // The TCP address of the gateway on the gateway-only network (for `none`, it must be out of reach).
        let gw_net = env_gateway_only_address(&env).await;
        let probe = PROBE
            .replace("OTHER_HOST", &other_addr.ip().to_string())
            .replace("OTHER_PORT", &other_addr.port().to_string())
            .replace("GWTCP_HOST", &gw_net.0)
            .replace("GWTCP_PORT", &gw_net.1.to_string());
        env.sim.add_script(Script {
            selector: marker.clone(),
            steps: vec![
                Step {
                    when: Match {
                        tool_result: Some(false),
                        ..Match::default()
                    },
                    tools: vec![ToolCall::bash(&probe)],
                    ..Step::default()
                },
                Step {
                    when: Match {
                        tool_result: Some(true),
                        ..Match::default()
                    },
                    tools: vec![ToolCall::write("/workspace/probed.txt", "ok\n")],
                    ..Step::default()
                },
                Step {
                    when: Match {
                        tool_result: Some(true),
                        ..Match::default()
                    },
                    text: "probed".into(),
                    ..Step::default()
                },
            ],
        });
        let t = env.task(&format!("Probe {marker}"), "probe").await;
        env.c
            .wait_status(t.id, "pushing", Duration::from_secs(120))
            .await;
        let out = env
            .sim
            .received()
            .into_iter()
            .map(|r| r.last_user_text)
            .find(|t| t.contains("uid="))
            .expect("the probe output reached the model");
        assert!(out.contains("uid=1000"), "{egress}: {out}");
        assert!(
            out.contains("CapEff:\t0000000000000000"),
            "{egress}: no effective capability: {out}"
        );
        assert!(out.contains("secrets_in_env=0"), "{egress}: {out}");
        assert!(out.contains("secrets_in_fs=0"), "{egress}: {out}");
        assert!(out.contains("rootfs=readonly"), "{egress}: {out}");
        assert!(
            out.contains("gateway=open"),
            "{egress}: the model gateway is reachable: {out}"
        );
        match egress {
            "none" => {
                assert!(out.contains("other=closed"), "none: {out}");
                assert!(
                    out.contains("gwtcp=closed"),
                    "none reaches no TCP address at all: {out}"
                );
            }
            _ => assert!(
                out.contains("other=closed"),
                "{egress} reaches no service of the host but the gateway: {out}"
            ),
        }
        env.finish().await;
    }
}

async fn env_gateway_only_address(env: &Env) -> (String, u16) {
    // The executor's TCP listener on the gateway-only network: read it from the runner's config
    // indirectly: the network's gateway address and any listening port there.
    let sandbox = Sandbox::connect(SandboxConfig {
        runner: env.name.clone(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let (ip, _) = sandbox.ensure_networks().await.unwrap();
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let hex_ip = ip
        .split('.')
        .rev()
        .map(|o| format!("{:02X}", o.parse::<u8>().unwrap()))
        .collect::<String>();
    let port = listening
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, state) = (f.get(1)?, f.get(3)?);
            let (a, p) = addr.split_once(':')?;
            (a == hex_ip && *state == "0A")
                .then(|| u16::from_str_radix(p, 16).ok())
                .flatten()
        })
        .next()
        .expect("the gateway listens on the gateway-only network");
    (ip, port)
}

#[tokio::test]
async fn cancel_stops_the_container_within_five_seconds() {
    if skip_docker() {
        return;
    }
    let env = setup("cancel", Setup::default()).await;
    env.sim.add_script(Script {
        selector: "MARK-CANCEL".into(),
        steps: vec![Step {
            delay_ms: 120_000,
            text: "too late".into(),
            ..Step::default()
        }],
    });
    let t = env.task("Slow MARK-CANCEL", "wait").await;
    // Running, and the agent is waiting for the model.
    let sim = env.sim.clone();
    e2e::harness::eventually(
        Duration::from_secs(60),
        "the agent to call the model",
        move || {
            let sim = sim.clone();
            async move { !sim.received().is_empty() }
        },
    )
    .await;
    let asked = Instant::now();
    env.c
        .store
        .cancel(t.id, &Note::new("user:ops", "cancel"))
        .await
        .unwrap();
    env.c
        .wait_status(t.id, "canceled", Duration::from_secs(5))
        .await;
    let label = format!("label=backporcher.task={}", t.id);
    let runner = format!("label=backporcher.runner={}", env.name);
    let ps = docker_cli(&["ps", "-a", "-q", "--filter", &label, "--filter", &runner]);
    assert!(ps.trim().is_empty(), "no container left: {ps}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "canceled after {:?}",
        asked.elapsed()
    );
    env.finish().await;
}

fn docker_cli(args: &[&str]) -> String {
    let out = xcmd::Cmd::new("docker", "/")
        .args(args)
        .to_std()
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_wall_clock_limit_kills_the_agent() {
    if skip_docker() {
        return;
    }
    let env = setup(
        "timeout",
        Setup {
            agent_timeout: Duration::from_secs(4),
            ..Setup::default()
        },
    )
    .await;
    env.sim.add_script(Script {
        selector: "MARK-TIMEOUT".into(),
        steps: (0..4)
            .map(|_| Step {
                delay_ms: 120_000,
                text: "too late".into(),
                ..Step::default()
            })
            .collect(),
    });
    let t = env.task("Forever MARK-TIMEOUT", "wait").await;
    let store = env.c.store.clone();
    e2e::harness::eventually(Duration::from_secs(60), "a timed-out attempt", move || {
        let store = store.clone();
        async move {
            store
                .timeline(t.id)
                .await
                .unwrap()
                .iter()
                .any(|e| e.reason == "timed_out")
        }
    })
    .await;
    let task = env.c.store.task(t.id).await.unwrap();
    assert_eq!(task.agent_retries, 1, "a timeout spends an agent retry");
    env.c
        .store
        .cancel(t.id, &Note::new("user:ops", "cancel"))
        .await
        .unwrap();
    env.c
        .wait_status(t.id, "canceled", Duration::from_secs(15))
        .await;
    env.finish().await;
}

#[tokio::test]
async fn a_task_over_its_budget_ends_as_budget_exceeded() {
    if skip_docker() {
        return;
    }
    // A $3 budget covers the worst case of the agent's first call (its body and max_tokens),
    // not the $15 its answer reports (a million output tokens at sonnet prices), so the second
    // call is refused before it reaches the model.
    let env = setup(
        "budget",
        Setup {
            budget: Some(3_000_000),
            ..Setup::default()
        },
    )
    .await;
    env.sim.add_script(Script {
        selector: "MARK-BUDGET".into(),
        steps: vec![
            Step {
                tools: vec![ToolCall::bash("sleep 20")],
                extra_output_tokens: 1_000_000,
                ..Step::default()
            },
            Step {
                text: "should never be asked".into(),
                ..Step::default()
            },
        ],
    });
    let t = env.task("Expensive MARK-BUDGET", "spend").await;
    env.c
        .wait_status(t.id, "failed", Duration::from_secs(60))
        .await;
    let task = env.c.store.task(t.id).await.unwrap();
    assert_eq!(task.terminal_reason.0, Some(TerminalReason::BudgetExceeded));
    assert!(task.cost_microusd >= 3_000_000, "{}", task.cost_microusd);
    assert_eq!(
        env.sim.received().len(),
        1,
        "no model call after the budget was reached"
    );
    env.finish().await;
}

/// A model that hangs mid-stream (the message started, nothing more, the connection open): the
/// agent shows no sign of life, and the attempt ends as stalled within the runner's stall
/// limit, its container killed and the log saying so; the retry runs on a model that answers.
#[tokio::test]
async fn a_model_that_hangs_mid_stream_ends_the_attempt_as_stalled() {
    if skip_docker() {
        return;
    }
    let env = setup(
        "stall",
        Setup {
            stall_timeout: Duration::from_secs(8),
            ..Setup::default()
        },
    )
    .await;
    env.sim.add_script(Script {
        selector: "MARK-STALL".into(),
        steps: vec![Step {
            when: sim::model::Match {
                model: Some("sonnet".into()),
                ..Default::default()
            },
            hang_mid_stream: true,
            ..Step::default()
        }],
    });
    let t = env.task("Hangs MARK-STALL", "stall").await;
    let stalled = env
        .c
        .wait_for(
            t.id,
            "the first attempt to end",
            Duration::from_secs(90),
            |t| t.agent_retries >= 1,
        )
        .await;
    let (outcome, error): (String, Option<String>) = sqlx::query_as(
        "SELECT outcome, error FROM task_results WHERE task_id = $1 AND attempt = 1",
    )
    .bind(t.id)
    .fetch_one(env.c.store.pool())
    .await
    .unwrap();
    assert_eq!(outcome, "stalled");
    let error = error.unwrap_or_default();
    assert!(error.contains("no sign of life"), "{error}");
    assert!(stalled.agent_retries >= 1, "the agent's budget paid for it");
    let log = env.c.log_text(t.id, 1).await;
    assert!(log.contains("no sign of life"), "{log}");
    env.finish().await;
}

#[tokio::test]
async fn a_runner_start_removes_orphan_containers_and_checkouts() {
    if skip_docker() {
        return;
    }
    let name = format!("sbx-orphans-{}", std::process::id());
    let label = format!("backporcher.runner={name}");
    let created = docker_cli(&[
        "create",
        "--label",
        &label,
        "backporcher-agent:latest",
        "true",
    ]);
    assert!(!created.trim().is_empty(), "orphan created");
    let dir = e2e::harness::state_dir("orphans");
    std::fs::create_dir_all(dir.join("work/99-1/repo")).unwrap();
    let exec = runner::start::executor(runner::start::Setup {
        name: name.clone(),
        image: None,
        model_api: "http://127.0.0.1:9".into(),
        credential: Credential::ApiKey("k".into()),
        openai: None,
        exec: ExecConfig {
            agent_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            verify_timeout: Duration::from_secs(10),
            max_verify_fixes: 0,
            ..ExecConfig::new(dir.clone(), free_port())
        },
    })
    .await
    .unwrap();
    let left = docker_cli(&["ps", "-a", "-q", "--filter", &format!("label={label}")]);
    assert!(left.trim().is_empty(), "orphans removed: {left}");
    assert!(!dir.join("work/99-1").exists(), "stale checkouts removed");
    drop(exec);
}
