//! Credentials for GitHub: a personal (or fine-grained) token used as is, or a GitHub App whose
//! installation token is minted on demand — an RS256 JWT signed with the App's private key (ring),
//! exchanged at `POST /app/installations/{id}/access_tokens`, cached until five minutes before it
//! expires.

use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use tokio::sync::Mutex;

use super::{ForgeError, Result};

/// How the controller authenticates to GitHub.
#[derive(Clone)]
pub enum Credentials {
    /// A token sent as is.
    Token(String),
    /// A GitHub App installation.
    App {
        /// The App's id.
        app_id: u64,
        /// The installation's id.
        installation_id: u64,
        /// The App's private key, PEM (PKCS#1 `RSA PRIVATE KEY` as GitHub issues it, or PKCS#8).
        private_key_pem: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Credentials::Token(<redacted>)"),
            Credentials::App {
                app_id,
                installation_id,
                ..
            } => write!(
                f,
                "Credentials::App {{ app_id: {app_id}, installation_id: {installation_id} }}"
            ),
        }
    }
}

/// A parsed App key.
pub(crate) struct AppKey {
    app_id: u64,
    installation_id: u64,
    key: RsaKeyPair,
}

impl AppKey {
    /// Parses the PEM key; errors name what is wrong with it.
    pub(crate) fn new(app_id: u64, installation_id: u64, pem: &str) -> Result<Self> {
        let (label, der) = pem_decode(pem).ok_or_else(|| {
            ForgeError::Auth(
                "the GitHub App private key is not PEM (expected `-----BEGIN … PRIVATE KEY-----`)"
                    .into(),
            )
        })?;
        let key = match label.as_str() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            other => {
                return Err(ForgeError::Auth(format!(
                    "the GitHub App private key is a `{other}`; expected an RSA private key"
                )));
            }
        }
        .map_err(|e| ForgeError::Auth(format!("the GitHub App private key is unusable: {e}")))?;
        Ok(Self {
            app_id,
            installation_id,
            key,
        })
    }

    /// A JWT for the App, valid for nine minutes (issued a minute in the past for clock skew).
    pub(crate) fn jwt(&self) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"iat": now.saturating_sub(60), "exp": now + 540, "iss": self.app_id.to_string()})
                .to_string(),
        );
        let message = format!("{header}.{claims}");
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message.as_bytes(),
                &mut sig,
            )
            .map_err(|_| ForgeError::Auth("signing the App JWT failed".into()))?;
        Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// The installation this key mints tokens for.
    pub(crate) fn installation_id(&self) -> u64 {
        self.installation_id
    }
}

/// A cached installation token.
#[derive(Default)]
pub(crate) struct TokenCache {
    current: Mutex<Option<(String, Instant)>>,
}

impl TokenCache {
    /// The cached token if it has more than five minutes left.
    pub(crate) async fn fresh(&self) -> Option<String> {
        let cur = self.current.lock().await;
        cur.as_ref()
            .filter(|(_, until)| *until > Instant::now() + Duration::from_secs(300))
            .map(|(t, _)| t.clone())
    }

    /// Stores a token valid for `ttl`.
    pub(crate) async fn store(&self, token: &str, ttl: Duration) {
        *self.current.lock().await = Some((token.to_owned(), Instant::now() + ttl));
    }
}

/// Decodes the first PEM block: (label, DER).
fn pem_decode(pem: &str) -> Option<(String, Vec<u8>)> {
    let begin = pem.find("-----BEGIN ")?;
    let rest = &pem[begin + 11..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_owned();
    let body = &rest[label_end + 5..];
    let end = body.find("-----END ")?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_named() {
        let err = AppKey::new(1, 2, "not a key").err().expect("refused");
        assert!(err.to_string().contains("not PEM"), "{err}");
        let err = AppKey::new(
            1,
            2,
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .err()
        .expect("refused");
        assert!(err.to_string().contains("EC PRIVATE KEY"), "{err}");
        let err = AppKey::new(
            1,
            2,
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .err()
        .expect("refused");
        assert!(err.to_string().contains("unusable"), "{err}");
    }
}
