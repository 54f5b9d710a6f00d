-- A plan waiting for a person is a hold like a merge waiting for approval: the notification
-- webhooks hear of it (event `hold`, kind `plan_hold`), with the plan's page to decide on.
CREATE OR REPLACE FUNCTION task_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    IF NEW.to_status IN ('approval_hold', 'plan_hold', 'failed', 'merged')
       AND NEW.from_status IS DISTINCT FROM NEW.to_status THEN
        SELECT tasks.id, tasks.repo_id, tasks.issue_title, tasks.pr_url, tasks.error, repos.name
          INTO t FROM tasks JOIN repos ON repos.id = tasks.repo_id WHERE tasks.id = NEW.task_id;
        INSERT INTO notify_outbox (kind, task_id, repo_id, text)
        VALUES (NEW.to_status, NEW.task_id, t.repo_id,
                format('[%s] task %s %s: %s%s', t.name, NEW.task_id,
                       CASE NEW.to_status WHEN 'approval_hold' THEN 'waits for approval'
                                          WHEN 'plan_hold' THEN 'has a plan waiting for approval'
                                          WHEN 'failed' THEN 'failed (' || NEW.reason || ')'
                                          ELSE 'merged' END,
                       left(t.issue_title, 120),
                       CASE WHEN t.pr_url IS NOT NULL THEN ' ' || t.pr_url ELSE '' END));
        PERFORM pg_notify('bp_notify', NEW.task_id::text);
    END IF;
    RETURN NULL;
END $$;
