-- Live updates for dashboards and CLIs: every timeline entry names its task on `bp_events`.
CREATE FUNCTION task_events_broadcast() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bp_events', NEW.task_id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER task_events_broadcast AFTER INSERT ON task_events
    FOR EACH ROW EXECUTE FUNCTION task_events_broadcast();
CREATE INDEX audit_log_action_target ON audit_log (action, target, at);
