-- Events: never updated or deleted. position is the global sequence;
-- tx_id records the writing transaction so that readers of the log can
-- read only below the oldest running transaction (gap-safe reads).
CREATE TABLE {{schema}}.events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stream_id      text        NOT NULL,
    version        bigint      NOT NULL,
    id             text        NOT NULL,
    type           text        NOT NULL,
    source         text        NOT NULL,
    subject        text        NOT NULL,
    time           timestamptz NOT NULL,
    content_type   text        NOT NULL,
    data           bytea       NOT NULL,
    correlation_id text        NOT NULL DEFAULT '',
    causation_id   text        NOT NULL DEFAULT '',
    traceparent    text        NOT NULL DEFAULT '',
    extensions     jsonb,
    command_id     text        NOT NULL DEFAULT '',
    CONSTRAINT events_stream_version UNIQUE (stream_id, version)
);
CREATE INDEX events_tx_position ON {{schema}}.events (tx_id, position);

-- One row per command whose events were appended: the deduplication record.
CREATE TABLE {{schema}}.commands (
    command_id   text   PRIMARY KEY,
    stream_id    text   NOT NULL,
    from_version bigint NOT NULL,
    to_version   bigint NOT NULL
);

CREATE TABLE {{schema}}.snapshots (
    stream_id    text        PRIMARY KEY,
    version      bigint      NOT NULL,
    type         text        NOT NULL,
    content_type text        NOT NULL,
    data         bytea       NOT NULL,
    taken_at     timestamptz NOT NULL DEFAULT now()
);
