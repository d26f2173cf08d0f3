package suite

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Orchestrix keeps events in PostgreSQL (or memory, or EventSourcingDB)
// and publishes them to the events topic; it has no Kafka event store.
// The Kafka column of the event store cases is therefore the events
// topic used as a log: events written as CloudEvents records
// (codec.EventToRecord, the producing client of producers.NewClient,
// idempotent, acks=all) and read back with codec.RecordToEvent, against
// raw franz-go writing and reading the same keys and values with one type
// header (a client with franz-go's defaults and linger 0, as a competent
// user producing synchronously sets it). Snapshots have no Kafka row.

// kafkaSide is one side's topic and clients.
type kafkaSide struct {
	topic string
	prod  *kgo.Client
}

// newKafkaSides creates a topic of partitions for each side and the
// producing clients: the system's from producers.NewClient, the raw one
// with franz-go's defaults and no linger.
func newKafkaSides(b *testing.B, partitions int32) (base, sys kafkaSide) {
	b.Helper()
	seeds := testenv.Brokers(b)
	base.topic = testenv.Topic(b, seeds, partitions, nil)
	sys.topic = testenv.Topic(b, seeds, partitions, nil)
	base.prod = testenv.Client(b, seeds, kgo.ProducerLinger(0))
	cl, err := producers.NewClient(seeds)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cl.Close)
	sys.prod = cl
	return base, sys
}

// logEvents returns n events of stream ready to publish (IDs, times and
// versions from 1 as the store would have assigned them).
func logEvents(stream string, n int) []orchestrix.Event {
	evs := events(n)
	now := time.Now()
	for j := range evs {
		evs[j].ID = fmt.Sprintf("%s-%d", stream, j+1)
		evs[j].Time = now
		evs[j].StreamID = stream
		evs[j].Version = uint64(j + 1)
	}
	return evs
}

// publish writes evs as CloudEvents records and waits for the acks.
func publish(ctx context.Context, cl *kgo.Client, topic string, evs []orchestrix.Event) error {
	recs := make([]*kgo.Record, len(evs))
	for j, e := range evs {
		r, err := codec.EventToRecord(topic, e)
		if err != nil {
			return err
		}
		recs[j] = r
	}
	return cl.ProduceSync(ctx, recs...).FirstErr()
}

// publishRaw writes the same keys and values as plain records with a
// type header, and waits for the acks.
func publishRaw(ctx context.Context, cl *kgo.Client, topic string, evs []orchestrix.Event) error {
	recs := make([]*kgo.Record, len(evs))
	for j, e := range evs {
		recs[j] = &kgo.Record{Topic: topic, Key: []byte(e.StreamID), Value: e.Data, Headers: []kgo.RecordHeader{{Key: "type", Value: []byte(e.Type)}}}
	}
	return cl.ProduceSync(ctx, recs...).FirstErr()
}

// reader consumes partition 0 of a topic holding end records directly
// (no group) with read_committed.
type reader struct {
	cl    *kgo.Client
	topic string
	end   int64
}

func newReader(b *testing.B, topic string, end int64) *reader {
	cl := testenv.Client(b, testenv.Brokers(b), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.FetchMaxWait(100*time.Millisecond))
	return &reader{cl: cl, topic: topic, end: end}
}

// read reads from offset from to the end, calling each for every record,
// and returns how many there were.
func (r *reader) read(ctx context.Context, from int64, each func(*kgo.Record) error) (int, error) {
	r.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{r.topic: {0: {Epoch: -1, Offset: from}}})
	n := 0
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		fs := r.cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return n, fmt.Errorf("read %s from %d: %d of %d records: %w", r.topic, from, n, r.end-from, err)
		}
		if err := fs.Err(); err != nil {
			return n, err
		}
		last := int64(-1)
		for it := fs.RecordIter(); !it.Done(); {
			rec := it.Next()
			if rec.Offset < from || rec.Offset >= r.end {
				continue // a fetch from before SetOffsets
			}
			if err := each(rec); err != nil {
				return n, err
			}
			n++
			last = rec.Offset
		}
		if last == r.end-1 {
			return n, nil
		}
	}
}

// kafkaLogCases runs the event store cases that apply to the events topic.
func kafkaLogCases(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 10000} {
		run(b, fmt.Sprintf("append=%d", n), func(b *testing.B) {
			base, sys := newKafkaSides(b, 1)
			evs := logEvents("acct", n)
			pair(b, n, "events", func(int) {
				if err := publishRaw(b.Context(), base.prod, base.topic, evs); err != nil {
					b.Fatal(err)
				}
			}, func(int) {
				if err := publish(b.Context(), sys.prod, sys.topic, evs); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
	load := func(b *testing.B, n, from int) {
		base, sys := newKafkaSides(b, 1)
		evs := logEvents("acct", n)
		for v := 0; v < n; v += 1000 {
			part := evs[v:min(n, v+1000)]
			if err := publishRaw(b.Context(), base.prod, base.topic, part); err != nil {
				b.Fatal(err)
			}
			if err := publish(b.Context(), sys.prod, sys.topic, part); err != nil {
				b.Fatal(err)
			}
		}
		rb, rs := newReader(b, base.topic, int64(n)), newReader(b, sys.topic, int64(n))
		want := n - from
		pair(b, want, "events", func(int) {
			got, err := rb.read(b.Context(), int64(from), func(r *kgo.Record) error { sink(orchestrix.Event{Data: r.Value}); return nil })
			if err != nil || got != want {
				b.Fatalf("raw read %d of %d: %v", got, want, err)
			}
		}, func(int) {
			got, err := rs.read(b.Context(), int64(from), func(r *kgo.Record) error {
				e, err := codec.RecordToEvent(r)
				sink(e)
				return err
			})
			if err != nil || got != want {
				b.Fatalf("read %d of %d: %v", got, want, err)
			}
		})
	}
	for _, n := range []int{1, 100, 1000, 10000} {
		run(b, fmt.Sprintf("load=%d", n), func(b *testing.B) { load(b, n, 0) })
	}
	run(b, "load-from=9900of10000", func(b *testing.B) { load(b, 10000, 9900) })
	// 100 streams: 10 events to each of 100 keys per operation, one
	// produce call, over 6 partitions.
	run(b, "streams=100", func(b *testing.B) {
		base, sys := newKafkaSides(b, 6)
		var evs []orchestrix.Event
		for k := range 100 {
			evs = append(evs, logEvents(fmt.Sprintf("m-%d", k), 10)...)
		}
		pair(b, len(evs), "events", func(int) {
			if err := publishRaw(b.Context(), base.prod, base.topic, evs); err != nil {
				b.Fatal(err)
			}
		}, func(int) {
			if err := publish(b.Context(), sys.prod, sys.topic, evs); err != nil {
				b.Fatal(err)
			}
		})
	})
	// Concurrent writers: 8 writers, each publishing 10 events 10 times
	// to a stream of its own per operation, on one shared client.
	run(b, "writers=8", func(b *testing.B) {
		base, sys := newKafkaSides(b, 6)
		const writers, appends = 8, 10
		evs := make([][]orchestrix.Event, writers)
		for w := range evs {
			evs[w] = logEvents(fmt.Sprintf("w%d", w), 10)
		}
		pair(b, writers*appends*10, "events", func(int) {
			concurrently(b, writers, func(w int) error {
				for range appends {
					if err := publishRaw(b.Context(), base.prod, base.topic, evs[w]); err != nil {
						return err
					}
				}
				return nil
			})
		}, func(int) {
			concurrently(b, writers, func(w int) error {
				for range appends {
					if err := publish(b.Context(), sys.prod, sys.topic, evs[w]); err != nil {
						return err
					}
				}
				return nil
			})
		})
	})
}
