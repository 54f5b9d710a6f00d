-- A repository environment that cannot be set up ends its task as `setup_failed`, with the failing
-- command and what to change; no agent runs in a broken environment.
ALTER TABLE tasks DROP CONSTRAINT tasks_terminal_reason_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_terminal_reason_check CHECK (terminal_reason IN (
    'succeeded', 'agent_failed', 'verify_failed', 'review_rejected', 'ci_failed',
    'merge_conflict', 'merge_failed', 'canceled_by_user', 'runner_lost',
    'lease_expired', 'timed_out', 'budget_exceeded', 'dependency_failed',
    'push_rejected', 'safety_blocked', 'internal_error', 'stalled', 'setup_failed'));
