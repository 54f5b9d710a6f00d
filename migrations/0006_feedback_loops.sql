-- The pipeline's feedback loops: failure reflection before a retry, soft ordering of tasks that
-- overlap, the per-repository circuit breaker, learnings, and outgoing notifications.

ALTER TABLE tasks DROP CONSTRAINT tasks_hold_kind_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_hold_kind_check
    CHECK (hold_kind IN ('user', 'dispatch_approval', 'circuit_breaker', 'reflection'));

-- Set by a controller that can reflect (a model API is configured).
ALTER TABLE settings ADD COLUMN reflection_enabled boolean NOT NULL DEFAULT false;

-- A failure that re-queues a task holds it briefly for the reflection call, whatever path the
-- failure came by (runner completion, review, CI, merge). The hold releases itself at
-- `hold_until`, so a controller without a working model only delays the retry.
CREATE FUNCTION tasks_reflection_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'queued' AND OLD.status <> 'queued' AND NEW.hold_kind IS NULL
       AND NEW.ev_reason IN ('agent_failed', 'timed_out', 'verify_failed', 'review_rejected',
                             'ci_failed', 'merge_conflict')
       AND (SELECT reflection_enabled FROM settings) THEN
        NEW.hold_kind := 'reflection';
        NEW.hold_until := now() + interval '90 seconds';
        NEW.hold_by := 'controller';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_reflection_hold BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_reflection_hold();

-- Soft dependencies order tasks likely to touch the same files: the later one waits until the
-- earlier one ended, however it ended, and does not fail with it.
ALTER TABLE task_dependencies ADD COLUMN soft boolean NOT NULL DEFAULT false;

-- The circuit breaker: too many failures in a window stop a repository's dispatch until
-- `breaker_until`, which passes by itself.
ALTER TABLE repos
    ADD COLUMN breaker_threshold integer NOT NULL DEFAULT 3 CHECK (breaker_threshold > 0),
    ADD COLUMN breaker_window_secs integer NOT NULL DEFAULT 3600 CHECK (breaker_window_secs > 0),
    ADD COLUMN breaker_cooldown_secs integer NOT NULL DEFAULT 1800 CHECK (breaker_cooldown_secs > 0),
    ADD COLUMN breaker_until timestamptz;


-- Notifications to send (Slack/Discord-compatible webhooks), filled by triggers.
CREATE TABLE notify_outbox (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    task_id     bigint REFERENCES tasks (id) ON DELETE CASCADE,
    repo_id     bigint REFERENCES repos (id),
    text        text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    next_at     timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION task_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    IF NEW.to_status IN ('approval_hold', 'failed', 'merged')
       AND NEW.from_status IS DISTINCT FROM NEW.to_status THEN
        SELECT tasks.id, tasks.repo_id, tasks.issue_title, tasks.pr_url, tasks.error, repos.name
          INTO t FROM tasks JOIN repos ON repos.id = tasks.repo_id WHERE tasks.id = NEW.task_id;
        INSERT INTO notify_outbox (kind, task_id, repo_id, text)
        VALUES (NEW.to_status, NEW.task_id, t.repo_id,
                format('[%s] task %s %s: %s%s', t.name, NEW.task_id,
                       CASE NEW.to_status WHEN 'approval_hold' THEN 'waits for approval'
                                          WHEN 'failed' THEN 'failed (' || NEW.reason || ')'
                                          ELSE 'merged' END,
                       left(t.issue_title, 120),
                       CASE WHEN t.pr_url IS NOT NULL THEN ' ' || t.pr_url ELSE '' END));
        PERFORM pg_notify('bp_notify', NEW.task_id::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER task_events_notify AFTER INSERT ON task_events
    FOR EACH ROW EXECUTE FUNCTION task_events_notify();

-- The cascade spares soft dependencies.
CREATE OR REPLACE FUNCTION tasks_after_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_active boolean;
    is_active  boolean;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_events (task_id, actor, from_status, to_status, reason, attempt, data)
        VALUES (NEW.id, COALESCE(NEW.ev_actor, 'system'), NULL, NEW.status,
                COALESCE(NEW.ev_reason, 'created'), NEW.attempt, NEW.ev_data);
        IF NEW.status = 'queued' THEN
            PERFORM pg_notify('bp_queue', NEW.repo_id::text);
        END IF;
        RETURN NULL;
    END IF;

    IF NEW.ev_seq <> OLD.ev_seq THEN
        INSERT INTO task_events (task_id, actor, from_status, to_status, reason, attempt, data)
        VALUES (NEW.id, COALESCE(NEW.ev_actor, 'system'), OLD.status, NEW.status,
                COALESCE(NEW.ev_reason, 'updated'), NEW.attempt, NEW.ev_data);
    END IF;

    was_active := OLD.status IN ('leased', 'running', 'verifying');
    is_active := NEW.status IN ('leased', 'running', 'verifying');
    IF was_active AND NOT is_active THEN
        UPDATE repos SET active_tasks = active_tasks - 1 WHERE id = NEW.repo_id;
        PERFORM pg_notify('bp_queue', NEW.repo_id::text);
    END IF;

    -- A task that ends without merging takes every task waiting on it down with it.
    IF NEW.status IN ('failed', 'canceled') AND OLD.status NOT IN ('failed', 'canceled') THEN
        UPDATE tasks d
           SET status = 'failed',
               terminal_reason = 'dependency_failed',
               error = format('dependency #%s %s', NEW.id, NEW.status),
               lease_token = NULL,
               lease_expires_at = NULL,
               ev_seq = d.ev_seq + 1,
               ev_actor = 'system',
               ev_reason = 'dependency_failed',
               ev_data = jsonb_build_object('dependency', NEW.id)
          FROM task_dependencies td
         WHERE td.depends_on = NEW.id
           AND NOT td.soft
           AND d.id = td.task_id
           AND d.status NOT IN ('merged', 'failed', 'canceled');
    END IF;

    IF (NEW.status = 'queued' AND (OLD.status <> 'queued'
            OR (OLD.hold_kind IS NOT NULL AND NEW.hold_kind IS NULL)))
       OR (NEW.status = 'merged' AND OLD.status <> 'merged') THEN
        PERFORM pg_notify('bp_queue', NEW.repo_id::text);
    END IF;
    IF NEW.cancel_requested_at IS NOT NULL AND OLD.cancel_requested_at IS NULL AND is_active THEN
        PERFORM pg_notify('bp_cancel', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;

-- Wake triage when a task arrives.
CREATE FUNCTION tasks_new_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'new' THEN
        PERFORM pg_notify('bp_new', NEW.repo_id::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_new_notify AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_new_notify();
