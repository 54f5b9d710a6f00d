//! Wiring: opens the database (embedded or external), migrates it, starts the background loops and
//! the HTTP listener, and shuts all of it down in order.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use axum::Router;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::grpc::{self, GrpcConfig};
use crate::intake::IntakeConfig;
use crate::pki::Pki;
use crate::reaper;
use crate::signals::Signals;
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

    /// For admin commands while a controller may be running: uses `DATABASE_URL`, or the embedded
    /// server of the data dir if it is running (its port from `postmaster.pid`), or starts it.
    pub async fn open_for_admin(config: &Config) -> anyhow::Result<Self> {
        if config.database_url.is_none() {
            let pg = config.data_dir.join("postgres");
            let pw = std::fs::read_to_string(config.data_dir.join("postgres.password")).ok();
            let port = std::fs::read_to_string(pg.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().nth(3).and_then(|p| p.trim().parse::<u16>().ok()));
            if let (Some(pw), Some(port)) = (pw, port)
                && let Ok(store) = Store::connect(
                    &format!(
                        "postgres://postgres:{}@127.0.0.1:{port}/{EMBEDDED_DB}",
                        pw.trim()
                    ),
                    2,
                )
                .await
            {
                return Ok(Self {
                    store,
                    embedded: None,
                });
            }
        }
        Self::open(&Config {
            max_db_connections: 2,
            ..config.clone()
        })
        .await
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

/// The sockets the controller serves on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// HTTP (health, API).
    pub http: TcpListener,
    /// Runner gRPC over mTLS.
    pub grpc: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses, with an error that says which one failed.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let http = TcpListener::bind(config.http_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (HTTP); choose another address with --listen",
                    config.http_listen
                )
            })?;
        let grpc = TcpListener::bind(config.grpc_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (runner gRPC); choose another address with --grpc-listen",
                    config.grpc_listen
                )
            })?;
        Ok(Self { http, grpc })
    }
}

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listeners: Listeners,
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
    let pki = Arc::new(Pki::load_or_create(&store, config.client_cert_validity).await?);
    let signals = Signals::new();
    let tracker = TaskTracker::new();
    tracker.spawn(signals.clone().run(store.clone(), shutdown.clone()));
    tracker.spawn(reaper::run(
        store.clone(),
        config.reaper_interval,
        shutdown.clone(),
    ));

    let grpc_config = GrpcConfig {
        lease: config.lease,
        heartbeat_interval: config.heartbeat_interval,
        lease_wait: config.lease_wait,
        ..GrpcConfig::default()
    };
    let deps = grpc::Deps {
        store: store.clone(),
        pki: pki.clone(),
        server_names: config.server_names.clone(),
        config: grpc_config,
        signals: signals.clone(),
        tracker: tracker.clone(),
    };
    let grpc = tokio::spawn(grpc::serve(deps, listeners.grpc, shutdown.clone()));

    let forge: Option<Arc<dyn crate::forge::Forge>> = match &config.github {
        Some(gh) => Some(Arc::new(
            crate::forge::github::GitHub::new(gh.clone())
                .context("the GitHub configuration is unusable")?,
        )),
        None => {
            tracing::warn!("no GitHub configured: tasks stop once their result is stored");
            None
        }
    };
    let intake_config = Arc::new(IntakeConfig {
        webhook_secret: config.webhook_secret.clone(),
        allowed_users: config.allowed_users.clone(),
    });
    let mut background = Vec::new();
    let model_client = match &config.model {
        Some(m) => Some(crate::model::ModelClient::new(m.clone(), store.clone())?),
        None => None,
    };
    store.set_reflection_enabled(model_client.is_some()).await?;
    background.push(tokio::spawn(crate::pipeline::triage::run(
        store.clone(),
        model_client.clone(),
        config.triage_model.clone(),
        std::time::Duration::from_secs(2),
        config.pipeline.triage_debounce,
        shutdown.clone(),
    )));
    let loops = Arc::new(crate::pipeline::loops::Loops {
        store: store.clone(),
        model: model_client.clone(),
        reflection_model: config.reflection_model.clone(),
        notify_urls: config.notify_urls.clone(),
        http: reqwest::Client::new(),
    });
    background.push(tokio::spawn(
        loops.run(std::time::Duration::from_secs(2), shutdown.clone()),
    ));
    if let Some(forge) = &forge {
        background.push(tokio::spawn(crate::intake::poller::run(
            store.clone(),
            forge.clone(),
            intake_config.clone(),
            config.poll_interval,
            shutdown.clone(),
        )));
        background.push(tokio::spawn(crate::forge::milestones::run(
            store.clone(),
            forge.clone(),
            std::time::Duration::from_secs(2),
            shutdown.clone(),
        )));
        let reviewer: Arc<dyn crate::pipeline::Reviewer> = match &model_client {
            Some(m) => Arc::new(crate::pipeline::review::ModelReviewer {
                client: m.clone(),
                model: config.review_model.clone(),
            }),
            None => Arc::new(crate::pipeline::review::NoReviewer),
        };
        let pipeline = crate::pipeline::Pipeline {
            store: store.clone(),
            forge: forge.clone(),
            pusher: crate::forge::git::Pusher::new(&config.data_dir.join("forge")),
            reviewer,
            config: config.pipeline.clone(),
        };
        background.push(tokio::spawn(pipeline.run(shutdown.clone())));
    }

    let events = crate::http::events::Events::default();
    background.push(tokio::spawn(events.clone().run(
        store.clone(),
        signals.clone(),
        shutdown.clone(),
    )));
    let state = crate::http::AppState {
        store: store.clone(),
        intake: intake_config,
        forge,
        pki: pki.clone(),
        events,
        secure_cookies: config.secure_cookies,
        shutdown: shutdown.clone(),
    };
    let app = Router::new()
        .merge(crate::http::health::router())
        .with_state(state.clone())
        .merge(crate::intake::webhook::router(
            crate::intake::webhook::WebhookState {
                store: state.store.clone(),
                config: state.intake.clone(),
                forge: state.forge.clone(),
            },
        ))
        .merge(crate::http::api_router(state))
        .merge(dashboard::router());
    tracing::info!(addr = %listeners.http.local_addr()?, "controller listening");
    let http_shutdown = shutdown.clone();
    let http = axum::serve(listeners.http, app)
        .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
        .await
        .context("HTTP server failed");

    shutdown.cancel();
    for b in background {
        let _ = b.await;
    }
    let grpc = grpc.await.context("runner gRPC task panicked")?;
    tracker.close();
    tracker.wait().await;
    db.close().await;
    http?;
    grpc.context("runner gRPC server failed")?;
    tracing::info!("controller stopped");
    Ok(())
}
