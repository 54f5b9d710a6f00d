-- A runner's registry row changed in a way that decides whether and how it may lease work (its
-- state, the certificate it must present, its labels or capacity), or the row went away: every
-- controller drops what it remembered of the registry (`bp_runner`, see controller/src/fanout.rs).
CREATE FUNCTION runners_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bp_runner', OLD.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER runners_announce_update AFTER UPDATE ON runners FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
       OR OLD.cert_serial IS DISTINCT FROM NEW.cert_serial
       OR OLD.labels IS DISTINCT FROM NEW.labels
       OR OLD.capacity IS DISTINCT FROM NEW.capacity)
    EXECUTE FUNCTION runners_announce();

CREATE TRIGGER runners_announce_delete AFTER DELETE ON runners FOR EACH ROW
    EXECUTE FUNCTION runners_announce();
