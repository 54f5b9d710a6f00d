//! HTTPS for the dashboard and the API on the controller's own HTTP listener: a certificate the
//! operator gives (PEM files), or one the controller's CA issues for its server names (the CA a
//! browser or `curl --cacert` then trusts — `GET /ca.pem`). Handshakes run concurrently (at most
//! `HANDSHAKES` at once), each bounded by a deadline, so a client that never finishes one holds
//! up nobody else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Longest a client may take over its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Handshakes done and not yet taken by the server.
const BACKLOG: usize = 256;
/// Handshakes under way at once; past it a new connection waits in the kernel's accept queue
/// until one finishes or times out.
const HANDSHAKES: usize = 512;

/// Where the HTTPS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HttpTls {
    /// Plain HTTP (behind a TLS proxy, or on a loopback address).
    #[default]
    Off,
    /// A certificate the controller's CA issues for its server names.
    OwnCa,
    /// The operator's certificate chain and key (PEM files).
    Files {
        /// Certificate chain, leaf first.
        cert: std::path::PathBuf,
        /// Private key.
        key: std::path::PathBuf,
    },
}

/// The rustls server configuration of a PEM chain and key (HTTP/2 and HTTP/1.1 offered).
pub fn server_config(chain_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("the TLS certificate is not PEM: {e}"))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the TLS certificate file holds no certificate"
    );
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the TLS key is not a PEM private key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| anyhow::anyhow!("the TLS certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A listener whose connections are TLS streams: accepted and handshaken in the background.
pub struct TlsListener {
    done: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _accept: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp` with `config`.
    pub fn new(tcp: TcpListener, config: rustls::ServerConfig) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, done) = mpsc::channel(BACKLOG);
        let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        let accept = tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an HTTPS connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, done) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self {
            done,
            local,
            _accept: accept,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self._accept.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(c) => c,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
