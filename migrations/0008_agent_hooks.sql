-- Whether the agent CLI may run the hooks, helpers and MCP servers the repository's default
-- branch configures (`.claude/settings.json`, `.mcp.json`). Off by default: instructions and other
-- settings from the default branch are used either way; nothing is ever read from a task branch.
ALTER TABLE repos ADD COLUMN agent_hooks boolean NOT NULL DEFAULT false;
