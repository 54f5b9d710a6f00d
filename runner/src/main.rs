//! `backporcher-runner`: enrolls a host with a controller (`join`) and runs tasks (`run`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "backporcher-runner", version, about = "The Backporcher runner")]
struct Cli {
    /// State directory (identity, spools, work dirs).
    #[arg(
        long,
        env = "BACKPORCHER_RUNNER_STATE",
        default_value = "/var/lib/backporcher-runner",
        global = true
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this host with a controller using a join ticket from an admin.
    Join {
        /// The controller's runner endpoint, e.g. https://controller.example:7443.
        #[arg(long)]
        controller: String,
        /// The join ticket (`<token>@<ca-sha256>`).
        #[arg(long)]
        token: String,
        /// A name for this runner (defaults to the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Lease and run tasks until stopped (SIGTERM: finish current work, take no more).
    Run(RunArgs),
    /// Check this host with the privileges the runner has now: the Docker engine, the agent
    /// image, the sandbox networks and their firewall, the hand-over to the sandbox user.
    Check {
        /// Agent image.
        #[arg(
            long,
            env = "BACKPORCHER_AGENT_IMAGE",
            default_value = "backporcher-agent:latest"
        )]
        image: String,
        /// Port of the model gateway on the Docker bridges.
        #[arg(long, env = "BACKPORCHER_GATEWAY_PORT", default_value_t = 4180)]
        gateway_port: u16,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Tasks at once.
    #[arg(long, env = "BACKPORCHER_MAX_CONCURRENCY", default_value_t = 2)]
    capacity: u32,
    /// Labels this runner reports (the controller decides the effective ones).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Agent image.
    #[arg(
        long,
        env = "BACKPORCHER_AGENT_IMAGE",
        default_value = "backporcher-agent:latest"
    )]
    image: String,
    /// Model API the gateway forwards to.
    #[arg(
        long,
        env = "BACKPORCHER_MODEL_API_URL",
        default_value = "https://api.anthropic.com"
    )]
    model_api_url: String,
    /// The OpenAI API the gateway forwards Codex tasks' Responses calls to (with
    /// `OPENAI_API_KEY` from the credential file or the environment; without a key this runner
    /// offers no Codex backend).
    #[arg(
        long,
        env = "BACKPORCHER_OPENAI_API_URL",
        default_value = "https://api.openai.com"
    )]
    openai_api_url: String,
    /// Port of the model gateway on the Docker bridges.
    #[arg(long, env = "BACKPORCHER_GATEWAY_PORT", default_value_t = 4180)]
    gateway_port: u16,
    /// Hard limit of one agent run, in seconds.
    #[arg(long, env = "BACKPORCHER_TASK_TIMEOUT", default_value_t = 3600)]
    task_timeout: u64,
    /// Longest an agent run may go without any event — no output and no model traffic — before
    /// it is killed and the attempt ends as stalled, in seconds.
    #[arg(
        long = "stall-seconds",
        env = "BACKPORCHER_STALL_SECONDS",
        default_value_t = 600
    )]
    stall_timeout: u64,
    /// Agent re-runs with failing verify output.
    #[arg(long, env = "BACKPORCHER_MAX_VERIFY_RETRIES", default_value_t = 2)]
    max_verify_retries: u32,
    /// A file (mode 0600) holding `ANTHROPIC_API_KEY=…` or `CLAUDE_CODE_OAUTH_TOKEN=…` (and
    /// `OPENAI_API_KEY=…` for Codex): keeps the model credentials out of this process's
    /// environment (preferred over the variables).
    #[arg(long, env = "BACKPORCHER_MODEL_CREDENTIAL_FILE")]
    credential_file: Option<PathBuf>,
    /// Further addresses of the controller (its replicas, comma-separated), tried in turn while
    /// the one in use does not answer; the address enrolled with comes first.
    #[arg(long, env = "BACKPORCHER_CONTROLLERS", value_delimiter = ',')]
    controllers: Vec<String>,
    /// Repository mirrors and their code-graph indexes unused this many days are removed.
    #[arg(long, env = "BACKPORCHER_REPO_MAX_AGE_DAYS", default_value_t = 30)]
    repo_max_age_days: u64,
    /// Disk the mirrors and indexes may take, GiB, before the least recently used go.
    #[arg(long, env = "BACKPORCHER_REPO_DISK_BUDGET_GB", default_value_t = 50)]
    repo_disk_budget_gb: u64,
    /// Private or link-local ranges (CIDRs, comma-separated) an `open` sandbox may reach.
    #[arg(long, env = "BACKPORCHER_OPEN_ALLOW", value_delimiter = ',')]
    open_allow: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Join {
            controller,
            token,
            name,
        } => {
            let ticket: runner::identity::Ticket = token.parse()?;
            let name = name.unwrap_or_else(runner::client::hostname);
            let id = runner::identity::join(&controller, &ticket, &name, &cli.state_dir).await?;
            println!(
                "enrolled as runner {} ({}); state in {}",
                id.runner_id,
                id.name,
                cli.state_dir.display()
            );
            Ok(())
        }
        Command::Run(args) => run_daemon(cli.state_dir, args).await,
        Command::Check {
            image,
            gateway_port,
        } => {
            std::fs::create_dir_all(&cli.state_dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the state directory {}: {e}",
                    cli.state_dir.display()
                )
            })?;
            let found = runner::privileges::check(&cli.state_dir, &image, gateway_port).await;
            let mut failed = 0;
            for (what, result) in &found {
                match result {
                    Ok(note) => println!("ok    {what}: {note}"),
                    Err(why) => {
                        failed += 1;
                        println!("FAIL  {what}: {why}");
                    }
                }
            }
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} checks failed; the runner needs {} and the `{}` group (or root)",
                found.len(),
                runner::privileges::CAPABILITIES
                    .iter()
                    .map(|(c, _)| *c)
                    .collect::<Vec<_>>()
                    .join(", "),
                runner::privileges::DOCKER_GROUP
            );
            Ok(())
        }
    }
}

async fn run_daemon(state_dir: PathBuf, args: RunArgs) -> anyhow::Result<()> {
    use runner::gateway::Credential;
    let mut identity = runner::identity::Identity::load(&state_dir)?;
    identity.replicas = args.controllers.clone();
    // The real model credential stays in this process; agents only ever see per-task tokens.
    let from_file = match &args.credential_file {
        Some(path) => Some(read_credential_file(path)?),
        None => None,
    };
    let var = |name: &str| {
        from_file
            .as_ref()
            .and_then(|f| f.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .or_else(|| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
    };
    let credential = match (var("ANTHROPIC_API_KEY"), var("CLAUDE_CODE_OAUTH_TOKEN")) {
        (Some(k), _) => Credential::ApiKey(k),
        (_, Some(t)) => Credential::OAuth(t),
        _ => anyhow::bail!(
            "set ANTHROPIC_API_KEY (or CLAUDE_CODE_OAUTH_TOKEN for a subscription) in --credential-file or the environment for the model gateway"
        ),
    };
    let control = runner::daemon::Control::default();
    let signals = control.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            seen += 1;
            if seen == 1 {
                tracing::info!(
                    "draining: finishing current work, taking no more (signal again to stop now)"
                );
                signals.drain.cancel();
            } else {
                tracing::info!("stopping now");
                signals.stop.cancel();
            }
        }
    });
    let setup = runner::start::Setup {
        name: identity.name.clone(),
        image: Some(args.image),
        model_api: args.model_api_url,
        credential,
        openai: var("OPENAI_API_KEY").map(|key| runner::start::OpenAi {
            url: args.openai_api_url.clone(),
            key,
        }),
        exec: runner::sandbox_executor::ExecConfig {
            agent_timeout: Duration::from_secs(args.task_timeout),
            stall_timeout: Duration::from_secs(args.stall_timeout),
            verify_timeout: Duration::from_secs(args.task_timeout),
            max_verify_fixes: args.max_verify_retries,
            open_allow: args.open_allow,
            repo_max_age: Duration::from_secs(args.repo_max_age_days.saturating_mul(24 * 3600)),
            repo_disk_budget: args.repo_disk_budget_gb.saturating_mul(1 << 30),
            ..runner::sandbox_executor::ExecConfig::new(state_dir, args.gateway_port)
        },
    };
    runner::start::start(identity, setup, args.capacity, args.labels, control)
        .await?
        .stopped()
        .await
}

/// `KEY=value` lines of a credential file that only its owner may read.
fn read_credential_file(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the credential file {}", path.display()))?;
    anyhow::ensure!(
        meta.permissions().mode() & 0o077 == 0,
        "the credential file {} is readable by others; chmod 600 it",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the credential file {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect())
}
