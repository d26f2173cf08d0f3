package outbox

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kgo"
)

// table reads the outbox table the way stores/postgres reads its events:
// only rows whose transaction is older than the oldest transaction still
// running, in (tx_id, position) order, so a row committed late by a slow
// transaction is never skipped and a rolled-back row is never read.
type table struct {
	pool *pgxpool.Pool
	read string
	head string
}

func newTable(pool *pgxpool.Pool, schema string) *table {
	q := pgx.Identifier{schema, "outbox"}.Sanitize()
	return &table{
		pool: pool,
		// Order by the xid8 column (o.tx_id), not by the text output
		// column of the same name: text order is not numeric order.
		read: `SELECT o.tx_id::text, o.position, o.topic, o.key, o.value, o.headers, o.created_at FROM ` + q + ` AS o
	WHERE (o.tx_id, o.position) > ($1::text::xid8, $2) AND o.tx_id < pg_snapshot_xmin(pg_current_snapshot())
	ORDER BY o.tx_id, o.position LIMIT $3`,
		head: `SELECT coalesce(max(position), 0) FROM ` + q,
	}
}

// message is one outbox row as a record, with the cursor just after it.
type message struct {
	rec    *kgo.Record
	cursor stores.Cursor
	at     time.Time
}

func (t *table) readBatch(ctx context.Context, after stores.Cursor, limit int) ([]message, error) {
	rows, err := t.pool.Query(ctx, t.read, strconv.FormatUint(after.Tx, 10), int64(after.Position), limit)
	if err != nil {
		return nil, fmt.Errorf("outbox: read outbox table after %s: %w", after, err)
	}
	defer rows.Close()
	out := make([]message, 0, min(limit, 256))
	for rows.Next() {
		var (
			txText  string
			pos     int64
			m       message
			headers []byte
		)
		m.rec = &kgo.Record{}
		if err := rows.Scan(&txText, &pos, &m.rec.Topic, &m.rec.Key, &m.rec.Value, &headers, &m.at); err != nil {
			return nil, fmt.Errorf("outbox: read outbox table: %w", err)
		}
		tx, err := strconv.ParseUint(txText, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("outbox: outbox row %d: tx id %q: %w", pos, txText, err)
		}
		if m.rec.Headers, err = decodeHeaders(headers); err != nil {
			return nil, fmt.Errorf("outbox: outbox row %d: headers: %w", pos, err)
		}
		m.cursor = stores.Cursor{Tx: tx, Position: uint64(pos)}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: read outbox table: %w", err)
	}
	return out, nil
}

func (t *table) headPosition(ctx context.Context) (uint64, error) {
	var n int64
	err := t.pool.QueryRow(ctx, t.head).Scan(&n)
	return uint64(n), err
}
