package esdb_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
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
	"github.com/twmb/franz-go/pkg/kadm"
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
			if be.srv != nil {
				// Both drops strike relay a's connections: wait for its
				// second reconnection (on a loaded machine, 450 ms were
				// once not enough for a to read the 37 events that take,
				// and the second fault never struck: 1 of 20 runs).
				deadline := time.Now().Add(30 * time.Second)
				for reconnects.Load() < 2 && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
			}
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

// TestRelayForeignEvent: an event under the store's streams subject that
// the store did not write (another application's) is written to the
// relay's dead-letter topic, with its ESDB ID, subject, type and reason,
// and the events after it are published: on the observe-events path and
// on the polled ReadAll path. Run never returns.
func TestRelayForeignEvent(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		for _, path := range []string{"observe", "poll"} {
			t.Run(b.Name+"/"+path, func(t *testing.T) {
				seeds := b.Seeds(t)
				store, be := newStore(t)
				ctx := t.Context()
				topic := testenv.Topic(t, seeds, 2, nil)
				t.Cleanup(func() {
					cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
					if err == nil {
						defer cl.Close()
						_, _ = kadm.NewClient(cl).DeleteTopics(context.Background(), topic+outbox.CheckpointSuffix, topic+outbox.DeadLetterSuffix)
					}
				})
				appendN := func(stream string, n int) {
					t.Helper()
					if _, err := store.Append(ctx, stream, stores.Any, storetest.Events("io.example.tested", n)); err != nil {
						t.Fatal(err)
					}
				}
				appendN("s1", 3)
				subject := store.StreamsSubject() + "/foreign"
				written, err := be.client.WriteEvents(ctx, []esdb.EventCandidate{{Source: "https://other.example.com", Subject: subject,
					Type: "com.example.other-happened", Data: []byte(`{"hello":"world"}`)}})
				if err != nil {
					t.Fatal(err)
				}
				appendN("s2", 2)
				appendN("s1", 1)

				var src outbox.Source = store
				opts := []outbox.Option{outbox.ToTopic(topic), outbox.NoLeaderElection(), outbox.Instance("f")}
				if path == "poll" {
					// Without Observe: the relay polls ReadAll.
					src = struct{ stores.EventStore }{store}
					opts = append(opts, outbox.PollInterval(5*time.Millisecond, 20*time.Millisecond))
				} else {
					opts = append(opts, noPoll)
				}
				r, err := outbox.NewRelay(src, seeds, opts...)
				if err != nil {
					t.Fatal(err)
				}
				rctx, cancel := context.WithCancel(ctx)
				defer cancel()
				done := make(chan error, 1)
				go func() { done <- r.Run(rctx) }()
				deadline := time.Now().Add(30 * time.Second)
				for st := r.Stats(); st.Events < 6 || st.DeadLettered < 1; st = r.Stats() {
					select {
					case err := <-done:
						t.Fatalf("Run returned %v; stats %+v", err, st)
					case <-time.After(20 * time.Millisecond):
					}
					if time.Now().After(deadline) {
						t.Fatalf("timed out: stats %+v, want 6 events and 1 dead letter", st)
					}
				}
				cancel()
				if err := <-done; err != nil {
					t.Fatalf("Run: %v", err)
				}
				if st := r.Stats(); st.Events != 6 || st.DeadLettered != 1 {
					t.Fatalf("stats %+v, want 6 events and 1 dead letter", st)
				}
				recs := waitTopic(t, seeds, topic, 6)
				if len(recs) != 6 {
					t.Fatalf("topic has %d records, want 6", len(recs))
				}
				dl := waitTopic(t, seeds, topic+outbox.DeadLetterSuffix, 1)
				if len(dl) != 1 {
					t.Fatalf("%d dead letters, want 1", len(dl))
				}
				got := map[string]string{}
				for _, h := range dl[0].Headers {
					got[h.Key] = string(h.Value)
				}
				id := written[0].ID
				pos, _ := strconv.ParseUint(id, 10, 64)
				for k, v := range map[string]string{
					outbox.HeaderReason: outbox.ReasonUnreadable, outbox.HeaderOrigin: "event", outbox.HeaderID: id,
					outbox.HeaderStream: subject, outbox.HeaderType: "com.example.other-happened",
					outbox.HeaderPosition: strconv.FormatUint(pos+1, 10),
				} {
					if got[k] != v {
						t.Errorf("header %s = %q, want %q (headers %v)", k, got[k], v, got)
					}
				}
				if !strings.Contains(got[outbox.HeaderError], "not written by this store") {
					t.Errorf("error header %q does not say why", got[outbox.HeaderError])
				}
				if string(dl[0].Value) != `{"hello":"world"}` {
					t.Errorf("dead letter value %q, want the event's data", dl[0].Value)
				}
			})
		}
	}
}
