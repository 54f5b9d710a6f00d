//! Wiring: opens the database (embedded or external), migrates it, starts the background loops and
//! the HTTP listener, and shuts all of it down in order.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::reaper;
use crate::store::Store;

/// The embedded database's name.
const EMBEDDED_DB: &str = "backporcher";

/// A database the controller runs on, and the embedded server behind it if any.
pub struct Database {
    /// The store.
    pub store: Store,
    embedded: Option<pgembed::Server>,
}

impl Database {
    /// Connects to `config.database_url`, or starts the embedded server under the data dir.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let (url, embedded) = match &config.database_url {
            Some(url) => (url.clone(), None),
            None => {
                let server = start_embedded(&config.data_dir).await?;
                (server.url(EMBEDDED_DB), Some(server))
            }
        };
        let store = Store::connect(&url, config.max_db_connections)
            .await
            .context("cannot connect to PostgreSQL; check DATABASE_URL or unset it to use the embedded server")?;
        store
            .migrate()
            .await
            .context("applying database migrations failed")?;
        Ok(Self { store, embedded })
    }

    /// Closes the pool and stops the embedded server.
    pub async fn close(self) {
        self.store.pool().close().await;
        if let Some(server) = self.embedded
            && let Err(e) = server.stop().await
        {
            tracing::warn!(error = %e, "embedded PostgreSQL did not stop cleanly");
        }
    }
}

async fn start_embedded(data_dir: &Path) -> anyhow::Result<pgembed::Server> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve data dir {}", data_dir.display()))?;
    let pw_file = data_dir.join("postgres.password");
    let password = match std::fs::read_to_string(&pw_file) {
        Ok(p) => p.trim().to_owned(),
        Err(_) => {
            let p = uuid::Uuid::new_v4().simple().to_string();
            std::fs::write(&pw_file, &p)
                .with_context(|| format!("cannot write {}", pw_file.display()))?;
            std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600))?;
            p
        }
    };
    tracing::info!(data_dir = %data_dir.display(), "starting embedded PostgreSQL (set DATABASE_URL to use your own)");
    let server = pgembed::Server::start(&pgembed::ServerConfig {
        data_dir: data_dir.join("postgres"),
        port: None,
        bin_dir: None,
        durable: true,
        password: Some(password),
    })
    .await
    .context("the embedded PostgreSQL did not start")?;
    server.ensure_database(EMBEDDED_DB).await?;
    Ok(server)
}

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = Database::open(&config).await?;
    let store = db.store.clone();
    let extended = store.grant_grace(config.restart_grace).await?;
    if extended > 0 {
        tracing::info!(
            leases = extended,
            grace_s = config.restart_grace.as_secs(),
            "live leases given a restart grace period"
        );
    }

    let mut loops = JoinSet::new();
    loops.spawn(reaper::run(
        store.clone(),
        config.reaper_interval,
        shutdown.clone(),
    ));

    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(store.clone());
    tracing::info!(addr = %listener.local_addr()?, "controller listening");
    let http_shutdown = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
        .await
        .context("HTTP server failed")?;

    shutdown.cancel();
    while loops.join_next().await.is_some() {}
    db.close().await;
    tracing::info!("controller stopped");
    Ok(())
}

async fn ready(State(store): State<Store>) -> (StatusCode, &'static str) {
    match sqlx::query("SELECT 1").execute(store.pool()).await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable"),
    }
}
