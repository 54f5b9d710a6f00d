-- The forge and the controller's pipeline stages.

-- Settings GitHub needs per repository.
ALTER TABLE repos
    ADD COLUMN merge_method text NOT NULL DEFAULT 'squash'
        CHECK (merge_method IN ('squash', 'merge', 'rebase')),
    -- Checks that do not count (bots, optional jobs), by name.
    ADD COLUMN ci_ignore text[] NOT NULL DEFAULT '{}',
    -- What a PR without any check means once `no_checks_grace_secs` passed: merge as if green,
    -- hold for a human, or keep waiting.
    ADD COLUMN no_checks text NOT NULL DEFAULT 'merge' CHECK (no_checks IN ('merge', 'hold', 'wait')),
    ADD COLUMN no_checks_grace_secs integer NOT NULL DEFAULT 30 CHECK (no_checks_grace_secs >= 0),
    -- The poller's conditional-request state.
    ADD COLUMN poll_etag text;

ALTER TABLE tasks
    -- GitHub milestones (labels, comments) are derived from the timeline: the last event applied.
    ADD COLUMN forge_event_id bigint NOT NULL DEFAULT 0,
    ADD COLUMN forge_synced_seq bigint NOT NULL DEFAULT -1,
    -- Controller stages (push, review, CI, merge) are work items: due time and a short lease so
    -- one controller replica works on a task's stage at a time.
    ADD COLUMN stage_due_at timestamptz,
    ADD COLUMN stage_lease_until timestamptz,
    ADD COLUMN stage_tries integer NOT NULL DEFAULT 0,
    -- What the pushed branch changes (for the overlap check and the reviewer).
    ADD COLUMN changed_files text[] NOT NULL DEFAULT '{}',
    -- The reviewer's last verdict.
    ADD COLUMN review jsonb;

CREATE INDEX tasks_forge_pending ON tasks (id)
    WHERE source = 'issue' AND forge_synced_seq < ev_seq;
CREATE INDEX tasks_stage_due ON tasks (stage_due_at)
    WHERE status IN ('pushing', 'pr_open', 'reviewing', 'ci_wait', 'merging');

-- Feedback on a task's PR already acted on (`comment:<id>` or `review:<id>`).
CREATE TABLE task_feedback (
    task_id     bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    key         text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, key)
);

-- Entering a stage status makes the stage due now; leaving one clears its lease.
CREATE FUNCTION tasks_stage_schedule() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NEW.status IN ('pushing', 'pr_open', 'reviewing', 'ci_wait', 'merging') THEN
            NEW.stage_due_at := now();
            NEW.stage_tries := 0;
        ELSE
            NEW.stage_due_at := NULL;
        END IF;
        NEW.stage_lease_until := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_stage_schedule BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_stage_schedule();

-- Wake the stage workers and the forge sync at once.
CREATE FUNCTION tasks_stage_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('pushing', 'pr_open', 'reviewing', 'ci_wait', 'merging')
       AND (TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status
            OR NEW.stage_due_at IS DISTINCT FROM OLD.stage_due_at) THEN
        PERFORM pg_notify('bp_stage', NEW.id::text);
    END IF;
    IF NEW.source = 'issue' AND NEW.forge_synced_seq < NEW.ev_seq THEN
        PERFORM pg_notify('bp_forge', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_stage_notify AFTER INSERT OR UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_stage_notify();
