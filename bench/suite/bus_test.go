package suite

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/twmb/franz-go/pkg/kgo"
)

// payload is a bus message; Note sets its size.
type payload struct {
	Account string `json:"account"`
	Amount  int64  `json:"amount"`
	Note    string `json:"note"`
}

// Ten message types with the same shape, one per handler of the router
// cases (a router calls one handler per type).
type (
	m0 payload
	m1 payload
	m2 payload
	m3 payload
	m4 payload
	m5 payload
	m6 payload
	m7 payload
	m8 payload
	m9 payload
)

// counter counts handled messages and wakes a waiter once a target is
// reached.
type counter struct {
	n, target atomic.Int64
	wake      chan struct{}
	err       atomic.Pointer[error] // the consumer stopped with it
}

// fail records that the consumer stopped with err and wakes the waiter.
func (c *counter) fail(err error) {
	c.err.Store(&err)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func newCounter() *counter { return &counter{wake: make(chan struct{}, 1)} }

func (c *counter) hit() {
	if c.n.Add(1) >= c.target.Load() {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// expect adds n to the target and waits until that many were handled.
func (c *counter) expect(ctx context.Context, n int) error {
	t := c.target.Add(int64(n))
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for c.n.Load() < t {
		if err := c.err.Load(); err != nil {
			return *err
		}
		select {
		case <-c.wake:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d messages handled: %w", c.n.Load(), t, ctx.Err())
		}
	}
	return nil
}

// busType is one message type on both sides: the system's constructor of
// a payload of that type, and the raw side's decoding handler.
type busType struct {
	name string
	mk   func(payload) any
	raw  func([]byte) error
}

// addType registers T under name in reg, routes it in r to a handler
// counting on sys, and returns the type with a raw handler counting on
// base that decodes the same JSON into a T.
func addType[T any](b *testing.B, reg *codec.Registry, r *consumers.Router, name string, conv func(payload) T, sys, base *counter) busType {
	b.Helper()
	if err := codec.RegisterJSON[T](reg, name); err != nil {
		b.Fatal(err)
	}
	if err := consumers.On(r, func(context.Context, orchestrix.Event, T) error { sys.hit(); return nil }); err != nil {
		b.Fatal(err)
	}
	return busType{
		name: name,
		mk:   func(p payload) any { return conv(p) },
		raw: func(v []byte) error {
			var t T
			if err := json.Unmarshal(v, &t); err != nil {
				return err
			}
			base.hit()
			return nil
		},
	}
}

// busTypes registers the first n of the ten message types.
func busTypes(b *testing.B, reg *codec.Registry, r *consumers.Router, n int, sys, base *counter) []busType {
	all := []func() busType{
		func() busType { return addType(b, reg, r, "bench.M0", func(p payload) m0 { return m0(p) }, sys, base) },
		func() busType { return addType(b, reg, r, "bench.M1", func(p payload) m1 { return m1(p) }, sys, base) },
		func() busType { return addType(b, reg, r, "bench.M2", func(p payload) m2 { return m2(p) }, sys, base) },
		func() busType { return addType(b, reg, r, "bench.M3", func(p payload) m3 { return m3(p) }, sys, base) },
		func() busType { return addType(b, reg, r, "bench.M4", func(p payload) m4 { return m4(p) }, sys, base) },
		func() busType { return addType(b, reg, r, "bench.M5", func(p payload) m5 { return m5(p) }, sys, base) },
		func() busType { return addType(b, reg, r, "bench.M6", func(p payload) m6 { return m6(p) }, sys, base) },
		func() busType { return addType(b, reg, r, "bench.M7", func(p payload) m7 { return m7(p) }, sys, base) },
		func() busType { return addType(b, reg, r, "bench.M8", func(p payload) m8 { return m8(p) }, sys, base) },
		func() busType { return addType(b, reg, r, "bench.M9", func(p payload) m9 { return m9(p) }, sys, base) },
	}
	out := make([]busType, n)
	for i := range out {
		out[i] = all[i]()
	}
	return out
}

// bus is one case's two sides, running: the system (a producers.Sender
// on the client of producers.NewClient → Kafka → a consumers.Group whose
// handler is a consumers.Router, every default kept) and the raw baseline
// (franz-go: a producer with linger 0, and a read_committed consumer
// group loop that decodes each value's JSON by its type header, runs the
// partitions of a poll concurrently and commits after each poll, with a
// fetch wait of 100 ms: the tuning of bench/pipeline's bare loop).
type bus struct {
	types     []busType
	sender    *producers.Sender
	raw       *kgo.Client
	rawTopic  string
	sys, base *counter
}

const busPartitions = 6

func newBus(b *testing.B, handlers int) *bus {
	b.Helper()
	seeds := testenv.Brokers(b)
	bu := &bus{sys: newCounter(), base: newCounter()}
	reg := codec.NewRegistry()
	router := consumers.NewRouter(reg)
	bu.types = busTypes(b, reg, router, handlers, bu.sys, bu.base)

	topic := testenv.Topic(b, seeds, busPartitions, nil)
	group := testenv.Name("g")
	for _, t := range consumers.DefaultFailurePolicy().Topics(topic, group) {
		testenv.TopicNamed(b, seeds, t, busPartitions, nil)
	}
	cl, err := producers.NewClient(seeds)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cl.Close)
	if bu.sender, err = producers.NewSender(cl, reg, topic, "/bench"); err != nil {
		b.Fatal(err)
	}
	g, err := consumers.New(seeds, group, []string{topic}, router)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("group: %v", err)
		}
	})

	bu.rawTopic = testenv.Topic(b, seeds, busPartitions, nil)
	bu.raw = testenv.Client(b, seeds, kgo.ProducerLinger(0))
	cons := testenv.Client(b, seeds, kgo.ConsumerGroup(testenv.Name("g")), kgo.ConsumeTopics(bu.rawTopic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond))
	rawDone := make(chan struct{})
	go func() { defer close(rawDone); bu.rawLoop(ctx, cons) }()
	b.Cleanup(func() { cancel(); <-rawDone })

	// Warm up: both groups joined and a message through each.
	bu.send(b, 1, 1, 0)
	bu.sendRaw(b, 1, 1, 0)
	return bu
}

// rawLoop is the baseline consumer: poll, handle each partition's records
// in order (partitions concurrently), commit.
func (bu *bus) rawLoop(ctx context.Context, cons *kgo.Client) {
	handlers := map[string]func([]byte) error{}
	for _, t := range bu.types {
		handlers[t.name] = t.raw
	}
	for ctx.Err() == nil {
		fs := cons.PollRecords(ctx, 1000)
		var wg sync.WaitGroup
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			wg.Go(func() {
				for _, r := range p.Records {
					for _, h := range r.Headers {
						if h.Key == "type" {
							if f := handlers[string(h.Value)]; f != nil {
								_ = f(r.Value)
							}
						}
					}
				}
			})
		})
		wg.Wait()
		if err := cons.CommitUncommittedOffsets(ctx); err != nil && ctx.Err() == nil {
			bu.base.fail(fmt.Errorf("raw loop: commit: %w", err))
			return
		}
	}
}

// message returns message k of size bytes of Note, its type and key.
func (bu *bus) message(k, size int) (busType, string, payload) {
	return bu.types[k%len(bu.types)], fmt.Sprintf("acct-%d", k%100), payload{Account: fmt.Sprintf("acct-%d", k%100), Amount: int64(k), Note: strings.Repeat("x", size)}
}

// send sends n messages of size bytes from publishers goroutines and
// waits until the group handled them. One publisher sends asynchronously
// and waits for every acknowledgement (a batch); several each send their
// share one at a time, waiting for each (request handlers).
func (bu *bus) send(b *testing.B, n, publishers, size int) {
	ctx := b.Context()
	if publishers == 1 {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for k := range n {
			t, key, p := bu.message(k, size)
			cmd, err := bu.sender.Command(key, t.mk(p))
			if err != nil {
				b.Fatal(err)
			}
			wg.Add(1)
			bu.sender.SendAsync(ctx, cmd, func(err error) {
				if err != nil {
					errs <- err
				}
				wg.Done()
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	} else {
		concurrently(b, publishers, func(w int) error {
			for k := w; k < n; k += publishers {
				t, key, p := bu.message(k, size)
				cmd, err := bu.sender.Command(key, t.mk(p))
				if err != nil {
					return err
				}
				if err := bu.sender.Send(ctx, cmd); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := bu.sys.expect(ctx, n); err != nil {
		b.Fatal(err)
	}
}

// sendRaw is send for the baseline: the same JSON payloads as plain
// records with a type header.
func (bu *bus) sendRaw(b *testing.B, n, publishers, size int) {
	ctx := b.Context()
	rec := func(k int) *kgo.Record {
		t, key, p := bu.message(k, size)
		v, err := json.Marshal(p)
		if err != nil {
			b.Fatal(err)
		}
		return &kgo.Record{Topic: bu.rawTopic, Key: []byte(key), Value: v, Headers: []kgo.RecordHeader{{Key: "type", Value: []byte(t.name)}}}
	}
	if publishers == 1 {
		recs := make([]*kgo.Record, n)
		for k := range recs {
			recs[k] = rec(k)
		}
		if err := bu.raw.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			b.Fatal(err)
		}
	} else {
		concurrently(b, publishers, func(w int) error {
			for k := w; k < n; k += publishers {
				if err := bu.raw.ProduceSync(ctx, rec(k)).FirstErr(); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := bu.base.expect(ctx, n); err != nil {
		b.Fatal(err)
	}
}

// Payload sizes of the payload cases (bytes of Note).
const (
	small  = 100
	medium = 10 << 10
	large  = 100 << 10
)

// BenchmarkBus measures messages through the bus end to end (sent →
// handled) beside raw franz-go in the same run (see bus). Each operation
// sends a batch and waits until every message of it was handled; the
// ratio is the bus's messages/s over the raw loop's.
//
//   - messages=1, 100, 1000: one handler, small payloads, one publisher;
//   - handlers=5, 10: 100 messages spread over 5 or 10 types, each with its
//     handler on one router;
//   - payload=small, medium, large: 100 messages of 100 B, 10 KiB, 100 KiB;
//   - publishers=10, 100: 1,000 messages from 10 or 100 goroutines, each
//     sending one message at a time and waiting for its acknowledgement.
//
// Run it with:
//
//	eval "$(scripts/services.sh start)"; go test -run '^$' -bench Bus -benchtime 20x ./bench/suite/
func BenchmarkBus(b *testing.B) {
	type busCase struct {
		name                            string
		messages, handlers, pubs, bytes int
	}
	cases := []busCase{
		{"messages=1", 1, 1, 1, small},
		{"messages=100", 100, 1, 1, small},
		{"messages=1000", 1000, 1, 1, small},
		{"handlers=5", 100, 5, 1, small},
		{"handlers=10", 100, 10, 1, small},
		{"payload=small", 100, 1, 1, small},
		{"payload=medium", 100, 1, 1, medium},
		{"payload=large", 100, 1, 1, large},
		{"publishers=10", 1000, 1, 10, small},
		{"publishers=100", 1000, 1, 100, small},
	}
	for _, c := range cases {
		run(b, c.name, func(b *testing.B) {
			bu := newBus(b, c.handlers)
			pair(b, c.messages, "msgs", func(int) {
				bu.sendRaw(b, c.messages, c.pubs, c.bytes)
			}, func(int) {
				bu.send(b, c.messages, c.pubs, c.bytes)
			})
		})
	}
}
