-- Outbox: messages that are not events (a saga's outgoing commands),
-- written in the caller's transaction (package outbox, Writer) and
-- published by the relay. Like the events table, tx_id records the
-- writing transaction so the relay reads only below the oldest running
-- transaction (gap-safe) in (tx_id, position) order.
CREATE TABLE {{schema}}.outbox (
    position   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id      xid8        NOT NULL DEFAULT pg_current_xact_id(),
    topic      text        NOT NULL,
    key        bytea,
    value      bytea,
    headers    jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_tx_position ON {{schema}}.outbox (tx_id, position);
