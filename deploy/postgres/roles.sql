-- The roles of docs/deployment.md ("PostgreSQL: roles with least
-- privilege"). Run once per database by an administrator (a role with
-- CREATEROLE, or the superuser, that owns or may grant on the database):
--
--   psql "$ADMIN_DATABASE_URL" -v ON_ERROR_STOP=1 -v db=orchestrix \
--     -v migrator=orchestrix_migrate -v app=orchestrix_app -v relay=orchestrix_relay \
--     -f deploy/postgres/roles.sql
--
-- then give each role its password from your secret store (never in a
-- file): \password orchestrix_app, or ALTER ROLE ... PASSWORD.
--
--   migrator  owns the schema and its tables: runs `orchestrix migrate` and
--             grants.sql (the migration Job). Nothing else uses it.
--   app       the services: command processors, sagas, projections. Only
--             SELECT and INSERT on the event log (events, commands).
--   relay     `orchestrix relay`: reads the event log and the outbox table.
CREATE ROLE :"migrator" LOGIN;
CREATE ROLE :"app" LOGIN;
CREATE ROLE :"relay" LOGIN;
-- The migrator creates the schema (CREATE SCHEMA IF NOT EXISTS).
GRANT CONNECT, CREATE ON DATABASE :"db" TO :"migrator";
GRANT CONNECT ON DATABASE :"db" TO :"app", :"relay";
