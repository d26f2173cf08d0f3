-- Projections (package projections): versions of each read model, one
-- checkpoint row per (projection, version, shard) updated in the same
-- transaction as the read model's writes, and the events parked by a
-- projection whose policy is to park a poison event and go on.
-- Nothing here refers to tables of other migrations.
CREATE TABLE {{schema}}.projection_versions (
    projection   text        NOT NULL,
    version      int         NOT NULL,
    -- building: filling from zero (handlers see Replaying); active: the
    -- version queries read; retired: kept for rollback.
    status       text        NOT NULL CHECK (status IN ('building', 'active', 'retired')),
    shards       int         NOT NULL CHECK (shards > 0),
    source       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    PRIMARY KEY (projection, version)
);
CREATE UNIQUE INDEX projection_versions_one_active ON {{schema}}.projection_versions (projection) WHERE status = 'active';

CREATE TABLE {{schema}}.projection_checkpoints (
    projection  text        NOT NULL,
    version     int         NOT NULL,
    shard       int         NOT NULL,
    -- store: a stores.Cursor "tx/position"; topic: the next offset.
    cursor      text        NOT NULL DEFAULT '',
    -- Position and time of the last event applied (lag in events and seconds).
    position    bigint      NOT NULL DEFAULT 0,
    event_time  timestamptz,
    applied     bigint      NOT NULL DEFAULT 0,
    parked      bigint      NOT NULL DEFAULT 0,
    -- Raised by every new owner; a commit carrying an older epoch is refused.
    owner_epoch bigint      NOT NULL DEFAULT 0,
    owner       text        NOT NULL DEFAULT '',
    heartbeat_at timestamptz,
    -- running, or stopped (a poison event under the stop policy; error says why).
    status      text        NOT NULL DEFAULT 'running',
    error       text        NOT NULL DEFAULT '',
    PRIMARY KEY (projection, version, shard)
);

CREATE TABLE {{schema}}.projection_dead_letters (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection  text        NOT NULL,
    version     int         NOT NULL,
    shard       int         NOT NULL,
    -- The parked event, whole, so that it can be retried without its source.
    stream_id   text        NOT NULL,
    event_version bigint    NOT NULL,
    position    bigint      NOT NULL,
    event_id    text        NOT NULL,
    event_type  text        NOT NULL,
    event       jsonb       NOT NULL,
    error       text        NOT NULL,
    attempts    int         NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    -- parked, retried (applied by `projections parked retry`) or skipped.
    status      text        NOT NULL DEFAULT 'parked',
    resolved_at timestamptz
);
CREATE INDEX projection_dead_letters_open ON {{schema}}.projection_dead_letters (projection, version) WHERE status = 'parked';
