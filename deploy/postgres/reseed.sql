-- The relay's re-seed after a restore that did not keep the cluster's
-- transaction IDs: a logical restore (pg_dump, pg_restore) into another
-- cluster, or a point-in-time recovery to before the latest commits
-- (docs/deployment.md, "Disaster recovery"). Run it as the owner (the
-- migrator) before any service or relay starts: no writer may run during
-- it. Then publish to a new events topic (orchestrix relay --topic NEW).
--
--   psql "$MIGRATOR_DATABASE_URL" -X -v ON_ERROR_STOP=1 -v schema=orchestrix \
--     -v next_position=1000000 -f deploy/postgres/reseed.sql
--
-- next_position: above every position the old events topic has seen (its
-- highest ce_position header, plus one), so that new events never repeat
-- a position consumers know; any value above max(position) after a
-- logical restore of everything.
BEGIN;
-- Every row gets this transaction's ID: the log then reads in position
-- order (each stream's version order) and every later transaction sorts
-- after it.
UPDATE :"schema".events SET tx_id = pg_current_xact_id();
UPDATE :"schema".outbox SET tx_id = pg_current_xact_id();
ALTER TABLE :"schema".events ALTER COLUMN position RESTART WITH :next_position;
COMMIT;
