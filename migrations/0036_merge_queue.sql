-- The merge queue: one entry per task whose change is ready to merge (CI green on its head), from
-- then until it merges or leaves the pipeline's merge path. Its place is the time it entered (a
-- task in `approval_hold` keeps it); the order is the task's priority (lower first), then fewer
-- changed files shared with queued siblings, then that time. One entry per repository at a time
-- holds the merge slot (`merging`): it is brought up to date with the default branch, passes CI
-- on that combination and merges; the unique index below makes a second holder impossible, so
-- several controller replicas never merge two changes of one repository at once.
CREATE TABLE merge_queue (
    task_id       bigint PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    repo_id       bigint NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    entered_at    timestamptz NOT NULL DEFAULT now(),
    -- A person approved the merge (or the repository is full-auto): the controller's own merges
    -- of the default branch into the branch keep the approval.
    approved      boolean NOT NULL DEFAULT false,
    -- The head commit CI was last seen green on; only this commit may merge.
    green_head    text,
    -- Holds the repository's merge slot.
    merging       boolean NOT NULL DEFAULT false,
    -- Since when it holds the slot (its turn is bounded).
    slot_at       timestamptz,
    -- Times the controller brought the branch up to date while queued.
    refreshes     integer NOT NULL DEFAULT 0 CHECK (refreshes >= 0)
);
CREATE UNIQUE INDEX merge_queue_one_slot ON merge_queue (repo_id) WHERE merging;
CREATE INDEX merge_queue_repo ON merge_queue (repo_id, entered_at);

-- A task that leaves the merge path (merged, failed, canceled, re-queued for its agent, sent back
-- to review) leaves the queue in the same transaction, with a timeline entry saying why. The
-- trigger's name sorts after `tasks_after_change`, so the entry follows the transition's own.
CREATE FUNCTION tasks_merge_queue_leave() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gone merge_queue%ROWTYPE;
    why  text;
BEGIN
    DELETE FROM merge_queue WHERE task_id = NEW.id RETURNING * INTO gone;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    why := CASE
        WHEN NEW.status = 'merged' THEN 'merged'
        WHEN NEW.status = 'canceled' THEN 'canceled'
        WHEN NEW.status = 'failed' THEN 'failed'
        WHEN NEW.status = 'queued' AND NEW.ev_reason = 'merge_conflict' THEN 'conflict'
        WHEN NEW.status = 'queued' THEN 'back_to_agent'
        WHEN NEW.status = 'pr_open' THEN 'review_again'
        ELSE 'removed'
    END;
    INSERT INTO task_events (task_id, actor, from_status, to_status, reason, attempt, data)
    VALUES (NEW.id, 'controller', NEW.status, NEW.status, 'merge_queue_left', NEW.attempt,
            jsonb_build_object('why', why, 'entered_at', gone.entered_at,
                               'refreshes', gone.refreshes, 'held_slot', gone.merging,
                               'step', NEW.ev_reason));
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_merge_queue_leave AFTER UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          AND NEW.status NOT IN ('ci_wait', 'approval_hold', 'merging'))
    EXECUTE FUNCTION tasks_merge_queue_leave();
