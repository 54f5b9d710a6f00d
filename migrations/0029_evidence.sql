-- Evidence records: one signed record per attempt that reached push (docs/evidence.md), and the
-- controller's Ed25519 signing key, kept like the runner CA (one row, created once, shared by
-- replicas).

CREATE TABLE evidence_key (
    id           int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    pkcs8        bytea NOT NULL,
    public_key   bytea NOT NULL CHECK (length(public_key) = 32),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE evidence_records (
    task_id      bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt      int NOT NULL,
    head_sha     text NOT NULL,
    -- The record exactly as signed: these bytes are the canonical form.
    record       text NOT NULL,
    -- Ed25519 over the UTF-8 bytes of `record`, and the SHA-256 of the public key that made it.
    signature    bytea NOT NULL CHECK (length(signature) = 64),
    key_id       text NOT NULL,
    -- The agent's transcript in backporcher.trajectory/1; the record holds its SHA-256.
    trajectory   text NOT NULL,
    -- Whether the PR (body or a comment) names this record yet.
    announced    boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt)
);
