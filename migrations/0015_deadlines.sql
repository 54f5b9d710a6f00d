-- No silent hangs. An attempt whose agent goes silent (no output, no model traffic) past the
-- runner's stall limit ends as `stalled` (the agent's retry budget); the task fails as `stalled`
-- when that budget is spent. And every task has a deadline across its attempts: a task still
-- under way `task_deadline_secs` after its first lease (12 h by default) fails as `timed_out`,
-- whatever it is doing — except waiting for a person.
ALTER TABLE tasks DROP CONSTRAINT tasks_terminal_reason_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_terminal_reason_check CHECK (terminal_reason IN (
    'succeeded', 'agent_failed', 'verify_failed', 'review_rejected', 'ci_failed',
    'merge_conflict', 'merge_failed', 'canceled_by_user', 'runner_lost',
    'lease_expired', 'timed_out', 'budget_exceeded', 'dependency_failed',
    'push_rejected', 'safety_blocked', 'internal_error', 'stalled'));
-- `started_at` (unused until now) is the first lease, set by the claim.
UPDATE tasks SET started_at = COALESCE(leased_at, created_at) WHERE attempt > 0 AND started_at IS NULL;
ALTER TABLE settings ADD COLUMN task_deadline_secs integer NOT NULL DEFAULT 43200
    CHECK (task_deadline_secs >= 60);
