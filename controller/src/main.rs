//! `backporcher-controller`: parses configuration, starts tracing, runs the controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use controller::config::Config;

mod settings;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "backporcher-controller",
    version,
    about = "The Backporcher controller"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Run the controller (with its own PostgreSQL unless DATABASE_URL is set).
    Serve(ServeArgs),
    /// Check the configuration (file, environment, flags) and explain each problem; exit 1 if any
    /// is an error.
    CheckConfig {
        #[command(flatten)]
        args: ServeArgs,
        /// Also print the effective value of each setting the reference names, and where the
        /// approval mode in force comes from.
        #[arg(long)]
        show: bool,
    },
    /// Create the first admin (only while no admin exists); prints a generated password once.
    BootstrapAdmin {
        /// PostgreSQL URL; unset uses the embedded server under the data dir.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// State directory.
        #[arg(long, env = "BACKPORCHER_DATA_DIR", default_value = ".backporcher")]
        data_dir: PathBuf,
        /// The admin's user name.
        #[arg(long, default_value = "admin")]
        username: String,
    },
    /// Give a user (a lost admin password) a new generated password, printed once; ends their
    /// sessions. Run on the controller's host, against its database.
    ResetPassword {
        /// PostgreSQL URL; unset uses the embedded server under the data dir.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// State directory.
        #[arg(long, env = "BACKPORCHER_DATA_DIR", default_value = ".backporcher")]
        data_dir: PathBuf,
        /// The user's name.
        #[arg(long, default_value = "admin")]
        username: String,
    },
    /// Mint a one-time join ticket for a runner host (`backporcher-runner join --token …`).
    RunnerToken {
        /// PostgreSQL URL; unset uses the embedded server under the data dir.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// State directory.
        #[arg(long, env = "BACKPORCHER_DATA_DIR", default_value = ".backporcher")]
        data_dir: PathBuf,
        /// Labels the runner will carry (comma-separated).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Minutes the ticket stays valid.
        #[arg(long, default_value_t = 60)]
        ttl_minutes: u64,
    },
}

/// How `serve` is configured: flags, environment variables, and a TOML file (`--config`); a flag
/// or variable that is given wins over the file, the file over the defaults.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see `deploy/README.md`).
    #[arg(long, env = "BACKPORCHER_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// PostgreSQL URL; unset runs an embedded server under the data dir.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// State directory.
    #[arg(long, env = "BACKPORCHER_DATA_DIR", default_value = ".backporcher")]
    data_dir: PathBuf,
    /// HTTP listen address (dashboard and API).
    #[arg(long, env = "BACKPORCHER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The listen address's host, the reference's way (with --dashboard-port; --listen wins).
    #[arg(long, env = "BACKPORCHER_DASHBOARD_HOST")]
    dashboard_host: Option<String>,
    /// The listen address's port, the reference's way (with --dashboard-host; --listen wins).
    #[arg(long, env = "BACKPORCHER_DASHBOARD_PORT")]
    dashboard_port: Option<u16>,
    /// Serve the dashboard and the API over HTTPS with a certificate the controller's own CA
    /// issues for the server names (clients trust the CA: `GET /ca.pem`).
    #[arg(long, env = "BACKPORCHER_TLS_OWN_CA")]
    tls_own_ca: bool,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key).
    #[arg(long, env = "BACKPORCHER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "BACKPORCHER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Runner gRPC (mTLS) listen address.
    #[arg(
        long,
        env = "BACKPORCHER_GRPC_LISTEN",
        default_value = "127.0.0.1:7443"
    )]
    grpc_listen: SocketAddr,
    /// Host names or IPs runners use to reach the gRPC listener (comma-separated).
    #[arg(
        long,
        env = "BACKPORCHER_SERVER_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    server_names: Vec<String>,
    /// Lease length in seconds.
    #[arg(long, env = "BACKPORCHER_LEASE_SECONDS", default_value_t = 75)]
    lease_seconds: u64,
    /// Shared secret of the GitHub webhook.
    #[arg(
        long,
        env = "BACKPORCHER_WEBHOOK_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    webhook_secret: String,
    /// GitHub logins whose labelled issues start tasks (comma-separated).
    #[arg(long, env = "BACKPORCHER_ALLOWED_USERS", value_delimiter = ',')]
    allowed_users: Vec<String>,
    #[command(flatten)]
    github: GitHubArgs,
    /// Model API base URL (triage, review, reflection).
    #[arg(
        long,
        env = "ANTHROPIC_BASE_URL",
        default_value = "https://api.anthropic.com"
    )]
    model_api: String,
    /// Model API key; without it reviews fail per repository setting.
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    model_api_key: Option<String>,
    /// Subscription users: an OAuth token for `claude -p` (used when no API key is set).
    #[arg(long, env = "CLAUDE_CODE_OAUTH_TOKEN", hide_env_values = true)]
    oauth_token: Option<String>,
    /// The `claude` program for the OAuth path.
    #[arg(long, env = "BACKPORCHER_CLAUDE_CLI", default_value = "claude")]
    claude_cli: PathBuf,
    /// Reviewer model.
    #[arg(long, env = "BACKPORCHER_REVIEW_MODEL", default_value = "sonnet")]
    review_model: String,
    /// The reviewer model under the reference's name (same as --review-model).
    #[arg(long, env = "BACKPORCHER_COORDINATOR_MODEL")]
    coordinator_model: Option<String>,
    /// The model new tasks start with (the `opus` label and triage may choose another).
    #[arg(long, env = "BACKPORCHER_DEFAULT_MODEL", default_value = "sonnet")]
    default_model: String,
    /// The default approval mode: full-auto, review-merge or review-all. Unset: the mode stored
    /// (review-merge, or what was set at run time) stays; see the README on how the two meet.
    #[arg(long, env = "BACKPORCHER_APPROVAL_MODE")]
    approval_mode: Option<String>,
    /// Whether agents get the code graph's navigation map (true/false, yes/no, 1/0, on/off).
    #[arg(
        long,
        env = "BACKPORCHER_NAVIGATION_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    navigation_enabled: bool,
    /// Accepted for the reference's sake: navigation here is computed from the code graph and
    /// uses no model.
    #[arg(long, env = "BACKPORCHER_NAVIGATION_MODEL")]
    navigation_model: Option<String>,
    /// CI failures retried per task (each a new agent run with the failed jobs' logs).
    #[arg(long, env = "BACKPORCHER_MAX_CI_RETRIES", default_value_t = 3)]
    max_ci_retries: i32,
    /// Agent failures (and timeouts) retried per task, escalating sonnet to opus.
    #[arg(long, env = "BACKPORCHER_MAX_TASK_RETRIES", default_value_t = 3)]
    max_task_retries: i32,
    /// Seconds between two looks at a pending CI.
    #[arg(long, env = "BACKPORCHER_CI_CHECK_INTERVAL", default_value_t = 10)]
    ci_check_interval: u64,
    /// Seconds between issue polls (the webhook backstop).
    #[arg(long, env = "BACKPORCHER_POLL_SECONDS", default_value_t = 60)]
    poll_seconds: u64,
    /// The same under the reference's name.
    #[arg(long, env = "BACKPORCHER_POLL_INTERVAL")]
    poll_interval: Option<u64>,
    /// A Slack/Discord-compatible webhook for notifications (added to the file's `notify_urls`).
    #[arg(long, env = "BACKPORCHER_WEBHOOK_URL", hide_env_values = true)]
    webhook_url: Option<String>,
    /// Events sent to the notification webhooks: hold, failed, completed, paused, settings,
    /// reverted, or all (comma-separated).
    #[arg(
        long,
        env = "BACKPORCHER_WEBHOOK_EVENTS",
        value_delimiter = ',',
        default_value = "hold,failed,reverted"
    )]
    webhook_events: Vec<String>,
    /// A runner setting (agent hard-kill timeout, seconds): set it on the runner hosts. Read here
    /// only to say so.
    #[arg(long, env = "BACKPORCHER_TASK_TIMEOUT", hide = true)]
    task_timeout: Option<u64>,
    /// Leases a task may lose in a row (expired, runner gone) before it fails.
    #[arg(long, env = "BACKPORCHER_MAX_LEASE_LOSSES", default_value_t = 3)]
    max_lease_losses: u32,
    /// What one task may spend on model calls across its attempts, in USD, where its repository
    /// sets no budget of its own.
    #[arg(long, env = "BACKPORCHER_TASK_BUDGET_USD", default_value_t = 10.0)]
    task_budget_usd: f64,
    /// What the whole fleet may spend per UTC day, in USD (agents and the controller's own
    /// calls); unset: no fleet-wide daily limit (repositories may still set their own).
    #[arg(long, env = "BACKPORCHER_DAILY_BUDGET_USD")]
    daily_budget_usd: Option<f64>,
    /// How long a task may be under way after its first lease, in hours, across all its
    /// attempts, before it fails as timed out (waiting for a person does not count down).
    #[arg(long, env = "BACKPORCHER_TASK_DEADLINE_HOURS", default_value_t = 12.0)]
    task_deadline_hours: f64,
}

/// How to reach GitHub.
#[derive(clap::Args)]
struct GitHubArgs {
    /// GitHub API base URL.
    #[arg(
        long,
        env = "BACKPORCHER_GITHUB_API",
        default_value = "https://api.github.com"
    )]
    github_api: String,
    /// A token with repo scope (or set the App options instead).
    #[arg(long, env = "GITHUB_TOKEN", hide_env_values = true)]
    github_token: Option<String>,
    /// GitHub App id (with --github-installation-id and --github-app-key-file).
    #[arg(long, env = "BACKPORCHER_GITHUB_APP_ID")]
    github_app_id: Option<u64>,
    /// GitHub App installation id.
    #[arg(long, env = "BACKPORCHER_GITHUB_INSTALLATION_ID")]
    github_installation_id: Option<u64>,
    /// File with the GitHub App's private key (PEM).
    #[arg(long, env = "BACKPORCHER_GITHUB_APP_KEY_FILE")]
    github_app_key_file: Option<PathBuf>,
}

impl GitHubArgs {
    fn config(self) -> anyhow::Result<Option<controller::forge::github::GitHubConfig>> {
        use controller::forge::auth::Credentials;
        let credentials = match (
            self.github_token,
            self.github_app_id,
            self.github_installation_id,
            self.github_app_key_file,
        ) {
            (_, Some(app_id), Some(installation_id), Some(key)) => Credentials::App {
                app_id,
                installation_id,
                private_key_pem: std::fs::read_to_string(&key).map_err(|e| {
                    anyhow::anyhow!("cannot read the GitHub App key {}: {e}", key.display())
                })?,
            },
            (_, Some(_), _, _) | (_, _, Some(_), _) | (_, _, _, Some(_)) => anyhow::bail!(
                "a GitHub App needs all of --github-app-id, --github-installation-id and --github-app-key-file"
            ),
            (Some(t), None, None, None) if !t.is_empty() => Credentials::Token(t),
            _ => return Ok(None),
        };
        let mut c = controller::forge::github::GitHubConfig::with_token(&self.github_api, "");
        c.credentials = credentials;
        Ok(Some(c))
    }
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, matches: clap::ArgMatches) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let (config, problems) = settings::resolve(args, &matches)?;
            for p in problems.iter().filter(|p| !p.error) {
                tracing::warn!("{}", p.message);
            }
            if let Some(p) = problems.iter().find(|p| p.error) {
                anyhow::bail!(
                    "{} (run `backporcher-controller check-config` for every problem)",
                    p.message
                );
            }
            let listeners = controller::server::Listeners::bind(&config).await?;
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutting down");
                signal.cancel();
            });
            controller::server::run(config, listeners, shutdown).await
        }
        Command::RunnerToken {
            database_url,
            data_dir,
            labels,
            ttl_minutes,
        } => runner_token(database_url, data_dir, labels, ttl_minutes).await,
        Command::CheckConfig { args, show } => {
            let (config, mut problems) = settings::resolve(args, &matches)?;
            problems.extend(settings::check(&config).await);
            if show {
                settings::show(&config);
            }
            if problems.is_empty() {
                println!("configuration OK");
                return Ok(());
            }
            for p in &problems {
                println!(
                    "{}: {}",
                    if p.error { "error" } else { "warning" },
                    p.message
                );
            }
            if problems.iter().any(|p| p.error) {
                anyhow::bail!("the configuration has errors (listed above)");
            }
            Ok(())
        }
        Command::BootstrapAdmin {
            database_url,
            data_dir,
            username,
        } => bootstrap_admin(database_url, data_dir, &username).await,
        Command::ResetPassword {
            database_url,
            data_dir,
            username,
        } => reset_password(database_url, data_dir, &username).await,
    }
}

async fn reset_password(
    database_url: Option<String>,
    data_dir: PathBuf,
    username: &str,
) -> anyhow::Result<()> {
    let config = Config {
        database_url,
        data_dir,
        ..Config::default()
    };
    let db = controller::server::Database::open_for_admin(&config).await?;
    let result = controller::http::reset_password(&db.store, username).await;
    db.close().await;
    println!("{}", result?);
    eprintln!("`{username}` has a new password (shown once); their sessions ended");
    Ok(())
}

async fn bootstrap_admin(
    database_url: Option<String>,
    data_dir: PathBuf,
    username: &str,
) -> anyhow::Result<()> {
    let config = Config {
        database_url,
        data_dir,
        ..Config::default()
    };
    let db = controller::server::Database::open_for_admin(&config).await?;
    let result = controller::http::bootstrap_admin(&db.store, username).await;
    db.close().await;
    let password = result?;
    println!("{password}");
    eprintln!(
        "admin `{username}` created; log in with this password (shown once) and change it by creating your own users"
    );
    Ok(())
}

async fn runner_token(
    database_url: Option<String>,
    data_dir: PathBuf,
    labels: Vec<String>,
    ttl_minutes: u64,
) -> anyhow::Result<()> {
    let config = Config {
        database_url,
        data_dir,
        ..Config::default()
    };
    let db = controller::server::Database::open_for_admin(&config).await?;
    let token = db
        .store
        .create_join_token("admin:cli", Duration::from_secs(ttl_minutes * 60), &labels)
        .await?;
    let pki = controller::pki::Pki::load_or_create(&db.store, config.client_cert_validity).await?;
    println!("{}", pki.join_ticket(&token));
    eprintln!(
        "valid for {ttl_minutes} minutes, once; on the runner host: backporcher-runner join --controller https://<host>:7443 --token '<ticket>'"
    );
    db.close().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
