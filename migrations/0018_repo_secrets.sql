-- Setup-only secrets: values an operator stores for a repository (a private registry's token,
-- say) that its environment's setup may read when the repository's .backporcher.toml grants them
-- by name. They reach the runner with each lease, are given to setup as a read-only file (never
-- the container's environment or command, so no snapshot keeps them), are scrubbed from every log,
-- and never reach the agent or the API (which lists names only).
CREATE TABLE repo_secrets (
    repo_id     bigint NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name ~ '^[A-Z_][A-Z0-9_]{0,63}$'),
    value       text NOT NULL CHECK (length(value) BETWEEN 12 AND 65536),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repo_id, name)
);
