-- Best-of-N: a task may run N attempts ("candidates") in parallel and push only the best one.
--
-- A candidate is a task row of its own (`parent_id` set, `source = 'candidate'`, no issue number),
-- so leases, heartbeats, cancel, reaping and completion fence it exactly like any task, by
-- (task, attempt, lease token). Its parent waits in `candidates` (not on a runner, not claimable)
-- while they run, and a candidate ends in `finished` with the reason its run ended — never in
-- `failed` or `canceled`, so it counts in no statistic, breaker or cascade of its own.

ALTER TABLE repos
    ADD COLUMN best_of integer NOT NULL DEFAULT 1 CHECK (best_of BETWEEN 1 AND 5),
    -- Models the candidates cycle through (empty, or a blank entry: the task's model).
    ADD COLUMN best_of_models text[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(best_of_models) <= 5);

ALTER TABLE tasks
    -- N: 1 is a single attempt (no candidates, today's path).
    ADD COLUMN best_of integer NOT NULL DEFAULT 1 CHECK (best_of BETWEEN 1 AND 5),
    ADD COLUMN best_of_models text[] NOT NULL DEFAULT '{}',
    ADD COLUMN parent_id bigint REFERENCES tasks (id) ON DELETE CASCADE,
    -- A candidate's place among its siblings (1..N) and the parent's attempt it belongs to.
    ADD COLUMN candidate integer,
    ADD COLUMN parent_attempt integer,
    -- A candidate's share of its parent's task budget, fixed when the candidates are made: what
    -- was left, split evenly, so grants to parallel candidates never together exceed it.
    ADD COLUMN budget_task_microusd bigint CHECK (budget_task_microusd >= 0),
    ADD CONSTRAINT tasks_candidate_shape CHECK (
        (parent_id IS NULL) = (candidate IS NULL)
        AND (parent_id IS NULL) = (parent_attempt IS NULL)
        AND (parent_id IS NULL OR (best_of = 1 AND issue_number IS NULL)));

CREATE INDEX tasks_candidates ON tasks (parent_id, parent_attempt) WHERE parent_id IS NOT NULL;

ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check CHECK (status IN (
    'new', 'queued', 'leased', 'running', 'verifying', 'candidates', 'pushing', 'pr_open',
    'reviewing', 'ci_wait', 'approval_hold', 'merging', 'merged', 'failed', 'canceled',
    'finished'));
-- `finished` only for candidates, `candidates` only for parents.
ALTER TABLE tasks ADD CONSTRAINT tasks_candidate_status CHECK (
    (status <> 'finished' OR parent_id IS NOT NULL) AND (status <> 'candidates' OR best_of > 1));

ALTER TABLE tasks DROP CONSTRAINT tasks_source_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_source_check CHECK (source IN ('issue', 'api', 'candidate'));

-- A finished candidate carries the reason its run ended, like a terminal task.
DO $$
DECLARE c text;
BEGIN
    SELECT conname INTO c FROM pg_constraint
     WHERE conrelid = 'tasks'::regclass AND contype = 'c'
       AND pg_get_constraintdef(oid) LIKE '%terminal_reason IS NOT NULL%';
    EXECUTE format('ALTER TABLE tasks DROP CONSTRAINT %I', c);
END $$;
ALTER TABLE tasks ADD CONSTRAINT tasks_terminal_has_reason
    CHECK ((status IN ('merged', 'failed', 'canceled', 'finished')) = (terminal_reason IS NOT NULL));

-- 0001's, with `finished` ending a (candidate) task too.
CREATE OR REPLACE FUNCTION tasks_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.ev_seq = OLD.ev_seq AND (
        NEW.status IS DISTINCT FROM OLD.status
        OR NEW.hold_kind IS DISTINCT FROM OLD.hold_kind
        OR NEW.cancel_requested_at IS DISTINCT FROM OLD.cancel_requested_at) THEN
        RAISE EXCEPTION 'task % changed from % to % without a timeline entry', OLD.id, OLD.status, NEW.status;
    END IF;
    IF NEW.ev_seq <> OLD.ev_seq THEN
        NEW.updated_at := now();
    END IF;
    IF NEW.status IN ('merged', 'failed', 'canceled', 'finished')
       AND OLD.status NOT IN ('merged', 'failed', 'canceled', 'finished') THEN
        NEW.finished_at := now();
    ELSIF NEW.status NOT IN ('merged', 'failed', 'canceled', 'finished') THEN
        NEW.finished_at := NULL;
    END IF;
    RETURN NEW;
END $$;

-- A parent that leaves `candidates` — ranked, over its cost cap, canceled, failed, past its
-- deadline — stops every candidate still live: a queued one finishes at once, one on a runner
-- gets a cancel request (which the `bp_cancel` notification pushes to its runner).
CREATE FUNCTION tasks_candidates_stop() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tasks c SET
        status = CASE WHEN c.status IN ('leased', 'running', 'verifying') THEN c.status ELSE 'finished' END,
        terminal_reason = CASE WHEN c.status IN ('leased', 'running', 'verifying') THEN NULL
                               ELSE 'canceled_by_user' END,
        cancel_requested_at = now(),
        cancel_requested_by = format('task:%s', NEW.id),
        lease_token = CASE WHEN c.status IN ('leased', 'running', 'verifying') THEN c.lease_token END,
        lease_expires_at = CASE WHEN c.status IN ('leased', 'running', 'verifying') THEN c.lease_expires_at END,
        ev_seq = c.ev_seq + 1, ev_actor = 'system',
        ev_reason = CASE WHEN c.status IN ('leased', 'running', 'verifying') THEN 'cancel_requested'
                         ELSE 'candidate_stopped' END,
        ev_data = jsonb_build_object('parent', NEW.id, 'parent_status', NEW.status)
     WHERE c.parent_id = NEW.id
       AND c.status NOT IN ('merged', 'failed', 'canceled', 'finished')
       AND c.cancel_requested_at IS NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_candidates_stop AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status = 'candidates' AND NEW.status <> 'candidates')
    EXECUTE FUNCTION tasks_candidates_stop();

-- How a best-of-N task chose its winner: one row per round of candidates (the parent's attempt),
-- each candidate's inputs, its rank and why it lost, and how long the ranking took.
CREATE TABLE task_rankings (
    task_id      bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    ranked_at    timestamptz NOT NULL DEFAULT now(),
    rank_micros  bigint NOT NULL,
    winner       bigint REFERENCES tasks (id),
    reviewer     text NOT NULL,
    entries      jsonb NOT NULL,
    PRIMARY KEY (task_id, attempt)
);

-- Live tasks (activity, statistics) leave finished candidates out, as the written-out lists do.
DROP INDEX tasks_live;
CREATE INDEX tasks_live ON tasks (repo_id) WHERE status NOT IN ('merged', 'failed', 'canceled', 'finished');

-- The reaper's settling sweep finds the waiting parents without reading the table.
CREATE INDEX tasks_waiting_on_candidates ON tasks (id) WHERE status = 'candidates';
