-- Operator parity. The global approval mode remembers who changed it and when, and which value
-- the configuration (BACKPORCHER_APPROVAL_MODE / `approval_mode`) last applied at a start: a
-- configured value is applied when it differs from that one, so a change made at run time
-- (PATCH /api/settings) survives restarts until the configured value itself changes.
ALTER TABLE settings
    ADD COLUMN approval_mode_by         text,
    ADD COLUMN approval_mode_at         timestamptz,
    ADD COLUMN approval_mode_configured text
        CHECK (approval_mode_configured IN ('full-auto', 'review-merge', 'review-all'));

-- The cleanup sweep: when the PR and branch an ended task left on GitHub were last dealt with
-- (closed and deleted, or found gone). A task swept before its latest end (requeued, ended
-- again) is swept again.
ALTER TABLE tasks ADD COLUMN swept_at timestamptz;
