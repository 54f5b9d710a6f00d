-- The controller names every ref it writes: a task's branch is set when the task is created
-- (`backporcher/<task>-<slug>`), never taken from a runner. Older tasks without one get the
-- plain form. `pr_key` marks the pull request the controller opens for a task (in its body), so
-- a task adopts only that pull request, never one somebody else opened from the same branch.
UPDATE tasks SET branch = 'backporcher/' || id WHERE branch IS NULL;
ALTER TABLE tasks ADD COLUMN pr_key uuid NOT NULL DEFAULT gen_random_uuid();
