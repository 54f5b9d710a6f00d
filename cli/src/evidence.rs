//! `backporcher evidence`: an attempt's signed evidence record (`docs/evidence.md`) — shown,
//! verified against the controller's public key, and the agent's transcript downloaded.
//!
//! Verification checks the Ed25519 signature over exactly the record's bytes. When it fails and
//! the controller can be asked, the record is compared with the controller's own copy, so the
//! answer names what was changed: the fields that differ, or — when the record is the same — a
//! substituted signature.

use ring::signature::{ED25519, UnparsedPublicKey};
use serde_json::Value;

use crate::client::{CliError, Client};

/// The envelope's schema name this CLI reads.
const SIGNED_SCHEMA: &str = "backporcher.evidence.signed/1";
/// The record's schema name this CLI reads.
const SCHEMA: &str = "backporcher.evidence/1";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// Differences named at most.
const MAX_DIFFS: usize = 12;

/// Where the record comes from and what to check it with.
pub struct VerifyArgs {
    /// The task the record must be about.
    pub task: i64,
    /// The attempt (default: the newest with a record).
    pub attempt: Option<i32>,
    /// A downloaded envelope instead of the controller's.
    pub file: Option<std::path::PathBuf>,
    /// A PEM public key instead of the controller's `/evidence-key.pem`.
    pub key: Option<std::path::PathBuf>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The raw 32-byte key of a PEM `PUBLIC KEY`.
pub fn key_from_pem(pem: &str) -> Result<Vec<u8>, CliError> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = b64()
        .decode(body)
        .map_err(|e| CliError::Failed(format!("the evidence key is not PEM: {e}")))?;
    match der.strip_prefix(&SPKI_PREFIX[..]) {
        Some(k) if k.len() == 32 => Ok(k.to_vec()),
        _ => Err(CliError::Failed(
            "the evidence key is not an Ed25519 public key".into(),
        )),
    }
}

/// SHA-256 hex.
fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn path_of(task: i64, attempt: Option<i32>) -> String {
    match attempt {
        Some(a) => format!("/api/tasks/{task}/evidence?attempt={a}"),
        None => format!("/api/tasks/{task}/evidence"),
    }
}

/// An attempt's envelope from the controller.
pub async fn fetch(
    c: &Client,
    task: i64,
    attempt: Option<i32>,
) -> Result<api::SignedEvidence, CliError> {
    c.get(&path_of(task, attempt)).await
}

/// What a failed check found.
fn fail(msg: String) -> CliError {
    CliError::Failed(msg)
}

/// Checks the envelope's signature with `key`; on success the parsed record.
pub fn check(env: &api::SignedEvidence, key: &[u8]) -> Result<Value, String> {
    use base64::Engine;
    if env.schema != SIGNED_SCHEMA || env.algorithm != "ed25519" {
        return Err(format!(
            "unknown envelope `{}` / algorithm `{}` (this CLI reads {SIGNED_SCHEMA}, ed25519)",
            env.schema, env.algorithm
        ));
    }
    let key_id = sha256(key);
    if env.key_id != key_id {
        return Err(format!(
            "the record names signing key {} but the key given is {key_id}: it was signed by another key, or the key id was changed",
            env.key_id
        ));
    }
    let sig = b64()
        .decode(&env.signature)
        .map_err(|e| format!("the signature is not base64 ({e}): it was changed"))?;
    if UnparsedPublicKey::new(&ED25519, key)
        .verify(env.record.as_bytes(), &sig)
        .is_err()
    {
        return Err("the signature does not match the record".into());
    }
    serde_json::from_str(&env.record).map_err(|e| format!("the signed record is not JSON: {e}"))
}

/// The fields in which two JSON values differ (paths like `verify.after.exit_code`).
pub fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    if out.len() >= MAX_DIFFS || a == b {
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => differences(p, q, &join(k), out),
                    (Some(_), None) => out.push(format!("{} (added)", join(k))),
                    (None, Some(_)) => out.push(format!("{} (removed)", join(k))),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, &format!("{path}[{i}]"), out);
            }
        }
        _ => out.push(format!(
            "{} (here {}, the controller's {})",
            if path.is_empty() { "the record" } else { path },
            short(a),
            short(b)
        )),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// `backporcher evidence verify`: Ok with a line for people, or an error naming what is wrong.
pub async fn verify(c: Option<&Client>, args: &VerifyArgs) -> Result<String, CliError> {
    let need = |what: &str| {
        CliError::Usage(format!(
            "{what} needs the controller: log in (`backporcher login`) or give --file and --key"
        ))
    };
    let env: api::SignedEvidence = match &args.file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| fail(format!("cannot read {}: {e}", f.display())))?;
            serde_json::from_str(&text).map_err(|e| {
                fail(format!(
                    "{} is not a signed evidence envelope ({e}); save one with `backporcher --json evidence show <task>`",
                    f.display()
                ))
            })?
        }
        None => {
            fetch(
                c.ok_or_else(|| need("downloading the record"))?,
                args.task,
                args.attempt,
            )
            .await?
        }
    };
    let key = match &args.key {
        Some(k) => key_from_pem(
            &std::fs::read_to_string(k)
                .map_err(|e| fail(format!("cannot read {}: {e}", k.display())))?,
        )?,
        None => key_from_pem(
            &c.ok_or_else(|| need("fetching the controller's key"))?
                .get_text("/evidence-key.pem")
                .await?,
        )?,
    };
    let record = match check(&env, &key) {
        Ok(r) => r,
        Err(why) => return Err(fail(explain(c, args, &env, &key, why).await)),
    };
    if record["schema"] != SCHEMA {
        return Err(fail(format!(
            "the record's schema is {} (this CLI reads {SCHEMA})",
            record["schema"]
        )));
    }
    if record["task"].as_i64() != Some(args.task) {
        return Err(fail(format!(
            "the record is signed, but it is about task {}, not task {}",
            record["task"], args.task
        )));
    }
    if let Some(a) = args.attempt
        && record["attempt"].as_i64() != Some(a as i64)
    {
        return Err(fail(format!(
            "the record is signed, but it is about attempt {}, not attempt {a}",
            record["attempt"]
        )));
    }
    let mut line = format!(
        "ok: the evidence record of task {} attempt {} (head {}) is signed by the controller's key {}",
        record["task"],
        record["attempt"],
        record["head"].as_str().unwrap_or("?"),
        &env.key_id[..16.min(env.key_id.len())]
    );
    // The transcript the record hashes, when the controller can be asked for it.
    if let (Some(c), Some(url)) = (c, record["trajectory"]["url"].as_str()) {
        match c.get_text(url).await {
            Ok(t)
                if Some(sha256(t.as_bytes()).as_str())
                    == record["trajectory"]["sha256"].as_str() =>
            {
                line.push_str("; the transcript matches its SHA-256");
            }
            Ok(_) => {
                return Err(fail(format!(
                    "the record is signed, but the transcript at {url} does not match the SHA-256 it names: the transcript was changed"
                )));
            }
            Err(_) => line.push_str("; the transcript was not checked (not reachable)"),
        }
    }
    Ok(line)
}

/// Why a record does not verify, as precisely as can be told: compared with the controller's
/// copy when there is one to compare with.
async fn explain(
    c: Option<&Client>,
    args: &VerifyArgs,
    env: &api::SignedEvidence,
    key: &[u8],
    why: String,
) -> String {
    let parsed: Option<Value> = serde_json::from_str(&env.record).ok();
    let attempt = args.attempt.or_else(|| {
        parsed
            .as_ref()
            .and_then(|r| r["attempt"].as_i64())
            .map(|a| a as i32)
    });
    let task = parsed
        .as_ref()
        .and_then(|r| r["task"].as_i64())
        .unwrap_or(args.task);
    let Some(c) = c else {
        return format!("{why}: it was changed after signing or signed by another key");
    };
    // The copy the record claims to be, else the one asked for (the claim may be what changed).
    let mut authentic = None;
    for (t, a) in [(task, attempt), (args.task, args.attempt)] {
        if let Ok(e) = fetch(c, t, a).await {
            authentic = Some(e);
            break;
        }
    }
    let Some(authentic) = authentic else {
        return format!(
            "{why}: it was changed after signing or signed by another key (the controller's copy could not be fetched to say what)"
        );
    };
    if check(&authentic, key).is_err() {
        return format!("{why}; the controller's own copy does not verify either");
    }
    if authentic.record == env.record {
        let mut what = Vec::new();
        if authentic.signature != env.signature {
            what.push("signature");
        }
        if authentic.key_id != env.key_id {
            what.push("key_id");
        }
        return format!(
            "{why}: the record is the controller's, byte for byte, but its {} was substituted",
            if what.is_empty() {
                "envelope".to_string()
            } else {
                what.join(" and ")
            }
        );
    }
    let mut diffs = Vec::new();
    match (&parsed, serde_json::from_str::<Value>(&authentic.record)) {
        (Some(p), Ok(a)) => differences(p, &a, "", &mut diffs),
        _ => diffs.push("the record (no longer JSON)".into()),
    }
    if diffs.is_empty() {
        diffs.push("the record's bytes (same fields, other formatting)".into());
    }
    format!(
        "{why}: the record was tampered with; changed: {}",
        diffs.join("; ")
    )
}
