//! What a sandbox may ask the model API to do on its behalf. The gateway forwards a request body
//! only when nothing in it makes the upstream act outside the conversation: no tool that the
//! provider runs on its own servers (web search and fetch, code execution, file search, remote
//! MCP servers — each a way out of a sandbox that has no network, and a spend the meter never
//! sees), no content the provider fetches from a URL or reads from files stored with it, and no
//! state kept on the provider's side (a background run, a stored earlier response, a
//! conversation). Tools the agent runs itself in the sandbox pass. A refusal names what was
//! refused, for the agent's log and the operator. It also owns [`Api`]: which API a task's CLI
//! speaks, and so which endpoints the gateway forwards.

use serde_json::Value;

/// The model API a task's agent CLI speaks, and so the only endpoints its token may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    /// Anthropic's Messages API (Claude Code).
    #[default]
    Messages,
    /// OpenAI's Responses API (the Codex CLI).
    Responses,
}

impl Api {
    /// The endpoints forwarded (method, path without query); everything else is refused.
    pub(crate) fn forwarded(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Messages => &[
                ("POST", "/v1/messages"),
                ("POST", "/v1/messages/count_tokens"),
            ],
            Self::Responses => &[("POST", "/v1/responses")],
        }
    }

    /// The one paid endpoint (the others are free).
    pub(crate) fn paid(self) -> &'static str {
        match self {
            Self::Messages => "/v1/messages",
            Self::Responses => "/v1/responses",
        }
    }

    /// The request field that bounds a call's output.
    pub(crate) fn max_output_field(self) -> &'static str {
        match self {
            Self::Messages => "max_tokens",
            Self::Responses => "max_output_tokens",
        }
    }

    /// The forwarded endpoints, for messages.
    pub(crate) fn describe(self) -> String {
        self.forwarded()
            .iter()
            .map(|(m, p)| format!("{m} {p}"))
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

/// Tool types the Messages API lets a client declare and run itself: custom tools (no `type`,
/// or `custom`) and the Anthropic-defined client tools, by prefix (their types carry a date).
const MESSAGES_CLIENT_TOOLS: &[&str] = &["custom", "bash_", "text_editor_", "computer_", "memory_"];

/// Tool types of the Responses API the client runs itself, and `tool_search`, which the
/// provider runs over the tool definitions of the request itself (the Codex CLI loads its tools
/// through it) and which reaches nothing outside the request.
const RESPONSES_CLIENT_TOOLS: &[&str] = &["function", "custom", "local_shell", "tool_search"];

/// Top-level fields refused, per API, with why.
fn refused_fields(api: Api) -> &'static [(&'static str, &'static str)] {
    match api {
        Api::Messages => &[
            (
                "mcp_servers",
                "remote MCP servers are reached by the provider, not the sandbox",
            ),
            (
                "container",
                "a code-execution container runs on the provider's servers",
            ),
        ],
        Api::Responses => &[
            (
                "previous_response_id",
                "a stored response is state kept on the provider's side",
            ),
            (
                "conversation",
                "a stored conversation is state kept on the provider's side",
            ),
            (
                "prompt",
                "a stored prompt template is state kept on the provider's side",
            ),
        ],
    }
}

/// Why the request `body` for `api` must not be forwarded, or `None` when it may be.
pub fn refusal(api: Api, body: &Value) -> Option<String> {
    let Some(fields) = body.as_object() else {
        return Some("the request body is not a JSON object".into());
    };
    for (field, why) in refused_fields(api) {
        if fields.get(*field).is_some_and(|v| !v.is_null()) {
            return Some(format!("`{field}` is not forwarded: {why}"));
        }
    }
    if api == Api::Responses && fields.get("background").and_then(Value::as_bool) == Some(true) {
        return Some(
            "`background` is not forwarded: a background run goes on on the provider's side, outside the task's budget"
                .into(),
        );
    }
    if let Some(tools) = fields.get("tools").and_then(Value::as_array) {
        let client = match api {
            Api::Messages => MESSAGES_CLIENT_TOOLS,
            Api::Responses => RESPONSES_CLIENT_TOOLS,
        };
        for tool in tools {
            let kind = match tool.get("type") {
                None | Some(Value::Null) if api == Api::Messages => continue,
                Some(Value::String(kind)) => kind.as_str(),
                _ => return Some("a tool without a readable `type` is not forwarded".into()),
            };
            if !client.iter().any(|prefix| kind.starts_with(prefix)) {
                return Some(format!(
                    "the tool type `{kind}` is not forwarded: the provider would run it on its own servers (web, code, files or MCP); only tools the agent runs in its sandbox are"
                ));
            }
        }
    }
    fetched_content(body)
}

/// Content the provider would fetch or look up itself, anywhere in the body: a `source` of type
/// `url` or `file` (Messages), an `image_url` or `file_url` that is not inline `data:`, or a
/// `file_id` (Responses).
fn fetched_content(v: &Value) -> Option<String> {
    match v {
        Value::Object(map) => {
            if let Some(kind) = map
                .get("source")
                .and_then(|s| s.get("type"))
                .and_then(Value::as_str)
                && matches!(kind, "url" | "file")
            {
                return Some(format!(
                    "content with a `{kind}` source is not forwarded: the provider would fetch it; send it inline"
                ));
            }
            for key in ["image_url", "file_url"] {
                let url = match map.get(key) {
                    Some(Value::String(u)) => Some(u.as_str()),
                    Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
                    _ => None,
                };
                if let Some(u) = url
                    && !u.starts_with("data:")
                {
                    return Some(format!(
                        "`{key}` with a URL is not forwarded: the provider would fetch it; send it inline"
                    ));
                }
            }
            if map.get("file_id").is_some_and(|f| !f.is_null()) {
                return Some(
                    "`file_id` is not forwarded: it names a file stored with the provider".into(),
                );
            }
            map.values().find_map(fetched_content)
        }
        Value::Array(items) => items.iter().find_map(fetched_content),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_an_agent_cli_sends_passes() {
        let messages = json!({
            "model": "claude-sonnet-4-5", "max_tokens": 1000, "stream": true,
            "system": [{"type": "text", "text": "You are an agent."}],
            "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}},
                      {"type": "custom", "name": "Edit", "input_schema": {"type": "object"}},
                      {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "fix it"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "ok"}]}]}],
        });
        assert_eq!(refusal(Api::Messages, &messages), None);
        let responses = json!({
            "model": "gpt-5.5", "store": false, "stream": true, "instructions": "be brief",
            "tools": [{"type": "function", "name": "shell", "parameters": {}},
                      {"type": "custom", "name": "apply_patch"}, {"type": "local_shell"},
                      {"type": "tool_search"}],
            "input": [{"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "fix it"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}],
        });
        assert_eq!(refusal(Api::Responses, &responses), None);
    }

    #[test]
    fn what_reaches_past_the_sandbox_or_the_meter_is_refused() {
        let cases = [
            (
                Api::Messages,
                json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "web_search_20250305",
            ),
            (
                Api::Messages,
                json!({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}),
                "web_fetch",
            ),
            (
                Api::Messages,
                json!({"tools": [{"type": "code_execution_20250825", "name": "x"}]}),
                "code_execution",
            ),
            (
                Api::Messages,
                json!({"mcp_servers": [{"type": "url", "url": "https://evil.example/mcp"}]}),
                "mcp_servers",
            ),
            (Api::Messages, json!({"container": "c1"}), "container"),
            (
                Api::Messages,
                json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://evil.example/?q=secret"}}]}]}),
                "`url` source",
            ),
            (
                Api::Messages,
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}]}),
                "`file` source",
            ),
            (Api::Responses, json!({"background": true}), "background"),
            (
                Api::Responses,
                json!({"previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (
                Api::Responses,
                json!({"conversation": "conv_1"}),
                "conversation",
            ),
            (
                Api::Responses,
                json!({"tools": [{"type": "mcp", "server_url": "https://evil.example"}]}),
                "`mcp`",
            ),
            (
                Api::Responses,
                json!({"tools": [{"type": "web_search"}]}),
                "`web_search`",
            ),
            (
                Api::Responses,
                json!({"tools": [{"name": "untyped"}]}),
                "readable `type`",
            ),
            (
                Api::Responses,
                json!({"input": [{"type": "message", "content": [{"type": "input_image", "image_url": "https://evil.example/x.png"}]}]}),
                "image_url",
            ),
            (
                Api::Responses,
                json!({"input": [{"type": "message", "content": [{"type": "input_file", "file_id": "file-1"}]}]}),
                "file_id",
            ),
            (
                Api::Messages,
                json!(["not", "an", "object"]),
                "not a JSON object",
            ),
        ];
        for (api, body, named) in cases {
            let why = refusal(api, &body).unwrap_or_else(|| panic!("forwarded: {body}"));
            assert!(why.contains(named), "{why} should name {named}");
        }
    }
}
