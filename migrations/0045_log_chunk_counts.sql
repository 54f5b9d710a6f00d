-- How many chunks an attempt's log stored, beside its bytes: a log is bounded in rows as well as
-- in bytes (`MAX_LOG_CHUNKS`, store/logs.rs), so a runner sending tiny chunks by the million
-- cannot fill the table while staying under the byte cap.
ALTER TABLE log_totals ADD COLUMN chunks bigint NOT NULL DEFAULT 0;
