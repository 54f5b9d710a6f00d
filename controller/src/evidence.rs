//! Evidence records (`docs/evidence.md`): for every attempt that reaches push, one JSON record of
//! what ran in the sandbox (commands, exit codes, durations), verify on the base and on the head,
//! the tests the change adds or changes and what the verify run showed of them, which symbols of
//! the change's blast radius tests reach (the code graph's tested-by edges), every model call of
//! the task, and the hash of the agent's transcript, exported as `backporcher.trajectory/1`.
//!
//! The controller signs each record with an Ed25519 key it keeps like the runner CA (in
//! PostgreSQL, created once, shared by replicas: [`crate::store::evidence`]); the signature is
//! over exactly the stored bytes of the record, which the API serves unchanged inside a signed
//! envelope. The public key is at `/evidence-key.pem`; `backporcher evidence verify` checks a
//! record against it. The review stage ([`check`]) refuses to approve a change without a valid
//! record for the head it reviews.
//!
//! What the runner reports (`data.evidence` of its result) is the runner's word, taken from an
//! authenticated runner; the controller adds what it knows itself (identity, ledger, the
//! transcript it stored) and signs the whole.

use anyhow::Context;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde_json::{Value, json};
use sha2::Digest;

use crate::store::evidence::{LedgerRow, StoredEvidence};
use crate::store::{Store, Task};

/// The record's schema name; a change that breaks readers gets a new number.
pub const SCHEMA: &str = "backporcher.evidence/1";
/// The signed envelope's schema name.
pub const SIGNED_SCHEMA: &str = "backporcher.evidence.signed/1";
/// The transcript format.
pub const TRAJECTORY_FORMAT: &str = "backporcher.trajectory/1";
/// Largest transcript kept; steps past it are counted, not kept.
pub const MAX_TRAJECTORY_BYTES: usize = 8 << 20;
/// Most ledger rows a record lists (the totals count all of them).
const MAX_LEDGER_ROWS: i64 = 2_000;
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw key follows.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The controller's evidence signing key.
pub struct Signer {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id())
            .finish()
    }
}

impl Signer {
    /// The key from the database, made on first use (under an advisory lock: replicas agree).
    pub async fn load(store: &Store) -> anyhow::Result<Self> {
        let (pkcs8, _) = store
            .load_or_create_evidence_key(|| {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| "cannot make the evidence signing key".to_string())?;
                let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
                    .map_err(|_| "the new evidence key does not parse".to_string())?;
                Ok((doc.as_ref().to_vec(), pair.public_key().as_ref().to_vec()))
            })
            .await?;
        let key = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| anyhow::anyhow!("the stored evidence key is not valid PKCS#8: {e}"))?;
        Ok(Self { key })
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// SHA-256 of the raw public key, lower-case hex.
    pub fn key_id(&self) -> String {
        key_id(self.public_key())
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> String {
        public_pem(self.public_key())
    }

    /// Signs exactly `bytes`.
    pub fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.key.sign(bytes).as_ref().to_vec()
    }
}

/// SHA-256 of a raw public key, lower-case hex.
pub fn key_id(public: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(public))
}

/// A raw Ed25519 public key as PEM.
pub fn public_pem(public: &[u8]) -> String {
    use base64::Engine;
    let der = [&SPKI_PREFIX[..], public].concat();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

/// Whether `signature` is `public`'s Ed25519 signature over `bytes`.
pub fn verify(public: &[u8], bytes: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public)
        .verify(bytes, signature)
        .is_ok()
}

/// The signed envelope the API serves and the CLI verifies.
pub fn envelope(e: &StoredEvidence) -> Value {
    use base64::Engine;
    json!({
        "schema": SIGNED_SCHEMA,
        "algorithm": "ed25519",
        "key_id": e.key_id,
        "signature": base64::engine::general_purpose::STANDARD.encode(&e.signature),
        "record": e.record,
    })
}

/// Builds, signs and stores the record of the task's current attempt, pushed as `head`; the one
/// already stored wins (a retried push keeps what the PR names).
pub async fn make(
    store: &Store,
    task: &Task,
    repo: &str,
    head: &str,
) -> anyhow::Result<StoredEvidence> {
    if let Some(e) = store.evidence(task.id, task.attempt).await? {
        return Ok(e);
    }
    let signer = Signer::load(store).await?;
    let result = store
        .result_data(task.id, task.attempt)
        .await?
        .unwrap_or(Value::Null);
    // A best-of-N task's work was done by the winning candidate: its transcript and its calls
    // are under the candidate's own id.
    let (work_task, work_attempt) = match store.ranking(task.id, task.attempt).await? {
        Some(crate::store::candidates::Ranking {
            winner: Some(w), ..
        }) => (w, store.task(w).await?.attempt),
        _ => (task.id, task.attempt),
    };
    let mut ledger = store.ledger_rows(task.id, MAX_LEDGER_ROWS).await?;
    if work_task != task.id {
        ledger.extend(store.ledger_rows(work_task, MAX_LEDGER_ROWS).await?);
    }
    let reproduction = store.attempt_reproduction(task.id, task.attempt).await?;
    let chunks = store.log_chunks(work_task, work_attempt).await?;
    let trajectory = trajectory(task.id, task.attempt, &task.agent, &chunks);
    let record = record(&Inputs {
        task,
        repo,
        head,
        result: &result,
        reproduction: reproduction.as_ref(),
        ledger: &ledger,
        trajectory: &trajectory,
        created_at: chrono::Utc::now(),
    });
    let bytes = serde_json::to_string(&record).context("cannot encode the evidence record")?;
    let signature = signer.sign(bytes.as_bytes());
    Ok(store
        .put_evidence(
            task.id,
            task.attempt,
            head,
            &bytes,
            &signature,
            &signer.key_id(),
            &trajectory.text,
        )
        .await?)
}

/// Why a task has no valid record for `head`: none was made for its attempt, the stored one
/// does not verify with the controller's key, or it is about another commit. On success, the
/// record.
pub async fn check(
    store: &Store,
    task: &Task,
    head: &str,
) -> anyhow::Result<Result<Value, String>> {
    let Some(e) = store.evidence(task.id, task.attempt).await? else {
        return Ok(Err(format!(
            "attempt {} has no evidence record (none was made when it was pushed)",
            task.attempt
        )));
    };
    let signer = Signer::load(store).await?;
    Ok(valid(&signer, task, head, &e))
}

/// The record of `e` when it is signed by `signer` and about `task`'s attempt at `head`.
pub fn valid(
    signer: &Signer,
    task: &Task,
    head: &str,
    e: &StoredEvidence,
) -> Result<Value, String> {
    if e.key_id != signer.key_id() {
        return Err(format!(
            "the evidence record was signed by key {} and the controller's key is {}",
            e.key_id,
            signer.key_id()
        ));
    }
    if !verify(signer.public_key(), e.record.as_bytes(), &e.signature) {
        return Err("the evidence record's signature does not match its contents".into());
    }
    let record: Value = serde_json::from_str(&e.record)
        .map_err(|err| format!("the evidence record is not JSON: {err}"))?;
    if record["schema"] != SCHEMA
        || record["task"] != json!(task.id)
        || record["attempt"] != json!(task.attempt)
    {
        return Err("the evidence record is about another task or attempt".into());
    }
    if record["head"].as_str() != Some(head) {
        return Err(format!(
            "the evidence record is about commit {} and the PR's head is {head}",
            record["head"].as_str().unwrap_or("(none)")
        ));
    }
    Ok(record)
}

/// What a record is made of.
pub struct Inputs<'a> {
    /// The task, at its current attempt.
    pub task: &'a Task,
    /// `owner/name`.
    pub repo: &'a str,
    /// The head commit pushed.
    pub head: &'a str,
    /// The attempt's stored result (`{context, data: {summary, usage, data: <the runner's>},
    /// head_sha, branch}`).
    pub result: &'a Value,
    /// The attempt's reproduce-first record, when it ran one.
    pub reproduction: Option<&'a Value>,
    /// The task's usage-ledger rows.
    pub ledger: &'a [LedgerRow],
    /// The exported transcript.
    pub trajectory: &'a Trajectory,
    /// When the record is made.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The record (schema [`SCHEMA`], `docs/evidence.md`).
pub fn record(i: &Inputs<'_>) -> Value {
    // The stored result: `data` is the completion (`summary`, `usage`), its `data` the runner's.
    let completion = &i.result["data"];
    let data = &completion["data"];
    let ev = &data["evidence"];
    let reported = ev.is_object();
    let not_reported = json!({"status": "not_reported"});
    let pick = |v: &Value| {
        if v.is_object() {
            v.clone()
        } else {
            not_reported.clone()
        }
    };
    let calls: Vec<Value> = i
        .ledger
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "at": r.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "purpose": r.purpose,
                "model": r.model,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "cache_read_tokens": r.cache_read_tokens,
                "cache_write_tokens": r.cache_write_tokens,
                "cost_microusd": r.cost_microusd,
            })
        })
        .collect();
    let total_cost: i64 = i.ledger.iter().map(|r| r.cost_microusd).sum();
    let total_tokens: i64 = i
        .ledger
        .iter()
        .map(|r| r.input_tokens + r.output_tokens)
        .sum::<i64>()
        + i.trajectory.tokens;
    let coverage = if ev["coverage"].is_object() {
        ev["coverage"].clone()
    } else {
        Value::Null
    };
    json!({
        "schema": SCHEMA,
        "task": i.task.id,
        "attempt": i.task.attempt,
        "repo": i.repo,
        "issue": i.task.issue_number,
        "branch": i.result["branch"].as_str().or(i.task.branch.as_deref()),
        "base": data["base"].as_str(),
        "head": i.head,
        "runner": i.task.runner_id,
        "created_at": i.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        // Filled by the agent backend choice (the task's `agent`).
        "backend": i.task.agent,
        // The attempt's reproduce-first record (`task_results.reproduction`); null when it ran none.
        "reproduction": i.reproduction.cloned().unwrap_or(Value::Null),
        "runner_reported": reported,
        "change": {
            "files": data["files"].clone(),
            "files_total": data["files_total"].clone(),
            "insertions": data["insertions"].clone(),
            "deletions": data["deletions"].clone(),
        },
        "commands": if ev["commands"].is_array() { ev["commands"].clone() } else { json!([]) },
        "verify": {
            "command": ev["verify_command"].clone(),
            "before": pick(&ev["verify_before"]),
            "after": pick(&ev["verify_after"]),
        },
        "tests": if ev["tests"].is_object() { ev["tests"].clone() } else { json!({"changed_files": [], "changed": []}) },
        "coverage": coverage,
        "model_calls": {
            "ledger": calls,
            "agent": if ev["agent_usage"].is_object() { ev["agent_usage"].clone() } else { completion["usage"].clone() },
            "agent_turns": i.trajectory.turns,
            "total_cost_microusd": total_cost,
            "total_tokens": total_tokens,
        },
        "trajectory": {
            "format": TRAJECTORY_FORMAT,
            "sha256": i.trajectory.sha256,
            "bytes": i.trajectory.text.len(),
            "steps": i.trajectory.steps,
            "truncated": i.trajectory.truncated,
            "url": format!("/api/tasks/{}/attempts/{}/trajectory", i.task.id, i.task.attempt),
        },
    })
}

/// An attempt's transcript in [`TRAJECTORY_FORMAT`].
#[derive(Debug, Clone)]
pub struct Trajectory {
    /// The JSON text (what is stored and served).
    pub text: String,
    /// SHA-256 of `text`, hex.
    pub sha256: String,
    /// Steps kept.
    pub steps: usize,
    /// Model turns (assistant messages) seen.
    pub turns: usize,
    /// Tokens the model turns reported.
    pub tokens: i64,
    /// Whether steps were left out over [`MAX_TRAJECTORY_BYTES`].
    pub truncated: bool,
}

/// The transcript of an attempt from its stored `agent` log (the agent CLI's stream-json, one
/// event per line): every event becomes one or more steps (`docs/evidence.md`).
pub fn trajectory(
    task: i64,
    attempt: i32,
    agent: &str,
    chunks: &[(i64, String, Vec<u8>)],
) -> Trajectory {
    let mut raw = Vec::new();
    for (_, stream, data) in chunks {
        if stream == "agent" {
            raw.extend_from_slice(data);
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let mut steps: Vec<Value> = Vec::new();
    let (mut size, mut dropped, mut round, mut turns, mut tokens) =
        (0usize, 0usize, 0i64, 0usize, 0i64);
    let mut push = |mut step: Value, round: i64, steps: &mut Vec<Value>| {
        step["index"] = json!(steps.len() + dropped);
        step["round"] = json!(round);
        let len = step.to_string().len();
        if size + len > MAX_TRAJECTORY_BYTES {
            dropped += 1;
            return;
        }
        size += len;
        steps.push(step);
    };
    let mut seen_init = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Ok(ev) = serde_json::from_str::<Value>(line) else {
            push(json!({"kind": "text", "text": line}), round, &mut steps);
            continue;
        };
        match ev["type"].as_str().unwrap_or_default() {
            "system" if ev["subtype"] == "init" => {
                if seen_init {
                    round += 1;
                }
                seen_init = true;
                push(
                    json!({"kind": "init", "model": ev["model"], "tools": ev["tools"], "session": ev["session_id"]}),
                    round,
                    &mut steps,
                );
            }
            kind @ ("assistant" | "user") => {
                let msg = &ev["message"];
                let usage = &msg["usage"];
                if kind == "assistant" {
                    turns += 1;
                    tokens += usage["input_tokens"].as_i64().unwrap_or(0)
                        + usage["output_tokens"].as_i64().unwrap_or(0);
                }
                let mut first = true;
                let blocks = match &msg["content"] {
                    Value::Array(b) => b.clone(),
                    Value::String(s) => vec![json!({"type": "text", "text": s})],
                    _ => Vec::new(),
                };
                for b in blocks {
                    let mut step = match b["type"].as_str().unwrap_or_default() {
                        "text" => json!({"kind": "message", "role": kind, "text": b["text"]}),
                        "thinking" => json!({"kind": "thinking", "text": b["thinking"]}),
                        "tool_use" => {
                            json!({"kind": "tool_call", "id": b["id"], "tool": b["name"], "input": b["input"]})
                        }
                        "tool_result" => {
                            json!({"kind": "tool_result", "id": b["tool_use_id"], "is_error": b["is_error"].as_bool().unwrap_or(false), "text": flatten(&b["content"])})
                        }
                        other => json!({"kind": "event", "type": other, "raw": b}),
                    };
                    if first && kind == "assistant" {
                        step["model"] = msg["model"].clone();
                        step["usage"] = usage.clone();
                    }
                    first = false;
                    push(step, round, &mut steps);
                }
            }
            "result" => push(
                json!({"kind": "result", "is_error": ev["is_error"].as_bool().unwrap_or(false), "text": ev["result"], "cost_usd": ev["total_cost_usd"], "usage": ev["usage"], "turns": ev["num_turns"], "duration_ms": ev["duration_ms"]}),
                round,
                &mut steps,
            ),
            other => push(
                json!({"kind": "event", "type": other, "raw": ev}),
                round,
                &mut steps,
            ),
        }
    }
    let count = steps.len();
    let truncated = dropped > 0;
    let doc = json!({
        "format": TRAJECTORY_FORMAT,
        "task": task,
        "attempt": attempt,
        "agent": agent,
        "source": "stream-json",
        "steps": steps,
        "truncated": truncated,
        "dropped_steps": dropped,
    });
    let text = doc.to_string();
    Trajectory {
        sha256: hex::encode(sha2::Sha256::digest(text.as_bytes())),
        text,
        steps: count,
        turns,
        tokens,
        truncated,
    }
}

/// A tool result's content as text (a string, or the text of its blocks).
fn flatten(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One line about a verify run: its status, exit code and duration.
fn verify_line(v: &Value) -> String {
    let status = v["status"].as_str().unwrap_or("not_reported");
    let mut s = status.replace('_', " ");
    let mut extra = Vec::new();
    if let Some(c) = v["exit_code"].as_i64() {
        extra.push(format!("exit {c}"));
    }
    if let Some(ms) = v["duration_ms"].as_i64() {
        extra.push(format!("{:.1} s", ms as f64 / 1000.0));
    }
    if !extra.is_empty() {
        s.push_str(&format!(" ({})", extra.join(", ")));
    }
    s
}

/// The figures of a record, one per line, for people (PR body, reviewer). Only numbers,
/// statuses and commit ids: no text the agent wrote.
pub fn figures(record: &Value) -> Vec<(String, String)> {
    let short = |v: &Value| {
        v.as_str()
            .map(|s| s.chars().take(12).collect::<String>())
            .unwrap_or_else(|| "?".into())
    };
    let tests = record["tests"]["changed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let count = |r: &str| tests.iter().filter(|t| t["result"] == r).count();
    let tests_line = if tests.is_empty() {
        let files = record["tests"]["changed_files"]
            .as_array()
            .map_or(0, Vec::len);
        format!("none found ({files} test files changed)")
    } else {
        format!(
            "{} ({} passed, {} failed, {} not shown by verify)",
            tests.len(),
            count("passed"),
            count("failed"),
            tests.len() - count("passed") - count("failed")
        )
    };
    let cov = &record["coverage"];
    let coverage = if cov.is_object() {
        let c = cov["covered"].as_array().map_or(0, Vec::len);
        let n = cov["not_covered"].as_array().map_or(0, Vec::len);
        if c + n == 0 {
            "no symbols in the blast radius".to_string()
        } else {
            format!(
                "{c} of {} symbols reached by a test ({:.0} %)",
                c + n,
                100.0 * c as f64 / (c + n) as f64
            )
        }
    } else {
        "not computed (no code graph)".to_string()
    };
    let calls = record["model_calls"]["ledger"]
        .as_array()
        .map_or(0, Vec::len);
    let cost = record["model_calls"]["total_cost_microusd"]
        .as_i64()
        .unwrap_or(0);
    let tokens = record["model_calls"]["total_tokens"].as_i64().unwrap_or(0);
    let commands = record["commands"].as_array().map_or(0, Vec::len);
    vec![
        (
            format!("Verify before (base `{}`)", short(&record["base"])),
            verify_line(&record["verify"]["before"]),
        ),
        (
            format!("Verify after (head `{}`)", short(&record["head"])),
            verify_line(&record["verify"]["after"]),
        ),
        ("Tests added or changed".into(), tests_line),
        ("Blast-radius coverage".into(), coverage),
        (
            "Model calls".into(),
            format!(
                "{calls} ledger rows, {} agent turns, {tokens} tokens, USD {:.4}",
                record["model_calls"]["agent_turns"].as_i64().unwrap_or(0),
                cost as f64 / 1e6
            ),
        ),
        ("Commands in the sandbox".into(), commands.to_string()),
        (
            "Transcript".into(),
            format!(
                "{} steps, SHA-256 `{}`",
                record["trajectory"]["steps"].as_i64().unwrap_or(0),
                short(&record["trajectory"]["sha256"])
            ),
        ),
    ]
}

/// The PR's evidence section: the figures and where the full, signed record is.
pub fn pr_section(record: &Value) -> String {
    let task = record["task"].as_i64().unwrap_or(0);
    let attempt = record["attempt"].as_i64().unwrap_or(0);
    let mut s =
        format!("### Evidence (attempt {attempt}, signed by the controller)\n\n| | |\n|---|---|\n");
    for (k, v) in figures(record) {
        s.push_str(&format!("| {k} | {v} |\n"));
    }
    s.push_str(&format!(
        "\nFull record: `backporcher evidence show {task} --attempt {attempt}` (API `GET /api/tasks/{task}/evidence?attempt={attempt}`); check its signature with `backporcher evidence verify {task} --attempt {attempt}`; the transcript: `GET {}`.\n",
        record["trajectory"]["url"].as_str().unwrap_or_default()
    ));
    s
}

/// What the reviewer gets: the figures (controller-made, trusted) and the details the agent's
/// work produced (test names and results, verify output tails, coverage lists) as JSON, which
/// the prompt fences as untrusted.
pub fn for_reviewer(record: &Value) -> (String, String) {
    let figures = figures(record)
        .into_iter()
        .map(|(k, v)| format!("- {k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n");
    let details = json!({
        "verify": record["verify"],
        "tests": record["tests"],
        "coverage": record["coverage"],
        "reproduction": record["reproduction"],
        "commands": record["commands"],
    });
    (
        figures,
        serde_json::to_string_pretty(&details).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests;
