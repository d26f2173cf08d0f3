package consumers

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Handler processes one record. Its effect must be durable when it returns
// nil. It is called concurrently for different partitions (and keys, with
// KeyConcurrency), never concurrently for one key.
type Handler interface {
	Handle(ctx context.Context, r *kgo.Record) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, r *kgo.Record) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, r *kgo.Record) error { return f(ctx, r) }

// BatchHandler is an optional interface of a Handler: it processes one
// partition's records of a poll, in order, and returns one error per record
// (nil for success; a nil slice means all succeeded). Records whose error
// is non-nil go through the failure policy one by one, retried with Handle.
// A batch handler must not apply a record of a key after a failed record of
// the same key: it fails the later ones too (see ErrBlocked).
type BatchHandler interface {
	Handler
	HandleBatch(ctx context.Context, recs []*kgo.Record) []error
}

// PartitionAware is an optional interface of a Handler, told when the
// group takes partitions away so it can drop state cached for them.
type PartitionAware interface {
	PartitionsRevoked(topic string, partitions []int32)
}

// Assignable is an optional Handler interface for handlers that keep their
// own position: a projection that stores its offsets in its read-model
// database, in the transaction of its writes, rather than in the group's
// committed offsets. PartitionsAssigned is called when the group assigns
// partitions of a consumed topic (never of a retry topic) to this member,
// before any of their records is handled; it returns the offset to start
// from for each partition whose position it keeps (the next record to
// handle). Partitions it leaves out start at the group's committed offset.
// An error stops the group: Run returns it, since starting anywhere else
// could skip or repeat records.
type Assignable interface {
	PartitionsAssigned(ctx context.Context, topic string, partitions []int32) (map[int32]int64, error)
}

// Stats describes one partition's share of a processed poll.
type Stats struct {
	Topic     string
	Partition int32
	// Records processed, of which Failed went to the failure policy and
	// DeadLettered ended in the dead-letter topic.
	Records, Failed, DeadLettered int
	// Duration of the partition's processing.
	Duration time.Duration
	// Lag is the partition's high watermark minus the next offset to
	// consume, as known from the last fetch.
	Lag int64
}
