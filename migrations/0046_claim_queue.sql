-- The queue and its claims leave the task row. Until now a claim rewrote the wide `tasks` row
-- (`queued` → `leased`, the lease columns, a timeline row): never a HOT update, an entry in each of
-- its indexes, its CHECKs and row triggers — most of a claim's cost. Now:
--
-- * `task_queue` holds the queued tasks that no claim holds, in claim order (priority, age). The
--   tasks triggers keep it: a task that becomes `queued` joins it, one that stops being `queued`
--   leaves it, a priority change follows.
-- * A claim takes its candidates out of `task_queue` and writes a narrow `task_claims` row (the
--   runner, the attempt it will be, the lease token and expiry, the grant, the plan run). The task
--   row is neither written nor locked, and stays `queued`. Claimers lock the queue row (SKIP
--   LOCKED): it is what a claim deletes, so a claimer whose snapshot still saw a task another has
--   just claimed finds its queue row gone and passes it by; a change of the task row that takes
--   it out of the queue deletes the queue row too, and so waits for the claim.
-- * The runner's first call on the lease (it reports the agent starting before anything else)
--   starts the claim (`claim_start`): the task row takes the lease — `queued → leased` with its
--   timeline row, as a claim wrote it before — and the runner's step follows. A claim is thus
--   one narrow insert; the task row's lease is written on the runner's call, off the claim's
--   path.
-- * A claim that is never started lapses at its expiry (the reaper, `claims_lapse`), goes with
--   its runner, or goes when its task leaves the queue (a cancel, a failure) or is held: its slot
--   and grant come back, and a task still queued rejoins `task_queue`.
--
-- Every count of a runner's, a repository's or the fleet's live leases counts started leases
-- (`leased`, `running`, `verifying`) and claims not yet started.

CREATE TABLE task_queue (
    task_id    bigint PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    priority   integer NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX task_queue_order ON task_queue (priority, created_at, task_id);
-- Every claim deletes rows at the head of the order index, and the next claims step over their
-- entries until a vacuum removes them: the table is vacuumed after every thousand claims rather
-- than after a fifth of its size.
ALTER TABLE task_queue SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);

-- No foreign key: a claim pays for no referential check. A task's deletion takes its claim
-- (`tasks_claims_gone`).
CREATE TABLE task_claims (
    task_id          bigint PRIMARY KEY,
    repo_id          bigint NOT NULL,
    runner_id        bigint NOT NULL,
    -- The attempt the lease is (the task's attempt + 1).
    attempt          integer NOT NULL,
    token            uuid NOT NULL,
    leased_at        timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    granted_microusd bigint NOT NULL,
    -- The attempt when it is a read-only plan run (the plan gate), else NULL.
    plan_attempt     integer
);
CREATE INDEX task_claims_expiry ON task_claims (expires_at);
CREATE INDEX task_claims_runner ON task_claims (runner_id);

INSERT INTO task_queue (task_id, priority, created_at)
SELECT id, priority, created_at FROM tasks WHERE status = 'queued';

-- A claim that goes without starting: its grant and slot come back (the order every lease end
-- takes its locks in: the fleet's row, the repository's, the slot), and its task, if still
-- queued, rejoins the queue. The caller holds the task row's lock (or the task is gone).
CREATE FUNCTION claim_release(c task_claims, requeue boolean) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF c.granted_microusd > 0 THEN
        UPDATE settings SET day_granted_microusd = GREATEST(day_granted_microusd - c.granted_microusd, 0)
         WHERE budget_global_daily_microusd IS NOT NULL;
        UPDATE repos SET day_granted_microusd = GREATEST(day_granted_microusd - c.granted_microusd, 0)
         WHERE id = c.repo_id;
    END IF;
    PERFORM repo_slot_free(c.task_id);
    IF requeue THEN
        INSERT INTO task_queue (task_id, priority, created_at)
        SELECT id, priority, created_at FROM tasks WHERE id = c.task_id AND status = 'queued'
        ON CONFLICT (task_id) DO NOTHING;
        PERFORM pg_notify('bp_queue', c.repo_id::text);
    END IF;
END $$;

-- Drops the claim on `task`, if any (see `claim_release`).
CREATE FUNCTION claim_drop(task bigint, requeue boolean) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    c task_claims;
BEGIN
    DELETE FROM task_claims WHERE task_id = task RETURNING * INTO c;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM claim_release(c, requeue);
END $$;

-- The queue follows the task rows. A task leaving `queued` takes a claim not yet started with it
-- (canceled, failed, fanned out by another path: the runner's start then finds no lease); a hold
-- placed on a queued task takes its claim back (the task stays queued, held).
CREATE FUNCTION tasks_queue_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_queue (task_id, priority, created_at)
        VALUES (NEW.id, NEW.priority, NEW.created_at) ON CONFLICT (task_id) DO NOTHING;
    ELSIF NEW.status <> 'queued' THEN
        DELETE FROM task_queue WHERE task_id = NEW.id;
        PERFORM claim_drop(NEW.id, false);
    ELSIF OLD.status <> 'queued' THEN
        INSERT INTO task_queue (task_id, priority, created_at)
        VALUES (NEW.id, NEW.priority, NEW.created_at)
        ON CONFLICT (task_id) DO UPDATE SET priority = EXCLUDED.priority;
    ELSE
        IF NEW.priority <> OLD.priority THEN
            UPDATE task_queue SET priority = NEW.priority WHERE task_id = NEW.id;
        END IF;
        IF NEW.hold_kind IS NOT NULL AND NEW.hold_kind IS DISTINCT FROM OLD.hold_kind THEN
            PERFORM claim_drop(NEW.id, true);
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_queue_insert AFTER INSERT ON tasks
    FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION tasks_queue_follow();
CREATE TRIGGER tasks_queue_update AFTER UPDATE OF status, priority, hold_kind ON tasks
    FOR EACH ROW WHEN (OLD.status = 'queued' OR NEW.status = 'queued')
    EXECUTE FUNCTION tasks_queue_follow();

-- Tasks deleted (their repository removed, a bench's reset) take their claims with them: the
-- runners' capacity, slots and grants come back at once rather than at the claims' expiry. Once
-- a statement, so that a bulk delete of ended tasks (retention) costs one probe per task.
CREATE FUNCTION tasks_claims_gone() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    c task_claims;
BEGIN
    FOR c IN DELETE FROM task_claims tc USING gone WHERE tc.task_id = gone.id RETURNING tc.* LOOP
        PERFORM claim_release(c, false);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_claims_gone AFTER DELETE ON tasks REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_claims_gone();

-- Starts the claim (task, attempt, token, runner): the task row takes the lease, `queued →
-- leased` with the `claimed` timeline row. False when there is no such claim (started already,
-- lapsed, dropped, or never made). A claim whose task is no longer claimable (held meanwhile,
-- moved on) goes, its slot and grant returned. Locks the task row, then the claim.
CREATE FUNCTION claim_start(p_task bigint, p_attempt integer, p_token uuid, p_runner bigint)
    RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    c task_claims;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM task_claims WHERE task_id = p_task AND token = p_token) THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM tasks WHERE id = p_task FOR UPDATE;
    DELETE FROM task_claims
     WHERE task_id = p_task AND attempt = p_attempt AND token = p_token AND runner_id = p_runner
    RETURNING * INTO c;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE tasks t SET status = 'leased', attempt = c.attempt, lease_token = c.token,
        runner_id = c.runner_id, leased_at = c.leased_at, lease_expires_at = c.expires_at,
        hold_kind = NULL, hold_until = NULL, hold_by = NULL, granted_microusd = c.granted_microusd,
        started_at = COALESCE(t.started_at, c.leased_at), plan_attempt = c.plan_attempt,
        ev_seq = t.ev_seq + 1, ev_actor = 'runner:' || c.runner_id, ev_reason = 'claimed',
        ev_data = jsonb_build_object('granted_microusd', c.granted_microusd)
     WHERE t.id = p_task AND t.status = 'queued' AND t.attempt = c.attempt - 1
       AND (t.hold_kind IS NULL OR (t.hold_kind IN ('circuit_breaker', 'reflection') AND t.hold_until <= now()));
    IF FOUND THEN
        RETURN true;
    END IF;
    PERFORM claim_release(c, true);
    RETURN false;
END $$;

-- Claims that go without starting: expired ones (`expired`) or all of a runner's (`runner`), at
-- most `lim`. A task another transaction is changing is left to the next pass. Returns each
-- claim's task and runner.
CREATE FUNCTION claims_lapse(lim bigint, runner bigint, expired boolean)
    RETURNS TABLE (l_task bigint, l_runner bigint) LANGUAGE plpgsql AS $$
DECLARE
    k record;
    c task_claims;
BEGIN
    FOR k IN SELECT task_id FROM task_claims
              WHERE (runner IS NULL OR runner_id = runner) AND (NOT expired OR expires_at < now())
              ORDER BY expires_at LIMIT lim LOOP
        PERFORM 1 FROM tasks WHERE id = k.task_id FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND AND EXISTS (SELECT 1 FROM tasks WHERE id = k.task_id);
        DELETE FROM task_claims
         WHERE task_id = k.task_id AND (runner IS NULL OR runner_id = runner)
           AND (NOT expired OR expires_at < now())
        RETURNING * INTO c;
        CONTINUE WHEN NOT FOUND;
        PERFORM claim_release(c, true);
        l_task := c.task_id;
        l_runner := c.runner_id;
        RETURN NEXT;
    END LOOP;
END $$;

-- 0022's slot repair, with claims not yet started counted as the active tasks they are.
CREATE OR REPLACE FUNCTION repo_slots_sync(repo bigint) RETURNS void LANGUAGE plpgsql AS $$
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
    UPDATE repo_slots s SET task_id = NULL
     WHERE s.repo_id = repo AND s.task_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = s.task_id AND repo_id = repo
                         AND status IN ('leased', 'running', 'verifying'))
       AND NOT EXISTS (SELECT 1 FROM task_claims c WHERE c.task_id = s.task_id);
    DELETE FROM repo_slots WHERE repo_id = repo AND slot > cap AND task_id IS NULL;
    INSERT INTO repo_slots (repo_id, slot)
    SELECT repo, g FROM generate_series(1, cap) g ON CONFLICT DO NOTHING;
    FOR high IN SELECT slot FROM repo_slots WHERE repo_id = repo AND slot > cap ORDER BY slot LOOP
        free := (SELECT slot FROM repo_slots WHERE repo_id = repo AND slot <= cap AND task_id IS NULL
                 ORDER BY slot LIMIT 1);
        EXIT WHEN free IS NULL;
        DELETE FROM repo_slots WHERE repo_id = repo AND slot = free;
        UPDATE repo_slots SET slot = free WHERE repo_id = repo AND slot = high.slot;
    END LOOP;
    FOR t IN SELECT a.id FROM (
                SELECT id FROM tasks WHERE repo_id = repo AND status IN ('leased', 'running', 'verifying')
                UNION SELECT task_id FROM task_claims WHERE repo_id = repo) a
              WHERE NOT EXISTS (SELECT 1 FROM repo_slots WHERE task_id = a.id)
              ORDER BY a.id LOOP
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

-- 0022's fence, waiting also for the claims of the repository that are going now.
CREATE OR REPLACE FUNCTION repo_limits_fence(repo bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('backporcher.repo_limits'), (repo & 2147483647)::integer);
    PERFORM 1 FROM tasks WHERE repo_id = repo AND status IN ('leased', 'running', 'verifying')
        FOR SHARE;
    PERFORM 1 FROM tasks WHERE id IN (SELECT task_id FROM task_claims WHERE repo_id = repo)
        FOR SHARE;
END $$;

-- 0022's recount of a repository's grants, with the claims not yet started.
CREATE OR REPLACE FUNCTION repos_budget_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.day_granted_microusd := CASE WHEN NEW.budget_daily_microusd IS NULL THEN 0 ELSE
        (SELECT COALESCE(sum(granted_microusd), 0) FROM tasks
          WHERE repo_id = NEW.id AND status IN ('leased', 'running', 'verifying'))
        + (SELECT COALESCE(sum(granted_microusd), 0) FROM task_claims WHERE repo_id = NEW.id) END;
    RETURN NEW;
END $$;

-- 0041's batch claim, writing claims instead of leases: candidates come from `task_queue` in
-- claim order (their task rows locked, SKIP LOCKED, and read for the rules), and the batch ends
-- by taking its winners out of the queue and writing their claims, each returned as the task row
-- it will be once started (leased, the attempt after, the lease's token and expiry). A runner's
-- capacity counts its claims not yet started.
CREATE OR REPLACE FUNCTION claim_batch(p_runner bigint[], p_labels jsonb, p_capacity integer[], p_lease float8[])
    RETURNS TABLE (b_req integer, b_lost boolean, b_amount bigint, b_task tasks)
    LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_n integer := cardinality(p_runner);
    v_open boolean[] := array_fill(false, ARRAY[cardinality(p_runner)]);
    v_lost boolean[] := array_fill(false, ARRAY[cardinality(p_runner)]);
    v_backends jsonb := '{}';
    v_any_backends text[] := '{}';
    v_open_labels jsonb;
    v_got_task bigint[] := '{}';
    v_got_req integer[] := '{}';
    v_got_amount bigint[] := '{}';
    v_got_plan boolean[] := '{}';
    v_locked bigint[] := '{}';
    v_skip_repos bigint[] := '{}';
    v_repo bigint[] := '{}';
    v_repo_ok boolean[] := '{}';
    v_repo_left bigint[] := '{}';
    v_repo_grant bigint[] := '{}';
    v_budget_repo bigint;
    v_fleet_set boolean;
    v_fleet_locked boolean := false;
    v_fleet_left bigint;
    v_fleet_grant bigint := 0;
    v_task_default bigint;
    v_want integer;
    v_found integer;
    v_head boolean := true;
    v_rounds integer := 0;
    v_first integer := 1;
    v_pick integer;
    v_s integer;
    v_slot integer;
    v_amount bigint;
    v_cur refcursor;
    v_cur_open boolean := false;
    v_now timestamptz := now();
    c record;
    q record;
BEGIN
    IF (SELECT queue_paused FROM settings) THEN
        RETURN;
    END IF;
    SELECT budget_global_daily_microusd IS NOT NULL, budget_task_microusd
      INTO v_fleet_set, v_task_default FROM settings;

    FOR q IN
        SELECT k.i::integer AS i, ru.backends,
               ru.state = 'active' AND (k.cap IS NULL OR
                 row_number() OVER (PARTITION BY k.runner ORDER BY k.i)
                   <= k.cap - (SELECT count(*) FROM tasks h WHERE h.runner_id = k.runner
                                 AND h.status IN ('leased', 'running', 'verifying'))
                            - (SELECT count(*) FROM task_claims hc WHERE hc.runner_id = k.runner)) AS ok
          FROM unnest(p_runner, p_capacity) WITH ORDINALITY AS k(runner, cap, i)
          JOIN runners ru ON ru.id = k.runner
    LOOP
        v_open[q.i] := q.ok;
        IF q.ok THEN
            v_backends := v_backends || jsonb_build_object(q.i::text, to_jsonb(q.backends));
            v_any_backends := v_any_backends || q.backends;
        END IF;
    END LOOP;

    <<rounds>>
    LOOP
        v_want := 0;
        v_open_labels := '[]';
        FOR i IN 1..v_n LOOP
            IF v_open[i] THEN
                v_want := v_want + 1;
                v_open_labels := v_open_labels || jsonb_build_array(p_labels -> (i - 1));
            END IF;
        END LOOP;
        EXIT WHEN v_want = 0 OR v_rounds >= 8;
        v_rounds := v_rounds + 1;
        IF v_head THEN
            v_cur_open := true;
            OPEN v_cur FOR
                WITH head AS MATERIALIZED (
                    SELECT task_id FROM task_queue ORDER BY priority, created_at, task_id LIMIT 32)
                SELECT t.id, t.repo_id, t.labels_required, t.required_labels, t.agent, t.cost_microusd,
                       COALESCE(t.budget_task_microusd, r.budget_task_microusd) AS task_budget,
                       r.max_concurrency AS cap, r.budget_daily_microusd AS daily,
                       t.parent_id IS NULL AND t.plan_state IS DISTINCT FROM 'approved' AND r.plan_gate AS plan_run
                  FROM head JOIN task_queue qu ON qu.task_id = head.task_id
                  JOIN tasks t ON t.id = qu.task_id JOIN repos r ON r.id = t.repo_id
                 WHERE t.status = 'queued'
                   AND (t.hold_kind IS NULL OR (t.hold_kind IN ('circuit_breaker', 'reflection') AND t.hold_until <= now()))
                   AND r.enabled AND (r.breaker_until IS NULL OR r.breaker_until <= now())
                   AND t.id <> ALL (v_locked) AND r.id <> ALL (v_skip_repos)
                   AND (NOT t.labels_required OR EXISTS (SELECT 1 FROM jsonb_array_elements(v_open_labels) l
                                                          WHERE l @> to_jsonb(t.required_labels)))
                   AND (t.agent = 'claude' OR t.agent = ANY (v_any_backends))
                   AND (r.max_concurrency IS NULL OR EXISTS (SELECT 1 FROM repo_slots s
                        WHERE s.repo_id = r.id AND s.task_id IS NULL AND s.slot <= r.max_concurrency))
                   AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN tasks dt ON dt.id = d.depends_on
                                    WHERE d.task_id = t.id AND (dt.status <> 'merged'
                                      AND (NOT d.soft OR dt.status NOT IN ('failed', 'canceled'))))
                 ORDER BY qu.priority, qu.created_at, qu.task_id
                 LIMIT v_want
                 FOR UPDATE OF qu SKIP LOCKED;
        ELSE
            v_cur_open := true;
            OPEN v_cur FOR
                SELECT t.id, t.repo_id, t.labels_required, t.required_labels, t.agent, t.cost_microusd,
                       COALESCE(t.budget_task_microusd, r.budget_task_microusd) AS task_budget,
                       r.max_concurrency AS cap, r.budget_daily_microusd AS daily,
                       t.parent_id IS NULL AND t.plan_state IS DISTINCT FROM 'approved' AND r.plan_gate AS plan_run
                  FROM task_queue qu JOIN tasks t ON t.id = qu.task_id JOIN repos r ON r.id = t.repo_id
                 WHERE t.status = 'queued'
                   AND (t.hold_kind IS NULL OR (t.hold_kind IN ('circuit_breaker', 'reflection') AND t.hold_until <= now()))
                   AND r.enabled AND (r.breaker_until IS NULL OR r.breaker_until <= now())
                   AND t.id <> ALL (v_locked) AND r.id <> ALL (v_skip_repos)
                   AND (NOT t.labels_required OR EXISTS (SELECT 1 FROM jsonb_array_elements(v_open_labels) l
                                                          WHERE l @> to_jsonb(t.required_labels)))
                   AND (t.agent = 'claude' OR t.agent = ANY (v_any_backends))
                   AND (r.max_concurrency IS NULL OR EXISTS (SELECT 1 FROM repo_slots s
                        WHERE s.repo_id = r.id AND s.task_id IS NULL AND s.slot <= r.max_concurrency))
                   AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN tasks dt ON dt.id = d.depends_on
                                    WHERE d.task_id = t.id AND (dt.status <> 'merged'
                                      AND (NOT d.soft OR dt.status NOT IN ('failed', 'canceled'))))
                 ORDER BY qu.priority, qu.created_at, qu.task_id
                 LIMIT v_want
                 FOR UPDATE OF qu SKIP LOCKED;
        END IF;
        v_found := 0;
        LOOP
            FETCH v_cur INTO c;
            EXIT WHEN NOT FOUND;
            v_found := v_found + 1;
            v_locked := v_locked || c.id;
            CONTINUE WHEN c.repo_id = ANY (v_skip_repos);
            v_pick := NULL;
            FOR i IN v_first..v_n LOOP
                IF v_open[i]
                   AND (NOT c.labels_required OR (p_labels -> (i - 1)) @> to_jsonb(c.required_labels))
                   AND (c.agent = 'claude' OR (v_backends -> i::text) ? c.agent) THEN
                    v_pick := i;
                    EXIT;
                END IF;
            END LOOP;
            CONTINUE WHEN v_pick IS NULL;

            v_s := array_position(v_repo, c.repo_id);
            IF v_s IS NULL THEN
                v_repo := v_repo || c.repo_id;
                v_s := cardinality(v_repo);
                v_repo_ok[v_s] := repo_claim_gate(c.repo_id, c.cap, c.daily);
                v_repo_grant[v_s] := 0;
                v_repo_left[v_s] := NULL;
                IF v_repo_ok[v_s] AND c.daily IS NOT NULL THEN
                    IF v_budget_repo IS NOT NULL THEN
                        v_repo_ok[v_s] := false;
                    ELSE
                        IF v_fleet_set AND NOT v_fleet_locked THEN
                            SELECT budget_left_today(budget_global_daily_microusd, spend_day, day_spent_microusd, day_granted_microusd)
                              INTO v_fleet_left FROM settings FOR UPDATE;
                            v_fleet_locked := true;
                            v_fleet_set := v_fleet_left IS NOT NULL;
                        END IF;
                        v_budget_repo := c.repo_id;
                        SELECT budget_left_today(r.budget_daily_microusd, r.spend_day, r.day_spent_microusd, r.day_granted_microusd)
                          INTO v_amount FROM repos r WHERE r.id = c.repo_id FOR UPDATE;
                        v_repo_left[v_s] := v_amount;
                    END IF;
                END IF;
            END IF;
            IF NOT v_repo_ok[v_s] THEN
                v_lost[v_pick] := true;
                v_skip_repos := v_skip_repos || c.repo_id;
                CONTINUE;
            END IF;
            IF v_fleet_set AND NOT v_fleet_locked THEN
                SELECT budget_left_today(budget_global_daily_microusd, spend_day, day_spent_microusd, day_granted_microusd)
                  INTO v_fleet_left FROM settings FOR UPDATE;
                v_fleet_locked := true;
                v_fleet_set := v_fleet_left IS NOT NULL;
            END IF;
            EXIT rounds WHEN v_fleet_set AND v_fleet_left <= 0;
            IF v_repo_left[v_s] IS NOT NULL AND v_repo_left[v_s] <= 0 THEN
                v_skip_repos := v_skip_repos || c.repo_id;
                CONTINUE;
            END IF;

            IF c.cap IS NOT NULL THEN
                SELECT s.slot INTO v_slot FROM repo_slots s
                 WHERE s.repo_id = c.repo_id AND s.task_id IS NULL AND s.slot <= c.cap
                   AND NOT EXISTS (SELECT 1 FROM repo_slots h WHERE h.repo_id = c.repo_id AND h.slot > c.cap)
                 ORDER BY s.slot LIMIT 1
                 FOR UPDATE OF s SKIP LOCKED;
                IF NOT FOUND THEN
                    v_skip_repos := v_skip_repos || c.repo_id;
                    IF EXISTS (SELECT 1 FROM repo_slots s WHERE s.repo_id = c.repo_id AND s.task_id IS NULL
                                AND s.slot <= c.cap) THEN
                        v_lost[v_pick] := true;
                    END IF;
                    CONTINUE;
                END IF;
                UPDATE repo_slots SET task_id = c.id WHERE repo_id = c.repo_id AND slot = v_slot;
            END IF;

            v_amount := GREATEST(LEAST(COALESCE(c.task_budget, v_task_default) - c.cost_microusd,
                                       COALESCE(v_repo_left[v_s], 9223372036854775807),
                                       COALESCE(v_fleet_left, 9223372036854775807)), 0);
            IF v_repo_left[v_s] IS NOT NULL THEN
                v_repo_left[v_s] := v_repo_left[v_s] - v_amount;
                v_repo_grant[v_s] := v_repo_grant[v_s] + v_amount;
            END IF;
            IF v_fleet_set THEN
                v_fleet_left := v_fleet_left - v_amount;
                v_fleet_grant := v_fleet_grant + v_amount;
            END IF;
            v_open[v_pick] := false;
            v_got_task := v_got_task || c.id;
            v_got_req := v_got_req || v_pick;
            v_got_amount := v_got_amount || v_amount;
            v_got_plan := v_got_plan || c.plan_run;
            WHILE v_first <= v_n AND NOT v_open[v_first] LOOP
                v_first := v_first + 1;
            END LOOP;
        END LOOP;
        CLOSE v_cur;
        v_cur_open := false;
        IF v_found < v_want THEN
            EXIT rounds WHEN NOT v_head;
            v_head := false;
        END IF;
    END LOOP;
    IF v_cur_open THEN
        CLOSE v_cur;
    END IF;

    IF v_budget_repo IS NOT NULL THEN
        UPDATE repos r SET
            day_spent_microusd = CASE WHEN r.spend_day = (now() AT TIME ZONE 'UTC')::date THEN r.day_spent_microusd ELSE 0 END,
            spend_day = (now() AT TIME ZONE 'UTC')::date,
            day_granted_microusd = r.day_granted_microusd + v_repo_grant[array_position(v_repo, v_budget_repo)]
         WHERE r.id = v_budget_repo;
    END IF;
    IF v_fleet_set AND cardinality(v_got_task) > 0 THEN
        UPDATE settings SET day_granted_microusd = day_granted_microusd + v_fleet_grant,
            day_spent_microusd = CASE WHEN spend_day = (now() AT TIME ZONE 'UTC')::date THEN day_spent_microusd ELSE 0 END,
            spend_day = (now() AT TIME ZONE 'UTC')::date
         WHERE budget_global_daily_microusd IS NOT NULL;
    END IF;

    -- The claims, in one statement: the winners leave the queue, their claims are written, and
    -- each is returned as the task row it will be once started (leased, the attempt after, the
    -- lease's token and expiry, the grant, holds cleared). Plan gate: until its plan is
    -- approved, a task of a gated repository is claimed only for a read-only plan run
    -- (candidates run under their parent's approved plan).
    RETURN QUERY
    WITH w AS (
        SELECT * FROM unnest(v_got_task, v_got_req, v_got_amount, v_got_plan) AS w(id, req, amount, plan)),
    gone AS (DELETE FROM task_queue tq USING w WHERE tq.task_id = w.id),
    claimed AS (
        INSERT INTO task_claims (task_id, repo_id, runner_id, attempt, token, leased_at, expires_at,
                                 granted_microusd, plan_attempt)
        SELECT w.id, t.repo_id, p_runner[w.req], t.attempt + 1, gen_random_uuid(), v_now,
               v_now + make_interval(secs => p_lease[w.req]), w.amount,
               CASE WHEN w.plan THEN t.attempt + 1 END
          FROM w JOIN tasks t ON t.id = w.id
        RETURNING *)
    SELECT w.req, false, w.amount,
           jsonb_populate_record(t, jsonb_build_object('status', 'leased', 'attempt', cl.attempt,
               'lease_token', cl.token, 'runner_id', cl.runner_id, 'leased_at', cl.leased_at,
               'lease_expires_at', cl.expires_at, 'hold_kind', NULL, 'hold_until', NULL, 'hold_by', NULL,
               'granted_microusd', cl.granted_microusd, 'started_at', COALESCE(t.started_at, cl.leased_at),
               'plan_attempt', cl.plan_attempt))
      FROM w JOIN claimed cl ON cl.task_id = w.id JOIN tasks t ON t.id = w.id
    UNION ALL
    SELECT i, true, NULL::bigint, NULL::tasks FROM generate_series(1, v_n) i WHERE v_lost[i] AND v_open[i];
END $$;
