-- The index of live leases by expiry names its key as present. A lease's count by runner (the
-- claim's capacity check, `RUNNER_LEASES_SQL`) then matches only the index by runner: with the
-- same predicate on both, a plan made while no lease was live (statistics taken over a fresh
-- backlog: every live index empty, every `runner_id` NULL) read the whole expiry index at each
-- count, filtering by runner — a claim's cost grew with every lease the fleet held. The queries
-- by expiry (the reaper's sweep, the next expiry, leases near expiry) compare `lease_expires_at`,
-- which implies it is present, and still use this index; a live lease always has an expiry.
DROP INDEX tasks_live_leases;
CREATE INDEX tasks_live_leases ON tasks (lease_expires_at)
    WHERE status IN ('leased', 'running', 'verifying') AND lease_expires_at IS NOT NULL;
