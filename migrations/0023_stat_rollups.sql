-- Statistics that do not grow with history. `/api/stats`, the dashboard and its 14-day view read
-- all-time totals; until now each call aggregated every task and every usage row (1.3 s with a
-- million ended tasks). Ended tasks are now rolled up per repository, day and status, and spending
-- per repository, model and day, by the triggers that end a task or record usage; live tasks
-- (few) are still read from `tasks` through a partial index.

CREATE TABLE task_rollups (
    repo_id        bigint NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    day            date NOT NULL,
    status         text NOT NULL CHECK (status IN ('merged', 'failed', 'canceled')),
    tasks          bigint NOT NULL DEFAULT 0,
    -- Seconds from creation to the end, summed.
    seconds        double precision NOT NULL DEFAULT 0,
    -- Tasks that needed at least one retry.
    retried        bigint NOT NULL DEFAULT 0,
    cost_microusd  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (repo_id, day, status)
);

CREATE TABLE usage_rollups (
    repo_id        bigint NOT NULL DEFAULT 0,
    model          text NOT NULL,
    day            date NOT NULL,
    cost_microusd  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (repo_id, model, day)
);

-- Adds (`sign` 1) or removes (-1) an ended task's share of its rollup row.
CREATE FUNCTION task_rollup_add(t tasks, sign integer) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_rollups AS r (repo_id, day, status, tasks, seconds, retried, cost_microusd)
    VALUES (t.repo_id, (t.finished_at AT TIME ZONE 'UTC')::date, t.status, sign,
            sign * COALESCE(EXTRACT(EPOCH FROM t.finished_at - t.created_at), 0),
            sign * (CASE WHEN t.agent_retries + t.verify_retries + t.review_retries + t.ci_retries
                              + t.conflict_retries > 0 THEN 1 ELSE 0 END),
            sign * t.cost_microusd)
    ON CONFLICT (repo_id, day, status) DO UPDATE SET
        tasks = r.tasks + EXCLUDED.tasks,
        seconds = r.seconds + EXCLUDED.seconds,
        retried = r.retried + EXCLUDED.retried,
        cost_microusd = r.cost_microusd + EXCLUDED.cost_microusd;
END $$;

-- A task that ends, comes back (requeued), changes cost or retries while ended, or goes away.
CREATE FUNCTION tasks_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status IN ('merged', 'failed', 'canceled') THEN
        PERFORM task_rollup_add(OLD, -1);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.status IN ('merged', 'failed', 'canceled') THEN
        PERFORM task_rollup_add(NEW, 1);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_rollup_change AFTER UPDATE OF status, cost_microusd, finished_at, agent_retries,
    verify_retries, review_retries, ci_retries, conflict_retries, repo_id ON tasks
    FOR EACH ROW WHEN (OLD.status IN ('merged', 'failed', 'canceled')
                       OR NEW.status IN ('merged', 'failed', 'canceled'))
    EXECUTE FUNCTION tasks_rollup();
CREATE TRIGGER tasks_rollup_insert AFTER INSERT ON tasks
    FOR EACH ROW WHEN (NEW.status IN ('merged', 'failed', 'canceled'))
    EXECUTE FUNCTION tasks_rollup();
CREATE TRIGGER tasks_rollup_delete AFTER DELETE ON tasks
    FOR EACH ROW WHEN (OLD.status IN ('merged', 'failed', 'canceled'))
    EXECUTE FUNCTION tasks_rollup();

CREATE FUNCTION usage_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_rollups AS r (repo_id, model, day, cost_microusd)
    VALUES (COALESCE(NEW.repo_id, 0), NEW.model, (NEW.at AT TIME ZONE 'UTC')::date, NEW.cost_microusd)
    ON CONFLICT (repo_id, model, day) DO UPDATE SET cost_microusd = r.cost_microusd + EXCLUDED.cost_microusd;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_ledger_rollup AFTER INSERT ON usage_ledger
    FOR EACH ROW EXECUTE FUNCTION usage_rollup();

-- Recomputes both rollups from the rows (the backfill below; after a bulk load with triggers off).
CREATE FUNCTION stat_rollups_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_rollups;
    INSERT INTO task_rollups (repo_id, day, status, tasks, seconds, retried, cost_microusd)
    SELECT repo_id, (finished_at AT TIME ZONE 'UTC')::date, status, count(*),
           COALESCE(sum(EXTRACT(EPOCH FROM finished_at - created_at)), 0),
           count(*) FILTER (WHERE agent_retries + verify_retries + review_retries + ci_retries
                                  + conflict_retries > 0),
           COALESCE(sum(cost_microusd), 0)
      FROM tasks WHERE status IN ('merged', 'failed', 'canceled')
     GROUP BY 1, 2, 3;
    DELETE FROM usage_rollups;
    INSERT INTO usage_rollups (repo_id, model, day, cost_microusd)
    SELECT COALESCE(repo_id, 0), model, (at AT TIME ZONE 'UTC')::date, sum(cost_microusd)
      FROM usage_ledger GROUP BY 1, 2, 3;
END $$;
SELECT stat_rollups_rebuild();

-- Live tasks, read apart from the rollups.
CREATE INDEX tasks_live ON tasks (repo_id) WHERE status NOT IN ('merged', 'failed', 'canceled');
