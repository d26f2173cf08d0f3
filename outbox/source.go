package outbox

import (
	"context"
	"iter"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/stores"
)

// Source is the log a relay publishes: any stores.EventStore fits. ReadAll
// must be gap-safe and keep each stream's order (the stores contract).
type Source interface {
	ReadAll(ctx context.Context, after stores.Cursor, limit int) iter.Seq2[stores.Entry, error]
}

// Observer is a Source that pushes: Observe yields every entry after the
// cursor in log order, then each new one as it is committed, until ctx
// ends or an error that retrying cannot fix (which it yields last). It
// must resume by itself from the last entry yielded after a dropped
// connection, repeating and losing nothing. stores/esdb.Store is one (it
// follows EventSourcingDB's observe-events stream).
//
// A relay whose source is an Observer follows that stream instead of
// polling ReadAll: an event is published as soon as it arrives, and each
// term (after a start, a takeover, being fenced or any error) observes
// anew from the checkpoint it recovered from Kafka.
type Observer interface {
	Observe(ctx context.Context, after stores.Cursor) iter.Seq2[stores.Entry, error]
}

// Optional capabilities of a Source, found by type assertion.
type (
	// pooled is a PostgreSQL-backed source (stores/postgres.Store): its
	// schema's outbox table is drained. (Leader election comes from
	// stores.Leaser.)
	pooled interface {
		Pool() *pgxpool.Pool
		Schema() string
	}
	// notifier closes the returned channel at the next append
	// (stores/memory.Store), so the relay need not wait for its poll.
	notifier interface {
		Appended() <-chan struct{}
	}
	// batchReader reads one batch of the log in one query
	// (stores/postgres.Store); preferred to ReadAll.
	batchReader interface {
		ReadLogBatch(ctx context.Context, after stores.Cursor, limit int) ([]stores.Entry, error)
	}
	// batchAppender is a batchReader that appends to a slice it is
	// given (see postgres.Store.AppendLogBatch), so the relay reuses the
	// slices of the batches it published.
	batchAppender interface {
		AppendLogBatch(ctx context.Context, dst []stores.Entry, after stores.Cursor, limit int) ([]stores.Entry, error)
	}
	// sizer reports the limit on event Data its store enforces on
	// appends (stores/esdb.Store): the default of MaxEventSize.
	sizer interface {
		MaxEventSize() int
	}
)
