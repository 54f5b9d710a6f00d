-- Whether a lease asks its runner to reproduce the issue first: the repository's setting (`on`,
-- or `bugs` for a task triage called a bug). The one statement of it: the claim reads it to tell
-- the runner, and the completion to know a record is owed (a runner that sends none is treated
-- as not having reproduced the issue).
CREATE FUNCTION reproduce_first_asked(setting text, is_bug boolean)
    RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(setting = 'on' OR (setting = 'bugs' AND is_bug IS TRUE), false)
$$;
