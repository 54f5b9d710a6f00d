-- A delivery is also known by the SHA-256 of its body. GitHub's signature covers the body, not
-- the `X-GitHub-Delivery` header: a captured signed delivery sent again under a new id would be
-- taken for a new event (a task made again after its first one ended). GitHub's own redelivery
-- keeps the id; two real events never have the same body.
ALTER TABLE webhook_deliveries ADD COLUMN body_sha256 bytea;
CREATE UNIQUE INDEX webhook_deliveries_body ON webhook_deliveries (body_sha256)
    WHERE body_sha256 IS NOT NULL;
