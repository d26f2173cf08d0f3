package otel

import (
	"context"
	"strconv"
	"time"

	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/sagas"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// batch collects the span contexts of a batch's messages: the links of
// its span, and its parent when every message belongs to one trace.
type batch struct {
	links  []trace.Link
	last   trace.SpanContext
	traces int // distinct traces seen (1 = one trace; 2 = more)
}

func newBatch(n int) *batch { return &batch{links: make([]trace.Link, 0, min(n, maxLinks))} }

// maxLinks bounds the links one span carries (the SDK's default limit):
// a 10,000-record relay transaction is not worth 10,000 links.
const maxLinks = 128

// done says that no further message can change the span: it has its
// links and the messages are of several traces.
func (b *batch) done() bool { return b.traces == 2 && len(b.links) == maxLinks }

func (b *batch) add(sc trace.SpanContext, ok bool) {
	if !ok {
		return
	}
	if b.traces == 0 || sc.TraceID() != b.last.TraceID() {
		if b.traces > 0 {
			b.traces = 2
		} else {
			b.traces = 1
		}
	}
	if sc.Equal(b.last) {
		return // a command's events share their span context
	}
	b.last = sc
	if len(b.links) < maxLinks {
		b.links = append(b.links, trace.Link{SpanContext: sc})
	}
}

// span records a finished batch span: child of the batch's one trace, if
// it has one, with links to each message's span context.
func (t *Tracer) span(name string, kind trace.SpanKind, start, end time.Time, b *batch, err error, attrs ...attribute.KeyValue) {
	ctx := context.Background()
	if b.traces == 1 {
		ctx = trace.ContextWithRemoteSpanContext(ctx, b.last)
	}
	_, span := t.tr.Start(ctx, name, trace.WithSpanKind(kind), trace.WithTimestamp(start), trace.WithLinks(b.links...))
	if span.IsRecording() {
		span.SetAttributes(attrs...)
		fail(span, err)
	}
	span.End(trace.WithTimestamp(end))
}

// Relay is an outbox.OnCommit hook: a producer span "relay publish" per
// committed Kafka transaction, covering its duration, linked to the span
// context of each record it published (events carry the processor span
// that appended them; outbox messages, such as a saga's commands, the
// span that wrote them). The relay keeps a transaction's records for its
// OnCommit hook: see outbox.OnCommit.
func (t *Tracer) Relay(c outbox.Commit) {
	end := time.Now()
	b := newBatch(len(c.Records))
	for _, r := range c.Records {
		if b.done() {
			break
		}
		for _, h := range r.Headers {
			if h.Key == HeaderTraceParent {
				b.add(parse(h.Value))
				break
			}
		}
	}
	dest := attrDestination.String("")
	if len(c.Records) > 0 {
		dest = attrDestination.String(c.Records[0].Topic)
	}
	t.span("relay publish", trace.SpanKindProducer, end.Add(-c.Duration), end, b, nil,
		attrSystem.String("kafka"), attrOperation.String("send"), dest, attrBatch.Int(len(c.Records)),
		attribute.Int("orchestrix.relay.events", c.Events), attribute.Int("orchestrix.relay.messages", c.Messages),
		attribute.Int("orchestrix.relay.dead_letters", c.DeadLetters))
}

// Projection is a projections.OnCommit hook: a span "projection <name>"
// per committed batch, covering its transaction (handler included),
// linked to the span context of each event it applied. A checkpoint-only
// commit (no events) makes no span.
func (t *Tracer) Projection(c projections.Commit) {
	if len(c.Events) == 0 {
		return
	}
	end := time.Now()
	b := newBatch(len(c.Events))
	for i := 0; i < len(c.Events) && !b.done(); i++ {
		b.add(parse(c.Events[i].TraceParent))
	}
	t.span("projection "+c.Projection, trace.SpanKindConsumer, end.Add(-c.Took), end, b, nil,
		attribute.String("orchestrix.projection", c.Projection), attribute.Int("orchestrix.projection.version", c.Version),
		attribute.Int("orchestrix.projection.shard", c.Shard), attrBatch.Int(len(c.Events)),
		attribute.String("orchestrix.projection.cursor", c.Cursor))
}

// Append is an aggregates.OnAppend hook: a span "append" per store write
// of a command processor, linked to the span context of each command
// whose events it wrote (the processor's record spans: the middleware
// hands the processor records that carry them).
func (t *Tracer) Append(a aggregates.Append) {
	end := time.Now()
	n := 0
	for _, r := range a.Requests {
		n += len(r.Events)
	}
	b := newBatch(len(a.Requests))
	for _, r := range a.Requests {
		for i := 0; i < len(r.Events) && !b.done(); i++ {
			b.add(parse(r.Events[i].TraceParent))
		}
	}
	t.span("append", trace.SpanKindInternal, end.Add(-a.Took), end, b, a.Err,
		attribute.Int("orchestrix.append.events", n), attribute.Int("orchestrix.append.rejected", a.Rejected))
}

// Saga is a sagas.OnTransitionTraced hook: a span "saga <type>" per
// committed transition, child of the input's trace context, from the
// decision (Transition.At) to the commit.
func (t *Tracer) Saga(tr sagas.Transition, traceParent string) {
	end := time.Now()
	b := newBatch(1)
	b.add(parse(traceParent))
	start := tr.At
	if start.IsZero() || start.After(end) {
		start = end
	}
	t.span("saga "+tr.Type, trace.SpanKindInternal, start, end, b, nil,
		attribute.String("orchestrix.saga.type", tr.Type), attribute.String("orchestrix.saga.id", tr.SagaID),
		attribute.String("orchestrix.saga.input", tr.InputID), attribute.String("orchestrix.saga.input_kind", string(tr.InputKind)),
		attribute.String("orchestrix.saga.from", string(tr.From)), attribute.String("orchestrix.saga.to", string(tr.To)),
		attribute.Int("orchestrix.saga.step", tr.Step), attribute.String("orchestrix.saga.version", strconv.FormatInt(tr.Version, 10)))
}
