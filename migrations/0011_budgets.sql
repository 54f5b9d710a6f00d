-- Every task has a budget: a repository's own, else this fleet-wide default (USD 10). It spans
-- all of a task's attempts (the runner gets what is left), and a failed attempt that used it up
-- ends the task as `budget_exceeded` instead of running again.
ALTER TABLE settings ADD COLUMN budget_task_microusd bigint NOT NULL DEFAULT 10000000
    CHECK (budget_task_microusd > 0);
