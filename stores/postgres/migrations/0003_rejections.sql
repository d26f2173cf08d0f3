-- Rejected commands are recorded too (stores.RejectionRecorder): a row
-- with no versions and the reason, so a redelivered command gets its
-- first answer instead of a new decision.
ALTER TABLE {{schema}}.commands ADD COLUMN rejection jsonb;
