-- The CI gate fails closed (security review M15). A pull request on which no check has appeared
-- once the grace has passed used to merge as if CI were green (`no_checks = 'merge'`) after only
-- 30 seconds, so a full-auto repository merged without CI whenever GitHub Actions registered its
-- suites late (a queue backlog, an outage). Now:
--   * `hold` (the default): the task waits in `approval_hold` for a person; the timeline event
--     (`no_checks`) and the issue comment say that no CI check appeared and what to do;
--   * `wait`: keep looking for checks;
--   * `merge`: merge without CI — an explicit opt-in for repositories that have none.
-- The grace is ten minutes, longer than Actions usually take to register a suite.
ALTER TABLE repos
    ALTER COLUMN no_checks SET DEFAULT 'hold',
    ALTER COLUMN no_checks_grace_secs SET DEFAULT 600;

-- Existing repositories still on the old defaults get the new ones. The grace cannot be set
-- through the API, so 30 is always the old default. `merge` with that grace cannot be told apart
-- from an explicit choice (before this migration choosing `merge` changed nothing, as it was the
-- default), so it is reset to `hold` as well: this fails closed and visibly — each hold says to
-- set the policy to `merge` again for a repository without CI. A policy of `hold` or `wait` was
-- chosen by someone and stays; only its grace becomes the new default.
UPDATE repos SET no_checks = 'hold' WHERE no_checks = 'merge' AND no_checks_grace_secs = 30;
UPDATE repos SET no_checks_grace_secs = 600 WHERE no_checks_grace_secs = 30;
