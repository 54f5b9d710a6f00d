-- Opening a review keeps the stage lease the worker holds: the review runs under it (renewed
-- while it runs), so no worker takes the `reviewing` stage as abandoned while it is under way.
-- Only when the lease lapses (its controller died) is the review taken up again.
CREATE OR REPLACE FUNCTION tasks_stage_schedule() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NEW.status IN ('pushing', 'pr_open', 'reviewing', 'ci_wait', 'merging') THEN
            NEW.stage_due_at := now();
            NEW.stage_tries := 0;
        ELSE
            NEW.stage_due_at := NULL;
        END IF;
        IF NOT (OLD.status = 'pr_open' AND NEW.status = 'reviewing') THEN
            NEW.stage_lease_until := NULL;
        END IF;
    END IF;
    RETURN NEW;
END $$;
