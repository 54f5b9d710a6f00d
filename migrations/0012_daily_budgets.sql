-- Daily budgets, enforced. A repository (`repos.budget_daily_microusd`) and the fleet
-- (`settings.budget_global_daily_microusd`) each keep today's spend (every ledger row: the
-- agents' metered calls and the controller's own) and what is granted to attempts still running.
-- A claim grants a task at most what is left of its own budget and of both daily budgets, under
-- the lock of the repository's row (and of the settings row while a fleet budget is set), so
-- running attempts together cannot pass either; the runner's gateway stops an attempt at its
-- grant. A repository with nothing left is not dispatched: its queued tasks wait on a `budget`
-- hold until the next UTC day or until the budget is raised. The counters start over at 00:00 UTC.
ALTER TABLE repos
    ADD COLUMN spend_day date NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    ADD COLUMN day_spent_microusd bigint NOT NULL DEFAULT 0,
    ADD COLUMN day_granted_microusd bigint NOT NULL DEFAULT 0 CHECK (day_granted_microusd >= 0);
ALTER TABLE settings
    ADD COLUMN spend_day date NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    ADD COLUMN day_spent_microusd bigint NOT NULL DEFAULT 0,
    ADD COLUMN day_granted_microusd bigint NOT NULL DEFAULT 0 CHECK (day_granted_microusd >= 0);
-- What the running attempt of a task was granted (released when it stops running).
ALTER TABLE tasks ADD COLUMN granted_microusd bigint NOT NULL DEFAULT 0;

ALTER TABLE tasks DROP CONSTRAINT tasks_hold_kind_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_hold_kind_check
    CHECK (hold_kind IN ('user', 'dispatch_approval', 'circuit_breaker', 'reflection', 'budget'));

-- Every ledger row counts against today's spend of the fleet and of its repository. Lock order,
-- here and everywhere a budget row is written: settings, then repos (a claim locks them so).
CREATE FUNCTION usage_ledger_spend() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
BEGIN
    IF NEW.cost_microusd = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE settings
       SET day_spent_microusd = CASE WHEN spend_day = today THEN day_spent_microusd ELSE 0 END
                                + NEW.cost_microusd,
           spend_day = today;
    IF NEW.repo_id IS NOT NULL THEN
        UPDATE repos
           SET day_spent_microusd = CASE WHEN spend_day = today THEN day_spent_microusd ELSE 0 END
                                    + NEW.cost_microusd,
               spend_day = today
         WHERE id = NEW.repo_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_ledger_spend AFTER INSERT ON usage_ledger
    FOR EACH ROW EXECUTE FUNCTION usage_ledger_spend();

-- An attempt that stops running (completed, taken back, canceled) returns its grant. A BEFORE
-- trigger, so that it locks settings and repos before the AFTER trigger touches repos.
CREATE FUNCTION tasks_release_grant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('leased', 'running', 'verifying')
       AND NEW.status NOT IN ('leased', 'running', 'verifying')
       AND OLD.granted_microusd > 0 THEN
        UPDATE settings SET day_granted_microusd = GREATEST(day_granted_microusd - OLD.granted_microusd, 0)
         WHERE budget_global_daily_microusd IS NOT NULL;
        UPDATE repos SET day_granted_microusd = GREATEST(day_granted_microusd - OLD.granted_microusd, 0)
         WHERE id = NEW.repo_id;
        NEW.granted_microusd := 0;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_release_grant BEFORE UPDATE OF status ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_release_grant();
