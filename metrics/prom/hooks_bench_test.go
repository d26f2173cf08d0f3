package prom_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/metrics/prom"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
)

// paired times base and with, n calls each, in alternating rounds, and
// reports the median ns per call of each and their ratio (with/base).
func paired(b *testing.B, n int, base, with func(i int)) {
	const rounds = 9
	timeIt := func(f func(int)) float64 {
		start := time.Now()
		for i := range n {
			f(i)
		}
		return float64(time.Since(start).Nanoseconds()) / float64(n)
	}
	for b.Loop() {
		var nb, nw, ratio []float64
		for r := range rounds {
			var x, y float64
			if r%2 == 0 {
				x, y = timeIt(base), timeIt(with)
			} else {
				y, x = timeIt(with), timeIt(base)
			}
			nb, nw, ratio = append(nb, x), append(nw, y), append(ratio, y/x)
		}
		med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
		b.ReportMetric(med(nb), "ns/call-base")
		b.ReportMetric(med(nw), "ns/call-with")
		b.ReportMetric(med(ratio), "with/base")
	}
}

// BenchmarkStoreAppend: what the Store wrapper adds to an append, over
// a store whose Append does nothing (any real store's append costs
// microseconds in memory and about a millisecond on PostgreSQL; on this
// shared machine their noise is larger than the wrapper).
//
//	go test -run '^$' -bench 'BenchmarkStoreAppend|BenchmarkHooks' -benchtime=1x .
func BenchmarkStoreAppend(b *testing.B) {
	m, err := prom.NewStoreMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	var raw stores.EventStore = nopStore{memory.New()}
	wrapped := prom.Store(raw, m)
	ev := []orchestrix.Event{{Metadata: orchestrix.Metadata{Type: "T", Source: "/b"}}}
	ctx := context.Background()
	paired(b, 200_000, func(int) { _, _ = raw.Append(ctx, "s", stores.Any, ev) }, func(int) { _, _ = wrapped.Append(ctx, "s", stores.Any, ev) })
}

// nopStore is a store whose Append writes nothing.
type nopStore struct{ *memory.Store }

func (nopStore) Append(_ context.Context, id string, _ stores.ExpectedVersion, _ []orchestrix.Event) (stores.AppendResult, error) {
	return stores.AppendResult{StreamID: id, FromVersion: 1, ToVersion: 1}, nil
}

// BenchmarkHooks: the per-call cost of the hot-path hooks against doing
// nothing, so their share of any real work can be read off: Observe (once
// per partition per poll), Middleware (per record), the pgx tracer (per
// query).
func BenchmarkHooks(b *testing.B) {
	reg := prometheus.NewRegistry()
	c, err := prom.NewConsumer(reg, "bench")
	if err != nil {
		b.Fatal(err)
	}
	qt, err := prom.NewQueryTracer(reg)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	st := consumers.Stats{Topic: "b.events", Partition: 1, Records: 100, Duration: time.Millisecond, Lag: 5}
	bare := consumers.HandlerFunc(func(context.Context, *kgo.Record) error { return nil })
	wrapped := consumers.Chain(bare, c.Middleware())
	rec := &kgo.Record{Topic: "b.events", Headers: make([]kgo.RecordHeader, 8)}
	tag := pgconn.NewCommandTag("INSERT 0 1")
	b.Run("Observe", func(b *testing.B) { paired(b, 100_000, func(int) {}, func(int) { c.Observe(st) }) })
	b.Run("Middleware", func(b *testing.B) {
		paired(b, 100_000, func(int) { _ = bare.Handle(ctx, rec) }, func(int) { _ = wrapped.Handle(ctx, rec) })
	})
	b.Run("QueryTracer", func(b *testing.B) {
		paired(b, 100_000, func(int) {}, func(int) {
			qctx := qt.TraceQueryStart(ctx, nil, pgx.TraceQueryStartData{SQL: "INSERT INTO x VALUES ($1)"})
			qt.TraceQueryEnd(qctx, nil, pgx.TraceQueryEndData{CommandTag: tag})
		})
	})
}
