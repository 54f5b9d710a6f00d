-- A second agent CLI (runner/src/agent.rs: Claude Code and the Codex CLI). Each repository names
-- the backend its tasks start with and whether a task that the model API rate-limited on one
-- backend may go on with the other; a task carries its own (`tasks.agent`, from the repository,
-- an issue label `codex`/`claude`, the API or the dashboard), and only the two known names.
ALTER TABLE repos
    ADD COLUMN agent text NOT NULL DEFAULT 'claude' CHECK (agent IN ('claude', 'codex')),
    ADD COLUMN agent_fallback boolean NOT NULL DEFAULT false;

ALTER TABLE tasks ADD CONSTRAINT tasks_agent_known CHECK (agent IN ('claude', 'codex'));
