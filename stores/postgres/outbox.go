package postgres

import (
	"context"
	"fmt"
	"strconv"

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
	out, err := s.page(ctx, s.sql.readAll, true, strconv.FormatUint(after.Tx, 10), int64(after.Position), limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: read log after %s: %w", after, err)
	}
	return out, nil
}
