-- Webhook deliveries seen, so a redelivered event is acknowledged and ignored.
CREATE TABLE webhook_deliveries (
    delivery_id  text PRIMARY KEY,
    event        text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
