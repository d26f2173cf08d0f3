package postgres

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix/stores"
)

// ReadLogBatch reads at most limit committed events after the cursor, in
// log order, with one query: the read the outbox relay makes for each of
// its transactions. It is gap-safe like ReadAll (rows below the oldest
// running transaction only) and orders by the xid8 column itself, so
// positions are read in (tx_id, position) order whatever the number of
// digits of the transaction IDs, through the (tx_id, position) index.
func (s *Store) ReadLogBatch(ctx context.Context, after stores.Cursor, limit int) ([]stores.Entry, error) {
	if limit <= 0 {
		return nil, nil
	}
	sql := `SELECT ev.tx_id::text, ` + eventColumns + ` FROM ` + pgx.Identifier{s.schema, "events"}.Sanitize() + ` AS ev
	WHERE (ev.tx_id, ev.position) > ($1::text::xid8, $2) AND ev.tx_id < pg_snapshot_xmin(pg_current_snapshot())
	ORDER BY ev.tx_id, ev.position LIMIT $3`
	out, err := s.page(ctx, sql, true, strconv.FormatUint(after.Tx, 10), int64(after.Position), limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: read log after %s: %w", after, err)
	}
	return out, nil
}
