//! The model gateway: the only way a sandboxed agent reaches its model.
//!
//! The container gets `ANTHROPIC_BASE_URL` pointing here and a per-task token as its API key. The
//! gateway swaps that token for the real credential, which only the runner holds, forwards the call
//! upstream, streams the answer back unchanged, and meters input, output and cache tokens and
//! dollars per task from the answers (server-sent events or JSON). When a task reaches its budget,
//! further calls are refused and the task is marked as over budget, so the executor ends it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

/// The real credential for the upstream API. Its `Debug` form names the kind only.
#[derive(Clone)]
pub enum Credential {
    /// An API key (`x-api-key`).
    ApiKey(String),
    /// An OAuth token of a subscription (`Authorization: Bearer`).
    OAuth(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ApiKey(_) => "ApiKey(…)",
            Self::OAuth(_) => "OAuth(…)",
        })
    }
}

/// Prices in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Cache writes.
    pub cache_write: f64,
    /// Cache reads.
    pub cache_read: f64,
}

/// Price table by model family (first substring match wins).
#[derive(Debug, Clone)]
pub struct Prices(pub Vec<(String, Price)>);

impl Default for Prices {
    fn default() -> Self {
        let usd = |i: f64, o: f64| Price {
            input: i * 1e6,
            output: o * 1e6,
            cache_write: i * 1.25e6,
            cache_read: i * 0.1e6,
        };
        Self(vec![
            ("opus".into(), usd(15.0, 75.0)),
            ("haiku".into(), usd(1.0, 5.0)),
            ("sonnet".into(), usd(3.0, 15.0)),
        ])
    }
}

impl Prices {
    fn for_model(&self, model: &str) -> Price {
        self.0
            .iter()
            .find(|(k, _)| model.contains(k.as_str()))
            .map(|(_, p)| *p)
            .unwrap_or_else(|| Prices::default().0[2].1)
    }
}

/// What a task used through the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metered {
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache reads.
    pub cache_read_tokens: i64,
    /// Cache writes.
    pub cache_write_tokens: i64,
    /// Cost in micro-dollars.
    pub cost_microusd: f64,
    /// Calls forwarded.
    pub calls: u64,
    /// Whether the budget was reached.
    pub over_budget: bool,
}

struct TaskMeter {
    task_id: i64,
    budget_microusd: Option<f64>,
    used: Metered,
}

#[derive(Clone)]
struct Inner {
    upstream: String,
    credential: Credential,
    prices: Prices,
    http: reqwest::Client,
    tasks: Arc<Mutex<HashMap<String, TaskMeter>>>,
}

/// The gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Inner,
}

/// A task's registration; dropping it forgets the token.
pub struct TaskToken {
    token: String,
    gateway: Gateway,
}

impl TaskToken {
    /// The bearer token the container uses as its API key.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Usage so far.
    pub fn used(&self) -> Metered {
        self.gateway.usage_of(&self.token)
    }
}

impl Drop for TaskToken {
    fn drop(&mut self) {
        self.gateway
            .inner
            .tasks
            .lock()
            .expect("gateway lock")
            .remove(&self.token);
    }
}

impl Gateway {
    /// A gateway forwarding to `upstream` (e.g. `https://api.anthropic.com`) with `credential`.
    pub fn new(upstream: &str, credential: Credential, prices: Prices) -> anyhow::Result<Self> {
        match &credential {
            Credential::ApiKey(k) | Credential::OAuth(k) => crate::redact::remember(k),
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Self {
            inner: Inner {
                upstream: upstream.trim_end_matches('/').to_owned(),
                credential,
                prices,
                http,
                tasks: Arc::default(),
            },
        })
    }

    /// Registers a task with an optional budget; returns its token.
    pub fn register(&self, task_id: i64, budget_microusd: Option<i64>) -> TaskToken {
        let token = format!(
            "bpgw-{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        self.inner.tasks.lock().expect("gateway lock").insert(
            token.clone(),
            TaskMeter {
                task_id,
                budget_microusd: budget_microusd.filter(|b| *b > 0).map(|b| b as f64),
                used: Metered::default(),
            },
        );
        TaskToken {
            token,
            gateway: self.clone(),
        }
    }

    /// Usage of the task with `token`.
    pub fn usage_of(&self, token: &str) -> Metered {
        self.inner
            .tasks
            .lock()
            .expect("gateway lock")
            .get(token)
            .map(|m| m.used)
            .unwrap_or_default()
    }

    /// The HTTP routes (everything is forwarded).
    pub fn router(&self) -> Router {
        Router::new()
            .fallback(forward)
            .with_state(self.inner.clone())
    }

    /// Serves on a TCP listener until the task is aborted.
    pub fn serve_tcp(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    }

    /// Serves on a unix socket until the task is aborted.
    pub fn serve_unix(&self, listener: tokio::net::UnixListener) -> tokio::task::JoinHandle<()> {
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    }
}

fn refuse(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.to_owned());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

async fn forward(State(gw): State<Inner>, req: Request) -> Response {
    let Some(token) = presented(req.headers()) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing task token",
        );
    };
    let task_id = {
        let tasks = gw.tasks.lock().expect("gateway lock");
        match tasks.get(&token) {
            None => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "unknown or expired task token",
                );
            }
            Some(m) if m.used.over_budget => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "permission_error",
                    "the task reached its cost budget; no further model calls",
                );
            }
            Some(m) => m.task_id,
        }
    };
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 32 * 1024 * 1024).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request body over 32 MiB",
        );
    };
    let model = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{}", gw.upstream, path);
    let mut out = gw.http.request(parts.method.clone(), &url).body(body);
    for (name, value) in parts.headers.iter() {
        let n = name.as_str();
        if matches!(
            n,
            "host"
                | "x-api-key"
                | "authorization"
                | "content-length"
                | "connection"
                | "accept-encoding"
        ) {
            continue;
        }
        out = out.header(name, value);
    }
    out = match &gw.credential {
        Credential::ApiKey(k) => out.header("x-api-key", k),
        Credential::OAuth(t) => out.header(header::AUTHORIZATION, format!("Bearer {t}")),
    };
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(task = task_id, error = %e, "model upstream unreachable");
            return refuse(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "the model gateway cannot reach the model API",
            );
        }
    };
    let status = resp.status();
    let mut headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            continue;
        }
        headers.insert(name.clone(), value.clone());
    }
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let price = gw.prices.for_model(&model);
    let tasks = gw.tasks.clone();
    let meter = move |usage: Usage| {
        let mut tasks = tasks.lock().expect("gateway lock");
        if let Some(m) = tasks.get_mut(&token) {
            m.used.input_tokens += usage.input;
            m.used.output_tokens += usage.output;
            m.used.cache_read_tokens += usage.cache_read;
            m.used.cache_write_tokens += usage.cache_write;
            m.used.cost_microusd += (usage.input as f64 * price.input
                + usage.output as f64 * price.output
                + usage.cache_write as f64 * price.cache_write
                + usage.cache_read as f64 * price.cache_read)
                / 1e6;
            if usage.done {
                m.used.calls += 1;
            }
            if let Some(b) = m.budget_microusd
                && m.used.cost_microusd >= b
                && !m.used.over_budget
            {
                m.used.over_budget = true;
                tracing::warn!(
                    task = m.task_id,
                    cost_microusd = m.used.cost_microusd,
                    "task reached its budget"
                );
            }
        }
    };
    let mut builder = Response::builder().status(status);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    if is_sse {
        // Pass every byte through as it arrives; meter from the events on the way.
        let mut parser = SseUsage::default();
        let stream = resp.bytes_stream().map(move |chunk| {
            if let Ok(bytes) = &chunk {
                for usage in parser.feed(bytes) {
                    meter(usage);
                }
            }
            chunk
        });
        builder
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
    } else {
        let bytes = resp.bytes().await.unwrap_or_default();
        if status.is_success()
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            && let Some(u) = v.get("usage")
        {
            let mut usage = Usage::from_json(u);
            usage.done = v.get("type").and_then(Value::as_str) == Some("message");
            meter(usage);
        }
        let mut r = builder
            .body(Body::from(bytes))
            .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// Token counts found in one event or response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens.
    pub input: i64,
    /// Output tokens.
    pub output: i64,
    /// Cache reads.
    pub cache_read: i64,
    /// Cache writes.
    pub cache_write: i64,
    /// Whether this closes a call.
    pub done: bool,
}

impl Usage {
    fn from_json(u: &Value) -> Self {
        let n = |k: &str| u.get(k).and_then(Value::as_i64).unwrap_or(0);
        Self {
            input: n("input_tokens"),
            output: n("output_tokens"),
            cache_read: n("cache_read_input_tokens"),
            cache_write: n("cache_creation_input_tokens"),
            done: false,
        }
    }
}

/// Incremental parser of a Messages API event stream that yields usage: input and cache tokens
/// from `message_start`, output tokens from `message_delta` (cumulative, so the last one counts).
#[derive(Debug, Default)]
pub struct SseUsage {
    buf: Vec<u8>,
}

impl SseUsage {
    /// Feeds bytes; returns the usage found in complete events.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Usage> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = find(&self.buf, b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
                    continue;
                };
                match v.get("type").and_then(Value::as_str) {
                    Some("message_start") => {
                        if let Some(u) = v.get("message").and_then(|m| m.get("usage")) {
                            let mut usage = Usage::from_json(u);
                            usage.output = 0; // counted at message_delta
                            out.push(usage);
                        }
                    }
                    Some("message_delta") => {
                        if let Some(u) = v.get("usage") {
                            out.push(Usage {
                                output: u.get("output_tokens").and_then(Value::as_i64).unwrap_or(0),
                                ..Usage::default()
                            });
                        }
                    }
                    Some("message_stop") => out.push(Usage {
                        done: true,
                        ..Usage::default()
                    }),
                    _ => {}
                }
            }
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_metered_across_chunk_boundaries() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":100,\"output_tokens\":1,\"cache_read_input_tokens\":7,\"cache_creation_input_tokens\":3}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let mut p = SseUsage::default();
        let mut all = Vec::new();
        for chunk in stream.as_bytes().chunks(17) {
            all.extend(p.feed(chunk));
        }
        let total = all.iter().fold(Usage::default(), |a, u| Usage {
            input: a.input + u.input,
            output: a.output + u.output,
            cache_read: a.cache_read + u.cache_read,
            cache_write: a.cache_write + u.cache_write,
            done: a.done || u.done,
        });
        assert_eq!(
            total,
            Usage {
                input: 100,
                output: 42,
                cache_read: 7,
                cache_write: 3,
                done: true
            }
        );
    }

    #[test]
    fn prices_pick_the_model_family() {
        let p = Prices::default();
        assert_eq!(p.for_model("claude-opus-4").output, 75e6);
        assert_eq!(p.for_model("claude-sonnet-5-5").input, 3e6);
        assert_eq!(p.for_model("something-else").input, 3e6);
    }
}
