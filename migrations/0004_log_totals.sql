-- Bytes stored per attempt's log, so a runaway log is capped: chunks past the cap are
-- acknowledged but not stored, and counted here (the gap also shows in the sequence numbers).
CREATE TABLE log_totals (
    task_id         bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    bytes           bigint NOT NULL DEFAULT 0,
    dropped_chunks  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, attempt)
);
