package sagas

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/twmb/franz-go/pkg/kgo"
)

// benchRuntime is the 3-step transfer on a store.
func benchRuntime(b testing.TB, s Store) *Runtime {
	reg := codec.NewRegistry()
	for _, err := range []error{codec.RegisterJSON[debit](reg, "t.Debit"), codec.RegisterJSON[credit](reg, "t.Credit"),
		codec.RegisterJSON[refund](reg, "t.Refund"), codec.RegisterJSON[uncredit](reg, "t.Uncredit"), codec.RegisterJSON[notify](reg, "t.Notify")} {
		if err != nil {
			b.Fatal(err)
		}
	}
	rt, err := NewRuntime(s, reg, []Saga{testDef(b)})
	if err != nil {
		b.Fatal(err)
	}
	return rt
}

// transition k of a sequence of sagas of 4 transitions each: start, then
// the accepted outcomes of its 3 steps.
func benchTransition(b *testing.B, rt *Runtime, prefix string, k int) {
	id := fmt.Sprintf("%s-%d", prefix, k/4)
	step := k%4 - 1
	if step < 0 {
		if err := rt.Start(b.Context(), id, xfer{From: "a", To: "b", Amount: 10}); err != nil {
			b.Fatal(err)
		}
		return
	}
	cid := CommandID("transfer", id, PhaseAction, step, 1)
	o, _ := json.Marshal(orchestrix.Outcome{CommandID: cid, CorrelationID: Correlation("transfer", id), Status: orchestrix.OutcomeAccepted})
	m := InboxMessage(rt.Inbox(), id, KindOutcome, "outcome:"+cid, o)
	if err := rt.Handle(b.Context(), &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: m.Headers}); err != nil {
		b.Fatal(err)
	}
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
}

// BenchmarkTransition: one input applied (read → state, commands, timer
// and history committed), one at a time; the baseline is the smallest
// transactional write, one outbox row committed through outbox.Writer.
//
//	eval "$(scripts/services.sh env)"; go test ./sagas -run '^$' -bench 'Transition|Baseline' -benchtime 3000x
func BenchmarkTransition(b *testing.B) {
	for _, name := range []string{"memory", "postgres"} {
		b.Run(name, func(b *testing.B) {
			rt := benchRuntime(b, storeFor(b, name))
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for k := range b.N {
				t0 := time.Now()
				benchTransition(b, rt, "s", k)
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			reportLatency(b, lat)
		})
	}
}

// BenchmarkTransitionParallel: transitions of distinct instances from 8
// goroutines (8 inbox partitions); transitions/s is the throughput.
func BenchmarkTransitionParallel(b *testing.B) {
	rt := benchRuntime(b, storeFor(b, "postgres"))
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(4) // GOMAXPROCS 2 × 4 = 8 workers
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := next.Add(1)
		var mine []time.Duration
		for k := 0; pb.Next(); k++ {
			t0 := time.Now()
			benchTransition(b, rt, fmt.Sprintf("p%d", w), k)
			mine = append(mine, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "transitions/s")
	reportLatency(b, lat)
}

// BenchmarkBaselineCommit: one outbox row in its own transaction, the
// floor under any transition.
func BenchmarkBaselineCommit(b *testing.B) {
	s := storeFor(b, "postgres").(*PostgresStore)
	w, err := outbox.NewWriter(s.Schema())
	if err != nil {
		b.Fatal(err)
	}
	msg := outbox.Message{Topic: "bench.commands", Key: []byte("k"), Value: []byte(`{"amount":10}`)}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		tx, err := s.Pool().Begin(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		if err := w.Write(b.Context(), tx, msg); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(b.Context()); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	reportLatency(b, lat)
}

// BenchmarkEngine: the pure transition alone.
func BenchmarkEngine(b *testing.B) {
	d := testDef(b)
	st, _ := json.Marshal(xfer{From: "a", To: "b", Amount: 10})
	now := time.Now()
	start, err := d.Transition(nil, Input{SagaID: "s", ID: "start:s", Kind: KindStart, State: st}, now)
	if err != nil {
		b.Fatal(err)
	}
	in := Input{ID: "o", Kind: KindOutcome, Outcome: orchestrix.Outcome{CommandID: start.Commands[0].Command.ID, Status: orchestrix.OutcomeAccepted}}
	b.ReportAllocs()
	for range b.N {
		if _, err := d.Transition(&start.Instance, in, now); err != nil {
			b.Fatal(err)
		}
	}
}

func storeFor(b *testing.B, name string) Store {
	if name == "memory" {
		return memoryBackend(b).store
	}
	return postgresBackend(b).store
}

func contextWithTimeout(b *testing.B, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.Context(), d)
}
