//! `backporcher-sims`: the GitHub simulator and the scripted model API as a service of their own,
//! for the compose file's `sims` profile — the demo's sample repository and labelled issues
//! ([`sim::demo`]) served where a controller and runners in containers can reach them.
//!
//! Configured by the environment: `BACKPORCHER_SIMS_GITHUB_LISTEN` (default `0.0.0.0:8090`),
//! `BACKPORCHER_SIMS_MODEL_LISTEN` (default `0.0.0.0:8091`), `BACKPORCHER_SIMS_DIR` (the
//! repositories; default a directory under the system's temporary one). The GitHub token it
//! accepts is `ghs_demo_token`, the model key `sk-demo-model-key`. No webhooks are sent: the
//! controller's poller finds the labelled issues.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use sim::demo;
use sim::github::GitHubSim;
use sim::model::ModelSim;

fn addr(var: &str, default: &str) -> Result<SocketAddr, String> {
    let text = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    text.parse()
        .map_err(|e| format!("{var}={text} is not an address like {default}: {e}"))
}

async fn run() -> Result<(), String> {
    // Webhook deliveries go out over reqwest, whose TLS needs a process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let github = addr("BACKPORCHER_SIMS_GITHUB_LISTEN", "0.0.0.0:8090")?;
    let model = addr("BACKPORCHER_SIMS_MODEL_LISTEN", "0.0.0.0:8091")?;
    let dir = std::env::var_os("BACKPORCHER_SIMS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("backporcher-sims"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let gh = GitHubSim::new(&dir, demo::GITHUB_TOKEN);
    demo::sample_repo(&gh).map_err(|e| format!("cannot create the sample repository: {e:#}"))?;
    let l = tokio::net::TcpListener::bind(github)
        .await
        .map_err(|e| format!("cannot listen on {github} (BACKPORCHER_SIMS_GITHUB_LISTEN): {e}"))?;
    gh.serve(l);
    let m = ModelSim::new(Some(demo::MODEL_KEY.into()));
    demo::scripts(&m);
    let l = tokio::net::TcpListener::bind(model)
        .await
        .map_err(|e| format!("cannot listen on {model} (BACKPORCHER_SIMS_MODEL_LISTEN): {e}"))?;
    m.serve(l);
    let issues = demo::file_samples(&gh, std::time::Duration::ZERO).await;
    println!(
        "GitHub simulator on {github} (token {}; repository {}, issues {issues:?} labelled by {}); model API on {model} (key {})",
        demo::GITHUB_TOKEN,
        demo::REPO,
        demo::USER,
        demo::MODEL_KEY
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot wait for SIGTERM: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
