package outbox

import (
	"context"
	"fmt"

	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/twmb/franz-go/pkg/kgo"
)

// OutboxReader is an outbox table the relay drains besides the events,
// in the same transactions: the rows a [Writer] inserted, read in a
// gap-safe log order (a row committed late by a slower transaction is
// never skipped, a rolled-back row never read). [postgres.OutboxTable] is
// one; the relay uses it for [OutboxTable] and for a source that is
// [Pooled] (a stores/postgres Store), and any other given with
// [DrainOutbox].
type OutboxReader interface {
	// ReadOutbox reads at most limit committed rows after the cursor,
	// in log order.
	ReadOutbox(ctx context.Context, after stores.Cursor, limit int) ([]postgres.OutboxRow, error)
	// CheckOutbox returns an error matching stores.ErrNotMigrated when
	// the table does not exist; the relay calls it at the start of each
	// term.
	CheckOutbox(ctx context.Context) error
}

// message is one outbox row as a record, with the cursor just after it.
type message struct {
	rec    *kgo.Record
	cursor stores.Cursor
}

// readMessages reads one batch of rd's rows as records.
func readMessages(ctx context.Context, rd OutboxReader, after stores.Cursor, limit int) ([]message, error) {
	rows, err := rd.ReadOutbox(ctx, after, limit)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	out := make([]message, 0, len(rows))
	for _, row := range rows {
		hs, err := decodeHeaders(row.Headers)
		if err != nil {
			return nil, fmt.Errorf("outbox: outbox row %d: headers: %w", row.Cursor.Position, err)
		}
		out = append(out, message{rec: &kgo.Record{Topic: row.Topic, Key: row.Key, Value: row.Value, Headers: hs}, cursor: row.Cursor})
	}
	return out, nil
}
