//! The runner's composition root: from settings to a sandbox executor (gateway, Docker sandbox,
//! host preparation) and from there to a running daemon. The `backporcher-runner` binary, the
//! one-command demo and the tests all start a runner through here, so a runner is put together
//! one way only.

use std::sync::Arc;

use crate::daemon::{self, Control};
use crate::gateway::{Credential, Gateway};
use crate::identity::Identity;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::sandbox_executor::{ExecConfig, SandboxExecutor};

/// The OpenAI API and its key. Its `Debug` form names the URL only.
#[derive(Clone)]
pub struct OpenAi {
    /// Base URL (`https://api.openai.com`).
    pub url: String,
    /// The API key (only the gateway holds it).
    pub key: String,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenAi({}, key …)", self.url)
    }
}

/// What a runner on this host is made of.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The runner's name (labels its containers).
    pub name: String,
    /// The agent image; `None` for [`SandboxConfig`]'s default.
    pub image: Option<String>,
    /// The model API the gateway forwards to.
    pub model_api: String,
    /// The real model credential (only the gateway holds it).
    pub credential: Credential,
    /// The OpenAI API the gateway forwards Codex tasks' Responses calls to; without it the runner
    /// offers no Codex backend.
    pub openai: Option<OpenAi>,
    /// How tasks are run (its `state_dir` is the runner's state directory).
    pub exec: ExecConfig,
}

/// Puts the executor together: the metering gateway, the Docker sandbox, and the host prepared
/// by [`SandboxExecutor::start`] (orphans removed, networks and firewall in place).
pub async fn executor(setup: Setup) -> anyhow::Result<SandboxExecutor> {
    let mut gateway = Gateway::new(&setup.model_api, setup.credential)?;
    if let Some(openai) = &setup.openai {
        gateway = gateway.with_responses(&openai.url, &openai.key);
    }
    let defaults = SandboxConfig::default();
    let sandbox = Sandbox::connect(SandboxConfig {
        image: setup.image.unwrap_or(defaults.image.clone()),
        runner: setup.name,
        ..defaults
    })
    .await?;
    SandboxExecutor::start(setup.exec, sandbox, gateway).await
}

/// A started runner: its host is prepared and its daemon runs.
pub struct Running {
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Resolves when the daemon has ended (drained or stopped through its [`Control`]).
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.join
            .await
            .map_err(|e| anyhow::anyhow!("the runner task panicked: {e}"))?
    }
}

/// Prepares the executor (errors surface here, before any work is leased) and starts the daemon
/// for `identity`; it runs until `control` ends it.
pub async fn start(
    identity: Identity,
    setup: Setup,
    capacity: u32,
    labels: Vec<String>,
    control: Control,
) -> anyhow::Result<Running> {
    let config = daemon::Config {
        state_dir: setup.exec.state_dir.clone(),
        capacity,
        labels,
    };
    let executor = executor(setup).await?;
    let join = tokio::spawn(daemon::run(config, identity, Arc::new(executor), control));
    Ok(Running { join })
}
