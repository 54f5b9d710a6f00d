//! The model gateway: the only way a sandboxed agent reaches its model.
//!
//! The container gets the gateway as its model API's base URL and a per-task token as its API key.
//! The gateway swaps that token for the real credential, which only the runner holds, and forwards
//! only the one API the task's agent CLI speaks ([`Api`]): for Claude Code the Messages API
//! (`POST /v1/messages` and its free `count_tokens`, to the Anthropic upstream), for the Codex CLI
//! the Responses API (`POST /v1/responses`, to the OpenAI upstream, when the runner has one);
//! anything else — the other API, files, batches, admin endpoints — is refused and never reaches an
//! upstream.
//!
//! Money is reserved before it is spent: before a call is forwarded, its worst case (every input
//! byte a token at the dearer of the input and cache-write rates, plus `max_tokens` — the
//! Responses API's `max_output_tokens` — of output) is
//! reserved against what is left of the task's budget under one lock, so parallel calls cannot
//! together pass it; a call whose worst case does not fit is refused and the task is marked over
//! budget, which ends it. When the call ends the reservation is settled to the usage the upstream
//! reported; a stream that ends before its usage is complete (the agent hung up, the upstream
//! broke off) is charged its whole reservation; an upstream error without usage releases it.
//! Rates come from the controller's price table with each lease ([`proto::prices`]). A body that
//! would make the provider act outside the conversation — its own tools, fetched content, state
//! kept on its side — is refused before anything is reserved ([`crate::model_requests`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use proto::prices::{Prices, Rate};
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

pub use crate::model_requests::Api;

/// The output a call without `max_tokens` is reserved for (the upstream refuses such a call, and
/// the reservation is then released).
const DEFAULT_MAX_TOKENS: i64 = 128_000;

/// Largest request body forwarded.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

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
    /// Cost settled so far, micro-dollars.
    pub cost_microusd: f64,
    /// Reserved by calls in flight, micro-dollars.
    pub reserved_microusd: f64,
    /// Calls settled.
    pub calls: u64,
    /// Calls refused (endpoint not forwarded, or the budget could not cover them).
    pub refused: u64,
    /// Whether a call was refused for the budget: the task is over.
    pub over_budget: bool,
}

struct TaskMeter {
    task_id: i64,
    api: Api,
    budget_microusd: f64,
    prices: Prices,
    used: Metered,
    /// The last request or answer byte of the task's calls (stall detection).
    last_activity: std::time::Instant,
}

type Meters = Arc<Mutex<HashMap<String, TaskMeter>>>;

#[derive(Clone)]
struct Inner {
    upstream: String,
    credential: Credential,
    /// The Responses API's upstream and its API key (sent as a bearer token), if configured.
    responses: Option<(String, String)>,
    http: reqwest::Client,
    tasks: Meters,
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

/// Marks the task with `token` as active now.
fn touch(tasks: &Meters, token: &str) {
    if let Some(m) = tasks.lock().expect("gateway lock").get_mut(token) {
        m.last_activity = std::time::Instant::now();
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
    pub fn new(upstream: &str, credential: Credential) -> anyhow::Result<Self> {
        match &credential {
            Credential::ApiKey(k) | Credential::OAuth(k) => crate::redact::remember(k),
        }
        // The upstream is reached over rustls with ring (a no-op when already installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Self {
            inner: Inner {
                upstream: upstream.trim_end_matches('/').to_owned(),
                credential,
                responses: None,
                http,
                tasks: Arc::default(),
            },
        })
    }

    /// Also forwards the Responses API (for Codex tasks) to `upstream` (e.g.
    /// `https://api.openai.com`) with the API key `key`.
    pub fn with_responses(mut self, upstream: &str, key: &str) -> Self {
        crate::redact::remember(key);
        self.inner.responses = Some((upstream.trim_end_matches('/').to_owned(), key.to_owned()));
        self
    }

    /// Whether the Responses API has an upstream here (a runner without one offers no Codex).
    pub fn serves(&self, api: Api) -> bool {
        match api {
            Api::Messages => true,
            Api::Responses => self.inner.responses.is_some(),
        }
    }

    /// Registers a Messages API task that may spend `budget_microusd` (0 or less refuses every
    /// paid call), metered at `prices`; returns its token.
    pub fn register(&self, task_id: i64, budget_microusd: i64, prices: Prices) -> TaskToken {
        self.register_api(task_id, budget_microusd, prices, Api::Messages)
    }

    /// Registers a task whose agent speaks `api`: only that API's endpoints are forwarded for it.
    pub fn register_api(
        &self,
        task_id: i64,
        budget_microusd: i64,
        prices: Prices,
        api: Api,
    ) -> TaskToken {
        let token = format!(
            "bpgw-{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        self.inner.tasks.lock().expect("gateway lock").insert(
            token.clone(),
            TaskMeter {
                task_id,
                api,
                budget_microusd: budget_microusd.max(0) as f64,
                prices,
                used: Metered::default(),
                last_activity: std::time::Instant::now(),
            },
        );
        TaskToken {
            token,
            gateway: self.clone(),
        }
    }

    /// When a call of the task with `token` last sent or received anything.
    pub fn activity_of(&self, token: &str) -> Option<std::time::Instant> {
        self.inner
            .tasks
            .lock()
            .expect("gateway lock")
            .get(token)
            .map(|m| m.last_activity)
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

    /// The HTTP routes (every request goes through [`forward`]'s checks).
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

/// A call's worst case, micro-dollars: every body byte an input token at the dearer of the input
/// and cache-write rates (no tokenizer yields more tokens than bytes), plus all of `max_tokens`.
fn worst_case(rate: &Rate, body_bytes: usize, max_tokens: i64) -> f64 {
    (body_bytes as f64 * rate.input.max(rate.cache_write) + max_tokens as f64 * rate.output) / 1e6
}

/// One forwarded call's claim on its task's budget: settled once, with the reported usage or,
/// if dropped unsettled (the stream broke off), with the whole reservation.
struct Reservation {
    tasks: Meters,
    token: String,
    rate: Rate,
    reserved: f64,
    /// The usage seen so far on a stream (counted even if the stream breaks off).
    seen: Usage,
    settled: bool,
}

impl Reservation {
    /// Reserves `reserved` for the task with `token` unless it would pass the budget; the error
    /// is the message for the agent.
    fn take(
        tasks: &Meters,
        token: &str,
        model: &str,
        body_bytes: usize,
        max_tokens: i64,
    ) -> Result<Self, String> {
        let mut all = tasks.lock().expect("gateway lock");
        let Some(m) = all.get_mut(token) else {
            return Err("unknown or expired task token".into());
        };
        let rate = m.prices.of(model);
        let reserved = worst_case(&rate, body_bytes, max_tokens);
        let committed = m.used.cost_microusd + m.used.reserved_microusd;
        if committed + reserved > m.budget_microusd {
            m.used.refused += 1;
            m.used.over_budget = true;
            tracing::warn!(
                task = m.task_id,
                spent_microusd = m.used.cost_microusd,
                in_flight_microusd = m.used.reserved_microusd,
                call_worst_case_microusd = reserved,
                budget_microusd = m.budget_microusd,
                "a model call would pass the task's budget; refused"
            );
            return Err(format!(
                "the task's budget cannot cover this call: its worst case is {:.0} micro-dollars ({} output tokens of {model}) and {:.0} of {:.0} are spent or reserved; no further model calls",
                reserved, max_tokens, committed, m.budget_microusd
            ));
        }
        m.used.reserved_microusd += reserved;
        Ok(Self {
            tasks: tasks.clone(),
            token: token.to_owned(),
            rate,
            reserved,
            seen: Usage::default(),
            settled: false,
        })
    }

    /// Ends the claim: charges `usage` when it is complete, the reservation (or more, if the
    /// usage seen says so) when it is not, nothing when `release` (an error the upstream bills
    /// nothing for).
    fn settle(&mut self, usage: Usage, release: bool) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let actual = self.rate.cost(
            usage.input,
            usage.output,
            usage.cache_write,
            usage.cache_read,
        );
        let charged = if release {
            0.0
        } else if usage.done {
            actual
        } else {
            actual.max(self.reserved)
        };
        let mut all = self.tasks.lock().expect("gateway lock");
        if let Some(m) = all.get_mut(&self.token) {
            m.used.reserved_microusd = (m.used.reserved_microusd - self.reserved).max(0.0);
            m.used.input_tokens += usage.input;
            m.used.output_tokens += usage.output;
            m.used.cache_read_tokens += usage.cache_read;
            m.used.cache_write_tokens += usage.cache_write;
            m.used.cost_microusd += charged;
            if m.used.cost_microusd >= m.budget_microusd && !m.used.over_budget {
                m.used.over_budget = true;
                tracing::warn!(
                    task = m.task_id,
                    cost_microusd = m.used.cost_microusd,
                    "task reached its budget"
                );
            }
            if !release {
                m.used.calls += 1;
            }
            if !usage.done && !release {
                tracing::info!(
                    task = m.task_id,
                    charged_microusd = charged,
                    "a model call ended before its usage was complete; charged its reservation"
                );
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.settle(
            Usage {
                done: false,
                ..self.seen
            },
            false,
        );
    }
}

async fn forward(State(gw): State<Inner>, req: Request) -> Response {
    let Some(token) = presented(req.headers()) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing task token",
        );
    };
    let (task_id, api) = {
        let mut tasks = gw.tasks.lock().expect("gateway lock");
        match tasks.get_mut(&token) {
            None => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "unknown or expired task token",
                );
            }
            Some(m) if m.used.over_budget => {
                m.used.refused += 1;
                return refuse(
                    StatusCode::FORBIDDEN,
                    "permission_error",
                    "the task reached its cost budget; no further model calls",
                );
            }
            Some(m) => {
                m.last_activity = std::time::Instant::now();
                let endpoint = (req.method().as_str(), req.uri().path());
                if !m.api.forwarded().contains(&endpoint) {
                    m.used.refused += 1;
                    tracing::warn!(task = m.task_id, method = %req.method(), path = req.uri().path(), "a sandbox called an endpoint the gateway does not forward");
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "permission_error",
                        &format!(
                            "the model gateway forwards only {} for this task, not {} {}",
                            m.api.describe(),
                            req.method(),
                            req.uri().path()
                        ),
                    );
                }
                (m.task_id, m.api)
            }
        }
    };
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request body over 32 MiB",
        );
    };
    let request = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    if let Some(why) = crate::model_requests::refusal(api, &request) {
        let mut tasks = gw.tasks.lock().expect("gateway lock");
        if let Some(m) = tasks.get_mut(&token) {
            m.used.refused += 1;
        }
        tracing::warn!(task = task_id, reason = %why, "a sandbox's model request was refused");
        return refuse(StatusCode::FORBIDDEN, "permission_error", &why);
    }
    // What is forwarded is what was checked: the body written again from the parsed value, so a
    // key given twice (`"tools"` with a server tool, then `"tools": []`) cannot show the check
    // one value and the provider, whose parser may keep the first, another.
    let body = match serde_json::to_vec(&request) {
        Ok(b) => axum::body::Bytes::from(b),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("the request body cannot be forwarded: {e}"),
            );
        }
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    // Counting tokens is free; only a message (a response) is paid for.
    let mut reservation = if parts.uri.path() == api.paid() && parts.method == Method::POST {
        let max_tokens = request
            .get(api.max_output_field())
            .and_then(Value::as_i64)
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        match Reservation::take(&gw.tasks, &token, &model, body.len(), max_tokens) {
            Ok(r) => Some(r),
            Err(why) => return refuse(StatusCode::FORBIDDEN, "permission_error", &why),
        }
    } else {
        None
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let (upstream, credential) = match (api, &gw.responses) {
        (Api::Messages, _) => (gw.upstream.as_str(), gw.credential.clone()),
        // An OpenAI key always goes as a bearer token.
        (Api::Responses, Some((url, key))) => (url.as_str(), Credential::OAuth(key.clone())),
        (Api::Responses, None) => {
            if let Some(r) = reservation.as_mut() {
                r.settle(Usage::default(), true);
            }
            return refuse(
                StatusCode::FORBIDDEN,
                "permission_error",
                "this runner has no upstream for the Responses API (set OPENAI_API_KEY)",
            );
        }
    };
    let url = format!("{upstream}{path}");
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
    out = match &credential {
        Credential::ApiKey(k) => out.header("x-api-key", k),
        Credential::OAuth(t) => out.header(header::AUTHORIZATION, format!("Bearer {t}")),
    };
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(task = task_id, error = %e, "model upstream unreachable");
            if let Some(r) = reservation.as_mut() {
                r.settle(Usage::default(), true);
            }
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
    let mut builder = Response::builder().status(status);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    if is_sse && status.is_success() {
        // Pass every byte through as it arrives; meter from the events on the way and settle at
        // `message_stop`, or — if the stream is dropped first — when the reservation is dropped.
        let mut parser = SseUsage::default();
        let (tasks, token) = (gw.tasks.clone(), token.clone());
        let stream = resp.bytes_stream().map(move |chunk| {
            touch(&tasks, &token);
            if let Ok(bytes) = &chunk
                && let Some(r) = reservation.as_mut()
            {
                let done = parser.feed(bytes);
                r.seen = parser.usage();
                if done {
                    r.settle(r.seen, false);
                }
            }
            chunk
        });
        builder
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
    } else {
        let bytes = resp.bytes().await;
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(task = task_id, error = %e, "model upstream broke off its answer");
                // Dropping the reservation charges it: the upstream may have billed the call.
                return refuse(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "the model API broke off its answer",
                );
            }
        };
        if let Some(r) = reservation.as_mut() {
            let reported = serde_json::from_slice::<Value>(&bytes)
                .ok()
                // `usage: null` (a call the upstream goes on with) is no usage: charged whole.
                .and_then(|v| {
                    v.get("usage")
                        .filter(|u| u.is_object())
                        .map(Usage::from_json)
                });
            match reported {
                Some(mut usage) if status.is_success() => {
                    usage.done = true;
                    r.settle(usage, false);
                }
                Some(usage) => r.settle(
                    Usage {
                        done: true,
                        ..usage
                    },
                    false,
                ),
                // An error without usage bills nothing; a success without it is charged whole.
                None => r.settle(Usage::default(), !status.is_success()),
            }
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
    /// Reads either API's usage object. The Responses API counts cached tokens inside
    /// `input_tokens` (`input_tokens_details.cached_tokens`); they are taken out of the input
    /// here so that each token is priced once, at the cache-read rate.
    fn from_json(u: &Value) -> Self {
        let n = |k: &str| u.get(k).and_then(Value::as_i64).unwrap_or(0);
        let cached = u
            .pointer("/input_tokens_details/cached_tokens")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .max(0);
        Self {
            input: (n("input_tokens") - cached).max(0),
            output: n("output_tokens"),
            cache_read: n("cache_read_input_tokens") + cached,
            cache_write: n("cache_creation_input_tokens"),
            done: false,
        }
    }
}

/// Incremental parser of a model event stream that keeps one call's usage. The Messages API's:
/// input and cache tokens from `message_start`, output tokens from `message_delta` (cumulative:
/// the last value counts; later input figures there replace the first), complete at
/// `message_stop`. The Responses API's: the whole usage in the closing event's response
/// (`response.completed`, `response.incomplete` or `response.failed`), complete there — a failed
/// response without usage is complete at nothing.
#[derive(Debug, Default)]
pub struct SseUsage {
    buf: Vec<u8>,
    /// How far `buf` was searched for an event's end.
    scanned: usize,
    usage: Usage,
}

/// Longest event kept while waiting for its end; a longer one is skipped (it carries no usage
/// the gateway needs, and the agent gets every byte anyway).
const MAX_EVENT_BYTES: usize = 1024 * 1024;

impl SseUsage {
    /// Feeds bytes; returns whether the call's usage is now complete.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        self.buf.extend_from_slice(bytes);
        loop {
            let from = self.scanned.saturating_sub(1);
            let Some(end) = find(&self.buf[from..], b"\n\n").map(|i| i + from) else {
                self.scanned = self.buf.len();
                if self.buf.len() > MAX_EVENT_BYTES {
                    self.buf.clear();
                    self.scanned = 0;
                }
                break;
            };
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            self.scanned = 0;
            self.event(&String::from_utf8_lossy(&event));
        }
        self.usage.done
    }

    /// The usage seen so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    fn event(&mut self, text: &str) {
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            let u = &mut self.usage;
            match v.get("type").and_then(Value::as_str) {
                Some("message_start") => {
                    if let Some(found) = v.get("message").and_then(|m| m.get("usage")) {
                        let found = Usage::from_json(found);
                        u.input = found.input;
                        u.cache_read = found.cache_read;
                        u.cache_write = found.cache_write;
                        u.output = found.output;
                    }
                }
                Some("message_delta") => {
                    if let Some(found) = v.get("usage") {
                        let n = |k: &str| found.get(k).and_then(Value::as_i64);
                        u.output = n("output_tokens").unwrap_or(u.output);
                        u.input = n("input_tokens").unwrap_or(u.input);
                        u.cache_read = n("cache_read_input_tokens").unwrap_or(u.cache_read);
                        u.cache_write = n("cache_creation_input_tokens").unwrap_or(u.cache_write);
                    }
                }
                Some("message_stop") => u.done = true,
                Some("response.completed" | "response.incomplete" | "response.failed") => {
                    if let Some(found) = v.pointer("/response/usage").filter(|u| u.is_object()) {
                        *u = Usage::from_json(found);
                    }
                    u.done = true;
                }
                _ => {}
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":100,\"output_tokens\":1,\"cache_read_input_tokens\":7,\"cache_creation_input_tokens\":3}}}\n\n";
    const REST: &str = concat!(
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn event_streams_are_metered_across_chunk_boundaries() {
        let stream = format!("{START}{REST}");
        let mut p = SseUsage::default();
        let mut done = false;
        for chunk in stream.as_bytes().chunks(17) {
            done |= p.feed(chunk);
        }
        assert!(done);
        assert_eq!(
            p.usage(),
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
    fn an_event_past_the_cap_is_skipped_and_the_next_still_counts() {
        let mut p = SseUsage::default();
        let huge = vec![b'x'; MAX_EVENT_BYTES + 10];
        for chunk in huge.chunks(4096) {
            assert!(!p.feed(chunk));
        }
        assert!(p.buf.len() <= MAX_EVENT_BYTES + 4096, "{}", p.buf.len());
        p.feed(b"\n\n");
        assert!(p.feed(format!("{START}{REST}").as_bytes()));
        assert_eq!(p.usage().output, 42);
    }

    /// A stand-in for the model API that counts what reaches it. `/v1/messages` answers JSON
    /// with 1,000 input and 100 output tokens, unless the model is `stream` (an event stream
    /// that stops after `message_start` until `release` is notified), `hang` (never answers
    /// until released) or `error` (a 529 without usage).
    struct Upstream {
        url: String,
        hits: Arc<AtomicUsize>,
        release: Arc<tokio::sync::Notify>,
    }

    async fn upstream() -> Upstream {
        let hits = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let (h, rel) = (hits.clone(), release.clone());
        let app = Router::new().fallback(move |req: Request| {
            let (h, rel) = (h.clone(), rel.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let body = axum::body::to_bytes(req.into_body(), usize::MAX)
                    .await
                    .unwrap();
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                match v["model"].as_str().unwrap_or("") {
                    m if m.starts_with("stream") => {
                        let first = futures::stream::once(async {
                            Ok::<_, std::io::Error>(bytes::Bytes::from_static(START.as_bytes()))
                        });
                        let rest = futures::stream::once(async move {
                            rel.notified().await;
                            Ok(bytes::Bytes::from_static(REST.as_bytes()))
                        });
                        Response::builder()
                            .header(header::CONTENT_TYPE, "text/event-stream")
                            .body(Body::from_stream(first.chain(rest)))
                            .unwrap()
                    }
                    "error" => (StatusCode::from_u16(529).unwrap(), "{\"type\":\"error\"}")
                        .into_response(),
                    model => {
                        if model.starts_with("hang") {
                            rel.notified().await;
                        }
                        axum::Json(json!({"type": "message", "usage": {"input_tokens": 1000, "output_tokens": 100}}))
                            .into_response()
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Upstream { url, hits, release }
    }

    /// A gateway in front of `up` serving on a local port; returns its URL.
    async fn gateway(up: &Upstream) -> (Gateway, String) {
        let gw = Gateway::new(&up.url, Credential::ApiKey("sk-real".into())).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        gw.serve_tcp(listener);
        (gw, url)
    }

    fn call(
        url: &str,
        token: &TaskToken,
        model: &str,
        max_tokens: i64,
    ) -> impl std::future::Future<Output = reqwest::Response> + use<> {
        let req = reqwest::Client::new()
            .post(format!("{url}/v1/messages?beta=true"))
            .header("x-api-key", token.token())
            .json(&json!({"model": model, "max_tokens": max_tokens, "messages": []}));
        async move { req.send().await.unwrap() }
    }

    async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sonnet rates: what one call's worst case and its settled cost are.
    fn sonnet() -> (Prices, Rate) {
        let p = Prices::default();
        let r = p.of("sonnet");
        (p, r)
    }

    #[tokio::test]
    async fn only_the_messages_api_is_forwarded() {
        let up = upstream().await;
        let (gw, url) = gateway(&up).await;
        let token = gw.register(1, 50_000_000, Prices::default());
        let http = reqwest::Client::new();
        for (method, path) in [
            ("POST", "/v1/files"),
            ("GET", "/v1/files/file_1/content"),
            ("POST", "/v1/messages/batches"),
            ("GET", "/v1/models"),
            ("DELETE", "/v1/messages"),
            ("POST", "/v1/organizations/api_keys"),
            ("POST", "/v1/messages/../files"),
        ] {
            let resp = http
                .request(method.parse().unwrap(), format!("{url}{path}"))
                .header("x-api-key", token.token())
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 403, "{method} {path}");
            let text = resp.text().await.unwrap();
            assert!(text.contains("forwards only POST /v1/messages"), "{text}");
        }
        assert_eq!(
            up.hits.load(Ordering::SeqCst),
            0,
            "nothing reached the model API"
        );
        assert_eq!(token.used().refused, 7);
        // The two forwarded endpoints work, count_tokens for free.
        let resp = http
            .post(format!("{url}/v1/messages/count_tokens"))
            .header("x-api-key", token.token())
            .json(&json!({"model": "sonnet", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(call(&url, &token, "sonnet", 1000).await.status(), 200);
        assert_eq!(up.hits.load(Ordering::SeqCst), 2);
        let (_, rate) = sonnet();
        assert_eq!(token.used().cost_microusd, rate.cost(1000, 100, 0, 0));
        assert_eq!(token.used().reserved_microusd, 0.0);
    }

    #[tokio::test]
    async fn a_budget_of_nothing_forwards_no_paid_call() {
        let up = upstream().await;
        let (gw, url) = gateway(&up).await;
        let token = gw.register(1, 0, Prices::default());
        let resp = call(&url, &token, "haiku", 1).await;
        assert_eq!(resp.status(), 403);
        assert!(resp.text().await.unwrap().contains("budget cannot cover"));
        assert_eq!(up.hits.load(Ordering::SeqCst), 0);
        assert!(token.used().over_budget);
    }

    #[tokio::test]
    async fn parallel_calls_cannot_together_pass_the_budget() {
        let up = upstream().await;
        let (gw, url) = gateway(&up).await;
        let (prices, rate) = sonnet();
        // Room for one call's worst case (body ≈ 60 bytes, 100,000 output tokens), not two.
        let one = worst_case(&rate, 80, 100_000);
        let token = gw.register(1, (one * 1.5) as i64, prices);
        let first = tokio::spawn(call(&url, &token, "hang-sonnet", 100_000));
        wait_until(Duration::from_secs(10), || {
            up.hits.load(Ordering::SeqCst) == 1
        })
        .await;
        assert!(token.used().reserved_microusd > 0.0);
        // While the first is in flight, a second is refused, though nothing is spent yet.
        let second = call(&url, &token, "sonnet", 100_000).await;
        assert_eq!(second.status(), 403);
        assert_eq!(token.used().cost_microusd, 0.0);
        assert_eq!(
            up.hits.load(Ordering::SeqCst),
            1,
            "the second never reached the API"
        );
        up.release.notify_one();
        assert_eq!(first.await.unwrap().status(), 200);
        let used = token.used();
        assert_eq!(used.reserved_microusd, 0.0);
        assert_eq!(
            used.cost_microusd,
            rate.cost(1000, 100, 0, 0),
            "settled to the usage"
        );
        assert!(used.over_budget, "a refused call ends the task");
    }

    #[tokio::test]
    async fn a_stream_cut_off_before_its_usage_is_charged_its_reservation() {
        let up = upstream().await;
        let (gw, url) = gateway(&up).await;
        let (prices, rate) = sonnet();
        let token = gw.register(1, 50_000_000, prices);
        let mut resp = call(&url, &token, "stream-sonnet", 20_000).await;
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("message_start"));
        let reserved = token.used().reserved_microusd;
        assert!(reserved >= 20_000.0 * rate.output / 1e6, "{reserved}");
        drop(resp); // the agent hangs up mid-stream
        wait_until(Duration::from_secs(10), || {
            token.used().reserved_microusd == 0.0
        })
        .await;
        let used = token.used();
        assert_eq!(
            used.cost_microusd, reserved,
            "charged the whole reservation"
        );
        assert_eq!(used.input_tokens, 100, "the tokens seen are still counted");
        // A stream read to its end is charged what it used.
        let stream = tokio::spawn(call(&url, &token, "stream-sonnet", 20_000));
        wait_until(Duration::from_secs(10), || {
            up.hits.load(Ordering::SeqCst) == 2
        })
        .await;
        up.release.notify_one();
        let text = stream.await.unwrap().text().await.unwrap();
        assert!(text.contains("message_stop"));
        let after = token.used();
        let charged = after.cost_microusd - used.cost_microusd;
        assert!(
            (charged - rate.cost(100, 42, 3, 7)).abs() < 1e-6,
            "{charged}"
        );
        assert_eq!(after.reserved_microusd, 0.0);
    }

    const RESPONSES_STREAM: &str = concat!(
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\"}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":1000,\"input_tokens_details\":{\"cached_tokens\":200},\"output_tokens\":100,\"output_tokens_details\":{\"reasoning_tokens\":40},\"total_tokens\":1100}}}\n\n",
    );

    #[test]
    fn responses_streams_are_metered_with_cached_input_priced_once() {
        let mut p = SseUsage::default();
        let mut done = false;
        for chunk in RESPONSES_STREAM.as_bytes().chunks(13) {
            done |= p.feed(chunk);
        }
        assert!(done);
        assert_eq!(
            p.usage(),
            Usage {
                input: 800,
                output: 100,
                cache_read: 200,
                cache_write: 0,
                done: true
            }
        );
        let mut failed = SseUsage::default();
        assert!(
            failed.feed(b"data: {\"type\":\"response.failed\",\"response\":{\"error\":{}}}\n\n")
        );
        assert_eq!(failed.usage().output, 0);
    }

    /// A stand-in for the OpenAI API: `/v1/responses` streams [`RESPONSES_STREAM`]; every request's
    /// path and `authorization` header is recorded.
    async fn openai_upstream() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let s = seen.clone();
        let app = Router::new().fallback(move |req: Request| {
            let s = s.clone();
            async move {
                let auth = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                s.lock().unwrap().push((req.uri().path().to_owned(), auth));
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(Body::from(RESPONSES_STREAM))
                    .unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen)
    }

    /// A key given twice: the check and the provider must see the same value. The gateway
    /// forwards the body it checked, written again, so the provider gets only what passed.
    #[tokio::test]
    async fn a_duplicate_key_cannot_show_the_check_one_body_and_the_provider_another() {
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = got.clone();
        let app = Router::new().fallback(move |req: Request| {
            let seen = seen.clone();
            async move {
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                axum::Json(
                    json!({"type": "message", "usage": {"input_tokens": 10, "output_tokens": 1}}),
                )
            }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let gw = Gateway::new(&up, Credential::ApiKey("sk-real".into())).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        gw.serve_tcp(l);
        let token = gw.register(1, 50_000_000, Prices::default());
        let raw = r#"{"model": "sonnet", "max_tokens": 10, "messages": [],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}], "tools": []}"#;
        let resp = reqwest::Client::new()
            .post(format!("{url}/v1/messages"))
            .header("x-api-key", token.token())
            .header(header::CONTENT_TYPE, "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let bodies = got.lock().unwrap().clone();
        assert_eq!(bodies.len(), 1);
        assert!(!bodies[0].contains("web_search"), "{}", bodies[0]);
        let v: Value = serde_json::from_str(&bodies[0]).unwrap();
        assert_eq!(v["tools"], json!([]));
    }

    /// The agent asks the provider to act for it — search the web, reach an MCP server, fetch a
    /// URL, run in the background: refused before anything is reserved, and nothing reaches an
    /// upstream. A success that reports `usage: null` is charged its whole reservation.
    #[tokio::test]
    async fn requests_that_reach_past_the_sandbox_never_leave_it() {
        let up = upstream().await;
        let (openai, seen) = openai_upstream().await;
        let gw = Gateway::new(&up.url, Credential::ApiKey("sk-ant-real".into()))
            .unwrap()
            .with_responses(&openai, "sk-openai-real");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        gw.serve_tcp(listener);
        let claude = gw.register(1, 50_000_000, Prices::default());
        let codex = gw.register_api(2, 50_000_000, Prices::default(), Api::Responses);
        let http = reqwest::Client::new();
        for body in [
            json!({"model": "sonnet", "max_tokens": 100, "messages": [],
                   "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]}),
            json!({"model": "sonnet", "max_tokens": 100, "messages": [],
                   "mcp_servers": [{"type": "url", "url": "https://evil.example/mcp", "name": "x"}]}),
            json!({"model": "sonnet", "max_tokens": 100, "messages": [{"role": "user", "content": [
                   {"type": "document", "source": {"type": "url", "url": "https://evil.example/?leak=1"}}]}]}),
        ] {
            let resp = http
                .post(format!("{url}/v1/messages"))
                .header("x-api-key", claude.token())
                .header("anthropic-beta", "mcp-client-2025-04-04")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 403, "{body}");
            assert!(resp.text().await.unwrap().contains("not forwarded"));
        }
        for body in [
            json!({"model": "gpt-5.5", "background": true, "input": []}),
            json!({"model": "gpt-5.5", "input": [], "tools": [{"type": "mcp", "server_url": "https://evil.example"}]}),
            json!({"model": "gpt-5.5", "input": [], "previous_response_id": "resp_other_task"}),
        ] {
            let resp = http
                .post(format!("{url}/v1/responses"))
                .bearer_auth(codex.token())
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 403, "{body}");
        }
        assert_eq!(
            up.hits.load(Ordering::SeqCst),
            0,
            "nothing reached the Messages API"
        );
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing reached the Responses API"
        );
        assert_eq!((claude.used().refused, codex.used().refused), (3, 3));
        assert_eq!(
            claude.used().reserved_microusd + codex.used().reserved_microusd,
            0.0
        );

        // An upstream that answers a success with `usage: null`: the call is charged whole.
        let app = Router::new().fallback(|| async {
            axum::Json(json!({"id": "resp_1", "status": "in_progress", "usage": null}))
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let null_usage = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let gw = Gateway::new(&up.url, Credential::ApiKey("sk-ant-real".into()))
            .unwrap()
            .with_responses(&null_usage, "sk-openai-real");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        gw.serve_tcp(l);
        let prices = Prices::default();
        let codex = gw.register_api(3, 50_000_000, prices.clone(), Api::Responses);
        let body = json!({"model": "gpt-5.5", "max_output_tokens": 2000, "input": []}).to_string();
        let resp = http
            .post(format!("{url}/v1/responses"))
            .bearer_auth(codex.token())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            codex.used().cost_microusd,
            worst_case(&prices.of("gpt-5.5"), body.len(), 2000),
            "no usage reported: charged the whole reservation"
        );
    }

    #[tokio::test]
    async fn a_codex_task_reaches_only_the_responses_api_and_is_metered_by_its_usage() {
        let up = upstream().await;
        let (openai, seen) = openai_upstream().await;
        let gw = Gateway::new(&up.url, Credential::ApiKey("sk-ant-real".into()))
            .unwrap()
            .with_responses(&openai, "sk-openai-real");
        assert!(gw.serves(Api::Responses));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        gw.serve_tcp(listener);
        let prices = Prices::default();
        let codex = gw.register_api(1, 50_000_000, prices.clone(), Api::Responses);
        let claude = gw.register(2, 50_000_000, prices.clone());
        let http = reqwest::Client::new();
        // The codex task's token opens nothing else: not the Messages API, not the Responses
        // API's other endpoints (compaction, files, retrieval), not the model list.
        for (method, path) in [
            ("POST", "/v1/messages"),
            ("POST", "/v1/messages/count_tokens"),
            ("POST", "/v1/responses/compact"),
            ("GET", "/v1/responses/resp_1"),
            ("POST", "/v1/files"),
            ("GET", "/v1/models"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/responses/../files"),
        ] {
            let resp = http
                .request(method.parse().unwrap(), format!("{url}{path}"))
                .bearer_auth(codex.token())
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 403, "{method} {path}");
            let text = resp.text().await.unwrap();
            assert!(text.contains("forwards only POST /v1/responses"), "{text}");
        }
        // And a Claude task's token does not open the Responses API.
        let resp = http
            .post(format!("{url}/v1/responses"))
            .header("x-api-key", claude.token())
            .json(&json!({"model": "gpt-5.5", "input": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        assert!(
            resp.text()
                .await
                .unwrap()
                .contains("forwards only POST /v1/messages")
        );
        assert_eq!(up.hits.load(Ordering::SeqCst), 0);
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing reached either API"
        );
        assert_eq!(codex.used().refused, 8);

        // The one endpoint: forwarded with the real key as a bearer token, the stream passed
        // through, the call settled to its reported usage.
        let resp = http
            .post(format!("{url}/v1/responses"))
            .bearer_auth(codex.token())
            .json(&json!({"model": "gpt-5.5", "stream": true, "max_output_tokens": 4000, "input": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap().contains("response.completed"));
        assert_eq!(
            seen.lock().unwrap().clone(),
            vec![(
                "/v1/responses".to_owned(),
                "Bearer sk-openai-real".to_owned()
            )]
        );
        let used = codex.used();
        let rate = prices.of("gpt-5.5");
        assert_eq!(
            (
                used.input_tokens,
                used.cache_read_tokens,
                used.output_tokens
            ),
            (800, 200, 100)
        );
        assert!((used.cost_microusd - rate.cost(800, 100, 0, 200)).abs() < 1e-9);
        assert_eq!(used.reserved_microusd, 0.0);
        assert_eq!(used.calls, 1);
    }

    #[tokio::test]
    async fn a_responses_call_whose_worst_case_does_not_fit_never_leaves() {
        let up = upstream().await;
        let (openai, seen) = openai_upstream().await;
        let gw = Gateway::new(&up.url, Credential::ApiKey("k".into()))
            .unwrap()
            .with_responses(&openai, "sk-openai-real");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        gw.serve_tcp(listener);
        // Room for 1,000 output tokens of gpt-5.5, not for a call without `max_output_tokens`
        // (reserved at 128,000).
        let prices = Prices::default();
        let budget = worst_case(&prices.of("gpt-5.5"), 200, 1000) as i64 + 1;
        let codex = gw.register_api(1, budget.max(20_000), prices, Api::Responses);
        let resp = reqwest::Client::new()
            .post(format!("{url}/v1/responses"))
            .bearer_auth(codex.token())
            .json(&json!({"model": "gpt-5.5", "stream": true, "input": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        assert!(resp.text().await.unwrap().contains("budget cannot cover"));
        assert!(seen.lock().unwrap().is_empty());
        assert!(codex.used().over_budget);
    }

    #[tokio::test]
    async fn a_runner_without_an_openai_upstream_forwards_no_responses_call() {
        let up = upstream().await;
        let (gw, url) = gateway(&up).await;
        assert!(!gw.serves(Api::Responses));
        let codex = gw.register_api(1, 50_000_000, Prices::default(), Api::Responses);
        let resp = reqwest::Client::new()
            .post(format!("{url}/v1/responses"))
            .bearer_auth(codex.token())
            .json(&json!({"model": "gpt-5.5", "max_output_tokens": 10, "input": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        assert!(
            resp.text()
                .await
                .unwrap()
                .contains("no upstream for the Responses API")
        );
        assert_eq!(
            up.hits.load(Ordering::SeqCst),
            0,
            "the Anthropic upstream saw nothing"
        );
        let used = codex.used();
        assert_eq!((used.cost_microusd, used.reserved_microusd), (0.0, 0.0));
    }

    #[tokio::test]
    async fn an_upstream_error_without_usage_releases_its_reservation() {
        let up = upstream().await;
        let (gw, url) = gateway(&up).await;
        let token = gw.register(1, 50_000_000, Prices::default());
        assert_eq!(call(&url, &token, "error", 1000).await.status(), 529);
        let used = token.used();
        assert_eq!((used.cost_microusd, used.reserved_microusd), (0.0, 0.0));
        assert!(!used.over_budget);
    }
}
