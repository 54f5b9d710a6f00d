//! The runner gRPC service (`backporcher.runner.v1`) over TLS with client certificates.
//!
//! This layer is thin: it checks the protocol version and the caller's certificate, converts wire
//! types to domain types ([`convert`]), calls the store, and maps store errors to gRPC statuses
//! (`ABORTED` means "your lease is gone: stop that work", and nothing else returns it). Live
//! session streams are kept in [`sessions::Sessions`] so a cancellation can be pushed at once.

pub mod convert;
pub mod service;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::fanout::Fanout;
use crate::pki::Pki;
use crate::store::Store;
use crate::store::tasks::RetryPolicy;

/// Timings and limits the controller dictates to runners.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Lease length.
    pub lease: Duration,
    /// How often runners heartbeat (a third of the lease by default).
    pub heartbeat_interval: Duration,
    /// Longest wait of a lease long-poll.
    pub lease_wait: Duration,
    /// Largest result bundle accepted.
    pub max_bundle_bytes: usize,
    /// Retry budgets applied to completions.
    pub retry: RetryPolicy,
    /// The price table sent with every lease.
    pub prices: proto::prices::Prices,
    /// Whether runners give agents the code graph's navigation map.
    pub navigation: bool,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        let lease = Duration::from_secs(75);
        Self {
            lease,
            heartbeat_interval: lease / 3,
            lease_wait: Duration::from_secs(50),
            max_bundle_bytes: proto::limits::MAX_BUNDLE_BYTES,
            retry: RetryPolicy::default(),
            prices: proto::prices::Prices::default(),
            navigation: true,
        }
    }
}

/// What the runner service needs.
#[derive(Debug, Clone)]
pub struct Deps {
    /// The store.
    pub store: Store,
    /// The CA.
    pub pki: Arc<Pki>,
    /// Names in the server certificate.
    pub server_names: Vec<String>,
    /// Timings and limits.
    pub config: GrpcConfig,
    /// Wake-ups from the database.
    pub fanout: Fanout,
    /// Tracks session tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// Serves the runner service on `listener` until `shutdown`.
pub async fn serve(
    deps: Deps,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Deps {
        store,
        pki,
        server_names,
        config,
        fanout,
        tracker,
    } = deps;
    let (chain, key) = pki.server_identity(&server_names)?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, key))
        .client_ca_root(Certificate::from_pem(pki.ca_pem()))
        // Join is the one call without a client certificate; every other call checks it.
        .client_auth_optional(true);
    let sessions = Arc::new(sessions::Sessions::default());
    tracker.spawn(sessions::push_cancels(
        store.clone(),
        sessions.clone(),
        fanout.clone(),
        shutdown.clone(),
    ));
    let svc = service::RunnerService::new(
        store,
        pki,
        config,
        fanout,
        sessions,
        tracker,
        shutdown.clone(),
    );
    tracing::info!(addr = %listener.local_addr()?, "runner gRPC listening");
    Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_service(
            proto::runner_server::RunnerServer::new(svc)
                .max_decoding_message_size(proto::limits::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::limits::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move { shutdown.cancelled().await },
        )
        .await?;
    Ok(())
}
