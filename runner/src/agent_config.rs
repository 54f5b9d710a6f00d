//! The agent CLI's configuration from the repository — instructions (`CLAUDE.md`, `AGENTS.md`),
//! settings (`.claude/settings.json`) and MCP servers (`.mcp.json`) — taken only from the default
//! branch as this runner fetched it, never from a task branch being resumed or from anything an
//! agent wrote. The files are read from the runner's own mirror (regular blobs only, each capped),
//! and written for the container into a read-only directory; the agent CLI is told to ignore the
//! copies in its working tree (see [`crate::agent`]).
//!
//! Settings keys that run programs (hooks, helpers, status lines) and the project's MCP servers
//! are kept only when the repository's settings allow them; keys that would point the agent away
//! from the model gateway or its credential are always dropped.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::workspace::git;

/// Largest configuration file read.
pub const MAX_FILE: u64 = 256 * 1024;

/// Settings keys that name a program to run.
const COMMAND_KEYS: &[&str] = &[
    "hooks",
    "apiKeyHelper",
    "awsAuthRefresh",
    "awsCredentialExport",
    "otelHeadersHelper",
    "statusLine",
    "enableAllProjectMcpServers",
    "enabledMcpjsonServers",
];

/// Environment settings the runner owns (model endpoint and credentials).
const OWNED_ENV_PREFIXES: &[&str] = &["ANTHROPIC_", "CLAUDE_CODE_", "AWS_", "GOOGLE_", "OPENAI_"];

/// The trusted configuration of one attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentConfig {
    /// Project instructions (`CLAUDE.md`, else `AGENTS.md`), if the default branch has them.
    pub instructions: Option<String>,
    /// Settings to load.
    pub settings: Value,
    /// MCP servers to start (`{"mcpServers": {…}}`).
    pub mcp: Value,
    /// What was left out, for the task log.
    pub notes: Vec<String>,
}

/// Reads the configuration at `commit` of `mirror`; `allow_commands` keeps hooks and MCP servers.
pub async fn load(mirror: &Path, commit: &str, allow_commands: bool) -> AgentConfig {
    let mut cfg = AgentConfig {
        settings: json!({}),
        mcp: json!({"mcpServers": {}}),
        ..AgentConfig::default()
    };
    for name in ["CLAUDE.md", "AGENTS.md"] {
        match blob(mirror, commit, name).await {
            Ok(Some(text)) => {
                cfg.instructions = Some(text);
                break;
            }
            Ok(None) => {}
            Err(why) => cfg.notes.push(why),
        }
    }
    match blob(mirror, commit, ".claude/settings.json").await {
        Ok(Some(text)) => match serde_json::from_str::<Map<String, Value>>(&text) {
            Ok(mut settings) => {
                cfg.notes
                    .extend(filter_settings(&mut settings, allow_commands));
                cfg.settings = Value::Object(settings);
            }
            Err(e) => cfg.notes.push(format!(
                ".claude/settings.json on the default branch is not a JSON object ({e}); ignored"
            )),
        },
        Ok(None) => {}
        Err(why) => cfg.notes.push(why),
    }
    match blob(mirror, commit, ".mcp.json").await {
        Ok(Some(text)) if allow_commands => match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.get("mcpServers").is_some_and(Value::is_object) => cfg.mcp = v,
            _ => cfg
                .notes
                .push(".mcp.json on the default branch has no `mcpServers` object; ignored".into()),
        },
        Ok(Some(_)) => cfg.notes.push(
            ".mcp.json: MCP servers are off for this repository (its settings do not allow agent hooks)"
                .into(),
        ),
        Ok(None) => {}
        Err(why) => cfg.notes.push(why),
    }
    cfg
}

/// Drops what the repository may not configure; returns notes on what was dropped.
fn filter_settings(settings: &mut Map<String, Value>, allow_commands: bool) -> Vec<String> {
    let mut notes = Vec::new();
    if !allow_commands {
        for key in COMMAND_KEYS {
            if settings.remove(*key).is_some() {
                notes.push(format!(
                    ".claude/settings.json: `{key}` ignored (this repository's settings do not allow agent hooks)"
                ));
            }
        }
    }
    if let Some(Value::Object(env)) = settings.get_mut("env") {
        env.retain(|k, _| {
            let owned = OWNED_ENV_PREFIXES.iter().any(|p| k.starts_with(p));
            if owned {
                notes.push(format!(
                    ".claude/settings.json: env `{k}` ignored (the runner sets the model endpoint and credential)"
                ));
            }
            !owned
        });
    }
    for key in ["model", "forceLoginMethod", "permissions"] {
        if settings.remove(key).is_some() {
            notes.push(format!(
                ".claude/settings.json: `{key}` ignored (the runner decides it)"
            ));
        }
    }
    notes
}

/// A regular file at `path` in `commit`, if it exists and is under [`MAX_FILE`].
pub(crate) async fn blob(
    mirror: &Path,
    commit: &str,
    path: &str,
) -> Result<Option<String>, String> {
    let listing = git(mirror, &["ls-tree", "-l", commit, "--", path])
        .await
        .map_err(|e| format!("cannot read {path} from the default branch: {e:#}"))?;
    let Some(line) = listing.lines().next() else {
        return Ok(None);
    };
    // `<mode> <type> <object> <size>\t<path>`
    let mut fields = line.split_whitespace();
    let (mode, kind, object, size) = (
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
    );
    if kind != "blob" || !matches!(mode, "100644" | "100755") {
        return Err(format!(
            "{path} on the default branch is not a regular file (mode {mode}); ignored"
        ));
    }
    let size: u64 = size.parse().unwrap_or(u64::MAX);
    if size > MAX_FILE {
        return Err(format!(
            "{path} on the default branch is {size} bytes, over the {MAX_FILE}-byte limit; ignored"
        ));
    }
    let text = git(mirror, &["cat-file", "blob", object])
        .await
        .map_err(|e| format!("cannot read {path} from the default branch: {e:#}"))?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_lose_commands_unless_allowed_and_never_keep_the_endpoint() {
        let raw = json!({
            "hooks": {"SessionStart": []},
            "apiKeyHelper": "cat /secret",
            "env": {"ANTHROPIC_BASE_URL": "https://elsewhere", "RUST_LOG": "debug"},
            "model": "opus",
            "includeCoAuthoredBy": false
        });
        let mut s = raw.as_object().unwrap().clone();
        let notes = filter_settings(&mut s, false);
        assert_eq!(
            Value::Object(s),
            json!({"env": {"RUST_LOG": "debug"}, "includeCoAuthoredBy": false})
        );
        assert!(
            notes.iter().any(|n| n.contains("`hooks` ignored")),
            "{notes:?}"
        );
        let mut s = raw.as_object().unwrap().clone();
        filter_settings(&mut s, true);
        assert!(s.contains_key("hooks") && s.contains_key("apiKeyHelper"));
        assert!(
            !s["env"]
                .as_object()
                .unwrap()
                .contains_key("ANTHROPIC_BASE_URL")
        );
    }
}
