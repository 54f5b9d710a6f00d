//! The controller's own model calls (triage, review, reflection): the Anthropic Messages API with
//! a configurable base URL and key. Every call — answered or not — lands in the usage ledger with
//! its purpose, model, tokens and cost, so spending is visible per task, repository and day.

use std::time::Duration;

use serde_json::{Value, json};

use crate::store::{RepoId, Store, TaskId};

/// Where the model API is.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Base URL (`https://api.anthropic.com` or a simulator).
    pub base_url: String,
    /// API key (`x-api-key`).
    pub api_key: String,
    /// Per-call timeout.
    pub timeout: Duration,
}

/// One call.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// Why (`review`, `triage`, `reflection`, …).
    pub purpose: &'a str,
    /// Model alias (`sonnet`, `opus`, `haiku`) or full name.
    pub model: &'a str,
    /// System prompt.
    pub system: &'a str,
    /// The user message.
    pub user: &'a str,
    /// Output cap.
    pub max_tokens: u32,
    /// Task it is for.
    pub task: Option<TaskId>,
    /// Repository it is for.
    pub repo: Option<RepoId>,
}

/// The answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Concatenated text blocks.
    pub text: String,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost in micro-dollars.
    pub cost_microusd: i64,
}

/// Full model name for an alias.
pub fn model_name(alias: &str) -> &str {
    match alias {
        "opus" => "claude-opus-4-5",
        "sonnet" => "claude-sonnet-4-5",
        "haiku" => "claude-haiku-4-5",
        other => other,
    }
}

/// Micro-dollars per million tokens (input, output).
fn price(model: &str) -> (i64, i64) {
    if model.contains("opus") {
        (5_000_000, 25_000_000)
    } else if model.contains("haiku") {
        (1_000_000, 5_000_000)
    } else {
        (3_000_000, 15_000_000)
    }
}

/// Cost of a call in micro-dollars.
pub fn cost_microusd(model: &str, input: i64, output: i64) -> i64 {
    let (pi, po) = price(model);
    (input * pi + output * po) / 1_000_000
}

/// A Messages API client that records usage.
#[derive(Clone)]
pub struct ModelClient {
    http: reqwest::Client,
    config: ModelConfig,
    store: Store,
}

impl ModelClient {
    /// A client; `store` receives the ledger rows.
    pub fn new(config: ModelConfig, store: Store) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the model API client: {e}"))?;
        Ok(Self {
            http,
            config,
            store,
        })
    }

    /// Sends one call; rate limits and overloads are retried a few times with backoff.
    pub async fn call(&self, c: &Call<'_>) -> anyhow::Result<Reply> {
        let model = model_name(c.model);
        let body = json!({
            "model": model,
            "max_tokens": c.max_tokens,
            "system": c.system,
            "messages": [{"role": "user", "content": c.user}],
        });
        let url = format!("{}/v1/messages", self.config.base_url.trim_end_matches('/'));
        let mut delay = Duration::from_millis(500);
        let mut attempt = 0;
        let v: Value = loop {
            attempt += 1;
            let resp = self
                .http
                .post(&url)
                .header("x-api-key", &self.config.api_key)
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    break r.json().await.map_err(|e| {
                        anyhow::anyhow!(
                            "the model API answered with something that is not JSON: {e}"
                        )
                    })?;
                }
                Ok(r)
                    if matches!(r.status().as_u16(), 429 | 500 | 502 | 503 | 529)
                        && attempt < 4 =>
                {
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs)
                        .unwrap_or(delay)
                        .min(Duration::from_secs(30));
                    tracing::warn!(status = %r.status(), purpose = c.purpose, ?wait, "model API busy; retrying");
                    tokio::time::sleep(wait).await;
                    delay *= 2;
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    self.record(c, model, 0, 0).await;
                    anyhow::bail!(
                        "the model API refused the {} call with {status}: {}",
                        c.purpose,
                        text.chars().take(300).collect::<String>()
                    );
                }
                Err(e) if attempt < 4 => {
                    tracing::warn!(error = %e, purpose = c.purpose, "model API unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    self.record(c, model, 0, 0).await;
                    anyhow::bail!(
                        "cannot reach the model API at {}: {e}",
                        self.config.base_url
                    );
                }
            }
        };
        let text: String = v["content"]
            .as_array()
            .map(|blocks| {
                blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("")
            })
            .unwrap_or_default();
        let input = v["usage"]["input_tokens"].as_i64().unwrap_or(0);
        let output = v["usage"]["output_tokens"].as_i64().unwrap_or(0);
        let cost = self.record(c, model, input, output).await;
        Ok(Reply {
            text,
            input_tokens: input,
            output_tokens: output,
            cost_microusd: cost,
        })
    }

    async fn record(&self, c: &Call<'_>, model: &str, input: i64, output: i64) -> i64 {
        let cost = cost_microusd(model, input, output);
        if let Err(e) = self
            .store
            .record_usage(c.task, c.repo, c.purpose, model, input, output, cost)
            .await
        {
            tracing::error!(error = %e, "recording model usage failed");
        }
        cost
    }
}
