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
	return s.AppendLogBatch(ctx, nil, after, limit)
}

// AppendLogBatch is ReadLogBatch appending the entries to dst, whose spare
// capacity it uses: a reader that reads batch after batch, like the outbox
// relay, hands back the slice of a batch it is done with instead of
// allocating one of limit entries for every read.
func (s *Store) AppendLogBatch(ctx context.Context, dst []stores.Entry, after stores.Cursor, limit int) ([]stores.Entry, error) {
	if limit <= 0 {
		return dst, nil
	}
	out, err := s.page(ctx, dst, s.sql.readAll, true, strconv.FormatUint(after.Tx, 10), int64(after.Position), limit)
	if err != nil {
		return dst, fmt.Errorf("postgres: read log after %s: %w", after, err)
	}
	return out, nil
}
