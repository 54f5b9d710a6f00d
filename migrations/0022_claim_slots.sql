-- Claims stop writing the repository's row. Until now every claim incremented
-- `repos.active_tasks` (and the day's grant) on the task's repository row, so all claims of one
-- repository took turns on that row lock. Now:
--
-- * The per-repository cap is a set of slot rows: a repository with `max_concurrency` = N has
--   slots 1..N; a claim takes a free one (`FOR UPDATE SKIP LOCKED`, so claims of the repository do
--   not queue behind each other) and the task's lease end frees it. A repository without a cap has
--   no slots and a claim of it takes none.
-- * The repository's row is written by a claim only while it has a daily budget (as the fleet's
--   row already was): the grant is checked and added under its lock.
-- * A change of a repository's cap or daily budget is fenced against its claims: a claim holds a
--   shared advisory lock on the repository (taken after it locked its candidate) and re-reads the
--   cap and the budget it acted on with a fresh snapshot; the setter takes the lock exclusively
--   and waits for the leases ending now ([`repo_limits_fence`]), so the slots and the day's grant
--   it rebuilds count every running attempt, and no claim acts on the figures it replaced.
-- * `repos.active_tasks` goes: readers count the repository's active tasks (an index scan of
--   `tasks_repo_status`).

CREATE TABLE repo_slots (
    repo_id bigint NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    slot    integer NOT NULL CHECK (slot > 0),
    -- The active task holding the slot; NULL: free.
    task_id bigint UNIQUE,
    PRIMARY KEY (repo_id, slot)
);

-- Brings a repository's slots in step with its cap and its active tasks: no cap, no slots;
-- otherwise slots 1..cap, each active task in one (lowest numbers first), and any active tasks
-- past the cap (a cap lowered while over) in slots numbered above it, which no claim can use and
-- which go as their tasks end. Called with the repository fenced ([`repo_limits_fence`]) or at
-- migration time.
CREATE FUNCTION repo_slots_sync(repo bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    cap integer := (SELECT max_concurrency FROM repos WHERE id = repo);
    t bigint;
    high record;
    free integer;
BEGIN
    IF cap IS NULL THEN
        DELETE FROM repo_slots WHERE repo_id = repo;
        RETURN;
    END IF;
    -- A slot whose task is not active any more is free (a repair; the tasks trigger frees them).
    UPDATE repo_slots s SET task_id = NULL
     WHERE s.repo_id = repo AND s.task_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = s.task_id AND repo_id = repo
                         AND status IN ('leased', 'running', 'verifying'));
    DELETE FROM repo_slots WHERE repo_id = repo AND slot > cap AND task_id IS NULL;
    INSERT INTO repo_slots (repo_id, slot)
    SELECT repo, g FROM generate_series(1, cap) g ON CONFLICT DO NOTHING;
    -- Holders above the cap move down into free slots.
    FOR high IN SELECT slot FROM repo_slots WHERE repo_id = repo AND slot > cap ORDER BY slot LOOP
        free := (SELECT slot FROM repo_slots WHERE repo_id = repo AND slot <= cap AND task_id IS NULL
                 ORDER BY slot LIMIT 1);
        EXIT WHEN free IS NULL;
        DELETE FROM repo_slots WHERE repo_id = repo AND slot = free;
        UPDATE repo_slots SET slot = free WHERE repo_id = repo AND slot = high.slot;
    END LOOP;
    -- Active tasks without a slot (the cap was just set): the lowest free slot, else one above.
    FOR t IN SELECT id FROM tasks
              WHERE repo_id = repo AND status IN ('leased', 'running', 'verifying')
                AND NOT EXISTS (SELECT 1 FROM repo_slots WHERE task_id = tasks.id)
              ORDER BY id LOOP
        UPDATE repo_slots SET task_id = t
         WHERE repo_id = repo
           AND slot = (SELECT slot FROM repo_slots WHERE repo_id = repo AND task_id IS NULL
                       ORDER BY slot LIMIT 1);
        IF NOT FOUND THEN
            INSERT INTO repo_slots (repo_id, slot, task_id)
            VALUES (repo, (SELECT max(slot) FROM repo_slots WHERE repo_id = repo) + 1, t);
        END IF;
    END LOOP;
END $$;

-- The setter's side of the fence: no claim of the repository is under way or can start until the
-- transaction ends, and every lease of it that is ending now has ended (its slot and grant
-- returned). Lock order: this fence, then the repository's row.
CREATE FUNCTION repo_limits_fence(repo bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('backporcher.repo_limits'), (repo & 2147483647)::integer);
    PERFORM 1 FROM tasks WHERE repo_id = repo AND status IN ('leased', 'running', 'verifying')
        FOR SHARE;
END $$;

-- The claim's side: true when no setter of the repository is under way and the cap and daily
-- budget the claim read are still the repository's (read with a fresh snapshot: VOLATILE); the
-- shared lock then keeps them so until the claim commits.
CREATE FUNCTION repo_claim_gate(repo bigint, cap integer, daily bigint) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(hashtext('backporcher.repo_limits'), (repo & 2147483647)::integer) THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT 1 FROM repos WHERE id = repo
                     AND max_concurrency IS NOT DISTINCT FROM cap
                     AND budget_daily_microusd IS NOT DISTINCT FROM daily);
END $$;

-- A cap set, changed or removed: the slots follow.
CREATE FUNCTION repos_cap_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM repo_slots_sync(NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER repos_cap_changed AFTER UPDATE OF max_concurrency ON repos
    FOR EACH ROW WHEN (OLD.max_concurrency IS DISTINCT FROM NEW.max_concurrency)
    EXECUTE FUNCTION repos_cap_changed();

-- A daily budget set or changed: what running attempts hold is counted afresh (claims and lease
-- ends keep the figure only while a budget is set). Cleared: nothing is counted.
CREATE FUNCTION repos_budget_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.day_granted_microusd := CASE WHEN NEW.budget_daily_microusd IS NULL THEN 0 ELSE
        (SELECT COALESCE(sum(granted_microusd), 0) FROM tasks
          WHERE repo_id = NEW.id AND status IN ('leased', 'running', 'verifying')) END;
    RETURN NEW;
END $$;
CREATE TRIGGER repos_budget_changed BEFORE UPDATE OF budget_daily_microusd ON repos
    FOR EACH ROW WHEN (OLD.budget_daily_microusd IS DISTINCT FROM NEW.budget_daily_microusd)
    EXECUTE FUNCTION repos_budget_changed();

-- A lease that ends frees its slot. A slot above the cap (the cap was lowered) goes; otherwise a
-- holder above the cap, if any, moves into it (renumbered in place, so that its own lease end
-- still finds it), and the repository stays at or under its cap.
CREATE FUNCTION repo_slot_free(task bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    repo bigint;
    freed integer;
    cap integer;
    high integer;
BEGIN
    UPDATE repo_slots SET task_id = NULL WHERE task_id = task RETURNING repo_id, slot INTO repo, freed;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    cap := (SELECT max_concurrency FROM repos WHERE id = repo);
    IF cap IS NULL OR freed > cap THEN
        DELETE FROM repo_slots WHERE repo_id = repo AND slot = freed;
        RETURN;
    END IF;
    SELECT slot INTO high FROM repo_slots WHERE repo_id = repo AND slot > cap
     ORDER BY slot DESC LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        DELETE FROM repo_slots WHERE repo_id = repo AND slot = freed;
        UPDATE repo_slots SET slot = freed WHERE repo_id = repo AND slot = high;
    END IF;
END $$;

-- After: timeline row, freed slot, cascade, notification (0006's, with the slot instead of the
-- active count).
CREATE OR REPLACE FUNCTION tasks_after_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_active boolean;
    is_active  boolean;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_events (task_id, actor, from_status, to_status, reason, attempt, data)
        VALUES (NEW.id, COALESCE(NEW.ev_actor, 'system'), NULL, NEW.status,
                COALESCE(NEW.ev_reason, 'created'), NEW.attempt, NEW.ev_data);
        IF NEW.status = 'queued' THEN
            PERFORM pg_notify('bp_queue', NEW.repo_id::text);
        END IF;
        RETURN NULL;
    END IF;

    IF NEW.ev_seq <> OLD.ev_seq THEN
        INSERT INTO task_events (task_id, actor, from_status, to_status, reason, attempt, data)
        VALUES (NEW.id, COALESCE(NEW.ev_actor, 'system'), OLD.status, NEW.status,
                COALESCE(NEW.ev_reason, 'updated'), NEW.attempt, NEW.ev_data);
    END IF;

    was_active := OLD.status IN ('leased', 'running', 'verifying');
    is_active := NEW.status IN ('leased', 'running', 'verifying');
    IF was_active AND NOT is_active THEN
        PERFORM repo_slot_free(NEW.id);
        PERFORM pg_notify('bp_queue', NEW.repo_id::text);
    END IF;

    -- A task that ends without merging takes every task waiting on it down with it.
    IF NEW.status IN ('failed', 'canceled') AND OLD.status NOT IN ('failed', 'canceled') THEN
        UPDATE tasks d
           SET status = 'failed',
               terminal_reason = 'dependency_failed',
               error = format('dependency #%s %s', NEW.id, NEW.status),
               lease_token = NULL,
               lease_expires_at = NULL,
               ev_seq = d.ev_seq + 1,
               ev_actor = 'system',
               ev_reason = 'dependency_failed',
               ev_data = jsonb_build_object('dependency', NEW.id)
          FROM task_dependencies td
         WHERE td.depends_on = NEW.id
           AND NOT td.soft
           AND d.id = td.task_id
           AND d.status NOT IN ('merged', 'failed', 'canceled');
    END IF;

    IF (NEW.status = 'queued' AND (OLD.status <> 'queued'
            OR (OLD.hold_kind IS NOT NULL AND NEW.hold_kind IS NULL)))
       OR (NEW.status = 'merged' AND OLD.status <> 'merged') THEN
        PERFORM pg_notify('bp_queue', NEW.repo_id::text);
    END IF;
    IF NEW.cancel_requested_at IS NOT NULL AND OLD.cancel_requested_at IS NULL AND is_active THEN
        PERFORM pg_notify('bp_cancel', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;

-- An attempt that stops running returns its grant: to the fleet's row and to the repository's,
-- each only while it has a daily budget (otherwise neither claims nor this count it).
CREATE OR REPLACE FUNCTION tasks_release_grant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('leased', 'running', 'verifying')
       AND NEW.status NOT IN ('leased', 'running', 'verifying')
       AND OLD.granted_microusd > 0 THEN
        UPDATE settings SET day_granted_microusd = GREATEST(day_granted_microusd - OLD.granted_microusd, 0)
         WHERE budget_global_daily_microusd IS NOT NULL;
        UPDATE repos SET day_granted_microusd = GREATEST(day_granted_microusd - OLD.granted_microusd, 0)
         WHERE id = NEW.repo_id AND budget_daily_microusd IS NOT NULL;
        NEW.granted_microusd := 0;
    END IF;
    RETURN NEW;
END $$;

-- Today's state carried over: slots for the capped repositories (their active tasks in them),
-- no grant counted where no daily budget is set.
SELECT repo_slots_sync(id) FROM repos WHERE max_concurrency IS NOT NULL;
UPDATE repos SET day_granted_microusd = 0 WHERE budget_daily_microusd IS NULL;

ALTER TABLE repos DROP COLUMN active_tasks;
