//! `backporcher-runner`: enrolls a host with a controller (`join`).

use std::path::PathBuf;
use std::process::ExitCode;

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
            let name = name.unwrap_or_else(runner::identity::hostname);
            let id = runner::identity::join(&controller, &ticket, &name, &cli.state_dir).await?;
            println!(
                "enrolled as runner {} ({}); state in {}",
                id.runner_id,
                id.name,
                cli.state_dir.display()
            );
            Ok(())
        }
    }
}
