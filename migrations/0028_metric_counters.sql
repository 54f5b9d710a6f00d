-- /metrics without reads that grow with history (controller/src/store/metrics.rs): all-time
-- counters kept by the triggers of the rare rows that move them, and spending by purpose in the
-- rollup of migration 0023. A counter only grows (Prometheus counters), whatever is pruned later.
CREATE TABLE metric_counters (
    name  text PRIMARY KEY,
    n     bigint NOT NULL DEFAULT 0
);
INSERT INTO metric_counters (name) VALUES
    ('expired_leases'), ('requeues'), ('retries'), ('log_chunks_dropped');

CREATE FUNCTION metric_count(counter text, delta bigint) RETURNS void LANGUAGE sql AS $$
    UPDATE metric_counters SET n = n + delta WHERE name = counter;
$$;

-- A lease taken back by the reaper, a requeue by a person, a retry after a failure. Only these
-- events run the trigger (its WHEN), so claims and other transitions touch no counter row.
CREATE FUNCTION task_events_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.reason = 'lease_expired' THEN
        PERFORM metric_count('expired_leases', 1);
    ELSIF NEW.reason = 'requeue' THEN
        PERFORM metric_count('requeues', 1);
    ELSIF NEW.to_status = 'queued' THEN
        PERFORM metric_count('retries', 1);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER task_events_count AFTER INSERT ON task_events FOR EACH ROW
    WHEN (NEW.reason = 'lease_expired' OR NEW.reason = 'requeue'
       OR (NEW.to_status = 'queued' AND NEW.reason IN ('agent_failed', 'timed_out', 'stalled',
           'verify_failed', 'review_rejected', 'ci_failed', 'merge_conflict')))
    EXECUTE FUNCTION task_events_count();

CREATE FUNCTION log_totals_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM metric_count('log_chunks_dropped',
        NEW.dropped_chunks - COALESCE(CASE WHEN TG_OP = 'UPDATE' THEN OLD.dropped_chunks END, 0));
    RETURN NULL;
END $$;
CREATE TRIGGER log_totals_count_update AFTER UPDATE OF dropped_chunks ON log_totals FOR EACH ROW
    WHEN (NEW.dropped_chunks > OLD.dropped_chunks)
    EXECUTE FUNCTION log_totals_count();
CREATE TRIGGER log_totals_count_insert AFTER INSERT ON log_totals FOR EACH ROW
    WHEN (NEW.dropped_chunks > 0)
    EXECUTE FUNCTION log_totals_count();

-- What the events and totals already hold.
UPDATE metric_counters c SET n = v.n FROM (
    SELECT 'expired_leases' AS name, count(*) AS n FROM task_events WHERE reason = 'lease_expired'
    UNION ALL SELECT 'requeues', count(*) FROM task_events WHERE reason = 'requeue'
    UNION ALL SELECT 'retries', count(*) FROM task_events WHERE to_status = 'queued'
        AND reason IN ('agent_failed', 'timed_out', 'stalled', 'verify_failed', 'review_rejected',
                       'ci_failed', 'merge_conflict')
    UNION ALL SELECT 'log_chunks_dropped', COALESCE(sum(dropped_chunks), 0) FROM log_totals
) v WHERE c.name = v.name;

-- Spending by purpose too (the /metrics cost series), in the same rollup.
ALTER TABLE usage_rollups ADD COLUMN purpose text NOT NULL DEFAULT '';
ALTER TABLE usage_rollups DROP CONSTRAINT usage_rollups_pkey;
ALTER TABLE usage_rollups ADD PRIMARY KEY (repo_id, model, day, purpose);

CREATE OR REPLACE FUNCTION usage_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_rollups AS r (repo_id, model, day, purpose, cost_microusd)
    VALUES (COALESCE(NEW.repo_id, 0), NEW.model, (NEW.at AT TIME ZONE 'UTC')::date, NEW.purpose,
            NEW.cost_microusd)
    ON CONFLICT (repo_id, model, day, purpose)
        DO UPDATE SET cost_microusd = r.cost_microusd + EXCLUDED.cost_microusd;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION stat_rollups_rebuild() RETURNS void LANGUAGE plpgsql AS $$
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
    INSERT INTO usage_rollups (repo_id, model, day, purpose, cost_microusd)
    SELECT COALESCE(repo_id, 0), model, (at AT TIME ZONE 'UTC')::date, purpose, sum(cost_microusd)
      FROM usage_ledger GROUP BY 1, 2, 3, 4;
END $$;
SELECT stat_rollups_rebuild();

-- The last hour's claims (schedule-to-start) without reading the whole timeline.
CREATE INDEX task_events_leased_at ON task_events (at) WHERE to_status = 'leased';
-- The last day's cancellations (cancel latency) without reading every task that ended that day.
CREATE INDEX tasks_canceled_finished ON tasks (finished_at)
    WHERE status = 'canceled' AND cancel_requested_at IS NOT NULL;
