-- The controller's store: every table the controller owns, and the triggers that keep the task
-- invariants (an event per transition, the per-repo active count, the failure cascade, queue
-- notifications) inside the database, where no code path can forget them.

-- Global switches. Exactly one row.
CREATE TABLE settings (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    queue_paused   boolean NOT NULL DEFAULT false,
    paused_at      timestamptz,
    paused_by      text,
    approval_mode  text NOT NULL DEFAULT 'review-merge'
                   CHECK (approval_mode IN ('full-auto', 'review-merge', 'review-all')),
    budget_global_daily_microusd bigint CHECK (budget_global_daily_microusd >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO settings DEFAULT VALUES;

CREATE TABLE repos (
    id                 bigserial PRIMARY KEY,
    name               text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$'),
    clone_url          text NOT NULL,
    default_branch     text NOT NULL DEFAULT 'main',
    verify_command     text,
    approval_mode      text CHECK (approval_mode IN ('full-auto', 'review-merge', 'review-all')),
    review_fail_mode   text NOT NULL DEFAULT 'open' CHECK (review_fail_mode IN ('open', 'closed')),
    egress_policy      text NOT NULL DEFAULT 'gateway-only'
                       CHECK (egress_policy IN ('none', 'gateway-only', 'open')),
    allow_workflow_changes boolean NOT NULL DEFAULT false,
    budget_task_microusd   bigint CHECK (budget_task_microusd >= 0),
    budget_daily_microusd  bigint CHECK (budget_daily_microusd >= 0),
    max_concurrency    integer CHECK (max_concurrency > 0),
    -- Tasks of this repo in leased/running/verifying. Claims check and increment it in the same
    -- statement; the tasks trigger decrements it. Exact, because both sides lock this row.
    active_tasks       integer NOT NULL DEFAULT 0 CHECK (active_tasks >= 0),
    runner_labels      text[] NOT NULL DEFAULT '{}',
    stack              text,
    enabled            boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE runners (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    hostname       text,
    labels         text[] NOT NULL DEFAULT '{}',
    capacity       integer NOT NULL DEFAULT 1 CHECK (capacity >= 0),
    backends       text[] NOT NULL DEFAULT '{}',
    version        text,
    state          text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining', 'disabled')),
    cert_serial    text,
    cert_not_after timestamptz,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz
);

CREATE TABLE join_tokens (
    id          bigserial PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    labels      text[] NOT NULL DEFAULT '{}',
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    used_by     bigint REFERENCES runners (id)
);

CREATE TABLE tasks (
    id               bigserial PRIMARY KEY,
    repo_id          bigint NOT NULL REFERENCES repos (id),
    source           text NOT NULL CHECK (source IN ('issue', 'api')),
    -- Issue snapshot, taken when the issue was accepted; later edits on GitHub do not change it.
    issue_number     bigint,
    issue_title      text NOT NULL DEFAULT '',
    issue_body       text NOT NULL DEFAULT '',
    issue_author     text,
    issue_hash       text,
    prompt_override  text,
    status           text NOT NULL DEFAULT 'new' CHECK (status IN (
                         'new', 'queued', 'leased', 'running', 'verifying', 'pushing', 'pr_open',
                         'reviewing', 'ci_wait', 'approval_hold', 'merging', 'merged', 'failed',
                         'canceled')),
    terminal_reason  text CHECK (terminal_reason IN (
                         'succeeded', 'agent_failed', 'verify_failed', 'review_rejected', 'ci_failed',
                         'merge_conflict', 'merge_failed', 'canceled_by_user', 'runner_lost',
                         'lease_expired', 'timed_out', 'budget_exceeded', 'dependency_failed',
                         'push_rejected', 'safety_blocked', 'internal_error')),
    error            text,
    hold_kind        text CHECK (hold_kind IN ('user', 'dispatch_approval', 'circuit_breaker')),
    hold_until       timestamptz,
    hold_by          text,
    cancel_requested_at timestamptz,
    cancel_requested_by text,
    priority         integer NOT NULL DEFAULT 100,
    model            text NOT NULL DEFAULT 'sonnet',
    agent            text NOT NULL DEFAULT 'claude',
    required_labels  text[] NOT NULL DEFAULT '{}',
    -- Lets the claim's planner estimate the label gate from statistics (array containment has
    -- none for empty arrays, which made it sort the whole queue instead of walking the index).
    labels_required  boolean GENERATED ALWAYS AS (cardinality(required_labels) > 0) STORED,
    -- One retry budget per failure mode.
    agent_retries    integer NOT NULL DEFAULT 0,
    verify_retries   integer NOT NULL DEFAULT 0,
    review_retries   integer NOT NULL DEFAULT 0,
    ci_retries       integer NOT NULL DEFAULT 0,
    conflict_retries integer NOT NULL DEFAULT 0,
    -- The lease. `attempt` counts claims and never goes down: it fences runner writes.
    attempt          integer NOT NULL DEFAULT 0,
    lease_token      uuid,
    runner_id        bigint REFERENCES runners (id),
    leased_at        timestamptz,
    lease_expires_at timestamptz,
    -- true: the next run continues the existing branch (CI fix, PR comments); false: fresh from base.
    resume_branch    boolean NOT NULL DEFAULT false,
    -- Context for the next run (reviewer feedback, CI logs, verify output, PR comments, diagnoses).
    retry_context    jsonb NOT NULL DEFAULT '[]',
    branch           text,
    base_sha         text,
    head_sha         text,
    pr_number        bigint,
    pr_url           text,
    cost_microusd    bigint NOT NULL DEFAULT 0,
    created_by       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- The pending timeline entry. A statement that changes the task bumps ev_seq and sets these;
    -- the trigger turns them into a task_events row in the same transaction.
    ev_seq           bigint NOT NULL DEFAULT 0,
    ev_actor         text,
    ev_reason        text,
    ev_data          jsonb,
    CHECK ((status IN ('merged', 'failed', 'canceled')) = (terminal_reason IS NOT NULL)),
    CHECK (source <> 'issue' OR issue_number IS NOT NULL)
);

-- A queue table: rows change status often, so keep statistics and dead tuples in check sooner
-- than the defaults would.
ALTER TABLE tasks SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05);

-- At most one live task per issue; a new one may start once the previous one ended.
CREATE UNIQUE INDEX tasks_live_issue ON tasks (repo_id, issue_number)
    WHERE issue_number IS NOT NULL AND status NOT IN ('merged', 'failed', 'canceled');
CREATE INDEX tasks_claim_order ON tasks (priority, created_at, id) WHERE status = 'queued';
CREATE INDEX tasks_live_leases ON tasks (lease_expires_at)
    WHERE status IN ('leased', 'running', 'verifying');
CREATE INDEX tasks_repo_status ON tasks (repo_id, status);
CREATE INDEX tasks_runner ON tasks (runner_id) WHERE status IN ('leased', 'running', 'verifying');

CREATE TABLE task_dependencies (
    task_id     bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    depends_on  bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, depends_on),
    CHECK (task_id <> depends_on)
);
CREATE INDEX task_dependencies_reverse ON task_dependencies (depends_on);

-- What each attempt's runner reported. One row per (task, attempt): a duplicate completion finds
-- it and is acknowledged again without effect.
CREATE TABLE task_results (
    task_id      bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    lease_token  uuid NOT NULL,
    outcome      text NOT NULL,
    error        text,
    data         jsonb,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE task_events (
    id           bigserial PRIMARY KEY,
    task_id      bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,
    from_status  text,
    to_status    text NOT NULL,
    reason       text NOT NULL,
    attempt      integer NOT NULL,
    data         jsonb
);
CREATE INDEX task_events_task ON task_events (task_id, id);

CREATE TABLE log_chunks (
    task_id      bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    seq          bigint NOT NULL CHECK (seq >= 0),
    stream       text NOT NULL,
    data         bytea NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt, seq)
);

CREATE TABLE learnings (
    id          bigserial PRIMARY KEY,
    repo_id     bigint NOT NULL REFERENCES repos (id),
    task_id     bigint REFERENCES tasks (id) ON DELETE SET NULL,
    outcome     text NOT NULL,
    summary     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX learnings_repo ON learnings (repo_id, id DESC);

-- One row per model call, wherever it was made.
CREATE TABLE usage_ledger (
    id                  bigserial PRIMARY KEY,
    at                  timestamptz NOT NULL DEFAULT now(),
    task_id             bigint REFERENCES tasks (id) ON DELETE SET NULL,
    repo_id             bigint REFERENCES repos (id),
    purpose             text NOT NULL,
    model               text NOT NULL,
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cache_read_tokens   bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    cost_microusd       bigint NOT NULL DEFAULT 0
);
CREATE INDEX usage_ledger_task ON usage_ledger (task_id);
CREATE INDEX usage_ledger_repo_at ON usage_ledger (repo_id, at);

CREATE TABLE users (
    id             bigserial PRIMARY KEY,
    username       text NOT NULL UNIQUE,
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    token_hash   bytea PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          text NOT NULL,
    token_hash    bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

CREATE TABLE audit_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    user_id   bigint REFERENCES users (id),
    actor     text NOT NULL,
    action    text NOT NULL,
    target    text,
    outcome   text NOT NULL,
    data      jsonb
);

-- ---------------------------------------------------------------------------------------------
-- Task invariants.

-- Before: every status/hold/cancel change must come with a timeline entry; keep timestamps.
CREATE FUNCTION tasks_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.ev_seq = OLD.ev_seq AND (
        NEW.status IS DISTINCT FROM OLD.status
        OR NEW.hold_kind IS DISTINCT FROM OLD.hold_kind
        OR NEW.cancel_requested_at IS DISTINCT FROM OLD.cancel_requested_at) THEN
        RAISE EXCEPTION 'task % changed from % to % without a timeline entry', OLD.id, OLD.status, NEW.status;
    END IF;
    IF NEW.ev_seq <> OLD.ev_seq THEN
        NEW.updated_at := now();
    END IF;
    IF NEW.status IN ('merged', 'failed', 'canceled') AND OLD.status NOT IN ('merged', 'failed', 'canceled') THEN
        NEW.finished_at := now();
    ELSIF NEW.status NOT IN ('merged', 'failed', 'canceled') THEN
        NEW.finished_at := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_before_update BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_before_update();

-- After: timeline row, active count, cascade, notification.
CREATE FUNCTION tasks_after_change() RETURNS trigger LANGUAGE plpgsql AS $$
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
CREATE TRIGGER tasks_after_change AFTER INSERT OR UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_after_change();
