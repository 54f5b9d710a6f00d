//! Agent backends behind one trait: how to start the agent CLI in the sandbox (prompt from a file,
//! never argv), which model API it speaks through the gateway and how it is pointed there, and how
//! to read what it prints into structured events and the task log. Two backends: Claude Code
//! ([`Claude`], the Messages API) and the Codex CLI ([`Codex`], the Responses API); gemini and
//! opencode would fit the same shape (a command, an environment, a line parser).

use std::path::Path;

use serde_json::{Value, json};

use crate::agent_config::AgentConfig;
use crate::gateway::Api;

/// Where the trusted agent configuration is mounted in the container (read-only, under `/task`).
pub const CONFIG_DIR: &str = "/task/agent";

/// Something the agent reported.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// The session started.
    Init {
        /// Model actually used.
        model: String,
    },
    /// Assistant text.
    Text(String),
    /// A tool call.
    ToolUse {
        /// Tool name.
        name: String,
    },
    /// A tool's result.
    ToolResult {
        /// Whether the tool failed.
        is_error: bool,
    },
    /// The final result.
    Result {
        /// Whether the run failed.
        is_error: bool,
        /// Final text.
        text: String,
        /// Cost the CLI computed (informational; the gateway meters what counts).
        cost_usd: f64,
        /// Turns taken.
        turns: i64,
        /// HTTP status of an API error, if the run ended on one.
        api_error_status: Option<i64>,
    },
    /// The model API is rate limiting.
    RateLimited(String),
}

/// An agent CLI.
pub trait AgentBackend: Send + Sync {
    /// Name (`claude`, `codex`): the task's `agent`.
    fn name(&self) -> &'static str;
    /// The model API it speaks: the only one the gateway forwards for its tasks.
    fn api(&self) -> Api {
        Api::Messages
    }
    /// The command to run in the sandbox; the prompt is at `/task/prompt.md`.
    fn command(&self) -> Vec<String>;
    /// Environment for the command (besides the gateway URL and token).
    fn env(&self, model: &str) -> Vec<String>;
    /// Extra environment of a read-only plan run (plan gate): what turns the CLI's editing
    /// tools off. The workspace is mounted read-only either way; this is the second fence.
    fn plan_env(&self) -> Vec<String> {
        Vec::new()
    }
    /// The variables that point the CLI at the gateway at `url` with the per-task `token` as
    /// its API key (never a real credential).
    fn gateway_env(&self, url: &str, token: &str) -> Vec<String> {
        vec![
            format!("ANTHROPIC_BASE_URL={url}"),
            format!("ANTHROPIC_API_KEY={token}"),
        ]
    }
    /// Reads one output line.
    fn parse_line(&self, line: &str) -> Vec<AgentEvent>;
    /// The line as it goes into the task log, in the stream-json shape the dashboard renders as a
    /// transcript (Claude Code's own; other CLIs' lines are translated).
    fn log_line(&self, line: &str) -> String {
        line.to_owned()
    }
    /// Writes the trusted configuration into `dir` (mounted at [`CONFIG_DIR`]) in the form this
    /// CLI reads; the command must make the CLI ignore the copies in its working tree.
    fn write_config(&self, config: &AgentConfig, dir: &Path) -> std::io::Result<()>;
}

/// Claude Code's tools that change files: off in a plan run (`--disallowedTools`).
pub const PLAN_DISALLOWED_TOOLS: &str = "Edit,Write,MultiEdit,NotebookEdit";

/// Claude Code in print mode with stream-json output.
#[derive(Debug, Clone, Copy, Default)]
pub struct Claude;

impl AgentBackend for Claude {
    fn name(&self) -> &'static str {
        "claude"
    }

    fn command(&self) -> Vec<String> {
        vec![
            "bash".into(),
            "-c".into(),
            // Permissions are bypassed only here, inside the sandbox. Settings, instructions and
            // MCP servers come from the trusted configuration only: `--setting-sources user`
            // ignores the working tree's `.claude/`, `CLAUDE.md` and `.mcp.json`, and the user
            // scope (a fresh tmpfs home) gets the default branch's instructions.
            concat!(
                "mkdir -p \"$HOME/.claude\" && ",
                "if [ -f /task/agent/CLAUDE.md ]; then cp /task/agent/CLAUDE.md \"$HOME/.claude/CLAUDE.md\"; fi && ",
                "exec claude -p --output-format stream-json --verbose --model \"$BP_MODEL\" ",
                "--dangerously-skip-permissions --setting-sources user ",
                "--settings /task/agent/settings.json --strict-mcp-config --mcp-config /task/agent/mcp.json ",
                "${BP_DISALLOWED_TOOLS:+--disallowedTools \"$BP_DISALLOWED_TOOLS\"} ",
                "< /task/prompt.md"
            )
            .into(),
        ]
    }

    fn env(&self, model: &str) -> Vec<String> {
        vec![
            format!("BP_MODEL={model}"),
            "DISABLE_TELEMETRY=1".into(),
            "DISABLE_AUTOUPDATER=1".into(),
            "DISABLE_ERROR_REPORTING=1".into(),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1".into(),
            "IS_SANDBOX=1".into(),
        ]
    }

    fn plan_env(&self) -> Vec<String> {
        vec![format!("BP_DISALLOWED_TOOLS={PLAN_DISALLOWED_TOOLS}")]
    }

    fn write_config(&self, config: &AgentConfig, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("settings.json"), config.settings.to_string())?;
        std::fs::write(dir.join("mcp.json"), config.mcp.to_string())?;
        if let Some(text) = &config.instructions {
            std::fs::write(dir.join("CLAUDE.md"), text)?;
        }
        Ok(())
    }

    fn parse_line(&self, line: &str) -> Vec<AgentEvent> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            let lower = line.to_ascii_lowercase();
            if lower.contains("rate limit") || lower.contains("429") {
                return vec![AgentEvent::RateLimited(line.trim().to_owned())];
            }
            return Vec::new();
        };
        let s = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match v.get("type").and_then(Value::as_str) {
            Some("system") if s(&v, "subtype") == "init" => vec![AgentEvent::Init {
                model: s(&v, "model"),
            }],
            Some("assistant") => v
                .pointer("/message/content")
                .and_then(Value::as_array)
                .map(|blocks| {
                    blocks
                        .iter()
                        .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                            Some("text") => Some(AgentEvent::Text(s(b, "text"))),
                            Some("tool_use") => Some(AgentEvent::ToolUse { name: s(b, "name") }),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Some("user") => v
                .pointer("/message/content")
                .and_then(Value::as_array)
                .map(|blocks| {
                    blocks
                        .iter()
                        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                        .map(|b| AgentEvent::ToolResult {
                            is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Some("result") => {
                let status = v.get("api_error_status").and_then(Value::as_i64);
                let mut out = Vec::new();
                if status == Some(429) {
                    out.push(AgentEvent::RateLimited(s(&v, "result")));
                }
                out.push(AgentEvent::Result {
                    is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(true),
                    text: s(&v, "result"),
                    cost_usd: v
                        .get("total_cost_usd")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0),
                    turns: v.get("num_turns").and_then(Value::as_i64).unwrap_or(0),
                    api_error_status: status,
                });
                out
            }
            _ => Vec::new(),
        }
    }
}

/// The Codex CLI (`codex exec --json`), speaking the Responses API to the gateway through a
/// model provider its configuration names; the sandbox is the container, so its own sandbox and
/// approvals are off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Codex;

/// The Codex model used when the task names a Claude model (triage picks among those).
pub const CODEX_DEFAULT_MODEL: &str = "gpt-5.5";
/// The Codex model for a task triaged as cheap (`haiku`).
pub const CODEX_SMALL_MODEL: &str = "gpt-5-mini";

/// The model Codex runs for a task's `model`: an OpenAI name as given, a Claude one mapped by tier.
pub fn codex_model(model: &str) -> &str {
    let m = model.to_ascii_lowercase();
    if m.starts_with("gpt-") || m.starts_with("o3") || m.starts_with("o4") || m.starts_with("codex")
    {
        model
    } else if m.contains("haiku") {
        CODEX_SMALL_MODEL
    } else {
        CODEX_DEFAULT_MODEL
    }
}

/// The configuration Codex gets in its fresh home: the gateway as its only model provider (the
/// base URL is added on the command line from the environment), no web search, no update check,
/// project instructions from the trusted copy only (`project_doc_max_bytes = 0` ignores the work
/// tree's `AGENTS.md`), few retries so a rate limit ends the run and the task can fall back.
const CODEX_CONFIG: &str = r#"# Written by the runner; the work tree's configuration is never read.
model_provider = "backporcher"
web_search = "disabled"
check_for_update_on_startup = false
project_doc_max_bytes = 0

[model_providers.backporcher]
name = "backporcher model gateway"
env_key = "BP_GATEWAY_TOKEN"
wire_api = "responses"
request_max_retries = 1
stream_max_retries = 1

[history]
persistence = "none"
"#;

impl AgentBackend for Codex {
    fn name(&self) -> &'static str {
        "codex"
    }

    fn api(&self) -> Api {
        Api::Responses
    }

    fn command(&self) -> Vec<String> {
        vec![
            "bash".into(),
            "-c".into(),
            // Its own sandbox and approvals are off only here, inside ours. Configuration comes
            // from the trusted copy: `--ignore-rules` skips the work tree's exec-policy rules,
            // hooks are never trusted, and instructions come from the default branch's copy in
            // the (fresh tmpfs) home. The prompt comes on standard input (`-`).
            concat!(
                "export CODEX_HOME=\"$HOME/.codex\" && mkdir -p \"$CODEX_HOME\" && ",
                "cp /task/agent/codex.toml \"$CODEX_HOME/config.toml\" && ",
                "if [ -f /task/agent/AGENTS.md ]; then cp /task/agent/AGENTS.md \"$CODEX_HOME/AGENTS.md\"; fi && ",
                "exec codex exec --json --color never --skip-git-repo-check --ephemeral --ignore-rules ",
                "--dangerously-bypass-approvals-and-sandbox -C /workspace --model \"$BP_MODEL\" ",
                "-c \"model_providers.backporcher.base_url=\\\"$BP_GATEWAY_URL/v1\\\"\" ",
                "- < /task/prompt.md"
            )
            .into(),
        ]
    }

    fn env(&self, model: &str) -> Vec<String> {
        vec![
            format!("BP_MODEL={}", codex_model(model)),
            "NO_COLOR=1".into(),
        ]
    }

    fn gateway_env(&self, url: &str, token: &str) -> Vec<String> {
        vec![
            format!("BP_GATEWAY_URL={url}"),
            format!("BP_GATEWAY_TOKEN={token}"),
        ]
    }

    fn write_config(&self, config: &AgentConfig, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("codex.toml"), CODEX_CONFIG)?;
        if let Some(text) = &config.instructions {
            std::fs::write(dir.join("AGENTS.md"), text)?;
        }
        Ok(())
    }

    fn parse_line(&self, line: &str) -> Vec<AgentEvent> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return if rate_limit_text(line) {
                vec![AgentEvent::RateLimited(line.trim().to_owned())]
            } else {
                Vec::new()
            };
        };
        let s = |v: &Value, p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match v.get("type").and_then(Value::as_str) {
            Some("thread.started") => vec![AgentEvent::Init {
                model: String::new(),
            }],
            Some("item.started") => match v.pointer("/item/type").and_then(Value::as_str) {
                Some("command_execution") => vec![AgentEvent::ToolUse {
                    name: "exec_command".into(),
                }],
                Some("file_change") => vec![AgentEvent::ToolUse {
                    name: "apply_patch".into(),
                }],
                _ => Vec::new(),
            },
            Some("item.completed") => match v.pointer("/item/type").and_then(Value::as_str) {
                Some("agent_message") => vec![AgentEvent::Text(s(&v, "/item/text"))],
                Some("command_execution" | "file_change") => vec![AgentEvent::ToolResult {
                    is_error: item_failed(&v["item"]),
                }],
                _ => Vec::new(),
            },
            Some("error") if rate_limit_text(&s(&v, "/message")) => {
                vec![AgentEvent::RateLimited(s(&v, "/message"))]
            }
            Some("turn.completed") => vec![AgentEvent::Result {
                is_error: false,
                text: String::new(),
                cost_usd: 0.0,
                turns: 1,
                api_error_status: None,
            }],
            Some("turn.failed") => {
                let text = s(&v, "/error/message");
                let limited = rate_limit_text(&text);
                let mut out = Vec::new();
                if limited {
                    out.push(AgentEvent::RateLimited(text.clone()));
                }
                out.push(AgentEvent::Result {
                    is_error: true,
                    text,
                    cost_usd: 0.0,
                    turns: 1,
                    api_error_status: limited.then_some(429),
                });
                out
            }
            _ => Vec::new(),
        }
    }

    fn log_line(&self, line: &str) -> String {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return line.to_owned();
        };
        let item = &v["item"];
        let id = item.get("id").cloned().unwrap_or(Value::Null);
        let translated = match (
            v.get("type").and_then(Value::as_str),
            item.get("type").and_then(Value::as_str),
        ) {
            (Some("thread.started"), _) => json!({
                "type": "system", "subtype": "init", "agent": "codex",
                "session_id": v["thread_id"], "cwd": "/workspace",
            }),
            (Some("item.started"), Some("command_execution")) => json!({
                "type": "assistant", "message": {"id": id, "content": [{
                    "type": "tool_use", "id": id, "name": "exec_command",
                    "input": {"command": item["command"]}}]}}),
            (Some("item.started"), Some("file_change")) => json!({
                "type": "assistant", "message": {"id": id, "content": [{
                    "type": "tool_use", "id": id, "name": "apply_patch",
                    "input": {"changes": item["changes"]}}]}}),
            (Some("item.completed"), Some("command_execution" | "file_change")) => {
                let content = match item.get("aggregated_output").and_then(Value::as_str) {
                    Some(out) => out.to_owned(),
                    None => item["changes"]
                        .as_array()
                        .map(|c| {
                            c.iter()
                                .map(|c| {
                                    format!(
                                        "{} {}",
                                        c["kind"].as_str().unwrap_or("?"),
                                        c["path"].as_str().unwrap_or("?")
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join("\n")
                        })
                        .unwrap_or_default(),
                };
                json!({"type": "user", "message": {"content": [{
                    "type": "tool_result", "tool_use_id": id,
                    "is_error": item_failed(item), "content": content}]}})
            }
            (Some("item.completed"), Some("agent_message")) => json!({
                "type": "assistant", "message": {"id": id, "content": [{"type": "text", "text": item["text"]}]}}),
            (Some("item.completed"), Some("reasoning")) => json!({
                "type": "assistant", "message": {"id": id, "content": [{"type": "thinking", "thinking": item["text"]}]}}),
            (Some("item.completed"), Some("error")) | (Some("error"), _) => json!({
                "type": "system", "subtype": "error",
                "message": item.get("message").or(v.get("message")).cloned().unwrap_or(Value::Null)}),
            (Some("turn.completed"), _) => json!({
            "type": "result", "subtype": "success", "is_error": false, "num_turns": 1,
            "usage": {
                "input_tokens": v.pointer("/usage/input_tokens"),
                "cache_read_input_tokens": v.pointer("/usage/cached_input_tokens"),
                "output_tokens": v.pointer("/usage/output_tokens"),
            }}),
            (Some("turn.failed"), _) => json!({
                "type": "result", "subtype": "error", "is_error": true, "num_turns": 1,
                "result": v.pointer("/error/message")}),
            // Everything else (turn.started, item updates) is kept as Codex wrote it.
            _ => return line.to_owned(),
        };
        // One event a line, as written.
        let end = if line.ends_with('\n') { "\n" } else { "" };
        format!("{translated}{end}")
    }
}

/// Whether an item (a command, a patch) failed.
fn item_failed(item: &Value) -> bool {
    item.get("status").and_then(Value::as_str) == Some("failed")
        || item
            .get("exit_code")
            .and_then(Value::as_i64)
            .is_some_and(|c| c != 0)
}

/// Whether a message says the model API refused for a rate limit.
fn rate_limit_text(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("429") || lower.contains("rate limit") || lower.contains("too many requests")
}

/// The backends this runner offers: Claude Code always, the Codex CLI when the gateway has an
/// upstream for its API.
pub fn available(gateway: &crate::gateway::Gateway) -> Vec<std::sync::Arc<dyn AgentBackend>> {
    let mut all: Vec<std::sync::Arc<dyn AgentBackend>> = vec![std::sync::Arc::new(Claude)];
    if gateway.serves(Api::Responses) {
        all.push(std::sync::Arc::new(Codex));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_json_events_are_understood() {
        let c = Claude;
        assert_eq!(
            c.parse_line(r#"{"type":"system","subtype":"init","model":"claude-sonnet-5-5"}"#),
            vec![AgentEvent::Init {
                model: "claude-sonnet-5-5".into()
            }]
        );
        assert_eq!(
            c.parse_line(r#"{"type":"assistant","message":{"content":[{"type":"text","text":"hi"},{"type":"tool_use","name":"Write","input":{}}]}}"#),
            vec![AgentEvent::Text("hi".into()), AgentEvent::ToolUse { name: "Write".into() }]
        );
        assert_eq!(
            c.parse_line(r#"{"type":"user","message":{"content":[{"type":"tool_result","is_error":true,"content":"x"}]}}"#),
            vec![AgentEvent::ToolResult { is_error: true }]
        );
        let r = c.parse_line(r#"{"type":"result","subtype":"success","is_error":false,"result":"done","total_cost_usd":0.5,"num_turns":3,"api_error_status":null}"#);
        assert_eq!(
            r,
            vec![AgentEvent::Result {
                is_error: false,
                text: "done".into(),
                cost_usd: 0.5,
                turns: 3,
                api_error_status: None
            }]
        );
        let r = c.parse_line(
            r#"{"type":"result","is_error":true,"result":"API Error: 429","api_error_status":429}"#,
        );
        assert!(matches!(r[0], AgentEvent::RateLimited(_)));
        assert!(c.parse_line("not json").is_empty());
        assert!(matches!(
            c.parse_line("Error: 429 rate limit exceeded")[0],
            AgentEvent::RateLimited(_)
        ));
    }

    #[test]
    fn the_prompt_never_goes_on_argv() {
        let cmd = Claude.command().join(" ");
        assert!(cmd.contains("< /task/prompt.md"));
        assert!(
            cmd.contains("--setting-sources user"),
            "the working tree's settings are ignored"
        );
        assert!(
            cmd.contains("--strict-mcp-config"),
            "the working tree's MCP servers are ignored"
        );
        assert!(cmd.contains("--output-format stream-json --verbose"));
    }

    /// Lines the real `codex exec --json` (0.163.0) printed against a recording stub.
    const CODEX_RUN: [&str; 7] = [
        r#"{"type":"thread.started","thread_id":"01a23b25-2f16-7c02-833a-796128e6c831"}"#,
        r#"{"type":"turn.started"}"#,
        r#"{"type":"item.started","item":{"id":"item_0","type":"command_execution","command":"/bin/bash -lc 'echo hello > f.txt && cat f.txt'","aggregated_output":"","exit_code":null,"status":"in_progress"}}"#,
        r#"{"type":"item.completed","item":{"id":"item_0","type":"command_execution","command":"/bin/bash -lc 'echo hello > f.txt && cat f.txt'","aggregated_output":"hello\n","exit_code":0,"status":"completed"}}"#,
        r#"{"type":"item.completed","item":{"id":"item_1","type":"file_change","changes":[{"path":"/workspace/g.txt","kind":"add"}],"status":"completed"}}"#,
        r#"{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"All done."}}"#,
        r#"{"type":"turn.completed","usage":{"input_tokens":30,"cached_input_tokens":6,"cache_write_input_tokens":0,"output_tokens":15,"reasoning_output_tokens":0}}"#,
    ];

    #[test]
    fn codex_json_events_are_understood() {
        let c = Codex;
        let events: Vec<AgentEvent> = CODEX_RUN.iter().flat_map(|l| c.parse_line(l)).collect();
        assert_eq!(
            events,
            vec![
                AgentEvent::Init {
                    model: String::new()
                },
                AgentEvent::ToolUse {
                    name: "exec_command".into()
                },
                AgentEvent::ToolResult { is_error: false },
                AgentEvent::ToolResult { is_error: false },
                AgentEvent::Text("All done.".into()),
                AgentEvent::Result {
                    is_error: false,
                    text: String::new(),
                    cost_usd: 0.0,
                    turns: 1,
                    api_error_status: None
                },
            ]
        );
        // What the real binary printed when the API answered 429 past its retries.
        let failed = c.parse_line(
            r#"{"type":"turn.failed","error":{"message":"exceeded retry limit, last status: 429 Too Many Requests"}}"#,
        );
        assert!(matches!(failed[0], AgentEvent::RateLimited(_)));
        assert!(matches!(
            failed[1],
            AgentEvent::Result {
                is_error: true,
                api_error_status: Some(429),
                ..
            }
        ));
        let other =
            c.parse_line(r#"{"type":"turn.failed","error":{"message":"stream disconnected"}}"#);
        assert_eq!(other.len(), 1, "not a rate limit: {other:?}");
        assert_eq!(
            c.parse_line(r#"{"type":"item.completed","item":{"id":"i","type":"command_execution","exit_code":2,"status":"failed"}}"#),
            vec![AgentEvent::ToolResult { is_error: true }]
        );
    }

    #[test]
    fn codex_lines_become_the_transcript_the_dashboard_renders() {
        let c = Codex;
        let lines: Vec<Value> = CODEX_RUN
            .iter()
            .map(|l| serde_json::from_str(&c.log_line(l)).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "system");
        assert_eq!(lines[0]["subtype"], "init");
        assert_eq!(lines[1]["type"], "turn.started", "kept as written");
        assert_eq!(lines[2]["message"]["content"][0]["type"], "tool_use");
        assert_eq!(lines[2]["message"]["content"][0]["id"], "item_0");
        let result = &lines[3]["message"]["content"][0];
        assert_eq!(result["type"], "tool_result");
        assert_eq!(result["tool_use_id"], "item_0");
        assert_eq!(result["content"], "hello\n");
        assert_eq!(result["is_error"], false);
        assert_eq!(
            lines[4]["message"]["content"][0]["content"],
            "add /workspace/g.txt"
        );
        assert_eq!(lines[5]["message"]["content"][0]["text"], "All done.");
        assert_eq!(lines[6]["type"], "result");
        assert_eq!(lines[6]["subtype"], "success");
        assert_eq!(lines[6]["usage"]["output_tokens"], 15);
        assert_eq!(c.log_line("not json"), "not json");
        assert!(
            c.log_line(&format!("{}\n", CODEX_RUN[0])).ends_with("}\n"),
            "the line's end is kept"
        );
    }

    #[test]
    fn codex_sees_only_the_gateway_and_the_trusted_configuration() {
        let c = Codex;
        assert_eq!(c.api(), Api::Responses);
        let cmd = c.command().join(" ");
        assert!(
            cmd.contains("- < /task/prompt.md"),
            "the prompt comes on stdin"
        );
        assert!(cmd.contains("--ignore-rules"));
        assert!(!cmd.contains("--dangerously-bypass-hook-trust"));
        assert!(cmd.contains("--json"));
        assert!(cmd.contains("$BP_GATEWAY_URL/v1"));
        let env = c.gateway_env("http://gw:4180", "bpgw-x");
        assert_eq!(
            env,
            vec!["BP_GATEWAY_URL=http://gw:4180", "BP_GATEWAY_TOKEN=bpgw-x"]
        );
        assert!(CODEX_CONFIG.contains("env_key = \"BP_GATEWAY_TOKEN\""));
        assert!(CODEX_CONFIG.contains("wire_api = \"responses\""));
        assert!(CODEX_CONFIG.contains("web_search = \"disabled\""));
        assert!(CODEX_CONFIG.contains("project_doc_max_bytes = 0"));
        let dir = tempfile::tempdir().unwrap();
        c.write_config(
            &AgentConfig {
                instructions: Some("be brief".into()),
                ..AgentConfig::default()
            },
            dir.path(),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("AGENTS.md")).unwrap(),
            "be brief"
        );
        assert!(dir.path().join("codex.toml").exists());
    }

    #[test]
    fn codex_runs_an_openai_model_for_a_claude_one() {
        assert_eq!(codex_model("sonnet"), CODEX_DEFAULT_MODEL);
        assert_eq!(codex_model("claude-opus-4-5"), CODEX_DEFAULT_MODEL);
        assert_eq!(codex_model("haiku"), CODEX_SMALL_MODEL);
        assert_eq!(codex_model("gpt-5.5"), "gpt-5.5");
        assert_eq!(
            Codex.env("sonnet")[0],
            format!("BP_MODEL={CODEX_DEFAULT_MODEL}")
        );
    }
}
