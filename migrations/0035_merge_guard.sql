-- The post-merge guard: after an agent's merge the controller watches the default branch's CI for
-- the merge commit (and the commits after it, within a window per repository); a merge found
-- guilty of turning it red is reverted by a pull request and its task re-queued.

-- The window: how long and over how many later commits a merge is watched (0 seconds: no guard).
ALTER TABLE repos
    ADD COLUMN guard_window_secs integer NOT NULL DEFAULT 1800 CHECK (guard_window_secs BETWEEN 0 AND 604800),
    ADD COLUMN guard_window_commits integer NOT NULL DEFAULT 10 CHECK (guard_window_commits BETWEEN 0 AND 200);

-- One row per watched merge. `state`: watching → clean | unknown | guilty → reverted. Each
-- effect outside the database is recorded here once done (the revert commit, its pull request,
-- the task's requeue), so a pass that runs again finds it and never repeats it.
CREATE TABLE merge_guards (
    id               bigserial PRIMARY KEY,
    task_id          bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    repo_id          bigint NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    merge_sha        text NOT NULL,
    pr_number        bigint,
    state            text NOT NULL DEFAULT 'watching'
                     CHECK (state IN ('watching', 'clean', 'unknown', 'guilty', 'reverted')),
    -- Why it ended: green, green_later, red_before, window_ended, …
    reason           text,
    merged_at        timestamptz NOT NULL,
    deadline         timestamptz NOT NULL,
    window_commits   integer NOT NULL,
    -- A branch pushed at the merge commit so CI runs on it (bisecting merges CI skipped).
    probe_branch     text,
    -- The failed checks with their logs, once guilty.
    failed_checks    jsonb,
    revert_branch    text,
    revert_sha       text,
    revert_pr_number bigint,
    revert_pr_url    text,
    -- open (full-auto: merged by the guard once green) | awaiting_approval | merged | closed
    -- | ci_failed | conflict | unknown
    revert_state     text,
    revert_deadline  timestamptz,
    requeued         boolean NOT NULL DEFAULT false,
    -- Failed steps so far (non-transient errors); at the bound the watch ends for a person.
    errors           integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (task_id, merge_sha)
);

-- The guards a pass works on.
CREATE INDEX merge_guards_live ON merge_guards (repo_id, merged_at)
    WHERE state IN ('watching', 'guilty')
       OR (state = 'reverted' AND (revert_state = 'open' OR (NOT requeued AND revert_pr_number IS NOT NULL)));
