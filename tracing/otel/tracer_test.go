package otel_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/projections"
	orxotel "github.com/orchestrix/orchestrix/tracing/otel"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

const good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestParse(t *testing.T) {
	for _, c := range []struct {
		name, in string
		ok       bool
		sampled  bool
	}{
		{"sampled", good, true, true},
		{"not sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", true, false},
		{"unknown flags kept out", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff", true, true},
		{"later version with more fields", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", true, true},
		{"empty", "", false, false},
		{"short", good[:54], false, false},
		{"version 00 with more", good + "-x", false, false},
		{"later version without dash", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", false, false},
		{"version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false, false},
		{"upper case", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", false, false},
		{"zero trace", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", false, false},
		{"zero span", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false, false},
		{"not hex", "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", false, false},
		{"dashes misplaced", "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			sc, ok := orxotel.Parse(c.in)
			if ok != c.ok || ok && sc.IsSampled() != c.sampled {
				t.Fatalf("Parse(%q) = %v sampled %v, want %v sampled %v", c.in, ok, sc.IsSampled(), c.ok, c.sampled)
			}
			if ok && c.in[:2] == "00" && c.in[53:55] != "ff" && orxotel.Format(sc) != c.in {
				t.Errorf("Format(Parse(%q)) = %q", c.in, orxotel.Format(sc))
			}
		})
	}
}

// TestSenderTraceContext: a plain Sender.Send carries ctx's span when the
// sender has WithTraceContext(TraceParent); a command that has a
// TraceParent keeps it.
func TestSenderTraceContext(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	cl := testenv.Client(t, seeds, kgo.ConsumeTopics("s.commands"))
	if _, err := kadm.NewClient(cl).CreateTopic(t.Context(), 1, 1, nil, "s.commands"); err != nil {
		t.Fatal(err)
	}
	reg := testdomain.Registry(t)
	sender, err := producers.NewSender(cl, reg, "s.commands", "/test", producers.WithTraceContext(orxotel.TraceParent))
	if err != nil {
		t.Fatal(err)
	}
	_, _, tt := recorder(t)
	ctx, span := tt.Start(t.Context(), "api")
	defer span.End()
	for _, own := range []string{"", good} {
		cmd, err := sender.Command("a", testdomain.Open{Name: "a"})
		if err != nil {
			t.Fatal(err)
		}
		cmd.TraceParent = own
		if err := sender.Send(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for len(got) < 2 {
		cl.PollFetches(t.Context()).EachRecord(func(r *kgo.Record) { got = append(got, traceParentOf(r)) })
	}
	if want := []string{orxotel.Format(span.SpanContext()), good}; !slices.Equal(got, want) {
		t.Fatalf("traceparents %q, want %q", got, want)
	}
	if orxotel.TraceParent(context.Background()) != "" {
		t.Fatal("a context without a span has a traceparent")
	}
}

func TestInjectExtract(t *testing.T) {
	ctx := orxotel.Extract(context.Background(), good)
	var m orchestrix.Metadata
	orxotel.Inject(ctx, &m)
	if m.TraceParent != good {
		t.Fatalf("Inject(Extract(%q)) = %q", good, m.TraceParent)
	}
	m.TraceParent = "kept"
	orxotel.Inject(orxotel.Extract(context.Background(), "garbage"), &m)
	if m.TraceParent != "kept" {
		t.Fatalf("a context without a span changed TraceParent to %q", m.TraceParent)
	}
}

// fakeHandler records what it is given and implements every optional
// interface of the consumers runtime.
type fakeHandler struct {
	got      []*kgo.Record
	revoked  []int32
	assigned []int32
	errs     []error
	panics   bool
}

func (f *fakeHandler) Handle(_ context.Context, r *kgo.Record) error {
	f.got = append(f.got, r)
	if f.panics {
		panic("boom")
	}
	if len(f.errs) > 0 {
		return f.errs[0]
	}
	return nil
}

func (f *fakeHandler) HandleBatch(ctx context.Context, recs []*kgo.Record) []error {
	f.got = append(f.got, recs...)
	if f.panics {
		panic("boom")
	}
	return f.errs
}

func (f *fakeHandler) PartitionsRevoked(_ string, ps []int32) { f.revoked = ps }

func (f *fakeHandler) PartitionsAssigned(_ context.Context, _ string, ps []int32) (map[int32]int64, error) {
	f.assigned = ps
	return map[int32]int64{ps[0]: 7}, nil
}

// plainHandler is a Handler with no optional interface.
type plainHandler struct{ got []*kgo.Record }

func (p *plainHandler) Handle(_ context.Context, r *kgo.Record) error {
	p.got = append(p.got, r)
	return nil
}

func record(tp string) *kgo.Record {
	r := &kgo.Record{Topic: "t.commands", Partition: 3, Offset: 42, Key: []byte("k"),
		Headers: []kgo.RecordHeader{{Key: "ce_id", Value: []byte("c-1")}, {Key: "ce_type", Value: []byte("T")}}}
	if tp != "" {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: orxotel.HeaderTraceParent, Value: []byte(tp)})
	}
	return r
}

func traceParentOf(r *kgo.Record) string {
	for _, h := range r.Headers {
		if h.Key == orxotel.HeaderTraceParent {
			return string(h.Value)
		}
	}
	return ""
}

func TestMiddleware(t *testing.T) {
	tr, rec, _ := recorder(t)
	mw := tr.Middleware("g")
	parent, _ := orxotel.Parse(good)

	t.Run("keeps the optional interfaces", func(t *testing.T) {
		f := &fakeHandler{}
		h := consumers.Chain(f, mw)
		bh, ok := h.(consumers.BatchHandler)
		if !ok {
			t.Fatal("a wrapped BatchHandler is no longer one: the processor would lose its one transaction per poll")
		}
		h.(consumers.PartitionAware).PartitionsRevoked("t", []int32{1})
		offs, err := h.(consumers.Assignable).PartitionsAssigned(t.Context(), "t", []int32{2})
		if !slices.Equal(f.revoked, []int32{1}) || offs[2] != 7 || err != nil {
			t.Fatalf("not forwarded: revoked %v, assigned %v %v", f.revoked, offs, err)
		}
		if _, ok := consumers.Chain(&plainHandler{}, mw).(consumers.BatchHandler); ok {
			t.Fatal("a plain Handler became a BatchHandler")
		}
		if offs, err := consumers.Chain(&plainHandler{}, mw).(consumers.Assignable).PartitionsAssigned(t.Context(), "t", []int32{1}); offs != nil || err != nil {
			t.Fatalf("a handler that keeps no positions returned %v, %v", offs, err)
		}
		_ = bh
	})

	t.Run("a child of the record's traceparent, handed on", func(t *testing.T) {
		rec.Reset()
		p := &plainHandler{}
		orig := record(good)
		if err := consumers.Chain(p, mw).Handle(t.Context(), orig); err != nil {
			t.Fatal(err)
		}
		spans := rec.Ended()
		if len(spans) != 1 {
			t.Fatalf("%d spans", len(spans))
		}
		s := spans[0]
		if s.Name() != "process t.commands" || s.SpanKind() != trace.SpanKindConsumer || s.Parent().SpanID() != parent.SpanID() || s.SpanContext().TraceID() != parent.TraceID() {
			t.Fatalf("span %s kind %v parent %s", s.Name(), s.SpanKind(), s.Parent().SpanID())
		}
		if got := traceParentOf(p.got[0]); got != orxotel.Format(s.SpanContext()) {
			t.Errorf("the handler saw traceparent %q, want the span's %q", got, orxotel.Format(s.SpanContext()))
		}
		if traceParentOf(orig) != good || p.got[0] == orig {
			t.Errorf("the runtime's record changed: %q", traceParentOf(orig))
		}
		attrs := map[string]string{}
		for _, a := range s.Attributes() {
			attrs[string(a.Key)] = a.Value.Emit()
		}
		for k, v := range map[string]string{"messaging.destination.name": "t.commands", "messaging.destination.partition.id": "3",
			"messaging.kafka.offset": "42", "messaging.consumer.group.name": "g", "messaging.message.id": "c-1", "orchestrix.type": "T"} {
			if attrs[k] != v {
				t.Errorf("attribute %s = %q, want %q", k, attrs[k], v)
			}
		}
	})

	t.Run("no or a bad traceparent starts a trace", func(t *testing.T) {
		for _, tp := range []string{"", "garbage"} {
			rec.Reset()
			p := &plainHandler{}
			if err := consumers.Chain(p, mw).Handle(t.Context(), record(tp)); err != nil {
				t.Fatal(err)
			}
			s := rec.Ended()[0]
			if s.Parent().IsValid() {
				t.Errorf("%q: span has parent %s", tp, s.Parent().SpanID())
			}
			if got := traceParentOf(p.got[0]); got != orxotel.Format(s.SpanContext()) {
				t.Errorf("%q: handler saw %q", tp, got)
			}
		}
	})

	t.Run("batch: one span per record with its result", func(t *testing.T) {
		rec.Reset()
		failure := errors.New("nope")
		f := &fakeHandler{errs: []error{nil, failure}}
		other := "00-11111111111111111111111111111111-2222222222222222-01"
		errs := consumers.Chain(f, mw).(consumers.BatchHandler).HandleBatch(t.Context(), []*kgo.Record{record(good), record(other)})
		if len(errs) != 2 || errs[1] != failure {
			t.Fatalf("errs %v", errs)
		}
		spans := rec.Ended()
		if len(spans) != 2 {
			t.Fatalf("%d spans", len(spans))
		}
		for i, want := range []string{good, other} {
			sc, _ := orxotel.Parse(want)
			s := spans[i]
			if s.Parent().SpanID() != sc.SpanID() {
				t.Errorf("record %d: parent %s, want %s", i, s.Parent().SpanID(), sc.SpanID())
			}
			if traceParentOf(f.got[i]) != orxotel.Format(s.SpanContext()) {
				t.Errorf("record %d: handler saw %q", i, traceParentOf(f.got[i]))
			}
		}
		if spans[0].Status().Code == codes.Error || spans[1].Status().Code != codes.Error {
			t.Errorf("statuses %v %v, want ok and error", spans[0].Status(), spans[1].Status())
		}
	})

	t.Run("a panic ends the spans and goes on", func(t *testing.T) {
		rec.Reset()
		f := &fakeHandler{panics: true}
		func() {
			defer func() {
				if recover() == nil {
					t.Error("the panic was swallowed")
				}
			}()
			consumers.Chain(f, mw).(consumers.BatchHandler).HandleBatch(t.Context(), []*kgo.Record{record(good)})
		}()
		if spans := rec.Ended(); len(spans) != 1 || spans[0].Status().Code != codes.Error {
			t.Fatalf("spans after a panic: %d", len(spans))
		}
	})
}

// TestDroppingSampler: with a sampler that drops, nothing is recorded but
// the trace context still travels (not sampled), so a later sampled
// decision downstream is consistent.
func TestDroppingSampler(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
	defer tp.Shutdown(context.Background())
	tr := orxotel.New(orxotel.WithTracerProvider(tp))
	p := &plainHandler{}
	if err := consumers.Chain(p, tr.Middleware("g")).Handle(t.Context(), record("")); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.Ended()); n != 0 {
		t.Fatalf("%d spans recorded", n)
	}
	sc, ok := orxotel.Parse(traceParentOf(p.got[0]))
	if !ok || sc.IsSampled() {
		t.Fatalf("handed on %q: want a valid, unsampled context", traceParentOf(p.got[0]))
	}
	// A record with an unsampled trace context is handed on as it is.
	unsampled := record("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	f := &fakeHandler{}
	consumers.Chain(f, tr.Middleware("g")).(consumers.BatchHandler).HandleBatch(t.Context(), []*kgo.Record{unsampled})
	if err := consumers.Chain(p, tr.Middleware("g")).Handle(t.Context(), unsampled); err != nil {
		t.Fatal(err)
	}
	if p.got[1] != unsampled || f.got[0] != unsampled {
		t.Error("a record whose trace is not sampled was copied")
	}

	// SkipUnsampled: no span at all for it, the handler runs under the
	// record's context; a record without a context still gets a span.
	skip := orxotel.New(orxotel.WithTracerProvider(tp), orxotel.SkipUnsampled())
	var seen trace.SpanContext
	h := consumers.Chain(consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		seen = trace.SpanContextFromContext(ctx)
		return nil
	}), skip.Middleware("g"))
	if err := h.Handle(t.Context(), unsampled); err != nil {
		t.Fatal(err)
	}
	if want, _ := orxotel.Parse(traceParentOf(unsampled)); !seen.Equal(want) {
		t.Errorf("handler ran under %v, want the record's context", seen)
	}
	if err := h.Handle(t.Context(), record("")); err != nil {
		t.Fatal(err)
	}
	if !seen.IsValid() || seen.IsRemote() {
		t.Errorf("a record without a context: handler ran under %v, want a span of its own", seen)
	}
}

// TestBatchSpans: a batch of one trace is a child in it; a batch that
// mixes traces starts its own, linked to each message (consecutive
// events of one command share one link); events without a trace context
// are left out.
func TestBatchSpans(t *testing.T) {
	tr, rec, _ := recorder(t)
	a, _ := orxotel.Parse(good)
	other := "00-11111111111111111111111111111111-2222222222222222-01"
	b, _ := orxotel.Parse(other)
	ev := func(tp string) orchestrix.Event {
		return orchestrix.Event{Metadata: orchestrix.Metadata{TraceParent: tp}}
	}
	for _, c := range []struct {
		name   string
		events []orchestrix.Event
		parent trace.SpanContext
		links  []trace.SpanContext
	}{
		{"one trace", []orchestrix.Event{ev(good), ev(good), ev("")}, a, []trace.SpanContext{a}},
		{"two traces", []orchestrix.Event{ev(good), ev(other), ev(good), ev("bad")}, trace.SpanContext{}, []trace.SpanContext{a, b, a}},
		{"none", []orchestrix.Event{ev("")}, trace.SpanContext{}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec.Reset()
			tr.Projection(projections.Commit{Projection: "p", Events: c.events, Took: time.Millisecond})
			s := rec.Ended()[0]
			if s.Parent().SpanID() != c.parent.SpanID() || c.parent.IsValid() && s.SpanContext().TraceID() != c.parent.TraceID() {
				t.Errorf("parent %s, want %s", s.Parent().SpanID(), c.parent.SpanID())
			}
			var links []trace.SpanContext
			for _, l := range s.Links() {
				links = append(links, l.SpanContext)
			}
			if !slices.EqualFunc(links, c.links, trace.SpanContext.Equal) {
				t.Errorf("links %v, want %v", links, c.links)
			}
			if d := s.EndTime().Sub(s.StartTime()); d != time.Millisecond {
				t.Errorf("span lasts %s, want the batch's 1ms", d)
			}
		})
	}
	rec.Reset()
	tr.Projection(projections.Commit{Projection: "p"})
	if n := len(rec.Ended()); n != 0 {
		t.Errorf("a checkpoint-only commit made %d spans", n)
	}
}
