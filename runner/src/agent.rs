//! Agent backends behind one trait: how to start the agent CLI in the sandbox (prompt from a file,
//! never argv), and how to read what it prints into structured events. Claude Code is the backend
//! today; codex, gemini and opencode fit the same shape (a command, an environment, a line parser).

use std::path::Path;

use serde_json::Value;

use crate::agent_config::AgentConfig;

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
    /// Name (`claude`, …).
    fn name(&self) -> &'static str;
    /// The command to run in the sandbox; the prompt is at `/task/prompt.md`.
    fn command(&self) -> Vec<String>;
    /// Environment for the command (besides the gateway URL and token).
    fn env(&self, model: &str) -> Vec<String>;
    /// Reads one output line.
    fn parse_line(&self, line: &str) -> Vec<AgentEvent>;
    /// Writes the trusted configuration into `dir` (mounted at [`CONFIG_DIR`]) in the form this
    /// CLI reads; the command must make the CLI ignore the copies in its working tree.
    fn write_config(&self, config: &AgentConfig, dir: &Path) -> std::io::Result<()>;
}

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
}
