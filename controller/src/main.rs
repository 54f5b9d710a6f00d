//! `backporcher-controller`: parses configuration, starts tracing, runs the controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use controller::config::Config;
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
enum Command {
    /// Run the controller (with its own PostgreSQL unless DATABASE_URL is set).
    Serve {
        /// PostgreSQL URL; unset runs an embedded server under the data dir.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// State directory.
        #[arg(long, env = "BACKPORCHER_DATA_DIR", default_value = ".backporcher")]
        data_dir: PathBuf,
        /// HTTP listen address.
        #[arg(long, env = "BACKPORCHER_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Serve {
            database_url,
            data_dir,
            listen,
            grpc_listen,
            server_names,
            lease_seconds,
            webhook_secret,
            allowed_users,
        } => {
            let lease = Duration::from_secs(lease_seconds);
            let config = Config {
                database_url,
                data_dir,
                http_listen: listen,
                grpc_listen,
                server_names,
                lease,
                heartbeat_interval: lease / 3,
                webhook_secret,
                allowed_users,
                ..Config::default()
            };
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
    }
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
