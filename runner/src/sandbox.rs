//! The Docker sandbox every agent, verify and finalize step runs in.
//!
//! Each run is a fresh container of the agent image: non-root (uid 1000), all capabilities
//! dropped, `no-new-privileges`, read-only root filesystem with tmpfs for `/tmp` and the home,
//! pids/memory/CPU limits, a raised `nofile` limit (Claude Code needs it), only the mounts the step
//! needs, labels naming runner, task and attempt, and one of three egress policies:
//! - `none`: no network interface; the model gateway arrives as a unix socket that a loopback
//!   relay inside the container exposes (nothing else is reachable);
//! - `gateway-only`: an internal Docker network; the host firewall lets that network reach the
//!   gateway port of the host and nothing else, and its containers get an unroutable upstream DNS
//!   server, so Docker's embedded resolver cannot carry names out (CVE-2024-29018);
//! - `open`: a network of our own with a route out; the host firewall keeps it off the host's
//!   services and private ranges ([`crate::firewall`]).
//!
//! Both networks are created with inter-container traffic off: two tasks' sandboxes never reach
//! each other.
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

pub use crate::firewall::{GATEWAY_BRIDGE, OPEN_BRIDGE};

/// Label every container of ours carries: the runner that started it.
pub const RUNNER_LABEL: &str = "backporcher.runner";
/// Internal network for `gateway-only`.
pub const GATEWAY_NETWORK: &str = "bp-gateway-only";
/// Network for `open`.
pub const OPEN_NETWORK: &str = "bp-open";
/// Times a missing sandbox network is created (and looked for again) before the runner gives up.
const NETWORK_TRIES: u32 = 5;
/// Upstream DNS server of `gateway-only` containers: TEST-NET-1, routed nowhere.
pub const NO_DNS: &str = "192.0.2.1";
/// Bridge driver option that turns inter-container traffic off.
const ICC: &str = "com.docker.network.bridge.enable_icc";

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
    /// The `open` network (internet, not the host's networks).
    Open,
}

/// Label of environment snapshots (its value is the snapshot key).
pub const ENV_LABEL: &str = "backporcher.env";

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
    /// A repository environment's image instead of the agent image: the runner's agent files
    /// are then expected at `/opt/bp` (a mount) and the entrypoint is taken from there.
    pub image: Option<String>,
    /// Setup of an environment: the root filesystem stays writable and, when the run exits 0,
    /// the container is committed as this snapshot before it is removed.
    pub commit_to: Option<Snapshot>,
}

/// What an environment's setup is committed as.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Image tag.
    pub tag: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Its environment (`K=V`): what later runs see, not what setup ran with.
    pub env: Vec<String>,
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

    /// The engine's version, warning when it has the internal-network DNS leak
    /// (CVE-2024-29018; `gateway-only` containers are protected from it by their DNS setting).
    pub async fn check_engine(&self) -> anyhow::Result<String> {
        let v = self
            .docker
            .version()
            .await
            .context("cannot read the Docker engine's version")?;
        let version = v.version.unwrap_or_default();
        if crate::firewall::dns_leak_affected(&version) {
            tracing::warn!(
                version,
                "this Docker engine forwards DNS from internal networks (CVE-2024-29018); gateway-only sandboxes get an unroutable DNS server against it, but upgrade Docker to 26.0.0, 25.0.5 or 23.0.11 or later"
            );
        }
        Ok(version)
    }

    /// Creates the `gateway-only` and `open` networks if needed (inter-container traffic off;
    /// an older network of ours without that option is re-created) and returns the host's
    /// address on each.
    pub async fn ensure_networks(&self) -> anyhow::Result<(String, String)> {
        let gw = self
            .ensure_network(GATEWAY_NETWORK, GATEWAY_BRIDGE, true)
            .await?;
        let open = self
            .ensure_network(OPEN_NETWORK, OPEN_BRIDGE, false)
            .await?;
        Ok((gw, open))
    }

    async fn ensure_network(
        &self,
        name: &str,
        bridge: &str,
        internal: bool,
    ) -> anyhow::Result<String> {
        let inspect = || {
            self.docker.inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
        };
        if let Ok(net) = inspect().await {
            let icc_off = net
                .options
                .as_ref()
                .and_then(|o| o.get(ICC))
                .is_some_and(|v| v == "false");
            if !icc_off || net.internal != Some(internal) {
                tracing::warn!(
                    network = name,
                    "re-creating a sandbox network made without inter-container isolation"
                );
                self.docker.remove_network(name).await.with_context(|| {
                    format!("the network {name} lets sandboxes reach each other and cannot be removed; stop its containers and run `docker network rm {name}`")
                })?;
            }
        }
        // Another runner on this host (a second process, a fresh machine's first start) may be
        // creating it at this very moment, and Docker answers neither "exists" nor "created"
        // until that ends: a few tries, a moment apart, then the error.
        let mut tries = 0;
        while inspect().await.is_err() && tries < NETWORK_TRIES {
            tries += 1;
            if tries > 1 {
                tokio::time::sleep(std::time::Duration::from_millis(250 * u64::from(tries))).await;
            }
            let req = NetworkCreateRequest {
                name: name.into(),
                driver: Some("bridge".into()),
                internal: Some(internal),
                options: Some(HashMap::from([
                    (
                        "com.docker.network.bridge.name".to_string(),
                        bridge.to_string(),
                    ),
                    (ICC.to_string(), "false".to_string()),
                ])),
                labels: Some(HashMap::from([(
                    "backporcher".to_string(),
                    name.to_string(),
                )])),
                ..Default::default()
            };
            if let Err(e) = self.docker.create_network(req).await {
                // Another runner on this host may have created it meanwhile.
                tracing::debug!(error = %e, network = name, tries, "creating a sandbox network");
            }
        }
        let net = inspect()
            .await
            .with_context(|| format!("cannot inspect the network {name}"))?;
        net.ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.gateway))
            .with_context(|| format!("the network {name} has no gateway address"))
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
        // No interpreter cache is written into the work tree (what a run leaves there is
        // committed, and a binary file is something no reviewer can read); the run's own
        // environment comes after and may say otherwise.
        let mut env = vec!["PYTHONDONTWRITEBYTECODE=1".to_string()];
        env.extend(spec.env.iter().cloned());
        let network_mode = match &spec.egress {
            Egress::None { socket_dir } => {
                binds.push(format!("{}:/run/bp:rw", socket_dir.display()));
                env.push("BP_GATEWAY_SOCKET=/run/bp/gateway.sock".into());
                "none".to_string()
            }
            Egress::GatewayOnly => GATEWAY_NETWORK.to_string(),
            Egress::Open => OPEN_NETWORK.to_string(),
        };
        let dns = (spec.egress == Egress::GatewayOnly).then(|| vec![NO_DNS.to_string()]);
        let host = HostConfig {
            binds: Some(binds),
            network_mode: Some(network_mode),
            dns,
            readonly_rootfs: Some(spec.commit_to.is_none()),
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
            image: Some(
                spec.image
                    .clone()
                    .unwrap_or_else(|| self.config.image.clone()),
            ),
            entrypoint: spec
                .image
                .as_ref()
                .map(|_| vec!["/opt/bp/bp-entrypoint".to_string()]),
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
        let mut result = self.attach_and_wait(spec, cancel, &mut on_output).await;
        if let (Ok(Ended::Exited(0)), Some(snapshot)) = (&result, &spec.commit_to) {
            let tag = &snapshot.tag;
            let (repo, version) = tag.rsplit_once(':').unwrap_or((tag.as_str(), "latest"));
            let committed = self
                .docker
                .commit_container(
                    bollard::query_parameters::CommitContainerOptionsBuilder::new()
                        .container(&spec.name)
                        .repo(repo)
                        .tag(version)
                        .pause(true)
                        .build(),
                    bollard::models::ContainerConfig {
                        labels: Some(snapshot.labels.clone()),
                        env: Some(snapshot.env.clone()),
                        user: Some("1000:1000".into()),
                        working_dir: Some("/workspace".into()),
                        ..Default::default()
                    },
                )
                .await;
            if let Err(e) = committed {
                result = Err(anyhow::anyhow!(
                    "cannot snapshot the environment as {tag}: {e}"
                ));
            }
        }
        self.remove(&spec.name).await;
        result
    }

    /// Whether `image` exists on this engine.
    pub async fn has_image(&self, image: &str) -> bool {
        self.docker.inspect_image(image).await.is_ok()
    }

    /// Copies the agent CLIs and the entrypoint out of the agent image into `dest` (the directory
    /// environment containers get mounted at `/opt/bp`), once (`.complete` marks a whole copy).
    /// `codex` is copied when the image has it.
    pub async fn export_agent_files(&self, dest: &std::path::Path) -> anyhow::Result<()> {
        if dest.join(".complete").exists() {
            return Ok(());
        }
        let name = format!("bp-export-{}", uuid::Uuid::new_v4().simple());
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(self.config.image.clone()),
                    labels: Some(HashMap::from([(
                        RUNNER_LABEL.to_string(),
                        self.config.runner.clone(),
                    )])),
                    ..Default::default()
                },
            )
            .await
            .context("cannot create a container of the agent image to copy the agent CLI from")?;
        let staging = dest.with_extension("partial");
        let _ = tokio::fs::remove_dir_all(&staging).await;
        tokio::fs::create_dir_all(&staging).await?;
        let mut copied = Ok(());
        for path in [
            "/usr/local/bin/claude",
            "/usr/local/bin/bp-entrypoint",
            "/usr/local/bin/codex",
        ] {
            let mut tar_bytes = Vec::new();
            let mut stream = self.docker.download_from_container(
                &name,
                Some(bollard::query_parameters::DownloadFromContainerOptions {
                    path: path.to_string(),
                }),
            );
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(b) => tar_bytes.extend_from_slice(&b),
                    // An image from before the Codex CLI: environments get Claude Code only.
                    Err(_) if path.ends_with("/codex") => {
                        tar_bytes.clear();
                        break;
                    }
                    Err(e) => {
                        copied = Err(anyhow::anyhow!(
                            "cannot copy {path} from the agent image: {e}"
                        ));
                        break;
                    }
                }
            }
            if copied.is_err() {
                break;
            }
            if tar_bytes.is_empty() {
                continue;
            }
            let staging = staging.clone();
            copied = tokio::task::spawn_blocking(move || {
                tar::Archive::new(std::io::Cursor::new(tar_bytes)).unpack(&staging)
            })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(anyhow::Error::from));
            if copied.is_err() {
                break;
            }
        }
        self.remove(&name).await;
        copied?;
        tokio::fs::write(staging.join(".complete"), b"").await?;
        let _ = tokio::fs::remove_dir_all(dest).await;
        tokio::fs::rename(&staging, dest).await?;
        Ok(())
    }

    /// Removes an image (a pruned environment snapshot).
    pub async fn remove_image(&self, image: &str) -> anyhow::Result<()> {
        self.docker
            .remove_image(
                image,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await?;
        Ok(())
    }

    /// Environment snapshots on this engine: (tag, size in bytes).
    pub async fn env_images(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let images = self
            .docker
            .list_images(Some(bollard::query_parameters::ListImagesOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![ENV_LABEL.to_string()],
                )])),
                ..Default::default()
            }))
            .await?;
        Ok(images
            .into_iter()
            .flat_map(|i| {
                let size = i.size;
                i.repo_tags.into_iter().map(move |t| (t, size))
            })
            .collect())
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
