package esdb_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/storetest"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestRelayFromESDB publishes an EventSourcingDB store to Kafka with the
// outbox relay (the store is its own outbox), stops the relay halfway and
// starts another: every event reaches the topic once, in stream order.
func TestRelayFromESDB(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			seeds := b.Seeds(t)
			store, _ := newStore(t)
			topic := testenv.Topic(t, seeds, 3, nil)
			const streams, perRound = 3, 10
			versions := map[string]uint64{}
			appendRound := func() {
				for s := range streams {
					id := fmt.Sprintf("s%d", s)
					if _, err := store.Append(t.Context(), id, stores.Exact(versions[id]), storetest.Events("io.example.tested", perRound)); err != nil {
						t.Fatalf("append %s: %v", id, err)
					}
					versions[id] += perRound
				}
			}
			runRelay := func() (context.CancelFunc, chan error) {
				r, err := outbox.NewRelay(store, seeds, outbox.ToTopic(topic), outbox.NoLeaderElection(), outbox.PollInterval(5*time.Millisecond, 50*time.Millisecond))
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(t.Context())
				done := make(chan error, 1)
				go func() { done <- r.Run(ctx) }()
				return cancel, done
			}
			appendRound()
			stop, done := runRelay()
			appendRound()
			waitTopic(t, seeds, topic, 2*streams*perRound)
			stop()
			if err := <-done; err != nil {
				t.Fatalf("first relay: %v", err)
			}
			appendRound()
			stop, done = runRelay()
			appendRound()
			recs := waitTopic(t, seeds, topic, 4*streams*perRound)
			stop()
			if err := <-done; err != nil {
				t.Fatalf("second relay: %v", err)
			}
			next := map[string]uint64{}
			for _, r := range recs {
				e, err := codec.RecordToEvent(r)
				if err != nil {
					t.Fatalf("record at %d/%d: %v", r.Partition, r.Offset, err)
				}
				if e.Version != next[e.StreamID]+1 {
					t.Fatalf("stream %s: version %d after %d (duplicate or out of order)", e.StreamID, e.Version, next[e.StreamID])
				}
				next[e.StreamID] = e.Version
			}
			for id, v := range versions {
				if next[id] != v {
					t.Errorf("stream %s: topic has up to version %d, store %d", id, next[id], v)
				}
			}
		})
	}
}

// waitTopic reads the topic (read_committed) from the start until it holds
// n records, then reads a little longer to catch duplicates.
func waitTopic(t *testing.T, seeds []string, topic string, n int) []*kgo.Record {
	t.Helper()
	cl := testenv.Client(t, seeds, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n && ctx.Err() == nil {
		out = append(out, cl.PollFetches(ctx).Records()...)
	}
	if len(out) < n {
		t.Fatalf("topic has %d records, want %d", len(out), n)
	}
	extra, cancel2 := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel2()
	out = append(out, cl.PollFetches(extra).Records()...)
	return out
}
