-- The runner protocol: the controller's CA, what runner processes report, and result bundles.

-- The CA that signs runner certificates and the controller's server certificates. One row,
-- shared by every controller replica.
CREATE TABLE pki_ca (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    cert_pem    text NOT NULL,
    key_pem     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE runners
    ADD COLUMN reported_labels text[] NOT NULL DEFAULT '{}',
    ADD COLUMN boot_id text;

-- The git bundle a runner produced for an attempt; the controller checks and pushes it.
CREATE TABLE task_bundles (
    task_id     bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    size        bigint NOT NULL,
    sha256      text NOT NULL,
    data        bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt)
);
