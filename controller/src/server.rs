//! Wiring only: opens the database (embedded or external) and migrates it, builds what the
//! loops and handlers share, starts the background loops ([`crate::loops`]), the runner gRPC
//! service and the HTTP listener, reports when all of it serves ([`start`]), and shuts it down
//! in order.

use std::future::IntoFuture;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::fanout::Fanout;
use crate::grpc::{self, GrpcConfig};
use crate::intake::IntakeConfig;
use crate::loops::LoopCtx;
use crate::pki::Pki;
use crate::store::Store;
use futures::future::BoxFuture;
use tracing::Instrument;

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
        self.store.close().await;
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
    start(config, listeners, shutdown).await?.stopped().await
}

/// A started controller: everything is set up and serving when [`start`] returns it.
pub struct Running {
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Resolves when the controller has stopped (after its shutdown token was cancelled).
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.join.await.context("the controller task panicked")?
    }
}

/// Longest wait for the background loops to stop after the shutdown token fires.
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

/// Starts the controller: opens and migrates the database, loads the CA, starts every background
/// loop ([`crate::loops`]), the runner gRPC service and the HTTP listener; returns once all of
/// it serves. It stops when `shutdown` is cancelled: listeners first, then the loops (drained with
/// a deadline), then the database.
pub async fn start(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
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
    let tls_pki = pki.clone();
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
    let llm = match &config.model {
        Some(m) => Some(
            crate::llm::ModelClient::new(m.clone(), store.clone())?
                .with_prices(config.prices.clone()),
        ),
        None => None,
    };
    store.set_reflection_enabled(llm.is_some()).await?;
    store
        .set_max_lease_losses(config.pipeline.retry.lease_losses)
        .await?;
    store
        .set_fleet_budgets(config.task_budget_microusd, config.daily_budget_microusd)
        .await?;
    store.set_task_deadline(config.task_deadline).await?;
    announce_approval_mode(
        &store,
        store
            .apply_configured_approval_mode(config.approval_mode.as_deref())
            .await?,
    )
    .await?;
    let intake = Arc::new(IntakeConfig {
        webhook_secret: config.webhook_secret.clone(),
        allowed_users: config.allowed_users.clone(),
        default_model: config.default_model.clone(),
    });
    let config = Arc::new(config);
    let ctx = LoopCtx {
        store: store.clone(),
        fanout: Fanout::new(),
        forge: forge.clone(),
        llm,
        config: config.clone(),
        intake: intake.clone(),
        events: crate::fanout::Events::default(),
        metrics: Default::default(),
    };
    let tracker = TaskTracker::new();
    spawn_loops(&ctx, &tracker, &shutdown);

    let deps = grpc::Deps {
        store: store.clone(),
        pki: pki.clone(),
        server_names: config.server_names.clone(),
        config: GrpcConfig {
            lease: config.lease,
            heartbeat_interval: config.heartbeat_interval,
            lease_wait: config.lease_wait,
            retry: config.pipeline.retry.clone(),
            prices: config.prices.clone(),
            navigation: config.navigation,
            ..GrpcConfig::default()
        },
        fanout: ctx.fanout.clone(),
        tracker: tracker.clone(),
    };
    let grpc = tokio::spawn(grpc::serve(deps, listeners.grpc, shutdown.clone()));

    let state = crate::http::AppState {
        store: store.clone(),
        intake: intake.clone(),
        forge: forge.clone(),
        pki,
        events: ctx.events.clone(),
        secure_cookies: config.secure_cookies,
        shutdown: shutdown.clone(),
        metrics: ctx.metrics.clone(),
        metrics_token: config.metrics_token.clone(),
        cleanup: config.cleanup,
        guard: Arc::new(crate::http::guard::Guard::new(
            crate::http::auth::Passwords::for_this_machine(),
            config.trusted_proxies.clone(),
        )),
    };
    crate::http::auth::Passwords::warm_up();
    let app = Router::new()
        .merge(crate::http::health::router())
        .with_state(state.clone())
        .merge(crate::intake::webhook::router(
            crate::intake::webhook::WebhookState {
                store: store.clone(),
                config: intake,
                forge,
            },
        ))
        .merge(crate::http::api_router(state))
        .merge(dashboard::router());
    let http_shutdown = shutdown.clone();
    let stopped = async move { http_shutdown.cancelled().await };
    let tls = match &config.http_tls {
        crate::http::tls::HttpTls::Off => None,
        crate::http::tls::HttpTls::OwnCa => {
            let (chain, key) = tls_pki.server_identity(&config.server_names)?;
            Some(crate::http::tls::server_config(&chain, &key)?)
        }
        crate::http::tls::HttpTls::Files { cert, key } => {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the TLS file {}", p.display()))
            };
            Some(crate::http::tls::server_config(&read(cert)?, &read(key)?)?)
        }
    };
    tracing::info!(addr = %listeners.http.local_addr()?, https = tls.is_some(), "controller listening");
    use crate::http::guard::PeerAddr;
    let http = match tls {
        None => tokio::spawn(
            axum::serve(
                listeners.http,
                app.into_make_service_with_connect_info::<PeerAddr>(),
            )
            .with_graceful_shutdown(stopped)
            .into_future(),
        ),
        Some(tls) => tokio::spawn(
            axum::serve(
                crate::http::tls::TlsListener::new(listeners.http, tls)?,
                app.into_make_service_with_connect_info::<PeerAddr>(),
            )
            .with_graceful_shutdown(stopped)
            .into_future(),
        ),
    };
    let join = tokio::spawn(async move {
        shutdown.cancelled().await;
        let http = http.await.context("the HTTP task panicked")?;
        let grpc = grpc.await.context("the runner gRPC task panicked")?;
        tracker.close();
        if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                deadline_s = DRAIN_DEADLINE.as_secs(),
                "background loops did not stop in time; stopping anyway"
            );
        }
        db.close().await;
        http.context("HTTP server failed")?;
        grpc.context("runner gRPC server failed")?;
        tracing::info!("controller stopped");
        Ok(())
    });
    Ok(Running { join })
}

/// Says at a start which approval mode is in force and why; a configured mode that replaced
/// another is audited and announced (the `settings` event) like a change made at run time.
async fn announce_approval_mode(
    store: &crate::store::Store,
    outcome: crate::store::settings::ConfiguredMode,
) -> anyhow::Result<()> {
    use crate::store::settings::ConfiguredMode;
    match outcome {
        ConfiguredMode::NotSet { mode, by } => tracing::info!(
            approval_mode = mode,
            set_by = by.as_deref().unwrap_or("default"),
            "approval mode: none configured (BACKPORCHER_APPROVAL_MODE); the stored one is in force"
        ),
        ConfiguredMode::Applied { old, new } if old == new => tracing::info!(
            approval_mode = new,
            "approval mode: the configured one is in force"
        ),
        ConfiguredMode::Applied { old, new } => {
            tracing::info!(
                approval_mode = new,
                before = old,
                "approval mode: the configured one (new or changed since the last start) replaces the stored one"
            );
            let actor = crate::store::ops::Actor {
                name: "config".into(),
                user_id: None,
            };
            store
                .audit(
                    &actor,
                    "set_approval_mode",
                    Some("settings"),
                    "ok",
                    Some(&serde_json::json!({"old": old, "new": new})),
                )
                .await?;
            store
                .enqueue_notification(
                    "settings",
                    None,
                    &format!("approval mode {old} → {new} (from the configuration at start)"),
                )
                .await?;
        }
        ConfiguredMode::RunTimeWins {
            configured,
            mode,
            by,
        } => tracing::warn!(
            configured,
            approval_mode = mode,
            set_by = by.as_deref().unwrap_or("someone"),
            "approval mode: changed at run time after the configured one was applied; the run-time one stays until the configured value changes"
        ),
    }
    Ok(())
}

type LoopFn = fn(LoopCtx, CancellationToken) -> BoxFuture<'static, ()>;

/// Every background loop of the controller: (name, entry point). What each does and what wakes it
/// is in [`crate::loops`].
pub const LOOPS: &[(&str, LoopFn)] = &[
    ("fanout", |ctx, stop| {
        Box::pin(ctx.fanout.clone().run(ctx.store.clone(), stop))
    }),
    ("reaper", |ctx, stop| {
        Box::pin(crate::reaper::run(ctx, stop))
    }),
    ("triage", |ctx, stop| {
        Box::pin(crate::pipeline::triage::run(ctx, stop))
    }),
    ("stages", |ctx, stop| {
        Box::pin(crate::pipeline::run(ctx, stop))
    }),
    ("feedback", |ctx, stop| {
        Box::pin(crate::pipeline::feedback::run(ctx, stop))
    }),
    ("guard", |ctx, stop| {
        Box::pin(crate::pipeline::guard::run(ctx, stop))
    }),
    ("poller", |ctx, stop| {
        Box::pin(crate::intake::poller::run(ctx, stop))
    }),
    ("milestones", |ctx, stop| {
        Box::pin(crate::forge::milestones::run(ctx, stop))
    }),
    ("events", |ctx, stop| {
        Box::pin(crate::http::events::run(ctx, stop))
    }),
    ("retention", |ctx, stop| {
        Box::pin(crate::retention::run(ctx, stop))
    }),
    ("metrics", |ctx, stop| {
        Box::pin(crate::http::health::run(ctx, stop))
    }),
    ("cleanup", |ctx, stop| {
        Box::pin(crate::cleanup::run(ctx, stop))
    }),
];

/// Starts every loop on `tracker`, each in a span named after it.
fn spawn_loops(ctx: &LoopCtx, tracker: &TaskTracker, shutdown: &CancellationToken) {
    for (name, run) in LOOPS {
        let span = tracing::info_span!("loop", name = *name);
        tracker.spawn(run(ctx.clone(), shutdown.clone()).instrument(span));
    }
}
