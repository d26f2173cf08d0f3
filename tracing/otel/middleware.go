package otel

import (
	"context"
	"fmt"
	"sync"

	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"
)

// Middleware returns a consumers.Middleware that handles every record in
// a consumer span "process <topic>", a child of the record's
// ce_traceparent (a record without one, or with a malformed one, starts a
// trace). group names the consumer group in the spans' attributes.
//
// The wrapped handler gets a shallow copy of the record whose
// ce_traceparent is the handling span's context, so that what it derives
// from the record (a processor's events, a forwarder's copies) continues
// the trace. A handler that is a consumers.BatchHandler stays one: each
// record of a batch gets its own span, all ended with the record's result
// when the batch returns; the batch's context carries the span of its
// record when the batch holds one record, the caller's context otherwise.
// consumers.PartitionAware and consumers.Assignable are forwarded.
func (t *Tracer) Middleware(group string) consumers.Middleware {
	return func(h consumers.Handler) consumers.Handler {
		w := &handler{t: t, h: h, group: group}
		if bh, ok := h.(consumers.BatchHandler); ok {
			return &batchHandler{handler: w, bh: bh}
		}
		return w
	}
}

type handler struct {
	t     *Tracer
	h     consumers.Handler
	group string
	names sync.Map // topic -> span name
}

// Handle implements consumers.Handler.
func (w *handler) Handle(ctx context.Context, r *kgo.Record) (err error) {
	ctx, span, c := w.start(ctx, r)
	defer func() {
		if v := recover(); v != nil {
			fail(span, fmt.Errorf("panic: %v", v))
			span.End()
			panic(v)
		}
		fail(span, err)
		span.End()
	}()
	return w.h.Handle(ctx, c)
}

// PartitionsRevoked implements consumers.PartitionAware when the wrapped
// handler does.
func (w *handler) PartitionsRevoked(topic string, partitions []int32) {
	if pa, ok := w.h.(consumers.PartitionAware); ok {
		pa.PartitionsRevoked(topic, partitions)
	}
}

// PartitionsAssigned implements consumers.Assignable when the wrapped
// handler does; otherwise it keeps no positions (nil: every partition
// starts at the group's committed offset).
func (w *handler) PartitionsAssigned(ctx context.Context, topic string, partitions []int32) (map[int32]int64, error) {
	if a, ok := w.h.(consumers.Assignable); ok {
		return a.PartitionsAssigned(ctx, topic, partitions)
	}
	return nil, nil
}

func (w *handler) name(topic string) string {
	if v, ok := w.names.Load(topic); ok {
		return v.(string)
	}
	n := "process " + topic
	w.names.Store(topic, n)
	return n
}

// start starts r's span and returns the record the wrapped handler sees.
func (w *handler) start(ctx context.Context, r *kgo.Record) (context.Context, trace.Span, *kgo.Record) {
	parent := ctx
	for _, h := range r.Headers {
		if h.Key == HeaderTraceParent {
			if sc, ok := parse(h.Value); ok {
				parent = trace.ContextWithRemoteSpanContext(ctx, sc)
			}
			break
		}
	}
	ctx, span := w.t.tr.Start(parent, w.name(r.Topic), trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		span.SetAttributes(attrSystem.String("kafka"), attrOperation.String("process"), attrDestination.String(r.Topic),
			attrPartition.Int64(int64(r.Partition)), attrOffset.Int64(r.Offset), attrGroup.String(w.group))
		for _, h := range r.Headers {
			switch h.Key {
			case headerID:
				span.SetAttributes(attrMessageID.String(string(h.Value)))
			case headerType:
				span.SetAttributes(attrType.String(string(h.Value)))
			}
		}
	}
	sc := span.SpanContext()
	if !sc.IsValid() {
		return ctx, span, r
	}
	return ctx, span, withTraceParent(r, Format(sc))
}

// withTraceParent returns a shallow copy of r whose ce_traceparent is tp.
func withTraceParent(r *kgo.Record, tp string) *kgo.Record {
	c := *r
	c.Headers = make([]kgo.RecordHeader, 0, len(r.Headers)+1)
	set := false
	for _, h := range r.Headers {
		if h.Key == HeaderTraceParent {
			if set {
				continue
			}
			h.Value, set = []byte(tp), true
		}
		c.Headers = append(c.Headers, h)
	}
	if !set {
		c.Headers = append(c.Headers, kgo.RecordHeader{Key: HeaderTraceParent, Value: []byte(tp)})
	}
	return &c
}

type batchHandler struct {
	*handler
	bh consumers.BatchHandler
}

// HandleBatch implements consumers.BatchHandler.
func (w *batchHandler) HandleBatch(ctx context.Context, recs []*kgo.Record) (errs []error) {
	spans := make([]trace.Span, len(recs))
	copies := make([]*kgo.Record, len(recs))
	bctx := ctx
	for i, r := range recs {
		var sctx context.Context
		sctx, spans[i], copies[i] = w.start(ctx, r)
		if len(recs) == 1 {
			bctx = sctx
		}
	}
	defer func() {
		v := recover()
		for i, span := range spans {
			switch {
			case v != nil:
				fail(span, fmt.Errorf("panic: %v", v))
			case i < len(errs):
				fail(span, errs[i])
			}
			span.End()
		}
		if v != nil {
			panic(v)
		}
	}()
	return w.bh.HandleBatch(bctx, copies)
}

// CloudEvents headers read for span attributes.
const (
	headerID   = codec.HeaderPrefix + "id"
	headerType = codec.HeaderPrefix + "type"
)
