//! The controller as its own process: for benchmarks that measure its CPU apart from the load
//! generator, and for the multi-host rig, which runs it on a host of its own and kills it.
//! Usage: `e2e-controller <database-url> <grpc-addr> <http-addr> <heartbeat-seconds>`, or
//! `e2e-controller --spec <file>` with a [`e2e::chaos::ControllerSpec`] as JSON.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    e2e::harness::init();
    let mut args = std::env::args().skip(1);
    let first = args.next().context("a database URL or --spec <file>")?;
    let config = if first == "--spec" {
        let file = args.next().context("--spec needs a file")?;
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
        serde_json::from_str::<e2e::chaos::ControllerSpec>(&text)
            .with_context(|| format!("{file} is not a controller spec"))?
            .config()
    } else {
        let grpc = args.next().context("grpc addr")?.parse()?;
        let http = args.next().context("http addr")?.parse()?;
        let heartbeat = Duration::from_secs(args.next().and_then(|s| s.parse().ok()).unwrap_or(10));
        controller::config::Config {
            database_url: Some(first),
            grpc_listen: grpc,
            http_listen: http,
            heartbeat_interval: heartbeat,
            lease: heartbeat * 3,
            ..controller::config::Config::default()
        }
    };
    let listeners = controller::server::Listeners::bind(&config).await?;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    controller::server::run(config, listeners, shutdown).await
}
