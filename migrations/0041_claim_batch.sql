-- Claims in batches. The claims that arrive while another is under way (runners asking for work
-- at once) are made together by one call of `claim_batch`, in one transaction: the candidates are
-- chosen and locked in claim order, each given to the first request that may take it, and the
-- leases written by one UPDATE. What a claim costs beyond its own row — a statement's start-up,
-- a round trip, a commit — is paid once per batch instead of once per claim. The rules are the
-- single claim's (`store/claims.rs` holds the Rust side and says them): holds, dependencies, the
-- global pause, runner labels, backends and capacity, the per-repository cap (slot rows,
-- migration 0022) and the fence of a change of it (`repo_claim_gate`), the task, repository and
-- fleet budgets, the plan gate. A batch of one is a single claim.

-- What is left of a daily budget today, micro-dollars (NULL: no budget set): the budget less
-- today's spend (counted only if it was counted today, UTC) and what running attempts were
-- granted. The one statement of it; `left_today!` in `store/budgets.rs` calls it (inlined by the
-- planner: a single-expression SQL function).
CREATE FUNCTION budget_left_today(budget bigint, spend_day date, spent bigint, granted bigint)
    RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN budget IS NULL THEN NULL
                ELSE budget - (CASE WHEN spend_day = (now() AT TIME ZONE 'UTC')::date THEN spent ELSE 0 END)
                     - granted END
$$;

-- Requests i = 1..n: runner p_runner[i], its labels (p_labels -> i-1, a JSON array of strings),
-- the most leases it may hold (p_capacity[i], NULL: no limit), the lease length (p_lease[i],
-- seconds). One row per request served (its task, leased) and one per request that lost a race
-- (b_lost: a slot taken by another claimer a moment before, a change of the repository's limits
-- under way) and may try again; a request with nothing to take has no row.
--
-- Locks, in the single claim's order so that claims and lease ends cannot wait on each other in a
-- cycle: candidate task rows (SKIP LOCKED: claimers take different ones instead of waiting), the
-- repository's claim gate (a shared try-lock), the fleet's budget row, one repository's budget
-- row (a batch writes at most one: a candidate of a second repository with a daily budget is left
-- to another batch, its request told it lost), slots (SKIP LOCKED).
CREATE FUNCTION claim_batch(p_runner bigint[], p_labels jsonb, p_capacity integer[], p_lease float8[])
    RETURNS TABLE (b_req integer, b_lost boolean, b_amount bigint, b_task tasks)
    LANGUAGE plpgsql
    -- Its statements' plans are made once per connection: planned afresh for each call (custom
    -- plans, which the plan cache prefers here) they cost more than the claim itself.
    SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_n integer := cardinality(p_runner);
    v_open boolean[] := array_fill(false, ARRAY[cardinality(p_runner)]);  -- may still be served
    v_lost boolean[] := array_fill(false, ARRAY[cardinality(p_runner)]);
    v_backends jsonb := '{}';          -- request (as text) → the backends its runner offers
    v_any_backends text[] := '{}';
    v_open_labels jsonb;
    v_got_task bigint[] := '{}';
    v_got_req integer[] := '{}';
    v_got_amount bigint[] := '{}';
    v_locked bigint[] := '{}';         -- candidates this batch locked
    v_skip_repos bigint[] := '{}';     -- full, out of budget, gated or left to another batch
    v_repo bigint[] := '{}';           -- repositories met, and for each:
    v_repo_ok boolean[] := '{}';       --   its claim gate passed
    v_repo_left bigint[] := '{}';      --   what is left of its day (NULL: no daily budget)
    v_repo_grant bigint[] := '{}';     --   granted by this batch
    v_budget_repo bigint;              -- the one repository whose budget row this batch locked
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
    c record;
    q record;
BEGIN
    IF (SELECT queue_paused FROM settings) THEN
        RETURN;
    END IF;
    SELECT budget_global_daily_microusd IS NOT NULL, budget_task_microusd
      INTO v_fleet_set, v_task_default FROM settings;

    -- The runners' registry rows, read here: a runner disabled or drained a moment ago claims
    -- nothing. A runner at its capacity (its leases, and its earlier requests of this batch)
    -- claims nothing more.
    FOR q IN
        SELECT k.i::integer AS i, ru.backends,
               ru.state = 'active' AND (k.cap IS NULL OR
                 row_number() OVER (PARTITION BY k.runner ORDER BY k.i)
                   <= k.cap - (SELECT count(*) FROM tasks h WHERE h.runner_id = k.runner
                                 AND h.status IN ('leased', 'running', 'verifying'))) AS ok
          FROM unnest(p_runner, p_capacity) WITH ORDINALITY AS k(runner, cap, i)
          JOIN runners ru ON ru.id = k.runner
    LOOP
        v_open[q.i] := q.ok;
        IF q.ok THEN
            v_backends := v_backends || jsonb_build_object(q.i::text, to_jsonb(q.backends));
            v_any_backends := v_any_backends || q.backends;
        END IF;
    END LOOP;

    -- Rounds: candidates that some open request may take, as many as there are open requests,
    -- from the head of the queue (its first 128 in claim order), then from the whole queue once
    -- the head has no more. Each candidate goes to the first open request that may take it. At
    -- most 8 rounds: requests still open then get nothing this time and their runners ask again.
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
            -- The head is materialised so that no plan, however poor its statistics, re-reads
            -- it per row; it keeps a claim O(1) in the queue's length.
            v_cur_open := true;
            OPEN v_cur FOR
                WITH head AS MATERIALIZED (
                    SELECT id FROM tasks WHERE status = 'queued' ORDER BY priority, created_at, id LIMIT 128)
                SELECT t.id, t.repo_id, t.labels_required, t.required_labels, t.agent, t.cost_microusd,
                       COALESCE(t.budget_task_microusd, r.budget_task_microusd) AS task_budget,
                       r.max_concurrency AS cap, r.budget_daily_microusd AS daily
                  FROM head JOIN tasks t ON t.id = head.id JOIN repos r ON r.id = t.repo_id
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
                 ORDER BY t.priority, t.created_at, t.id
                 LIMIT v_want
                 FOR UPDATE OF t SKIP LOCKED;
        ELSE
            v_cur_open := true;
            OPEN v_cur FOR
                SELECT t.id, t.repo_id, t.labels_required, t.required_labels, t.agent, t.cost_microusd,
                       COALESCE(t.budget_task_microusd, r.budget_task_microusd) AS task_budget,
                       r.max_concurrency AS cap, r.budget_daily_microusd AS daily
                  FROM tasks t JOIN repos r ON r.id = t.repo_id
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
                 ORDER BY t.priority, t.created_at, t.id
                 LIMIT v_want
                 FOR UPDATE OF t SKIP LOCKED;
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

            -- The repository: its claim gate (no change of its limits under way, and the cap and
            -- daily budget read are still its own), then what is left of its day, under its row's
            -- lock — the fleet's row locked first, as every claim and lease end does.
            v_s := array_position(v_repo, c.repo_id);
            IF v_s IS NULL THEN
                v_repo := v_repo || c.repo_id;
                v_s := cardinality(v_repo);
                v_repo_ok[v_s] := repo_claim_gate(c.repo_id, c.cap, c.daily);
                v_repo_grant[v_s] := 0;
                v_repo_left[v_s] := NULL;
                IF v_repo_ok[v_s] AND c.daily IS NOT NULL THEN
                    IF v_budget_repo IS NOT NULL THEN
                        -- One repository's budget row per batch: the next batch takes this one.
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
            -- Nothing left of the fleet's day: no claim at all (the budget-hold sweep takes the
            -- queued tasks off the queue); of the repository's: none of its tasks.
            EXIT rounds WHEN v_fleet_set AND v_fleet_left <= 0;
            IF v_repo_left[v_s] IS NOT NULL AND v_repo_left[v_s] <= 0 THEN
                v_skip_repos := v_skip_repos || c.repo_id;
                CONTINUE;
            END IF;

            -- A capped repository: a free slot (claimers take different ones), unless a holder
            -- sits above the cap (it was lowered while over): none until those are gone.
            IF c.cap IS NOT NULL THEN
                SELECT s.slot INTO v_slot FROM repo_slots s
                 WHERE s.repo_id = c.repo_id AND s.task_id IS NULL AND s.slot <= c.cap
                   AND NOT EXISTS (SELECT 1 FROM repo_slots h WHERE h.repo_id = c.repo_id AND h.slot > c.cap)
                 ORDER BY s.slot LIMIT 1
                 FOR UPDATE OF s SKIP LOCKED;
                IF NOT FOUND THEN
                    v_skip_repos := v_skip_repos || c.repo_id;
                    -- Free slots locked by other claimers: this request may win one on a retry.
                    IF EXISTS (SELECT 1 FROM repo_slots s WHERE s.repo_id = c.repo_id AND s.task_id IS NULL
                                AND s.slot <= c.cap) THEN
                        v_lost[v_pick] := true;
                    END IF;
                    CONTINUE;
                END IF;
                UPDATE repo_slots SET task_id = c.id WHERE repo_id = c.repo_id AND slot = v_slot;
            END IF;

            -- The grant: the least of what is left of the task's budget (across its attempts; a
            -- candidate's own share of its parent's), of its repository's day and of the fleet's.
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
            WHILE v_first <= v_n AND NOT v_open[v_first] LOOP
                v_first := v_first + 1;
            END LOOP;
        END LOOP;
        CLOSE v_cur;
        v_cur_open := false;
        IF v_found < v_want THEN
            -- The head (or the queue) has nothing more for the open requests.
            EXIT rounds WHEN NOT v_head;
            v_head := false;
        END IF;
    END LOOP;
    IF v_cur_open THEN
        CLOSE v_cur;
    END IF;

    -- The grants, counted where a daily budget is set (the lease end returns them).
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

    -- The leases. Plan gate: until its plan is approved, a task of a gated repository is claimed
    -- only for a read-only plan run (candidates run under their parent's approved plan).
    RETURN QUERY
    WITH won AS (SELECT * FROM unnest(v_got_task, v_got_req, v_got_amount) AS w(id, req, amount)),
    leased AS (
        UPDATE tasks t SET status = 'leased', attempt = t.attempt + 1, lease_token = gen_random_uuid(),
            runner_id = p_runner[won.req], leased_at = now(),
            lease_expires_at = now() + make_interval(secs => p_lease[won.req]),
            hold_kind = NULL, hold_until = NULL, hold_by = NULL, granted_microusd = won.amount,
            started_at = COALESCE(t.started_at, now()),
            plan_attempt = CASE WHEN t.parent_id IS NULL AND t.plan_state IS DISTINCT FROM 'approved'
                AND (SELECT pr.plan_gate FROM repos pr WHERE pr.id = t.repo_id) THEN t.attempt + 1 END,
            ev_seq = t.ev_seq + 1, ev_actor = 'runner:' || p_runner[won.req], ev_reason = 'claimed',
            ev_data = jsonb_build_object('granted_microusd', won.amount)
          FROM won
         WHERE t.id = won.id
        RETURNING won.req, won.amount, t
    )
    SELECT leased.req, false, leased.amount, leased.t FROM leased
    UNION ALL
    SELECT i, true, NULL::bigint, NULL::tasks FROM generate_series(1, v_n) i WHERE v_lost[i] AND v_open[i];
END $$;
