package projections

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Source is where a Runner reads events: FromStore or FromTopic. The
// checkpoint model is the same for both; only the cursor differs (a
// stores.Cursor "tx/position", or a partition's next offset).
type Source interface {
	// kind names the source in the versions table: "store" or
	// "topic:<name>".
	kind() string
	// shards returns the shard count the source imposes (a topic's
	// partitions), or 0 when the Runner's Shards option decides.
	shards(ctx context.Context) (int, error)
	open(ctx context.Context, shard, shards int, cursor string, batch int) (reader, error)
	// mark returns where "now" is for WaitForNonStale: a shard is caught
	// up with a call once it has read to the end with a mark at least
	// the call's.
	mark(ctx context.Context) (uint64, error)
}

// reader reads one shard's share of a source from a cursor.
type reader interface {
	// read returns the next page and, when it reached the end of what is
	// readable, a mark (see Source.mark) that the end covers; 0 if not at
	// the end.
	read(ctx context.Context) (page []item, atEnd uint64, err error)
	// rewind makes the next read start after cursor (the last committed
	// one) again.
	rewind(cursor string) error
	close()
}

// item is one entry of a page: an event of this shard, or an entry that
// only moves the cursor (another shard's event in the store's log).
type item struct {
	event  orchestrix.Event
	cursor string
	mine   bool
	bad    error // the record could not be decoded: a poison event as is
}

// FromStore reads an event store's log with its gap-safe
// [stores.LogReader.ReadAll] (any [stores.EventStore] fits); shards split
// the streams by ShardOf. Every shard reads the whole log and skips the
// other shards' events.
func FromStore(store stores.LogReader) Source { return storeSource{store} }

type storeSource struct{ store stores.LogReader }

func (s storeSource) kind() string                            { return SourceStore }
func (s storeSource) shards(ctx context.Context) (int, error) { return 0, nil }

// pooled is a store on a PostgreSQL pool (stores/postgres): its gap-safe
// ReadAll reads below the oldest running transaction, so the marks are
// transaction IDs, not times.
type pooled interface{ Pool() *pgxpool.Pool }

// mark: for PostgreSQL, the xmax of the current snapshot: every
// transaction committed before the call has a lower ID, and a read whose
// horizon (xmin) is at least this sees all of them. Elsewhere, the time.
func (s storeSource) mark(ctx context.Context) (uint64, error) {
	if p, ok := s.store.(pooled); ok {
		var x uint64
		err := p.Pool().QueryRow(ctx, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").Scan(&x)
		return x, err
	}
	return uint64(time.Now().UnixNano()), nil
}

func (s storeSource) open(ctx context.Context, shard, shards int, cursor string, batch int) (reader, error) {
	r := &storeReader{store: s.store, shard: shard, shards: shards, batch: batch}
	if cursor != "" {
		c, err := stores.ParseCursor(cursor)
		if err != nil {
			return nil, fmt.Errorf("checkpoint: %w", err)
		}
		r.cursor = c
	}
	return r, nil
}

type storeReader struct {
	src                  storeSource
	store                stores.LogReader
	cursor               stores.Cursor
	shard, shards, batch int
}

func (r *storeReader) read(ctx context.Context) ([]item, uint64, error) {
	var horizon uint64
	if p, ok := r.store.(pooled); ok {
		// The horizon before the read: the read's own is at least this.
		if err := p.Pool().QueryRow(ctx, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").Scan(&horizon); err != nil {
			return nil, 0, fmt.Errorf("read horizon: %w", err)
		}
	} else {
		horizon = uint64(time.Now().UnixNano())
	}
	out := make([]item, 0, r.batch)
	for e, err := range r.store.ReadAll(ctx, r.cursor, r.batch) {
		if err != nil {
			return nil, 0, fmt.Errorf("read: %w", err)
		}
		out = append(out, item{event: e.Event, cursor: e.Cursor.String(), mine: ShardOf(e.StreamID, r.shards) == r.shard})
		r.cursor = e.Cursor
	}
	if len(out) < r.batch {
		return out, horizon, nil
	}
	return out, 0, nil
}

func (r *storeReader) rewind(cursor string) error {
	if cursor == "" {
		r.cursor = stores.Cursor{}
		return nil
	}
	c, err := stores.ParseCursor(cursor)
	if err == nil {
		r.cursor = c
	}
	return err
}

func (r *storeReader) close() {}

// FromTopic reads a Kafka events topic (CloudEvents records, as the
// outbox relay writes them) with read_committed isolation: one shard per
// partition, each read by a client of its own assigned that one
// partition at the checkpoint's offset when the shard is claimed. Offsets
// live only in the checkpoint rows, in the read model's transaction; no
// consumer group is involved (the elector, not the group protocol,
// decides who reads a partition, so there are no rebalances to race
// with). opts are added to every client (TLS, SASL, logging).
func FromTopic(seeds []string, topic string, opts ...kgo.Opt) Source {
	return topicSource{seeds: seeds, topic: topic, opts: opts}
}

type topicSource struct {
	seeds []string
	topic string
	opts  []kgo.Opt
}

func (s topicSource) kind() string { return "topic:" + s.topic }

func (s topicSource) mark(ctx context.Context) (uint64, error) {
	return uint64(time.Now().UnixNano()), nil
}

func (s topicSource) shards(ctx context.Context) (int, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(s.seeds...)}, s.opts...)...)
	if err != nil {
		return 0, fmt.Errorf("topic %s: %w", s.topic, err)
	}
	defer cl.Close()
	td, err := kadm.NewClient(cl).ListTopics(ctx, s.topic)
	if err != nil {
		return 0, fmt.Errorf("topic %s: %w", s.topic, err)
	}
	t, ok := td[s.topic]
	if !ok || t.Err != nil {
		return 0, fmt.Errorf("topic %s: %w", s.topic, errors.Join(ErrNoTopic, t.Err))
	}
	return len(t.Partitions), nil
}

// ErrNoTopic: the source topic does not exist.
var ErrNoTopic = errors.New("projections: source topic not found")

func (s topicSource) open(ctx context.Context, shard, shards int, cursor string, batch int) (reader, error) {
	at := kgo.NewOffset().AtStart()
	if cursor != "" {
		off, err := strconv.ParseInt(cursor, 10, 64)
		if err != nil || off < 0 {
			return nil, fmt.Errorf("checkpoint: offset %q: %w", cursor, orchestrix.ErrInvalid)
		}
		at = kgo.NewOffset().At(off)
	}
	opts := append([]kgo.Opt{kgo.SeedBrokers(s.seeds...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{s.topic: {int32(shard): at}})}, s.opts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("topic %s partition %d: %w", s.topic, shard, err)
	}
	next := int64(0)
	if cursor != "" {
		next, _ = strconv.ParseInt(cursor, 10, 64)
	}
	return &topicReader{cl: cl, batch: batch, topic: s.topic, partition: int32(shard), next: next}, nil
}

type topicReader struct {
	cl        *kgo.Client
	topic     string
	partition int32
	batch     int
	next      int64 // the offset after the last record read
	endMark   uint64
}

func (r *topicReader) rewind(cursor string) error {
	off := int64(0)
	if cursor != "" {
		var err error
		if off, err = strconv.ParseInt(cursor, 10, 64); err != nil {
			return fmt.Errorf("checkpoint: offset %q: %w", cursor, orchestrix.ErrInvalid)
		}
	}
	r.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{r.topic: {r.partition: {Epoch: -1, Offset: off}}})
	r.next = off
	return nil
}

// topicWait is how long a read waits for records before it reports the
// end of the partition.
const topicWait = 100 * time.Millisecond

func (r *topicReader) read(ctx context.Context) ([]item, uint64, error) {
	items, atEnd, err := r.readPage(ctx)
	if err != nil || !atEnd {
		return items, 0, err
	}
	return items, r.endMark, nil
}

func (r *topicReader) readPage(ctx context.Context) ([]item, bool, error) {
	r.endMark = uint64(time.Now().UnixNano())
	pctx, cancel := context.WithTimeout(ctx, topicWait)
	defer cancel()
	fs := r.cl.PollRecords(pctx, r.batch)
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	var ferr error
	fs.EachError(func(t string, p int32, err error) {
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && ferr == nil {
			ferr = fmt.Errorf("fetch %s[%d]: %w", t, p, err)
		}
	})
	if ferr != nil {
		return nil, false, ferr
	}
	var out []item
	atEnd := true
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		for _, rec := range p.Records {
			it := item{cursor: strconv.FormatInt(rec.Offset+1, 10), mine: true}
			it.event, it.bad = codec.RecordToEvent(rec)
			if it.bad != nil {
				it.event = orchestrix.Event{StreamID: string(rec.Key), Data: rec.Value, Metadata: orchestrix.Metadata{Type: "orchestrix.undecodable"}}
				it.bad = fmt.Errorf("%s[%d]@%d: %w", rec.Topic, rec.Partition, rec.Offset, it.bad)
			}
			out = append(out, it)
		}
		if n := len(p.Records); n > 0 {
			r.next = p.Records[n-1].Offset + 1
			if r.next < p.LastStableOffset-1 {
				atEnd = false
			}
		}
	})
	if len(out) == 0 {
		// Nothing came within the wait: the end only if the partition's
		// last stable offset is at most one past the next offset (one
		// transaction marker follows the last record of a transaction).
		r.endMark = uint64(time.Now().UnixNano())
		lso, err := kadm.NewClient(r.cl).ListCommittedOffsets(ctx, r.topic)
		if err != nil {
			return nil, false, fmt.Errorf("list offsets of %s: %w", r.topic, err)
		}
		o, ok := lso.Lookup(r.topic, r.partition)
		if !ok || o.Err != nil {
			return nil, false, fmt.Errorf("list offsets of %s[%d]: %w", r.topic, r.partition, errors.Join(ErrNoTopic, o.Err))
		}
		atEnd = o.Offset <= r.next+1
	}
	return out, atEnd && len(out) < r.batch, nil
}

func (r *topicReader) close() { r.cl.Close() }
