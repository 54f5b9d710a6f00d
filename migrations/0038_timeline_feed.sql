-- Timeline entries stop sending a NOTIFY each. PostgreSQL serialises the commits of every
-- transaction that notified on one lock (held from before the commit until its record is written),
-- so the `bp_events` NOTIFY of the claim's `claimed` entry made all claims of the fleet commit in
-- turn. The live views now read new entries by id (each controller's one reader polls the primary
-- key: `store::wake::Store::timeline_after`), and nothing on the claim's path notifies.
DROP TRIGGER task_events_broadcast ON task_events;
DROP FUNCTION task_events_broadcast();

-- Two row triggers of `tasks` are called only when their function could act (same functions,
-- same effects): a claim (`queued` → `leased`) no longer runs or queues them.
DROP TRIGGER tasks_stage_notify ON tasks;
CREATE TRIGGER tasks_stage_notify AFTER INSERT OR UPDATE ON tasks
    FOR EACH ROW WHEN (NEW.status IN ('pushing', 'pr_open', 'reviewing', 'ci_wait', 'merging')
                       OR (NEW.source = 'issue' AND NEW.forge_synced_seq < NEW.ev_seq))
    EXECUTE FUNCTION tasks_stage_notify();
DROP TRIGGER tasks_reflection_hold ON tasks;
CREATE TRIGGER tasks_reflection_hold BEFORE UPDATE ON tasks
    FOR EACH ROW WHEN (NEW.status = 'queued' AND OLD.status <> 'queued' AND NEW.hold_kind IS NULL)
    EXECUTE FUNCTION tasks_reflection_hold();
