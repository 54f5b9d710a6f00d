//! The controller's own model calls (triage, review, reflection): the Anthropic Messages API with
//! a configurable base URL and key, or — for subscription users — the `claude -p` CLI with an
//! OAuth token (prompt on stdin, never on the command line). Every call — answered or not — lands
//! in the usage ledger with its purpose, model, tokens and cost, so spending is visible per task,
//! repository and day.

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
    /// Run `claude -p` (this program) instead of calling the API over HTTP; `api_key` is then an
    /// OAuth token (`sk-ant-oat…`) or an API key, handed to the CLI in its environment.
    pub cli: Option<std::path::PathBuf>,
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

/// A Messages API client that records usage.
#[derive(Clone)]
pub struct ModelClient {
    http: reqwest::Client,
    config: ModelConfig,
    store: Store,
    prices: proto::prices::Prices,
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
            prices: proto::prices::Prices::default(),
        })
    }

    /// Prices calls with `prices` (the controller's configured table).
    pub fn with_prices(mut self, prices: proto::prices::Prices) -> Self {
        self.prices = prices;
        self
    }

    /// Sends one call; rate limits and overloads are retried a few times with backoff. A refusal
    /// by the API (its status, after the retries) is a [`Refused`] inside the error.
    pub async fn call(&self, c: &Call<'_>) -> anyhow::Result<Reply> {
        if let Some(cli) = &self.config.cli {
            return self.call_cli(cli, c).await;
        }
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
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    self.record(c, model, 0, 0).await;
                    return Err(Refused {
                        purpose: c.purpose.to_owned(),
                        status,
                        text: text.chars().take(300).collect(),
                    }
                    .into());
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

    /// One call through `claude -p --output-format json`, in a scratch home directory.
    async fn call_cli(&self, cli: &std::path::Path, c: &Call<'_>) -> anyhow::Result<Reply> {
        use tokio::io::AsyncWriteExt;
        let model = model_name(c.model);
        let home = std::env::temp_dir().join(format!("bp-claude-{}", uuid::Uuid::new_v4()));
        tokio::fs::create_dir_all(&home).await?;
        let credential = if self.config.api_key.starts_with("sk-ant-oat") {
            "CLAUDE_CODE_OAUTH_TOKEN"
        } else {
            "ANTHROPIC_API_KEY"
        };
        // The prompt holds untrusted text (a diff, an issue): the CLI runs on the controller's
        // host, so it is offered no tool and no MCP server — one answer, nothing else.
        let mut cmd = xcmd::Cmd::new(cli, &home)
            .args([
                "-p",
                "--output-format",
                "json",
                "--max-turns",
                "1",
                "--tools",
                "",
                "--strict-mcp-config",
                "--model",
                model,
            ])
            .env("HOME", &home)
            .env(credential, &self.config.api_key)
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
        if !self.config.base_url.is_empty() && self.config.base_url != "https://api.anthropic.com" {
            cmd = cmd.env("ANTHROPIC_BASE_URL", &self.config.base_url);
        }
        let mut child = cmd
            .to_tokio()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start `{}`: {e}", cli.display()))?;
        let prompt = format!("{}\n\n{}", c.system, c.user);
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(prompt.as_bytes()).await?;
        }
        let out = tokio::time::timeout(self.config.timeout, child.wait_with_output()).await;
        let _ = tokio::fs::remove_dir_all(&home).await;
        let out = match out {
            Ok(o) => o?,
            Err(_) => {
                self.record(c, model, 0, 0).await;
                anyhow::bail!(
                    "`claude -p` took longer than {:?} for the {} call",
                    self.config.timeout,
                    c.purpose
                );
            }
        };
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|_| {
            anyhow::anyhow!(
                "`claude -p` gave no JSON result for the {} call (exit {}): {}",
                c.purpose,
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )
        })?;
        let input = v["usage"]["input_tokens"].as_i64().unwrap_or(0);
        let output = v["usage"]["output_tokens"].as_i64().unwrap_or(0);
        if v["is_error"].as_bool() == Some(true) {
            self.record(c, model, input, output).await;
            anyhow::bail!(
                "`claude -p` failed the {} call: {}",
                c.purpose,
                v["result"].as_str().unwrap_or("no detail")
            );
        }
        let cost = self.record(c, model, input, output).await;
        Ok(Reply {
            text: v["result"].as_str().unwrap_or_default().to_owned(),
            input_tokens: input,
            output_tokens: output,
            cost_microusd: cost,
        })
    }

    async fn record(&self, c: &Call<'_>, model: &str, input: i64, output: i64) -> i64 {
        let cost = self.prices.cost_microusd(model, input, output);
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

/// The model API answered a call with an error status (after the retries of the busy ones).
#[derive(Debug, thiserror::Error)]
#[error("the model API refused the {purpose} call with {status}: {text}")]
pub struct Refused {
    /// What the call was for.
    pub purpose: String,
    /// The HTTP status.
    pub status: u16,
    /// The start of the answer's body.
    pub text: String,
}

impl Refused {
    /// Whether the request itself was refused (a 4xx other than rate limiting or a timeout):
    /// what was sent, not the service, is the cause — asking again or later does not help.
    pub fn is_request_refused(&self) -> bool {
        (400..500).contains(&self.status) && !matches!(self.status, 408 | 429)
    }
}
