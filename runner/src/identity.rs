//! The runner's identity on disk: runner id, controller URL, its private key (mode 0600), its
//! client certificate and the controller's CA, all under the state directory. `join` creates it
//! from a join ticket; certificate renewal replaces key and certificate in place.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::client;
use crate::pin;

/// Everything a runner needs to talk to its controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// Id the controller gave this runner.
    pub runner_id: i64,
    /// The controller's gRPC URL (`https://host:port`).
    pub controller: String,
    /// The runner's name.
    pub name: String,
    /// Client certificate (PEM).
    #[serde(skip)]
    pub cert_pem: String,
    /// Private key (PEM).
    #[serde(skip)]
    pub key_pem: String,
    /// The controller's CA (PEM).
    #[serde(skip)]
    pub ca_pem: String,
    /// Further addresses of the same controller (its replicas), tried in turn while the one in
    /// use does not answer (given at `run`, not stored).
    #[serde(skip)]
    pub replicas: Vec<String>,
}

const IDENTITY: &str = "identity.json";
const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";
const CA: &str = "ca.pem";

impl Identity {
    /// A lazy mTLS connection to the controller with this identity.
    pub fn connect(&self) -> anyhow::Result<client::Client> {
        self.connect_to(&self.controller)
    }

    /// A lazy mTLS connection to `url`, one of the controller's addresses, with this identity.
    pub fn connect_to(&self, url: &str) -> anyhow::Result<client::Client> {
        client::Client::with_pem(url, &self.ca_pem, &self.cert_pem, &self.key_pem)
    }

    /// Every address of the controller: the enrolled one first, then its replicas.
    pub fn endpoints(&self) -> Vec<String> {
        let mut all = vec![self.controller.clone()];
        for r in &self.replicas {
            if !all.contains(r) {
                all.push(r.clone());
            }
        }
        all
    }

    /// Loads the identity from `state_dir`.
    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(IDENTITY);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "this host is not enrolled ({} is missing); run `backporcher-runner join --controller URL --token TICKET` first",
                path.display()
            )
        })?;
        let mut id: Identity = serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged", path.display()))?;
        let read = |f: &str| {
            std::fs::read_to_string(state_dir.join(f))
                .with_context(|| format!("{} is missing from the state dir; enroll again", f))
        };
        id.cert_pem = read(CERT)?;
        id.key_pem = read(KEY)?;
        id.ca_pem = read(CA)?;
        Ok(id)
    }

    /// Writes the identity to `state_dir` (each file replaced atomically; the key is 0600).
    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))?;
        write_atomic(&state_dir.join(KEY), self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&state_dir.join(CERT), self.cert_pem.as_bytes(), 0o644)?;
        write_atomic(&state_dir.join(CA), self.ca_pem.as_bytes(), 0o644)?;
        write_atomic(
            &state_dir.join(IDENTITY),
            serde_json::to_string_pretty(self)?.as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    /// Validity of the client certificate as (not_before, not_after) in Unix seconds.
    pub fn cert_validity(&self) -> Option<(i64, i64)> {
        let der = pem_der(&self.cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        let v = cert.validity();
        Some((v.not_before.timestamp(), v.not_after.timestamp()))
    }

    /// Whether less than a third of the certificate's validity is left at `now` (Unix seconds).
    pub fn needs_renewal(&self, now: i64) -> bool {
        match self.cert_validity() {
            Some((from, to)) => (to - now) * 3 < (to - from),
            None => true,
        }
    }
}

/// A join ticket: the one-time token and the CA fingerprint it pins.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The join token.
    pub token: String,
    /// Hex SHA-256 of the controller's CA certificate.
    pub ca_fingerprint: String,
}

impl std::str::FromStr for Ticket {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (token, fp) = s
            .trim()
            .split_once('@')
            .context("a join ticket looks like <token>@<ca-sha256>; copy it whole from `backporcher runner token`")?;
        if fp.len() != 64 || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
            anyhow::bail!("the CA fingerprint in the join ticket must be 64 hex digits");
        }
        Ok(Self {
            token: token.to_owned(),
            ca_fingerprint: fp.to_ascii_lowercase(),
        })
    }
}

/// A fresh key pair and a CSR for it (the controller decides the subject).
pub fn new_key_and_csr() -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Enrolls this host: pins the CA, redeems the ticket, and saves the identity in `state_dir`.
pub async fn join(
    controller: &str,
    ticket: &Ticket,
    name: &str,
    state_dir: &Path,
) -> anyhow::Result<Identity> {
    let (host, port) = client::host_port(controller)?;
    let ca_pem = pin::fetch_pinned_ca(&host, port, &ticket.ca_fingerprint).await?;
    let (key_pem, csr_pem) = new_key_and_csr()?;
    let hostname = client::hostname();
    let resp = client::join(
        controller,
        &ca_pem,
        &ticket.token,
        &csr_pem,
        name,
        &hostname,
    )
    .await?;
    let id = Identity {
        runner_id: resp.runner_id,
        controller: controller.to_owned(),
        name: name.to_owned(),
        cert_pem: resp.certificate_pem,
        key_pem,
        ca_pem: resp.ca_pem,
        replicas: Vec::new(),
    };
    id.save(state_dir)?;
    tracing::info!(runner = id.runner_id, state_dir = %state_dir.display(), "enrolled with the controller");
    Ok(id)
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_parsed_and_bad_ones_say_why() {
        let fp = "ab".repeat(32);
        let t: Ticket = format!("bpj_123@{fp}").parse().unwrap();
        assert_eq!(t.token, "bpj_123");
        assert!(
            "bpj_123"
                .parse::<Ticket>()
                .unwrap_err()
                .to_string()
                .contains("<token>@<ca-sha256>")
        );
        assert!(
            "bpj_123@abc"
                .parse::<Ticket>()
                .unwrap_err()
                .to_string()
                .contains("64 hex")
        );
    }
}
