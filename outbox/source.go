package outbox

import (
	"context"
	"iter"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/stores"
)

// Source is the log a relay publishes: a [stores.LogReader], so any
// [stores.EventStore] fits. ReadAll must be gap-safe and keep each
// stream's order (the stores contract).
type Source interface {
	stores.LogReader
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

// Optional capabilities of a Source, found by type assertion (the way
// pgx finds a tracer): a source has the ones it can offer, and the relay
// uses each it finds.

// Pooled is a PostgreSQL-backed source (a stores/postgres Store): the
// relay drains its schema's outbox table (see [OutboxTable] and
// [NoOutboxTable]) and reads its head position for the lag. Leader
// election comes from [stores.Leaser].
type Pooled interface {
	Pool() *pgxpool.Pool
	Schema() string
}

// Notifier is a source that can wake an idle relay: Appended returns a
// channel closed at the next append (a stores/memory Store), so the relay
// need not wait for its next poll.
type Notifier interface {
	Appended() <-chan struct{}
}

// BatchReader is a source that reads one batch of its log in one query
// (a stores/postgres Store), with the contract of ReadAll; the relay
// prefers it to ReadAll.
type BatchReader interface {
	ReadLogBatch(ctx context.Context, after stores.Cursor, limit int) ([]stores.Entry, error)
}

// BatchAppender is a BatchReader that appends to a slice it is given
// (a stores/postgres Store, see its AppendLogBatch), so the relay reuses
// the slices of the batches it published; preferred to BatchReader.
type BatchAppender interface {
	AppendLogBatch(ctx context.Context, dst []stores.Entry, after stores.Cursor, limit int) ([]stores.Entry, error)
}

// Sizer is a source whose store limits the size of event Data on
// appends (a stores/esdb Store): MaxEventSize is the default of
// [MaxEventSize].
type Sizer interface {
	MaxEventSize() int
}
