-- The merge queue's leave trigger runs only for a task leaving a status the queue holds (an
-- entry exists only in `ci_wait`, `approval_hold` or `merging`): a claim (`queued` → `leased`)
-- and every other transition no longer call it.
DROP TRIGGER tasks_merge_queue_leave ON tasks;
CREATE TRIGGER tasks_merge_queue_leave AFTER UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          AND OLD.status IN ('ci_wait', 'approval_hold', 'merging')
          AND NEW.status NOT IN ('ci_wait', 'approval_hold', 'merging'))
    EXECUTE FUNCTION tasks_merge_queue_leave();
