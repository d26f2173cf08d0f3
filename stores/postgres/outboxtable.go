package postgres

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/stores"
)

// OutboxTable reads a schema's outbox table (the rows outbox.Writer
// inserts, created by the migrations) the way Store reads its events:
// only rows whose transaction is older than the oldest transaction still
// running, in (tx_id, position) order, so a row committed late by a slow
// transaction is never skipped and a rolled-back row is never read. The
// outbox relay drains it (outbox.OutboxReader). It is safe for concurrent
// use.
type OutboxTable struct {
	pool   *pgxpool.Pool
	schema string
	read   string
}

// NewOutboxTable returns the reader of schema's outbox table.
func NewOutboxTable(pool *pgxpool.Pool, schema string) *OutboxTable {
	q := pgx.Identifier{schema, "outbox"}.Sanitize()
	return &OutboxTable{
		pool:   pool,
		schema: schema,
		// Order by the xid8 column (o.tx_id), not by the text output
		// column of the same name: text order is not numeric order.
		read: `SELECT o.tx_id::text, o.position, o.topic, o.key, o.value, o.headers, o.created_at FROM ` + q + ` AS o
	WHERE (o.tx_id, o.position) > ($1::text::xid8, $2) AND o.tx_id < pg_snapshot_xmin(pg_current_snapshot())
	ORDER BY o.tx_id, o.position LIMIT $3`,
	}
}

// OutboxRow is one row of the outbox table.
type OutboxRow struct {
	// Cursor is the row's place in the table's log order.
	Cursor stores.Cursor
	// Topic, Key and Value are the record to publish.
	Topic      string
	Key, Value []byte
	// Headers is the headers column as outbox.Writer wrote it (JSON).
	Headers []byte
	// CreatedAt is when the row was inserted.
	CreatedAt time.Time
}

// ReadOutbox reads at most limit committed rows after the cursor, in log
// order, with one query.
func (t *OutboxTable) ReadOutbox(ctx context.Context, after stores.Cursor, limit int) ([]OutboxRow, error) {
	rows, err := t.pool.Query(ctx, t.read, strconv.FormatUint(after.Tx, 10), int64(after.Position), limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: read outbox table after %s: %w", after, err)
	}
	defer rows.Close()
	out := make([]OutboxRow, 0, min(limit, 256))
	for rows.Next() {
		var (
			txText string
			pos    int64
			row    OutboxRow
		)
		if err := rows.Scan(&txText, &pos, &row.Topic, &row.Key, &row.Value, &row.Headers, &row.CreatedAt); err != nil {
			return nil, fmt.Errorf("postgres: read outbox table: %w", err)
		}
		tx, err := strconv.ParseUint(txText, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("postgres: outbox row %d: tx id %q: %w", pos, txText, err)
		}
		row.Cursor = stores.Cursor{Tx: tx, Position: uint64(pos)}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: read outbox table: %w", err)
	}
	return out, nil
}

// CheckOutbox returns an error matching stores.ErrNotMigrated when the
// schema has no outbox table.
func (t *OutboxTable) CheckOutbox(ctx context.Context) error {
	var ok bool
	if err := t.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgx.Identifier{t.schema, "outbox"}.Sanitize()).Scan(&ok); err != nil {
		return fmt.Errorf("postgres: check outbox table: %w", err)
	}
	if !ok {
		return fmt.Errorf("postgres: schema %q has no outbox table (run `orchestrix migrate`): %w", t.schema, stores.ErrNotMigrated)
	}
	return nil
}
