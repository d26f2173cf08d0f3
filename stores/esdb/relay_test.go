package esdb_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/esdb"
	"github.com/orchestrix/orchestrix/stores/esdb/esdbtest"
	"github.com/orchestrix/orchestrix/stores/storetest"
	"github.com/twmb/franz-go/pkg/kgo"
)

// noPoll is a poll interval no test waits out: a relay that polled
// instead of following the observe-events stream would publish nothing
// after its first read within the test's deadline.
var noPoll = outbox.PollInterval(10*time.Minute, 10*time.Minute)

// TestRelayFromESDB publishes an EventSourcingDB store to Kafka with the
// outbox relay following the store's observe-events stream (the store is
// its own outbox), while writers keep appending: the observe connection
// drops twice, a second relay takes over from the first (fencing it)
// and the first is stopped, and a third starts after the second stopped.
// Every event reaches the topic once, in stream order, on a
// read_committed consumer.
func TestRelayFromESDB(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			seeds := b.Seeds(t)
			var reconnects atomic.Int64
			store, be := newStore(t, esdb.WithObserveOptions(esdb.ObserveOptions{
				StallTimeout: 5 * time.Second, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
				OnReconnect: func(error, int) { reconnects.Add(1) },
			}))
			topic := testenv.Topic(t, seeds, 3, nil)

			const streams, rounds, perRound = 4, 30, 5
			var (
				mu       sync.Mutex
				versions = map[string]uint64{}
			)
			appendRound := func(ctx context.Context) error {
				for s := range streams {
					id := fmt.Sprintf("s%d", s)
					mu.Lock()
					v := versions[id]
					mu.Unlock()
					if _, err := store.Append(ctx, id, stores.Exact(v), storetest.Events("io.example.tested", perRound)); err != nil {
						return fmt.Errorf("append %s: %w", id, err)
					}
					mu.Lock()
					versions[id] = v + perRound
					mu.Unlock()
				}
				return nil
			}
			runRelay := func(name string) (stop func() error) {
				r, err := outbox.NewRelay(store, seeds, outbox.ToTopic(topic), outbox.NoLeaderElection(), outbox.Instance(name), noPoll)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(t.Context())
				done := make(chan error, 1)
				go func() { done <- r.Run(ctx) }()
				return func() error { cancel(); return <-done }
			}

			if err := appendRound(t.Context()); err != nil {
				t.Fatal(err)
			}
			if be.srv != nil {
				// Relay a's observe connection drops after 7 events (in
				// the backlog), its reconnection after 30 more (live).
				be.srv.InjectFault(esdbtest.Fault{Endpoint: "observe-events", Kind: esdbtest.FaultDropConnection, After: 7})
				be.srv.InjectFault(esdbtest.Fault{Endpoint: "observe-events", Kind: esdbtest.FaultDropConnection, After: 30})
			}
			stopA := runRelay("a")
			// Writers keep appending while relays come and go.
			written := make(chan error, 1)
			go func() {
				for range rounds - 2 {
					if err := appendRound(t.Context()); err != nil {
						written <- err
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
				written <- nil
			}()
			time.Sleep(150 * time.Millisecond)
			time.Sleep(300 * time.Millisecond)
			stopB := runRelay("b") // fences a; they take turns until a stops
			time.Sleep(200 * time.Millisecond)
			if err := stopA(); err != nil {
				t.Fatalf("relay a: %v", err)
			}
			time.Sleep(150 * time.Millisecond)
			if err := stopB(); err != nil {
				t.Fatalf("relay b: %v", err)
			}
			if err := <-written; err != nil {
				t.Fatal(err)
			}
			stopC := runRelay("c")
			defer func() {
				if err := stopC(); err != nil {
					t.Errorf("relay c: %v", err)
				}
			}()
			if err := appendRound(t.Context()); err != nil {
				t.Fatal(err)
			}
			total := rounds * streams * perRound
			recs := waitTopic(t, seeds, topic, total)

			// Latency: relay c is caught up; one more event must arrive
			// without waiting for a poll.
			cl := testenv.Client(t, seeds, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
			cl.PollFetches(pollCtx(t, 300*time.Millisecond)) // joins the partitions at their end
			start := time.Now()
			if _, err := store.Append(t.Context(), "late", stores.NoStream, storetest.Events("io.example.tested", 1)); err != nil {
				t.Fatal(err)
			}
			var late []*kgo.Record
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			for len(late) == 0 && ctx.Err() == nil {
				late = cl.PollFetches(ctx).Records()
			}
			if len(late) != 1 {
				t.Fatalf("late event: got %d records", len(late))
			}
			t.Logf("append → read_committed consumer: %v; observe reconnects: %d", time.Since(start).Round(time.Millisecond), reconnects.Load())
			if be.srv != nil {
				if reconnects.Load() < 2 {
					t.Errorf("observe reconnected %d times, want the 2 injected drops at least", reconnects.Load())
				}
				if n := be.srv.Requests("observe-events"); n < 3 {
					t.Errorf("observe-events was requested %d times; three relays should have observed", n)
				}
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
			if len(recs) != total {
				t.Errorf("topic has %d records, want %d", len(recs), total)
			}
			for id, v := range versions {
				if next[id] != v {
					t.Errorf("stream %s: topic has up to version %d, store %d", id, next[id], v)
				}
			}
		})
	}
}

func pollCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
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
