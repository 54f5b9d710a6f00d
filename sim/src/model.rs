//! A scripted model server speaking the Anthropic Messages API and, for the Codex CLI, OpenAI's
//! Responses API (`POST /v1/responses`).
//!
//! Scripts are chosen per conversation: a [`Script`] applies to a request when any user message
//! contains its `selector`. Within a script, each [`Step`] answers one request and is then used up;
//! a request takes the first unused step whose [`Match`] fits (text in the last user message, a
//! `tool_result` present, the model asked). A request that no step fits gets a short closing text,
//! so a conversation always ends.
//! An agent's conversation that no script selects can go to the fallback agent
//! ([`ModelSim::set_fallback_agent`]), which writes a note quoting the issue and says a scripted
//! model wrote it — so any issue goes through.
//!
//! Replies stream as server-sent events exactly as the real API does (`message_start`,
//! `content_block_start`/`_delta`/`_stop`, `message_delta` with usage, `message_stop`) or come as
//! one JSON message when `stream` is false. Usage figures are derived from the sizes of request and
//! reply. Every request is recorded for tests to inspect, and the server can be told to fail with
//! a rate limit or an overload for a number of requests.
//!
//! The same scripts answer the Responses API: a step's text becomes an assistant `message` item and
//! its tool calls become the Codex CLI's tools — `Write` an `apply_patch` (`*** Add File`, which
//! replaces a file), `Edit` an `apply_patch` update, `Bash` and `Read` `exec_command` calls (and
//! `exec_command` / `apply_patch` are sent as named) — streamed as the Responses API's events
//! (`response.created`, `response.output_item.added`/`.done`, `response.output_text.delta`,
//! `response.completed` with usage). A request's user text is its user messages and tool outputs
//! (`function_call_output`, `custom_tool_call_output`); its last user message is what follows the
//! model's last output item.
//!
//! Control API (JSON): `POST /_sim/scripts` adds a script, `DELETE /_sim/scripts` clears them,
//! `GET /_sim/requests` lists what was received, `POST /_sim/fail` queues failures.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A conversation script.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Script {
    /// The script applies to requests in which a user message contains this text.
    pub selector: String,
    /// Replies, each used once.
    pub steps: Vec<Step>,
}

impl Script {
    /// Answers requests containing `selector` with `texts`, one per request, in order.
    pub fn says(selector: &str, texts: &[&str]) -> Self {
        Self {
            selector: selector.into(),
            steps: texts
                .iter()
                .map(|t| Step {
                    text: (*t).into(),
                    ..Step::default()
                })
                .collect(),
        }
    }

    /// An agent that writes `content` to `path`, then says it is done.
    pub fn writes(selector: &str, path: &str, content: &str) -> Self {
        Self {
            selector: selector.into(),
            steps: vec![Step::writes(path, content), Step::after_tools("Done.")],
        }
    }

    /// An agent that writes `first` to `path`, and when a later prompt contains `fix_when` (a CI
    /// log, review feedback), writes `fixed` instead.
    pub fn writes_then_fixes(
        selector: &str,
        path: &str,
        first: &str,
        fix_when: &str,
        fixed: &str,
    ) -> Self {
        Self {
            selector: selector.into(),
            steps: vec![
                Step::writes(path, first),
                Step::after_tools("Done."),
                Step {
                    when: Match {
                        contains: Some(fix_when.into()),
                        ..Match::default()
                    },
                    tools: vec![ToolCall::write(path, fixed)],
                    ..Step::default()
                },
                Step::after_tools("Fixed."),
            ],
        }
    }
}

impl Step {
    /// Writes `content` to `path` on a request that carries no tool result (a fresh prompt).
    pub fn writes(path: &str, content: &str) -> Self {
        Self {
            when: Match {
                tool_result: Some(false),
                ..Match::default()
            },
            tools: vec![ToolCall::write(path, content)],
            ..Self::default()
        }
    }

    /// Says `text` once the tools have run (a request carrying a tool result).
    pub fn after_tools(text: &str) -> Self {
        Self {
            when: Match {
                tool_result: Some(true),
                ..Match::default()
            },
            text: text.into(),
            ..Self::default()
        }
    }
}

/// One scripted reply and when it applies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Step {
    /// When it applies.
    #[serde(default)]
    pub when: Match,
    /// Text before any tool calls.
    #[serde(default)]
    pub text: String,
    /// Tool calls (`tool_use` blocks).
    #[serde(default)]
    pub tools: Vec<ToolCall>,
    /// Delay before answering (to test timeouts and cancellation).
    #[serde(default)]
    pub delay_ms: u64,
    /// Extra output tokens to report (to test budgets).
    #[serde(default)]
    pub extra_output_tokens: u64,
    /// Stream `message_start` and a ping, then nothing more, never closing (to test stall
    /// detection); a non-streaming call with it never answers.
    #[serde(default)]
    pub hang_mid_stream: bool,
}

/// Conditions on a request; all given ones must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Match {
    /// The last user message contains this text (its text blocks and tool results).
    #[serde(default)]
    pub contains: Option<String>,
    /// The last user message does (or does not) carry a `tool_result`.
    #[serde(default)]
    pub tool_result: Option<bool>,
    /// The requested model contains this text.
    #[serde(default)]
    pub model: Option<String>,
}

/// A `tool_use` block to send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolCall {
    /// Tool name (`Write`, `Edit`, `Bash`, `Read`, …).
    pub name: String,
    /// Its input.
    pub input: Value,
}

impl ToolCall {
    /// `Write` a file.
    pub fn write(path: &str, content: &str) -> Self {
        Self {
            name: "Write".into(),
            input: json!({"file_path": path, "content": content}),
        }
    }
    /// `Edit` a file.
    pub fn edit(path: &str, old: &str, new: &str) -> Self {
        Self {
            name: "Edit".into(),
            input: json!({"file_path": path, "old_string": old, "new_string": new}),
        }
    }
    /// Run a `Bash` command.
    pub fn bash(command: &str) -> Self {
        Self {
            name: "Bash".into(),
            input: json!({"command": command, "description": "scripted command"}),
        }
    }
    /// `Read` a file.
    pub fn read(path: &str) -> Self {
        Self {
            name: "Read".into(),
            input: json!({"file_path": path}),
        }
    }
}

/// A request as received.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// Path with query.
    pub path: String,
    /// Model asked for.
    pub model: String,
    /// Whether it asked to stream.
    pub stream: bool,
    /// The credential presented (`x-api-key` or bearer token).
    pub credential: String,
    /// Text of the last user message.
    pub last_user_text: String,
    /// Whole body.
    pub body: Value,
    /// When it arrived (milliseconds since the Unix epoch).
    pub at_ms: i64,
}

impl Received {
    /// What a request to `uri` asking for `model` with `credential` and body `json` was, now.
    fn of(uri: &axum::http::Uri, model: &str, credential: String, json: &Value) -> Self {
        Self {
            path: uri.to_string(),
            model: model.to_owned(),
            stream: json.get("stream").and_then(Value::as_bool).unwrap_or(false),
            credential,
            last_user_text: last_user(json).0,
            body: json.clone(),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default(),
        }
    }
}

/// A failure to answer with instead of a reply.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Failure {
    /// 429 `rate_limit_error` with `retry-after`.
    RateLimit,
    /// 529 `overloaded_error`.
    Overloaded,
}

#[derive(Default)]
struct Inner {
    scripts: Vec<(Script, Vec<bool>)>,
    received: Vec<Received>,
    failures: VecDeque<Failure>,
    /// Failures for Responses API requests only.
    responses_failures: VecDeque<Failure>,
    /// Text that marks an agent's prompt, for the fallback agent.
    fallback_agent: Option<String>,
    /// The context window, tokens ([`CONTEXT_TOKENS`] unless set).
    context_tokens: Option<u64>,
}

/// The context window of the models the simulator plays, in tokens: a Messages request whose
/// input is larger is refused with 400, as the real API refuses a prompt that is too long.
pub const CONTEXT_TOKENS: u64 = 200_000;

/// The simulator's state; cheap to clone.
#[derive(Clone, Default)]
pub struct ModelSim {
    inner: Arc<Mutex<Inner>>,
    api_key: Arc<Option<String>>,
}

impl ModelSim {
    /// A simulator that requires `api_key` (`None`: any credential).
    pub fn new(api_key: Option<String>) -> Self {
        Self {
            inner: Arc::default(),
            api_key: Arc::new(api_key),
        }
    }

    /// Adds a script.
    pub fn add_script(&self, script: Script) {
        let used = vec![false; script.steps.len()];
        self.inner
            .lock()
            .expect("sim lock")
            .scripts
            .push((script, used));
    }

    /// Answers an agent's conversation that no script selects — a request whose user text
    /// contains `trigger` and that offers the `Write` tool — transparently: it writes
    /// `/workspace/notes/<issue title>.md` quoting the issue from the prompt and saying that a
    /// scripted model wrote it, then says it is done. So any issue goes through.
    pub fn set_fallback_agent(&self, trigger: &str) {
        self.inner.lock().expect("sim lock").fallback_agent = Some(trigger.to_owned());
    }

    /// A smaller (or larger) context window than [`CONTEXT_TOKENS`], to provoke "prompt is too
    /// long" refusals with small requests.
    pub fn set_context_tokens(&self, tokens: u64) {
        self.inner.lock().expect("sim lock").context_tokens = Some(tokens);
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().expect("sim lock").received.clone()
    }

    /// The next `n` requests fail with `failure`.
    pub fn fail_next(&self, failure: Failure, n: usize) {
        let mut inner = self.inner.lock().expect("sim lock");
        for _ in 0..n {
            inner.failures.push_back(failure);
        }
    }

    /// The next `n` Responses API requests (the Codex CLI's) fail with `failure`; Messages API
    /// requests are answered as usual.
    pub fn fail_next_responses(&self, failure: Failure, n: usize) {
        let mut inner = self.inner.lock().expect("sim lock");
        for _ in 0..n {
            inner.responses_failures.push_back(failure);
        }
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .route("/v1/responses", post(responses))
            .route("/_sim/scripts", post(add_script).delete(clear_scripts))
            .route("/_sim/requests", get(requests))
            .route("/_sim/fail", post(queue_failure))
            .with_state(self.clone())
    }

    /// Serves on `listener` until the returned task is aborted.
    pub fn serve(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    }

    fn choose(&self, body: &Value, received: Received) -> Result<Step, Failure> {
        let mut inner = self.inner.lock().expect("sim lock");
        let responses = received.path.starts_with("/v1/responses");
        inner.received.push(received);
        if let Some(f) = inner.failures.pop_front() {
            return Err(f);
        }
        if responses && let Some(f) = inner.responses_failures.pop_front() {
            return Err(f);
        }
        let all_user_text = user_texts(body);
        let (last_text, has_tool_result) = last_user(body);
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut selected = false;
        for (script, used) in inner.scripts.iter_mut() {
            if !all_user_text.iter().any(|t| t.contains(&script.selector)) {
                continue;
            }
            selected = true;
            for (i, step) in script.steps.iter().enumerate() {
                if used[i] {
                    continue;
                }
                let m = &step.when;
                let fits = m
                    .contains
                    .as_ref()
                    .is_none_or(|c| last_text.contains(c.as_str()))
                    && m.tool_result.is_none_or(|t| t == has_tool_result)
                    && m.model.as_ref().is_none_or(|x| model.contains(x.as_str()));
                if fits {
                    used[i] = true;
                    return Ok(step.clone());
                }
            }
            break;
        }
        if !selected
            && let Some(trigger) = &inner.fallback_agent
            && all_user_text.iter().any(|t| t.contains(trigger.as_str()))
            && (offers_tool(body, "Write") || offers_tool(body, "apply_patch"))
        {
            return Ok(if has_tool_result {
                Step {
                    text: "Done: a scripted model wrote a note quoting the issue.".into(),
                    ..Step::default()
                }
            } else {
                fallback_note(&all_user_text)
            });
        }
        Ok(Step {
            text: "Done.".into(),
            ..Step::default()
        })
    }
}

/// Whether the request offers the tool `name`.
fn offers_tool(body: &Value, name: &str) -> bool {
    body.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| tools.iter().any(|t| t["name"] == name))
}

/// The text of the first fence from `source` in `texts`, found by the markers
/// `textguard::fence_plain` writes (the ones every prompt of the system uses).
fn fenced(texts: &[String], source: &str) -> Option<String> {
    let probe = textguard::fence_plain(source, "FENCED");
    let (open, close) = probe.split_once("FENCED")?;
    let close = close.trim_end_matches('\n');
    texts.iter().find_map(|t| {
        let start = t.find(open)? + open.len();
        let len = t[start..].find(close)?;
        Some(t[start..start + len].to_owned())
    })
}

/// The fallback agent's first move: a note quoting the issue, named after its title.
fn fallback_note(texts: &[String]) -> Step {
    let title = fenced(texts, "issue title").unwrap_or_else(|| "the task".into());
    let body = fenced(texts, "issue").unwrap_or_default();
    let mut slug: String = title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    slug.truncate(60);
    if slug.is_empty() {
        slug = "task".into();
    }
    let quoted: String = body.lines().map(|l| format!("> {l}\n")).collect();
    let content = format!(
        "# {title}\n\nA scripted model wrote this note: the demo runs without a model credential, so \
         a stand-in for the model answers every issue by quoting it here. With ANTHROPIC_API_KEY or \
         CLAUDE_CODE_OAUTH_TOKEN set, a real model does the work instead.\n\nThe issue said:\n\n{quoted}"
    );
    Step {
        text: "A scripted model: writing a note that quotes the issue.".into(),
        ..Step::writes(&format!("/workspace/notes/{slug}.md"), &content)
    }
}

/// Text of every user message (text blocks and tool results).
fn user_texts(body: &Value) -> Vec<String> {
    if let Some(items) = body.get("input").and_then(Value::as_array) {
        return items.iter().filter_map(input_item_text).collect();
    }
    body.get("messages")
        .and_then(Value::as_array)
        .map(|msgs| {
            msgs.iter()
                .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .map(|m| content_text(m.get("content")))
                .collect()
        })
        .unwrap_or_default()
}

fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => b
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                Some("tool_result") => content_text(b.get("content")),
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The user text of one Responses API input item: a user message's text, a tool's output.
fn input_item_text(item: &Value) -> Option<String> {
    match item.get("type").and_then(Value::as_str) {
        Some("message") if item.get("role").and_then(Value::as_str) == Some("user") => {
            Some(match item.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            })
        }
        Some("function_call_output" | "custom_tool_call_output") => {
            Some(match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            })
        }
        _ => None,
    }
}

fn last_user(body: &Value) -> (String, bool) {
    if let Some(items) = body.get("input").and_then(Value::as_array) {
        // What follows the model's last output item: tool outputs, or a user message.
        let mut texts = Vec::new();
        let mut has_result = false;
        for item in items.iter().rev() {
            match item.get("type").and_then(Value::as_str) {
                Some("function_call_output" | "custom_tool_call_output") => {
                    has_result = true;
                    texts.extend(input_item_text(item));
                }
                Some("message") if item.get("role").and_then(Value::as_str) == Some("user") => {
                    texts.extend(input_item_text(item));
                    break;
                }
                Some("message")
                    if matches!(
                        item.get("role").and_then(Value::as_str),
                        Some("developer" | "system")
                    ) => {}
                _ => break,
            }
        }
        texts.reverse();
        return (texts.join("\n"), has_result);
    }
    let last = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        });
    let Some(last) = last else {
        return (String::new(), false);
    };
    let has_result = last
        .get("content")
        .and_then(Value::as_array)
        .is_some_and(|b| {
            b.iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        });
    (content_text(last.get("content")), has_result)
}

fn credential(headers: &HeaderMap) -> String {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return k.to_owned();
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

fn api_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A Responses API error as OpenAI shapes it.
fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": kind}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A tool call as the Codex CLI's tools: a custom `apply_patch` call or a function call.
fn codex_item(t: &ToolCall, call_id: &str) -> Value {
    let s = |k: &str| t.input.get(k).and_then(Value::as_str).unwrap_or_default();
    let patch = |body: String| {
        json!({"type": "custom_tool_call", "id": format!("ctc_{call_id}"), "call_id": call_id,
               "status": "completed", "name": "apply_patch",
               "input": format!("*** Begin Patch\n{body}*** End Patch\n")})
    };
    let exec = |cmd: String| {
        json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
               "status": "completed", "name": "exec_command",
               "arguments": json!({"cmd": cmd}).to_string()})
    };
    let lines = |text: &str, mark: char| -> String {
        text.lines().map(|l| format!("{mark}{l}\n")).collect()
    };
    match t.name.as_str() {
        "Write" => patch(format!(
            "*** Add File: {}\n{}",
            s("file_path"),
            lines(s("content"), '+')
        )),
        "Edit" => patch(format!(
            "*** Update File: {}\n@@\n{}{}",
            s("file_path"),
            lines(s("old_string"), '-'),
            lines(s("new_string"), '+')
        )),
        "apply_patch" => patch(
            s("patch")
                .trim_start_matches("*** Begin Patch\n")
                .trim_end_matches("*** End Patch\n")
                .to_owned(),
        ),
        "Bash" => exec(s("command").to_owned()),
        "exec_command" => exec(s("cmd").to_owned()),
        "Read" => exec(format!(
            "cat -- '{}'",
            s("file_path").replace('\'', "'\\''")
        )),
        other => json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
                        "status": "completed", "name": other, "arguments": t.input.to_string()}),
    }
}

/// `POST /v1/responses`: the scripts answered in the Responses API's shapes.
async fn responses(
    State(sim): State<ModelSim>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: String,
) -> Response {
    let cred = credential(&headers);
    if let Some(key) = sim.api_key.as_ref()
        && &cred != key
    {
        return openai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Incorrect API key provided",
        );
    }
    let Ok(json) = serde_json::from_str::<Value>(&body) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the body is not JSON",
        );
    };
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if model.is_empty() || json.get("input").is_none() {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "model and input are required",
        );
    }
    let received = Received::of(&uri, &model, cred, &json);
    let stream = received.stream;
    let step = match sim.choose(&json, received) {
        Ok(s) => s,
        Err(Failure::RateLimit) => {
            let mut r = openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "Rate limit reached for requests",
            );
            r.headers_mut()
                .insert("retry-after", "1".parse().expect("header"));
            return r;
        }
        Err(Failure::Overloaded) => {
            return openai_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "The server is overloaded",
            );
        }
    };
    if step.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(step.delay_ms)).await;
    }
    let id = uuid_like();
    let mut items = Vec::new();
    if !step.text.is_empty() || step.tools.is_empty() {
        let text = if step.text.is_empty() {
            "Done."
        } else {
            &step.text
        };
        items.push(json!({"type": "message", "id": format!("msg_{id}"), "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}));
    }
    for (i, t) in step.tools.iter().enumerate() {
        items.push(codex_item(t, &format!("call_{id}_{i}")));
    }
    let reply_len: usize = items.iter().map(|b| b.to_string().len()).sum();
    let usage = json!({
        "input_tokens": tokens(body.len()), "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": tokens(reply_len) + step.extra_output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": tokens(body.len()) + tokens(reply_len) + step.extra_output_tokens,
    });
    let response = |status: &str, output: Vec<Value>, usage: Value| {
        json!({"id": format!("resp_{id}"), "object": "response", "status": status,
               "model": model, "output": output, "usage": usage})
    };
    if step.hang_mid_stream && !stream {
        std::future::pending::<()>().await;
    }
    if !stream {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            response("completed", items, usage).to_string(),
        )
            .into_response();
    }
    let mut events = vec![json!({"type": "response.created",
        "response": response("in_progress", Vec::new(), Value::Null)})];
    for (index, item) in items.iter().enumerate() {
        let mut started = item.clone();
        started["status"] = json!("in_progress");
        if item["type"] == "message" {
            started["content"] = json!([]);
        }
        events.push(
            json!({"type": "response.output_item.added", "output_index": index, "item": started}),
        );
        if item["type"] == "message" {
            let text = item["content"][0]["text"].as_str().unwrap_or_default();
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(chars.len().div_ceil(3).max(1)) {
                events.push(
                    json!({"type": "response.output_text.delta", "item_id": item["id"],
                    "output_index": index, "content_index": 0,
                    "delta": piece.iter().collect::<String>()}),
                );
            }
        }
        events.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
    }
    events.push(
        json!({"type": "response.completed", "response": response("completed", items, usage)}),
    );
    if step.hang_mid_stream {
        events.truncate(1);
    }
    let frames = events.into_iter().enumerate().map(|(n, mut e)| {
        e["sequence_number"] = json!(n);
        let kind = e["type"].as_str().unwrap_or_default().to_owned();
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!(
            "event: {kind}\ndata: {e}\n\n"
        )))
    });
    let hang = step.hang_mid_stream;
    let frames = tokio_stream::StreamExt::chain(
        tokio_stream::iter(frames),
        futures::stream::once(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            Ok(bytes::Bytes::new())
        }),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(frames))
        .expect("response")
}

fn tokens(text_len: usize) -> u64 {
    (text_len as u64 / 4).max(1)
}

async fn messages(
    State(sim): State<ModelSim>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: String,
) -> Response {
    let cred = credential(&headers);
    if let Some(key) = sim.api_key.as_ref()
        && &cred != key
    {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key",
        );
    }
    let Ok(json) = serde_json::from_str::<Value>(&body) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the body is not JSON",
        );
    };
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if model.is_empty() || json.get("messages").and_then(Value::as_array).is_none() {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "model and messages are required",
        );
    }
    let window = sim
        .inner
        .lock()
        .expect("sim lock")
        .context_tokens
        .unwrap_or(CONTEXT_TOKENS);
    if tokens(body.len()) > window {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!(
                "prompt is too long: {} tokens > {window} maximum",
                tokens(body.len())
            ),
        );
    }
    let received = Received::of(&uri, &model, cred, &json);
    let stream = received.stream;
    let step = match sim.choose(&json, received) {
        Ok(s) => s,
        Err(Failure::RateLimit) => {
            let mut r = api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            );
            r.headers_mut()
                .insert("retry-after", "1".parse().expect("header"));
            return r;
        }
        Err(Failure::Overloaded) => {
            return api_error(
                StatusCode::from_u16(529).expect("529"),
                "overloaded_error",
                "Overloaded",
            );
        }
    };
    if step.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(step.delay_ms)).await;
    }
    let input_tokens = tokens(body.len());
    let mut blocks = Vec::new();
    if !step.text.is_empty() {
        blocks.push(json!({"type": "text", "text": step.text}));
    }
    for (i, t) in step.tools.iter().enumerate() {
        blocks.push(json!({"type": "tool_use", "id": format!("toolu_sim_{}_{i}", uuid_like()), "name": t.name, "input": t.input}));
    }
    if blocks.is_empty() {
        blocks.push(json!({"type": "text", "text": "Done."}));
    }
    let reply_len: usize = blocks.iter().map(|b| b.to_string().len()).sum();
    let output_tokens = tokens(reply_len) + step.extra_output_tokens;
    let stop_reason = if step.tools.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    let id = format!("msg_sim_{}", uuid_like());
    if step.hang_mid_stream && !stream {
        std::future::pending::<()>().await;
    }
    if !stream {
        let msg = json!({
            "id": id, "type": "message", "role": "assistant", "model": model, "content": blocks,
            "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        });
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            msg.to_string(),
        )
            .into_response();
    }
    let mut events: Vec<(String, Value)> = vec![(
        "message_start".into(),
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
    )];
    events.push(("ping".into(), json!({"type": "ping"})));
    for (index, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                events.push(("content_block_start".into(), json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
                // Stream the text in a few deltas, as the real API does.
                let chars: Vec<char> = text.chars().collect();
                for piece in chars.chunks(chars.len().div_ceil(3).max(1)) {
                    let piece: String = piece.iter().collect();
                    events.push(("content_block_delta".into(), json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}})));
                }
            }
            _ => {
                let input = block.get("input").cloned().unwrap_or(json!({})).to_string();
                events.push((
                    "content_block_start".into(),
                    json!({"type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}),
                ));
                let mid = input
                    .char_indices()
                    .nth(input.chars().count() / 2)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                for part in [&input[..mid], &input[mid..]] {
                    events.push(("content_block_delta".into(), json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": part}})));
                }
            }
        }
        events.push((
            "content_block_stop".into(),
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push((
        "message_delta".into(),
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(("message_stop".into(), json!({"type": "message_stop"})));
    if step.hang_mid_stream {
        events.truncate(2);
    }
    let frames = events.into_iter().map(|(e, d)| {
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!("event: {e}\ndata: {d}\n\n")))
    });
    let hang = step.hang_mid_stream;
    let frames = tokio_stream::StreamExt::chain(
        tokio_stream::iter(frames),
        futures::stream::once(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            Ok(bytes::Bytes::new())
        }),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(frames))
        .expect("response")
}

async fn count_tokens(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"input_tokens": tokens(body.len())}).to_string(),
    )
        .into_response()
}

async fn add_script(
    State(sim): State<ModelSim>,
    axum::Json(script): axum::Json<Script>,
) -> StatusCode {
    sim.add_script(script);
    StatusCode::CREATED
}

async fn clear_scripts(State(sim): State<ModelSim>) -> StatusCode {
    sim.inner.lock().expect("sim lock").scripts.clear();
    StatusCode::NO_CONTENT
}

async fn requests(State(sim): State<ModelSim>) -> axum::Json<Vec<Received>> {
    axum::Json(sim.received())
}

#[derive(Deserialize)]
struct FailRequest {
    failure: Failure,
    count: usize,
}

async fn queue_failure(
    State(sim): State<ModelSim>,
    axum::Json(f): axum::Json<FailRequest>,
) -> StatusCode {
    sim.fail_next(f.failure, f.count);
    StatusCode::CREATED
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:016x}",
        N.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}
