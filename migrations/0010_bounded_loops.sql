-- Every loop is bounded. A task that loses its runner (lease expired, runner gone, work abandoned)
-- goes back to the queue without spending a retry, but only `max_lease_losses` times in a row:
-- then it fails, since it may be what kills its runners. A completed attempt resets the count.
ALTER TABLE tasks ADD COLUMN lost_count integer NOT NULL DEFAULT 0;
ALTER TABLE settings ADD COLUMN max_lease_losses integer NOT NULL DEFAULT 3
    CHECK (max_lease_losses >= 1);
