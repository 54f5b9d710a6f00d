//! The controller as its own process for benchmarks that measure its CPU apart from the load
//! generator. Usage: `e2e-controller <database-url> <grpc-addr> <http-addr> <heartbeat-seconds>`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    e2e::harness::init();
    let mut args = std::env::args().skip(1);
    let database_url = args.next().expect("database url");
    let grpc = args.next().expect("grpc addr").parse()?;
    let http = args.next().expect("http addr").parse()?;
    let heartbeat = Duration::from_secs(args.next().and_then(|s| s.parse().ok()).unwrap_or(10));
    let config = controller::config::Config {
        database_url: Some(database_url),
        grpc_listen: grpc,
        http_listen: http,
        heartbeat_interval: heartbeat,
        lease: heartbeat * 3,
        ..controller::config::Config::default()
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
