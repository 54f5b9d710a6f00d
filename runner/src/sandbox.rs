//! The Docker sandbox every agent, verify and finalize step runs in.
//!
//! Each run is a fresh container of the agent image: non-root (uid 1000), all capabilities
//! dropped, `no-new-privileges`, read-only root filesystem with tmpfs for `/tmp` and the home,
//! pids/memory/CPU limits, a raised `nofile` limit (Claude Code needs it), only the mounts the step
//! needs, labels naming runner, task and attempt, and one of three egress policies:
//! - `none`: no network interface; the model gateway arrives as a unix socket that a loopback
//!   relay inside the container exposes (nothing else is reachable);
//! - `gateway-only`: an internal Docker network; the host firewall lets that network reach the
//!   gateway port of the host and nothing else;
//! - `open`: the default bridge.
//!
//! A run ends when the process exits, when it is cancelled (the container is killed through
//! Docker), at its wall-clock limit, or after too long without output. The container is removed
//! afterwards; containers a previous runner process left behind are removed at start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest, ResourcesUlimits};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, KillContainerOptions, ListContainersOptions,
    RemoveContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Label every container of ours carries: the runner that started it.
pub const RUNNER_LABEL: &str = "backporcher.runner";
/// Internal network for `gateway-only`.
pub const GATEWAY_NETWORK: &str = "bp-gateway-only";
/// Its bridge interface on the host (named so the firewall rules can find it).
pub const GATEWAY_BRIDGE: &str = "bp-gw0";

/// Limits and identity of the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Agent image.
    pub image: String,
    /// Value of [`RUNNER_LABEL`] (the runner's name).
    pub runner: String,
    /// Memory limit in bytes.
    pub memory_bytes: i64,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: i64,
    /// Process limit.
    pub pids: i64,
    /// Open-file limit.
    pub nofile: i64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            image: "backporcher-agent:latest".into(),
            runner: "runner".into(),
            memory_bytes: 4 << 30,
            nano_cpus: 2_000_000_000,
            pids: 1024,
            nofile: 65536,
        }
    }
}

/// Where a container may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// No network; the gateway socket directory is mounted at `/run/bp`.
    None {
        /// Host directory holding the gateway socket.
        socket_dir: PathBuf,
    },
    /// The internal network whose only way out is the gateway.
    GatewayOnly,
    /// The default bridge.
    Open,
}

/// One container run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Container name (unique).
    pub name: String,
    /// Command.
    pub cmd: Vec<String>,
    /// Environment (`K=V`).
    pub env: Vec<String>,
    /// Bind mounts: (host path, container path, read-only).
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// Egress policy.
    pub egress: Egress,
    /// Extra labels (task, attempt, step).
    pub labels: HashMap<String, String>,
    /// Wall-clock limit.
    pub wall: Duration,
    /// Longest time without output.
    pub idle: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The process exited with this code.
    Exited(i64),
    /// Cancelled from outside; the container was killed.
    Cancelled,
    /// Killed at the wall-clock limit.
    TimedOut,
    /// Killed after too long without output.
    Idle,
}

/// A stream of container output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    docker: Docker,
    config: SandboxConfig,
}

impl Sandbox {
    /// Connects to the local Docker engine (API 1.41 or later).
    pub async fn connect(config: SandboxConfig) -> anyhow::Result<Self> {
        let docker = Docker::connect_with_unix(
            "/var/run/docker.sock",
            120,
            &bollard::ClientVersion { major_version: 1, minor_version: 41 },
        )
        .context("cannot reach the Docker engine at /var/run/docker.sock; is Docker running and may this user use it?")?;
        docker
            .ping()
            .await
            .context("the Docker engine does not answer; is it running?")?;
        docker.inspect_image(&config.image).await.with_context(|| {
            format!(
                "the agent image `{}` is missing; build it with deploy/agent/build-offline.sh",
                config.image
            )
        })?;
        Ok(Self { docker, config })
    }

    /// The Docker client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Removes containers of this runner left by an earlier process; returns how many.
    pub async fn remove_orphans(&self) -> anyhow::Result<usize> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{RUNNER_LABEL}={}", self.config.runner)],
        )]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        for c in &list {
            if let Some(id) = &c.id {
                tracing::info!(container = %id, names = ?c.names, "removing a container left by an earlier runner process");
                let _ = self
                    .docker
                    .remove_container(
                        id,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        }
        Ok(list.len())
    }

    /// Creates the `gateway-only` network if needed and returns the host's address on it.
    pub async fn ensure_gateway_network(&self) -> anyhow::Result<String> {
        if self
            .docker
            .inspect_network(
                GATEWAY_NETWORK,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .is_err()
        {
            let req = NetworkCreateRequest {
                name: GATEWAY_NETWORK.into(),
                driver: Some("bridge".into()),
                internal: Some(true),
                options: Some(HashMap::from([(
                    "com.docker.network.bridge.name".to_string(),
                    GATEWAY_BRIDGE.to_string(),
                )])),
                labels: Some(HashMap::from([(
                    "backporcher".to_string(),
                    "gateway-only".to_string(),
                )])),
                ..Default::default()
            };
            if let Err(e) = self.docker.create_network(req).await {
                // Another runner on this host may have created it meanwhile.
                tracing::debug!(error = %e, "creating the gateway-only network");
            }
        }
        let net = self
            .docker
            .inspect_network(
                GATEWAY_NETWORK,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .context("cannot inspect the gateway-only network")?;
        net.ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.gateway))
            .context("the gateway-only network has no gateway address")
    }

    /// The host's address on the default bridge.
    pub async fn bridge_address(&self) -> anyhow::Result<String> {
        let net = self
            .docker
            .inspect_network(
                "bridge",
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .context("cannot inspect the default bridge network")?;
        let configs = net.ipam.and_then(|i| i.config).unwrap_or_default();
        if let Some(gw) = configs.iter().find_map(|c| c.gateway.clone()) {
            return Ok(gw);
        }
        // The default bridge often lists only its subnet; the host takes its first address.
        let subnet = configs
            .iter()
            .find_map(|c| c.subnet.clone().filter(|s| s.contains('.')))
            .context("the default bridge has no IPv4 subnet")?;
        let base: std::net::Ipv4Addr = subnet
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .context("bad bridge subnet")?;
        Ok(std::net::Ipv4Addr::from(u32::from(base) + 1).to_string())
    }

    /// Runs one container to its end, passing its output to `on_output` as it comes. The container
    /// is named after this runner and `spec.name`, so runners sharing an engine never collide.
    pub async fn run(
        &self,
        spec: &RunSpec,
        cancel: &CancellationToken,
        mut on_output: impl FnMut(Stream, &[u8]),
    ) -> anyhow::Result<Ended> {
        let runner: String = self
            .config
            .runner
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let spec = &RunSpec {
            name: format!("bp-{runner}-{}", spec.name),
            ..spec.clone()
        };
        self.remove(&spec.name).await;
        let mut labels = spec.labels.clone();
        labels.insert(RUNNER_LABEL.into(), self.config.runner.clone());
        let mut binds: Vec<String> = spec
            .mounts
            .iter()
            .map(|(h, c, ro)| format!("{}:{c}:{}", h.display(), if *ro { "ro" } else { "rw" }))
            .collect();
        let mut env = spec.env.clone();
        let network_mode = match &spec.egress {
            Egress::None { socket_dir } => {
                binds.push(format!("{}:/run/bp:rw", socket_dir.display()));
                env.push("BP_GATEWAY_SOCKET=/run/bp/gateway.sock".into());
                "none".to_string()
            }
            Egress::GatewayOnly => GATEWAY_NETWORK.to_string(),
            Egress::Open => "bridge".to_string(),
        };
        let host = HostConfig {
            binds: Some(binds),
            network_mode: Some(network_mode),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([
                (
                    "/tmp".to_string(),
                    "rw,nosuid,nodev,size=1g,mode=1777".to_string(),
                ),
                (
                    "/home/agent".to_string(),
                    "rw,nosuid,nodev,size=512m,uid=1000,gid=1000,mode=0700".to_string(),
                ),
            ])),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            memory: Some(self.config.memory_bytes),
            nano_cpus: Some(self.config.nano_cpus),
            pids_limit: Some(self.config.pids),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(self.nofile()),
                hard: Some(self.nofile()),
            }]),
            init: Some(true),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(self.config.image.clone()),
            cmd: Some(spec.cmd.clone()),
            env: Some(env),
            user: Some("1000:1000".into()),
            working_dir: Some("/workspace".into()),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            host_config: Some(host),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .with_context(|| format!("cannot create container {}", spec.name))?;
        let result = self.attach_and_wait(spec, cancel, &mut on_output).await;
        self.remove(&spec.name).await;
        result
    }

    async fn attach_and_wait(
        &self,
        spec: &RunSpec,
        cancel: &CancellationToken,
        on_output: &mut impl FnMut(Stream, &[u8]),
    ) -> anyhow::Result<Ended> {
        let mut attached = self
            .docker
            .attach_container(
                &spec.name,
                Some(AttachContainerOptions {
                    stdout: true,
                    stderr: true,
                    stream: true,
                    logs: true,
                    ..Default::default()
                }),
            )
            .await
            .context("cannot attach to the container")?;
        self.docker
            .start_container(
                &spec.name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await?;
        let deadline = tokio::time::Instant::now() + spec.wall;
        let mut idle_deadline = tokio::time::Instant::now() + spec.idle;
        let mut killed: Option<Ended> = None;
        loop {
            tokio::select! {
                item = attached.output.next() => match item {
                    Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => {
                        idle_deadline = tokio::time::Instant::now() + spec.idle;
                        on_output(Stream::Stdout, &message);
                    }
                    Some(Ok(LogOutput::StdErr { message })) => {
                        idle_deadline = tokio::time::Instant::now() + spec.idle;
                        on_output(Stream::Stderr, &message);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "container output ended with an error");
                        break;
                    }
                    None => break,
                },
                _ = cancel.cancelled(), if killed.is_none() => {
                    killed = Some(Ended::Cancelled);
                    self.kill(&spec.name).await;
                }
                _ = tokio::time::sleep_until(deadline), if killed.is_none() => {
                    killed = Some(Ended::TimedOut);
                    self.kill(&spec.name).await;
                }
                _ = tokio::time::sleep_until(idle_deadline), if killed.is_none() => {
                    killed = Some(Ended::Idle);
                    self.kill(&spec.name).await;
                }
            }
        }
        let code = match self
            .docker
            .wait_container(&spec.name, None::<WaitContainerOptions>)
            .next()
            .await
        {
            Some(Ok(w)) => w.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(e.into()),
            None => -1,
        };
        Ok(killed.unwrap_or(Ended::Exited(code)))
    }

    /// The open-file limit to give: the configured one, capped at what this host allows.
    fn nofile(&self) -> i64 {
        let host_hard = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| {
                        l.split_whitespace()
                            .nth(4)
                            .and_then(|v| v.parse::<i64>().ok())
                    })
            })
            .unwrap_or(self.config.nofile);
        self.config.nofile.min(host_hard)
    }

    async fn remove(&self, name: &str) {
        let _ = self
            .docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }

    async fn kill(&self, name: &str) {
        if let Err(e) = self
            .docker
            .kill_container(
                name,
                Some(KillContainerOptions {
                    signal: "SIGKILL".into(),
                }),
            )
            .await
        {
            tracing::debug!(container = name, error = %e, "kill failed (it may have exited already)");
        }
    }
}

/// Removes the accept rule of `port` (the drop rule stays: the network stays closed).
pub fn unguard_gateway_network(port: u16) {
    let port = port.to_string();
    let _ = xcmd::Cmd::new("iptables", "/")
        .args([
            "-D",
            "INPUT",
            "-i",
            GATEWAY_BRIDGE,
            "-p",
            "tcp",
            "--dport",
            port.as_str(),
            "-j",
            "ACCEPT",
        ])
        .to_std()
        .output();
}

/// Installs the host firewall rules that keep the `gateway-only` network to the gateway port:
/// accept TCP to `port` from the bridge, drop everything else from it. Idempotent.
pub fn guard_gateway_network(port: u16) -> anyhow::Result<()> {
    let ipt = |args: &[&str]| -> anyhow::Result<bool> {
        let out = xcmd::Cmd::new("iptables", "/")
            .args(args)
            .to_std()
            .output()
            .context("cannot run iptables (needed for the gateway-only egress policy)")?;
        Ok(out.status.success())
    };
    let port = port.to_string();
    let accept = [
        "INPUT",
        "-i",
        GATEWAY_BRIDGE,
        "-p",
        "tcp",
        "--dport",
        port.as_str(),
        "-j",
        "ACCEPT",
    ];
    let drop = ["INPUT", "-i", GATEWAY_BRIDGE, "-j", "DROP"];
    if !ipt(&[&["-C"], &drop[..]].concat())? {
        anyhow::ensure!(
            ipt(&[&["-I"], &drop[..]].concat())?,
            "iptables refused the gateway-only drop rule; run the runner as root"
        );
    }
    if !ipt(&[&["-C"], &accept[..]].concat())? {
        anyhow::ensure!(
            ipt(&[&["-I"], &accept[..]].concat())?,
            "iptables refused the gateway-only accept rule; run the runner as root"
        );
    }
    Ok(())
}
