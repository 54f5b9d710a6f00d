-- Reproduce-first for bugs (controller/src/store/completion.rs, claims.rs, repos.rs): per
-- repository, whether the agent first writes a test that exposes the issue (`off`, `on`, or
-- `bugs`: for tasks triage called a bug) and what happens when no such test is shown to fail on
-- the base (`hold` for a person, or `proceed` marked "not reproduced"); triage's bug verdict per
-- task (NULL: unknown, not a bug); the runner's reproduction record per attempt.
ALTER TABLE repos
    ADD COLUMN reproduce_first text NOT NULL DEFAULT 'bugs'
        CHECK (reproduce_first IN ('off', 'on', 'bugs')),
    ADD COLUMN reproduce_policy text NOT NULL DEFAULT 'hold'
        CHECK (reproduce_policy IN ('hold', 'proceed'));

ALTER TABLE tasks ADD COLUMN is_bug boolean;

ALTER TABLE task_results ADD COLUMN reproduction jsonb;
