-- What the latest task of each repository learned about its environment — the runner's report of
-- what the repository's files on the default branch declare, which description won and why, the
-- snapshot the task started from — shown beside the repository's settings. One row per
-- repository, replaced by each completion that carries a report (no scan of results to find it).
CREATE TABLE repo_environments (
    repo_id   bigint PRIMARY KEY REFERENCES repos (id) ON DELETE CASCADE,
    task_id   bigint NOT NULL,
    attempt   integer NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now(),
    report    jsonb NOT NULL
);
