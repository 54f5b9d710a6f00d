-- A claim reads only as much of the queue's head as it claims, reads each claimed task once, and
-- leaves the task as its runner will see it to the controller.
--
-- * The head's candidates were read in a materialized CTE of 32 queue rows, which gave the join
--   no order: every one of the 32 was joined to its task, repository and dependencies, then
--   sorted, for the few the batch needed. The head is now a subquery in claim order that the
--   join keeps (a nested loop from it), so the join stops at the batch's size (rows another
--   claimer holds, skipped, are read past, still at most 32).
-- * The claims' final statement read each claimed task twice (for its claim row, then for the
--   task as it will be once started); it now reads it once.
-- * `claim_batch` returned each task with its claim laid over it, built through JSON
--   (`jsonb_populate_record`, ~18 µs a row: a fifth of a batch's time). It now returns the task
--   row as it is and the claim row beside it; the controller lays the claim over the task as
--   `claim_start` will write it (a test compares the two).
--
-- * A claim commits durably where commits are asynchronous (`synchronous_commit = off` is
--   raised to `local` for a transaction that claims): a crash cannot take back a claim a runner
--   was told of, and the queue rows a claim deletes can be marked dead in the queue's index at
--   once, so the next claim's walk of the head does not pass them in the heap.
--
-- The rules of a claim are unchanged (0046 says them).

DROP FUNCTION claim_batch(bigint[], jsonb, integer[], float8[]);
CREATE FUNCTION claim_batch(p_runner bigint[], p_labels jsonb, p_capacity integer[], p_lease float8[])
    RETURNS TABLE (b_req integer, b_lost boolean, b_amount bigint, b_task tasks, b_claim task_claims)
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
                WITH head AS NOT MATERIALIZED (
                    SELECT task_id, priority, created_at FROM task_queue
                     ORDER BY priority, created_at, task_id LIMIT 32)
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
                 ORDER BY head.priority, head.created_at, head.task_id
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

    -- Claims commit durably even where commits are asynchronous: a runner is told of a claim
    -- that a crash of the database cannot take back, and the queue rows the claims delete are
    -- dead to the next claim at once (an asynchronous commit's deletions cannot be marked dead
    -- in the queue's index until its WAL is flushed, so each claim would walk past the last
    -- ~200 ms of claimed rows in the heap). Never lowered: only `off` is raised, to `local`.
    IF cardinality(v_got_task) > 0 AND current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'local', true);
    END IF;

    -- The claims, in one statement: the winners leave the queue and their claims are written;
    -- each is returned with its task as it is (the claim's runner learns the task as the claim
    -- will start it: the controller lays the claim over the row). Plan gate: until its plan is
    -- approved, a task of a gated repository is claimed only for a read-only plan run
    -- (candidates run under their parent's approved plan).
    RETURN QUERY
    WITH w AS MATERIALIZED (
        SELECT w.req, w.amount, w.plan, t AS task
          FROM unnest(v_got_task, v_got_req, v_got_amount, v_got_plan) AS w(id, req, amount, plan)
          JOIN tasks t ON t.id = w.id),
    gone AS (DELETE FROM task_queue tq USING w WHERE tq.task_id = (w.task).id),
    claimed AS (
        INSERT INTO task_claims AS cl (task_id, repo_id, runner_id, attempt, token, leased_at, expires_at,
                                       granted_microusd, plan_attempt)
        SELECT (w.task).id, (w.task).repo_id, p_runner[w.req], (w.task).attempt + 1, gen_random_uuid(), v_now,
               v_now + make_interval(secs => p_lease[w.req]), w.amount,
               CASE WHEN w.plan THEN (w.task).attempt + 1 END
          FROM w
        RETURNING cl AS claim)
    SELECT w.req, false, w.amount, w.task, made.claim
      FROM w JOIN claimed made ON (made.claim).task_id = (w.task).id
    UNION ALL
    SELECT i, true, NULL::bigint, NULL::tasks, NULL::task_claims FROM generate_series(1, v_n) i WHERE v_lost[i] AND v_open[i];
END $$;
