package otel_test

import (
	"context"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/stores"
	orxotel "github.com/orchestrix/orchestrix/tracing/otel"
	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// microModes are the samplers of the micro-benchmarks, with the flag of
// the messages' traceparents.
var microModes = []struct {
	name    string
	sampler sdktrace.Sampler
	sampled bool
}{
	{"drop", sdktrace.ParentBased(sdktrace.NeverSample()), false},
	{"always", sdktrace.AlwaysSample(), true},
}

func microTracer(b *testing.B, s sdktrace.Sampler, opts ...orxotel.Option) *orxotel.Tracer {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(s), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return orxotel.New(append(opts, orxotel.WithTracerProvider(tp))...)
}

// benchRecords returns n command records as the processor gets them.
func benchRecords(n int, sampled bool) []*kgo.Record {
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: "bank.commands", Partition: 1, Offset: int64(i), Key: []byte("acct-0001"), Value: []byte(`{"amount":1}`),
			Headers: []kgo.RecordHeader{{Key: "ce_id", Value: []byte("0193a3e0-0000-7000-8000-000000000001")}, {Key: "ce_type", Value: []byte("banking.Deposit")},
				{Key: "ce_source", Value: []byte("/bench")}, {Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_subject", Value: []byte("acct-0001")},
				{Key: "ce_time", Value: []byte("2026-12-05T10:00:00Z")}, {Key: "content-type", Value: []byte("application/json")},
				{Key: orxotel.HeaderTraceParent, Value: []byte(randomTraceParent(sampled))}}}
	}
	return recs
}

type nopBatch struct{}

func (nopBatch) Handle(context.Context, *kgo.Record) error                 { return nil }
func (nopBatch) HandleBatch(_ context.Context, recs []*kgo.Record) []error { return nil }

// BenchmarkMiddleware: the middleware's cost per record, a batch of 500
// around a handler that does nothing (ns/op is per record).
func BenchmarkMiddleware(b *testing.B) {
	recs := map[bool][]*kgo.Record{false: benchRecords(500, false), true: benchRecords(500, true)}
	modes := append(microModes[:len(microModes):len(microModes)], struct {
		name    string
		sampler sdktrace.Sampler
		sampled bool
	}{"drop-skip-unsampled", microModes[0].sampler, false})
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			var opts []orxotel.Option
			if m.name == "drop-skip-unsampled" {
				opts = append(opts, orxotel.SkipUnsampled())
			}
			h := consumers.Chain(nopBatch{}, microTracer(b, m.sampler, opts...).Middleware("g")).(consumers.BatchHandler)
			b.ReportAllocs()
			defer cpuPerOp(b)()
			for i := 0; b.Loop(); i++ {
				if i%500 == 0 {
					h.HandleBatch(b.Context(), recs[m.sampled])
				}
			}
		})
	}
}

// BenchmarkHooks: the batch hooks' cost per event, batches of 1,000 events
// of distinct traces (ns/op is per event).
func BenchmarkHooks(b *testing.B) {
	const n = 1000
	for _, m := range microModes {
		recs := benchRecords(n, m.sampled)
		events := make([]orchestrix.Event, n)
		for i, r := range recs {
			events[i].TraceParent = string(r.Headers[len(r.Headers)-1].Value)
		}
		reqs := make([]stores.AppendRequest, n)
		for i := range reqs {
			reqs[i] = stores.AppendRequest{StreamID: "s", Events: events[i : i+1]}
		}
		tr := microTracer(b, m.sampler)
		for _, h := range []struct {
			name string
			f    func()
		}{
			{"relay", func() { tr.Relay(outbox.Commit{Records: recs, Events: n, Duration: time.Millisecond}) }},
			{"projection", func() { tr.Projection(projections.Commit{Projection: "p", Events: events, Took: time.Millisecond}) }},
			{"append", func() { tr.Append(aggregates.Append{Requests: reqs, Took: time.Millisecond}) }},
		} {
			b.Run(h.name+"/"+m.name, func(b *testing.B) {
				b.ReportAllocs()
				defer cpuPerOp(b)()
				for i := 0; b.Loop(); i++ {
					if i%n == 0 {
						h.f()
					}
				}
			})
		}
	}
}

// cpuPerOp reports the process's CPU time per op (ns), which a machine
// shared with other work inflates less than the wall time: call it before
// the loop and the function it returns after.
func cpuPerOp(b *testing.B) func() {
	start := processCPU()
	return func() { b.ReportMetric(float64((processCPU()-start).Nanoseconds())/float64(b.N), "cpu-ns/op") }
}
