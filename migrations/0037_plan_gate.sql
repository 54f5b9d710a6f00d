-- Plan gate (controller/src/store/plans.rs): per repository, off by default, a task first runs
-- as a read-only plan run; its plan waits in `plan_hold` for a person (or the repository's
-- auto-approval threshold) and only an approved plan lets the task be claimed for
-- implementation. The claim decides which run a lease is (`tasks.plan_attempt`), so no prompt
-- and no runner can turn a plan run into an implementation.
ALTER TABLE repos
    ADD COLUMN plan_gate boolean NOT NULL DEFAULT false,
    -- Auto-approve a plan whose predicted blast radius (files named plus files impacted, from the
    -- code graph) is at most this; NULL: never automatically.
    ADD COLUMN plan_auto_blast integer CHECK (plan_auto_blast BETWEEN 0 AND 10000),
    -- An undecided plan is denied this long after it was posted.
    ADD COLUMN plan_timeout_secs integer NOT NULL DEFAULT 86400
        CHECK (plan_timeout_secs BETWEEN 300 AND 1209600);

ALTER TABLE tasks
    -- The attempt that is a plan run (read-only): set by the claim, never by a runner.
    ADD COLUMN plan_attempt integer,
    -- NULL: no plan yet; then `pending`, `approved`, `rejected` or `timed_out`.
    ADD COLUMN plan_state text CHECK (plan_state IN ('pending', 'approved', 'rejected', 'timed_out'));

CREATE TABLE task_plans (
    task_id      bigint PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    -- {files, approach, risks, tests}: what the plan run produced, or the edit a person made.
    plan         jsonb NOT NULL,
    -- The plan as text (markdown sections), as posted and as given to the implementation run.
    text         text NOT NULL CHECK (length(text) <= 32768),
    -- Predicted blast radius (files named plus impacted), NULL when the graph could not tell.
    blast_radius integer,
    -- Paths the plan run changed in its (read-only) workspace: discarded, reported.
    discarded    text[] NOT NULL DEFAULT '{}',
    state        text NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'timed_out')),
    edited       boolean NOT NULL DEFAULT false,
    decided_by   text,
    decided_at   timestamptz,
    note         text,
    posted_at    timestamptz NOT NULL DEFAULT now(),
    due_at       timestamptz NOT NULL
);
CREATE INDEX task_plans_due ON task_plans (due_at) WHERE state = 'pending';

ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check CHECK (status IN (
    'new', 'queued', 'leased', 'running', 'verifying', 'candidates', 'plan_hold', 'pushing',
    'pr_open', 'reviewing', 'ci_wait', 'approval_hold', 'merging', 'merged', 'failed', 'canceled',
    'finished'));

ALTER TABLE tasks DROP CONSTRAINT tasks_terminal_reason_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_terminal_reason_check CHECK (terminal_reason IN (
    'succeeded', 'agent_failed', 'verify_failed', 'review_rejected', 'ci_failed',
    'merge_conflict', 'merge_failed', 'canceled_by_user', 'runner_lost',
    'lease_expired', 'timed_out', 'budget_exceeded', 'dependency_failed',
    'push_rejected', 'safety_blocked', 'internal_error', 'stalled', 'setup_failed',
    'plan_rejected', 'plan_timed_out'));
