//! Trust on first contact, pinned: before a runner sends its join token anywhere, it connects to
//! the controller, takes the CA certificate the server presents in its chain, checks it against
//! the SHA-256 fingerprint in the join ticket, and verifies the server certificate with that CA.
//! Only then is the CA trusted (and the token sent, over a channel that verifies the server).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

/// Why the CA could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Could not reach the controller.
    #[error("cannot reach the controller at {addr}: {source}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The server showed no certificate with the expected fingerprint.
    #[error(
        "the controller at {addr} did not present the CA with fingerprint {fingerprint}; check the join ticket and the controller URL (a proxy in between would also cause this)"
    )]
    NotFound {
        /// Address tried.
        addr: String,
        /// Expected fingerprint.
        fingerprint: String,
    },
    /// The server certificate does not verify against the pinned CA.
    #[error("the controller's certificate does not verify against the pinned CA: {0}")]
    Verify(String),
}

/// Accepts any chain during the handshake (the handshake signature is still checked); the chain
/// is verified against the pinned CA after the handshake.
#[derive(Debug)]
struct RecordOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for RecordOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects to `host:port`, finds the CA with `fingerprint` (hex SHA-256 of its DER) in the chain
/// the server presents, verifies the server certificate with it for `host`, and returns it as PEM.
pub async fn fetch_pinned_ca(host: &str, port: u16, fingerprint: &str) -> Result<String, PinError> {
    let addr = format!("{host}:{port}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PinError::Verify(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordOnly(provider.clone())))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|source| PinError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let name =
        ServerName::try_from(host.to_owned()).map_err(|e| PinError::Verify(e.to_string()))?;
    let tls = connector
        .connect(name.clone(), tcp)
        .await
        .map_err(|source| PinError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let wanted = fingerprint.to_ascii_lowercase();
    let ca = chain
        .iter()
        .find(|c| hex::encode(sha2::Sha256::digest(c.as_ref())) == wanted)
        .cloned()
        .ok_or_else(|| PinError::NotFound {
            addr: addr.clone(),
            fingerprint: wanted.clone(),
        })?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| PinError::Verify("no server certificate".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| PinError::Verify(e.to_string()))?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| PinError::Verify(e.to_string()))?;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
        .map_err(|e| PinError::Verify(e.to_string()))?;
    Ok(der_to_pem(ca.as_ref()))
}

/// PEM-encodes a DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
