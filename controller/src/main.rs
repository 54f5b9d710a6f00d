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
        /// Lease length in seconds.
        #[arg(long, env = "BACKPORCHER_LEASE_SECONDS", default_value_t = 75)]
        lease_seconds: u64,
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
            lease_seconds,
        } => {
            let config = Config {
                database_url,
                data_dir,
                http_listen: listen,
                lease: Duration::from_secs(lease_seconds),
                ..Config::default()
            };
            let listener = tokio::net::TcpListener::bind(config.http_listen)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {}: {e}; choose another address with --listen",
                        config.http_listen
                    )
                })?;
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
                tracing::info!("shutting down");
                signal.cancel();
            });
            controller::server::run(config, listener, shutdown).await
        }
    }
}
