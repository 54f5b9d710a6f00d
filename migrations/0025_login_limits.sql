-- Login limits. Until now a login read the recent refusals from the audit log, checked the
-- password, then wrote its refusal: concurrent attempts all saw "under the limit". Each attempt
-- is now counted before its password is checked, by one upsert per key that counts and records
-- (the row lock orders concurrent attempts), in fixed windows that expire: keys are the client
-- address, and the user name from that address (so an attacker elsewhere cannot lock a user out).
CREATE TABLE login_limits (
    key text PRIMARY KEY,
    window_start timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0
);
CREATE INDEX login_limits_window ON login_limits (window_start);
