-- Replicas: any number of controllers on this database, with no duplicate effect outside it.
--
-- Work with an effect outside the database (a GitHub comment, a model call, a chat message) is
-- claimed before it is done: one row per piece of work, held by one controller process until it
-- is released or its time runs out (a holder that died). A claim is taken atomically by
-- INSERT … ON CONFLICT, so two replicas that saw the same work never both do it.
CREATE TABLE work_claims (
    kind    text NOT NULL,
    key     bigint NOT NULL,
    holder  uuid NOT NULL,
    until   timestamptz NOT NULL,
    PRIMARY KEY (kind, key)
);

-- One learning per outcome of a task, whichever replica records it.
ALTER TABLE learnings ADD COLUMN outcome_at timestamptz;
CREATE UNIQUE INDEX learnings_once ON learnings (task_id, outcome_at)
    WHERE task_id IS NOT NULL AND outcome_at IS NOT NULL;

-- A stage lease names the controller process holding it: only the holder renews or puts it back,
-- so a holder whose lease lapsed (and was taken by another replica) learns it lost the stage.
ALTER TABLE tasks ADD COLUMN stage_lease_holder uuid;
