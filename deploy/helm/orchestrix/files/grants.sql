-- What the runtime roles of roles.sql may do in the schema, table by
-- table: the least that the SQL of stores/postgres, outbox, sagas and
-- projections needs (deploy/check TestLeastPrivilegeIntegration runs
-- them as these roles). Run by the migrator after every `orchestrix
-- migrate` (the migration Job does): it owns the tables, and a migration
-- that adds a table needs its grants here.
--
--   psql "$MIGRATOR_DATABASE_URL" -v ON_ERROR_STOP=1 -v schema=orchestrix \
--     -v app=orchestrix_app -v relay=orchestrix_relay -f deploy/postgres/grants.sql
GRANT USAGE ON SCHEMA :"schema" TO :"app", :"relay";
-- Every runtime checks at start that the schema is migrated.
GRANT SELECT ON :"schema".schema_migrations TO :"app", :"relay";

-- The event log is append-only: no role but the owner may UPDATE or DELETE
-- an event or a command's deduplication record.
GRANT SELECT, INSERT ON :"schema".events, :"schema".commands TO :"app";
GRANT SELECT, INSERT, UPDATE ON :"schema".snapshots TO :"app";
-- Sagas write their commands to the outbox in their own transaction.
GRANT SELECT, INSERT ON :"schema".outbox TO :"app";

-- The relay only reads: the log, the outbox table, their positions.
GRANT SELECT ON :"schema".events, :"schema".outbox TO :"relay";

-- Sagas: instances (fenced by version), the inbox (pruned), timers (fired
-- with FOR UPDATE SKIP LOCKED, then deleted), the history.
GRANT SELECT, INSERT, UPDATE ON :"schema".saga_instances TO :"app";
GRANT SELECT, INSERT, DELETE ON :"schema".saga_inbox TO :"app";
GRANT SELECT, INSERT, UPDATE, DELETE ON :"schema".saga_timers TO :"app";
GRANT SELECT, INSERT ON :"schema".saga_transitions TO :"app";

-- Projections: versions, checkpoints, parked events.
GRANT SELECT, INSERT, UPDATE ON :"schema".projection_versions, :"schema".projection_checkpoints,
    :"schema".projection_dead_letters TO :"app";
-- Projections with Views create (and, at a cutover, replace) their views
-- in this schema; read-model tables go where the projection's Setup puts
-- them. Drop this line if no projection uses Views here.
GRANT CREATE ON SCHEMA :"schema" TO :"app";
