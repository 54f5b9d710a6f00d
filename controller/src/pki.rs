//! The controller's PKI: a CA created on first start (kept in PostgreSQL so every replica signs with
//! it), the server certificate the gRPC listener presents (with the CA in its chain, so a joining
//! runner can pin the CA by fingerprint), and client certificates for runners, whose subject CN is
//! `runner-<id>`.
//!
//! Join tickets given to admins are `<join token>@<CA SHA-256>`: the runner checks the CA it is
//! shown against the fingerprint before it sends the token anywhere.

use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::Digest;

use crate::store::{RunnerId, Store};

/// A certificate issued to a runner.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// PEM certificate.
    pub pem: String,
    /// Serial, lower-case hex, as the registry records it.
    pub serial: String,
    /// Expiry.
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// Errors signing a runner's request.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The CSR could not be parsed or its signature does not verify.
    #[error(
        "the certificate signing request is not valid PEM or its signature does not verify: {0}"
    )]
    BadCsr(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// The CA and what it signs.
pub struct Pki {
    ca_pem: String,
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    client_validity: Duration,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_fingerprint", &self.ca_fingerprint())
            .finish()
    }
}

impl Pki {
    /// Loads the CA from the database, creating it on first start. Replicas starting together
    /// agree on one CA: creation happens under an advisory lock.
    pub async fn load_or_create(store: &Store, client_validity: Duration) -> anyhow::Result<Self> {
        let (cert_pem, key_pem) = store
            .load_or_create_ca(|| new_ca().map_err(|e| format!("cannot make the runner CA: {e:#}")))
            .await?;
        Self::from_pem(&cert_pem, &key_pem, client_validity)
    }

    /// A PKI from an existing CA certificate and key.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        client_validity: Duration,
    ) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("the CA key is not valid PEM")?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .context("the CA certificate is not valid PEM")?;
        let ca_der = pem_to_der(cert_pem).context("the CA certificate is not valid PEM")?;
        Ok(Self {
            ca_pem: cert_pem.to_owned(),
            ca_der,
            issuer,
            client_validity,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// SHA-256 of the CA certificate (DER), lower-case hex.
    pub fn ca_fingerprint(&self) -> String {
        hex::encode(sha2::Sha256::digest(&self.ca_der))
    }

    /// The ticket an admin hands to a runner host: join token plus the CA fingerprint.
    pub fn join_ticket(&self, token: &str) -> String {
        format!("{token}@{}", self.ca_fingerprint())
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid a year; returns the
    /// PEM chain (leaf then CA) and the PEM key.
    pub fn server_identity(&self, names: &[String]) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "backporcher-controller");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            format!("{}{}", cert.pem(), self.ca_pem),
            key.serialize_pem(),
        ))
    }

    /// Signs a runner's CSR. Only its public key is used: subject, usages and validity are ours.
    pub fn sign_runner(&self, csr_pem: &str, runner: RunnerId) -> Result<IssuedCert, SignError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("runner-{runner}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        let not_after = now + self.client_validity;
        // Backdated a little for clock skew, but never by much of the validity: runners renew at a
        // third of the validity left.
        let skew = (self.client_validity / 10).min(std::time::Duration::from_secs(300));
        params.not_before = now - skew;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        let (_, serial) = cert_identity(cert.der())
            .ok_or_else(|| SignError::BadCsr("issued certificate unreadable".into()))?;
        Ok(IssuedCert {
            pem: cert.pem(),
            serial,
            not_after: chrono::DateTime::from_timestamp(not_after.unix_timestamp(), 0)
                .unwrap_or_default(),
        })
    }
}

fn new_ca() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Backporcher runner CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

/// The runner id (from `CN=runner-<id>`) and serial (hex) of a client certificate.
pub fn cert_identity(der: &[u8]) -> Option<(RunnerId, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let serial = hex::encode(cert.tbs_certificate.raw_serial());
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    let id: RunnerId = cn.strip_prefix("runner-")?.parse().ok()?;
    Some((id, serial))
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}
