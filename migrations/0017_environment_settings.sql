-- A repository's environment may be set by the operator: a local base image and setup commands.
-- Set, they win over what the repository's default branch describes (.backporcher.toml,
-- devcontainer.json); the runner says which it used and what it overrode.
ALTER TABLE repos
    ADD COLUMN env_image text,
    ADD COLUMN env_setup text[] NOT NULL DEFAULT '{}';
