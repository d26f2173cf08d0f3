-- Sagas (package sagas): one row per instance, fenced by version; an
-- inbox of the input IDs each instance applied (a redelivered input
-- changes nothing); at most one pending timer per instance, fired by
-- the timer poller through the outbox; and the history of every
-- instance, one row per transition.
CREATE TABLE {{schema}}.saga_instances (
    saga_type          text        NOT NULL,
    saga_id            text        NOT NULL,
    definition_version int         NOT NULL,
    version            bigint      NOT NULL,
    status             text        NOT NULL,
    step               int         NOT NULL,
    attempt            int         NOT NULL,
    tries              int         NOT NULL,
    wait               text        NOT NULL DEFAULT '',
    state              jsonb       NOT NULL,
    reason             text        NOT NULL DEFAULT '',
    started_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (saga_type, saga_id)
);
CREATE INDEX saga_instances_status ON {{schema}}.saga_instances (status, updated_at);

CREATE TABLE {{schema}}.saga_inbox (
    saga_type  text        NOT NULL,
    saga_id    text        NOT NULL,
    input_id   text        NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_type, saga_id, input_id)
);

CREATE TABLE {{schema}}.saga_timers (
    saga_type text        NOT NULL,
    saga_id   text        NOT NULL,
    phase     text        NOT NULL,
    step      int         NOT NULL,
    try       int         NOT NULL,
    kind      text        NOT NULL,
    due_at    timestamptz NOT NULL,
    PRIMARY KEY (saga_type, saga_id)
);
CREATE INDEX saga_timers_due ON {{schema}}.saga_timers (saga_type, due_at);

CREATE TABLE {{schema}}.saga_transitions (
    saga_type   text        NOT NULL,
    saga_id     text        NOT NULL,
    version     bigint      NOT NULL,
    at          timestamptz NOT NULL,
    input_id    text        NOT NULL,
    input_kind  text        NOT NULL,
    from_status text        NOT NULL,
    to_status   text        NOT NULL,
    step        int         NOT NULL,
    note        text        NOT NULL DEFAULT '',
    PRIMARY KEY (saga_type, saga_id, version)
);
