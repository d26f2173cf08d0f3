package otel_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/topics"
	orxotel "github.com/orchestrix/orchestrix/tracing/otel"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// recorder returns a tracer that records every span in memory.
func recorder(t testing.TB) (*orxotel.Tracer, *tracetest.SpanRecorder, trace.Tracer) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return orxotel.New(orxotel.WithTracerProvider(tp)), rec, tp.Tracer("test")
}

// pipeline is a traced bank: the command processor, the relay, an event
// consumer, a projection over the store, and (with saga) a transfer saga
// with its forwarder.
type pipeline struct {
	bc     string
	cl     *kgo.Client
	sender *producers.Sender
	sagaSt sagas.Store
	sagaRT *sagas.Runtime
	tracer *orxotel.Tracer
}

type transfer struct {
	From, To string
	Amount   int64
}

// env is what a pipeline runs on.
type env[T any] struct {
	seeds []string
	store stores.EventStore
	// The projection's backend and handler.
	back  projections.Backend[T]
	apply projections.Handler[T]
	// sagas, if not nil, runs the transfer saga on it; publish, if not
	// nil, publishes its outbox (otherwise the relay does).
	sagas   sagas.Store
	publish func(context.Context, *kgo.Client) error
}

// startPipeline runs the pipeline on e until the test ends.
func startPipeline[T any](t *testing.T, e env[T], bc string, tr *orxotel.Tracer) *pipeline {
	t.Helper()
	seeds, store := e.seeds, e.store
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				t.Errorf("%s: %v", name, err)
			}
		}()
	}

	reg := testdomain.Registry(t)
	cl, err := producers.NewClient(seeds, kgo.ProducerLinger(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	saga := bc + "-transfer"
	specs := append(topics.ForContext(bc, 2, 1),
		topics.Spec{Name: sagas.InboxTopic(saga), Partitions: 2, ReplicationFactor: 1})
	for _, g := range [][2]string{{topics.Commands(bc), bc + "-aggregates"}, {topics.Events(bc), bc + "-audit"},
		{topics.Outcomes(bc), bc + "-forwarder"}, {sagas.InboxTopic(saga), bc + "-sagas"}} {
		specs = append(specs, topics.Spec{Name: consumers.DeadLetterTopic(g[0], g[1]), Partitions: 1, ReplicationFactor: 1})
	}
	adm := kadm.NewClient(cl)
	if _, err := topics.Ensure(t.Context(), adm, specs...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		names := make([]string, len(specs))
		for i, s := range specs {
			names[i] = s.Name
		}
		_, _ = adm.DeleteTopics(context.Background(), names...)
	})

	repo, err := aggregates.NewRepository(testdomain.Aggregate(t), store, reg, "/"+bc)
	if err != nil {
		t.Fatal(err)
	}
	proc, err := aggregates.NewProcessor(repo, aggregates.WithOutcomes(cl, topics.Outcomes(bc)), aggregates.OnAppend(tr.Append))
	if err != nil {
		t.Fatal(err)
	}
	fast := consumers.WithClientOpts(kgo.FetchMaxWait(50 * time.Millisecond))
	group, err := consumers.New(seeds, bc+"-aggregates", []string{topics.Commands(bc)}, consumers.Chain(proc, tr.Middleware(bc+"-aggregates")), fast)
	if err != nil {
		t.Fatal(err)
	}
	run("processor", group.Run)

	relay, err := outbox.NewRelay(store.(outbox.Source), seeds, outbox.ToTopic(topics.Events(bc)), outbox.OnCommit(tr.Relay),
		outbox.Instance(bc+"-relay"), outbox.PollInterval(time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	run("relay", relay.Run)

	p := &pipeline{bc: bc, cl: cl, tracer: tr}
	audit, err := consumers.New(seeds, bc+"-audit", []string{topics.Events(bc)}, consumers.Chain(consumers.HandlerFunc(func(context.Context, *kgo.Record) error {
		return nil
	}), tr.Middleware(bc+"-audit")), fast)
	if err != nil {
		t.Fatal(err)
	}
	run("audit", audit.Run)

	runner, err := projections.New("balances", e.back, projections.FromStore(store), e.apply, projections.OnCommit(tr.Projection),
		projections.PollInterval(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	run("projection", runner.Run)

	if e.sagas != nil {
		on := func(id string, c any) sagas.Command {
			return sagas.Command{Topic: topics.Commands(bc), AggregateID: id, Payload: c}
		}
		def, err := sagas.Define(saga, 1, []sagas.Step[transfer]{
			{Name: "debit",
				Action:       func(s transfer) (sagas.Command, error) { return on(s.From, testdomain.Post{Amount: -s.Amount}), nil },
				Compensation: func(s transfer) (sagas.Command, error) { return on(s.From, testdomain.Post{Amount: s.Amount}), nil }},
			{Name: "credit",
				Action: func(s transfer) (sagas.Command, error) { return on(s.To, testdomain.Post{Amount: s.Amount}), nil }},
		})
		if err != nil {
			t.Fatal(err)
		}
		p.sagaSt = e.sagas
		p.sagaRT, err = sagas.NewRuntime(p.sagaSt, reg, []sagas.Saga{def}, sagas.OnTransitionTraced(tr.Saga), sagas.WithTraceContext(orxotel.TraceParent))
		if err != nil {
			t.Fatal(err)
		}
		fwd, err := sagas.NewForwarder(cl, topics.Outcomes(bc), "", p.sagaRT)
		if err != nil {
			t.Fatal(err)
		}
		forwarder, err := consumers.New(seeds, bc+"-forwarder", fwd.Topics(), consumers.Chain(fwd, tr.Middleware(bc+"-forwarder")), fast)
		if err != nil {
			t.Fatal(err)
		}
		inbox, err := consumers.New(seeds, bc+"-sagas", []string{p.sagaRT.Inbox()}, consumers.Chain(p.sagaRT, tr.Middleware(bc+"-sagas")), fast)
		if err != nil {
			t.Fatal(err)
		}
		run("forwarder", forwarder.Run)
		run("inbox", inbox.Run)
		if e.publish != nil {
			run("saga outbox", func(ctx context.Context) error { return e.publish(ctx, cl) })
		}
	}

	p.sender, err = producers.NewSender(cl, reg, topics.Commands(bc), "/test")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// send sends one command inside a root span and returns the root's trace.
func (p *pipeline) send(t *testing.T, tt trace.Tracer, id string, payload any) trace.TraceID {
	t.Helper()
	ctx, root := tt.Start(t.Context(), "client")
	defer root.End()
	cmd, err := p.sender.Command(id, payload)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.tracer.Send(ctx, p.sender, cmd); err != nil {
		t.Fatal(err)
	}
	return root.SpanContext().TraceID()
}

// spansOf returns the ended spans in trace id or linked to it, waiting
// until want says they are all there.
func spansOf(t *testing.T, rec *tracetest.SpanRecorder, id trace.TraceID, want func([]sdktrace.ReadOnlySpan) bool) []sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var out []sdktrace.ReadOnlySpan
		for _, s := range rec.Ended() {
			in := s.SpanContext().TraceID() == id
			for _, l := range s.Links() {
				in = in || l.SpanContext.TraceID() == id
			}
			if in {
				out = append(out, s)
			}
		}
		if want(out) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s incomplete after 30s:\n%s", id, dump(out))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dump(spans []sdktrace.ReadOnlySpan) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "  %-32s trace %s span %s parent %s links %d\n", s.Name(), s.SpanContext().TraceID(), s.SpanContext().SpanID(), s.Parent().SpanID(), len(s.Links()))
	}
	return b.String()
}

func named(spans []sdktrace.ReadOnlySpan, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func has(names ...string) func([]sdktrace.ReadOnlySpan) bool {
	return func(spans []sdktrace.ReadOnlySpan) bool {
		for _, n := range names {
			if len(named(spans, n)) == 0 {
				return false
			}
		}
		return true
	}
}

// linked reports whether s is a child of or links to sc.
func linked(s sdktrace.ReadOnlySpan, sc trace.SpanContext) bool {
	if s.Parent().SpanID() == sc.SpanID() && s.Parent().TraceID() == sc.TraceID() {
		return true
	}
	return slices.ContainsFunc(s.Links(), func(l sdktrace.Link) bool { return l.SpanContext.Equal(sc) })
}

// checkCommandTrace checks one command's trace: client → send → process
// (processor) → append, relay, process (audit), projection; every span of
// it has the client's trace ID.
func checkCommandTrace(t *testing.T, p *pipeline, rec *tracetest.SpanRecorder, id trace.TraceID) {
	t.Helper()
	proc, audit := "process "+topics.Commands(p.bc), "process "+topics.Events(p.bc)
	spans := spansOf(t, rec, id, has("client", "send "+topics.Commands(p.bc), proc, "append", "relay publish", audit, "projection balances"))
	for _, s := range spans {
		if s.SpanContext().TraceID() != id {
			t.Errorf("%s has trace %s, want %s (one trace from the command to the projection batch)\n%s", s.Name(), s.SpanContext().TraceID(), id, dump(spans))
		}
	}
	send := named(spans, "send "+topics.Commands(p.bc))[0]
	if send.Parent().SpanID() != named(spans, "client")[0].SpanContext().SpanID() {
		t.Errorf("send is not the client's child\n%s", dump(spans))
	}
	processor := named(spans, proc)[0]
	if processor.Parent().SpanID() != send.SpanContext().SpanID() || processor.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("the processor's span is not the send span's consumer child\n%s", dump(spans))
	}
	// The events carry the processor's span: append, relay, audit and
	// projection hang from it.
	for _, name := range []string{"append", "relay publish", audit, "projection balances"} {
		if s := named(spans, name)[0]; !linked(s, processor.SpanContext()) {
			t.Errorf("%s is neither a child of nor linked to the processor's span\n%s", name, dump(spans))
		}
	}
}

// TestCommandToProjection: one trace ID from the command to the
// projection batch, on kfake and the memory store.
func TestCommandToProjection(t *testing.T) {
	tr, rec, tt := recorder(t)
	p := startPipeline(t, env[*projections.MemTx]{seeds: testenv.FakeBrokers(t), store: memory.New(), back: projections.NewMemory("balances"), apply: countEvents}, "tr", tr)
	commandTraces(t, p, rec, tt)
}

// commandTraces sends two commands and checks each one's trace.
func commandTraces(t *testing.T, p *pipeline, rec *tracetest.SpanRecorder, tt trace.Tracer) {
	for i, c := range []any{testdomain.Open{Name: "alice"}, testdomain.Post{Amount: 10}} {
		id := p.send(t, tt, "alice", c)
		t.Run(fmt.Sprint("command", i), func(t *testing.T) { checkCommandTrace(t, p, rec, id) })
	}
}

func countEvents(_ context.Context, tx *projections.MemTx, b projections.Batch) error {
	for _, e := range b.Events {
		n, _ := tx.Get(b.Table("balances"), e.StreamID)
		c, _ := n.(int)
		tx.Put(b.Table("balances"), e.StreamID, c+1)
	}
	return nil
}

// TestSagaTrace: a transfer saga started by a traced record stays in its
// trace: each transition, the commands it writes, their processing, the
// outcomes and their forwarding, and the credited account's projection
// batch.
func TestSagaTrace(t *testing.T) {
	tr, rec, tt := recorder(t)
	ss := sagas.NewMemoryStore()
	p := startPipeline(t, env[*projections.MemTx]{seeds: testenv.FakeBrokers(t), store: memory.New(), back: projections.NewMemory("balances"), apply: countEvents,
		sagas: ss, publish: ss.Publish}, "ts", tr)
	sagaTrace(t, p, rec, tt)
}

// sagaTrace runs a transfer and checks its trace.
func sagaTrace(t *testing.T, p *pipeline, rec *tracetest.SpanRecorder, tt trace.Tracer) {
	for _, c := range []struct {
		id string
		c  any
	}{{"alice", testdomain.Open{Name: "alice"}}, {"alice", testdomain.Post{Amount: 100}}, {"bob", testdomain.Open{Name: "bob"}}} {
		p.send(t, tt, c.id, c.c)
	}
	// Started by a record a traced service wrote (StartMessage through an
	// outbox, here produced directly).
	ctx, root := tt.Start(t.Context(), "start transfer")
	m, err := p.sagaRT.StartMessage("t-1", transfer{From: "alice", To: "bob", Amount: 30})
	if err != nil {
		t.Fatal(err)
	}
	r := &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: append(m.Headers,
		kgo.RecordHeader{Key: orxotel.HeaderTraceParent, Value: []byte(orxotel.Format(root.SpanContext()))})}
	if err := p.cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		t.Fatal(err)
	}
	root.End()
	id := root.SpanContext().TraceID()
	cmds, outs, inbox := "process "+topics.Commands(p.bc), "process "+topics.Outcomes(p.bc), "process "+p.sagaRT.Inbox()
	saga := "saga " + p.bc + "-transfer"
	spans := spansOf(t, rec, id, func(s []sdktrace.ReadOnlySpan) bool {
		// start, debit outcome, credit outcome: three transitions; two
		// commands processed and forwarded; bob's projection batch.
		if len(named(s, saga)) < 3 || len(named(s, cmds)) < 2 || len(named(s, outs)) < 2 || len(named(s, inbox)) < 3 {
			return false
		}
		return slices.ContainsFunc(named(s, "projection balances"), func(s sdktrace.ReadOnlySpan) bool {
			return s.SpanContext().TraceID() == id
		})
	})
	for _, s := range spans {
		if s.SpanContext().TraceID() != id && s.Name() != "relay publish" && s.Name() != "projection balances" && s.Name() != "append" {
			t.Errorf("%s has trace %s, want the saga's %s\n%s", s.Name(), s.SpanContext().TraceID(), id, dump(spans))
		}
	}
	// Every transition is a child of the inbox record's span that caused it.
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byID[s.SpanContext().SpanID()] = s
	}
	for _, s := range named(spans, saga) {
		if p, ok := byID[s.Parent().SpanID()]; !ok || p.Name() != inbox {
			t.Errorf("transition span's parent is not an inbox span\n%s", dump(spans))
		}
	}
	i, err := p.sagaSt.Get(t.Context(), p.bc+"-transfer", "t-1")
	if err != nil || i.Status != sagas.StatusCompleted {
		t.Errorf("saga: %+v, %v", i, err)
	}

	// Runtime.Start has no record: WithTraceContext gives it ctx's.
	ctx, root = tt.Start(t.Context(), "start directly")
	if err := p.sagaRT.Start(ctx, "t-2", transfer{From: "alice", To: "bob", Amount: 5}); err != nil {
		t.Fatal(err)
	}
	root.End()
	spans = spansOf(t, rec, root.SpanContext().TraceID(), func(s []sdktrace.ReadOnlySpan) bool {
		return len(named(s, saga)) >= 3 && len(named(s, cmds)) >= 2
	})
	for _, s := range named(spans, saga) {
		if s.SpanContext().TraceID() != root.SpanContext().TraceID() {
			t.Errorf("a transition of the directly started saga is in trace %s\n%s", s.SpanContext().TraceID(), dump(spans))
		}
	}
}
