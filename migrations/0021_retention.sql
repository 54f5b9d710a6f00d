-- Retention: what piles up (log chunks and bundles of ended tasks, webhook delivery ids, audit
-- rows) is pruned by age in bounded batches; these indexes let each batch find its rows without
-- a scan of the whole table.
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_deliveries_received ON webhook_deliveries (received_at);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at);
