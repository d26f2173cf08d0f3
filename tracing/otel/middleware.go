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
// the trace. A span that is not recorded under a valid traceparent (a
// sampler that drops) hands on the record as it is: same trace ID, same
// decision, no copy. A handler that is a consumers.BatchHandler stays one: each
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
	ctx, span, parented := w.start(ctx, r)
	c := r
	if sc := span.SpanContext(); handOn(span, parented) {
		c = &kgo.Record{}
		withTraceParent(c, r, make([]kgo.RecordHeader, 0, len(r.Headers)+1), formatTo(make([]byte, 0, traceParentLen), sc))
	}
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

// consumerKind is the option of every record span (made once: options
// are values that escape).
var consumerKind = trace.WithSpanKind(trace.SpanKindConsumer)

// start starts r's span; parented says r had a valid traceparent.
func (w *handler) start(ctx context.Context, r *kgo.Record) (_ context.Context, _ trace.Span, parented bool) {
	parent := ctx
	for _, h := range r.Headers {
		if h.Key == HeaderTraceParent {
			var sc trace.SpanContext
			if sc, parented = parse(h.Value); parented {
				parent = trace.ContextWithRemoteSpanContext(ctx, sc)
				if w.t.skipUnsampled && !sc.IsSampled() {
					// The remote span: not recording, ending it does nothing.
					return parent, trace.SpanFromContext(parent), true
				}
			}
			break
		}
	}
	ctx, span := w.t.tr.Start(parent, w.name(r.Topic), consumerKind)
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
	return ctx, span, parented
}

// handOn says whether the wrapped handler gets a copy of the record with
// span's traceparent: when span is recorded (what the handler derives is
// its child), or when the record carried no valid trace context (the
// span's trace ID, and the sampling decision, go on). A span not recorded
// under a valid parent hands on the record as it is: the trace ID and the
// decision are the same, and no backend sees either span (this saves a
// copy per record with a sampler that drops).
func handOn(span trace.Span, parented bool) bool {
	return span.SpanContext().IsValid() && (span.IsRecording() || !parented)
}

// withTraceParent makes c a shallow copy of r whose ce_traceparent is tp;
// hs (empty, with room for r's headers and one more) becomes its headers.
func withTraceParent(c, r *kgo.Record, hs []kgo.RecordHeader, tp []byte) {
	*c = *r
	set := false
	for _, h := range r.Headers {
		if h.Key == HeaderTraceParent {
			if set {
				continue
			}
			h.Value, set = tp, true
		}
		hs = append(hs, h)
	}
	if !set {
		hs = append(hs, kgo.RecordHeader{Key: HeaderTraceParent, Value: tp})
	}
	c.Headers = hs
}

type batchHandler struct {
	*handler
	bh consumers.BatchHandler
}

// HandleBatch implements consumers.BatchHandler. The copies of a batch's
// records share three allocations (records, headers, traceparents).
func (w *batchHandler) HandleBatch(ctx context.Context, recs []*kgo.Record) (errs []error) {
	spans := make([]trace.Span, len(recs))
	copies := make([]*kgo.Record, len(recs))
	var slab []kgo.Record
	var hs []kgo.RecordHeader
	var tps []byte
	alloc := func() {
		slab = make([]kgo.Record, len(recs))
		nh := 0
		for _, r := range recs {
			nh += len(r.Headers) + 1
		}
		hs = make([]kgo.RecordHeader, 0, nh)
		tps = make([]byte, 0, traceParentLen*len(recs))
	}
	bctx := ctx
	for i, r := range recs {
		sctx, span, parented := w.start(ctx, r)
		spans[i] = span
		if len(recs) == 1 {
			bctx = sctx
		}
		copies[i] = r
		if sc := span.SpanContext(); handOn(span, parented) {
			if slab == nil {
				alloc()
			}
			tps = formatTo(tps, sc)
			n := len(hs)
			withTraceParent(&slab[i], r, hs[n:n:n+len(r.Headers)+1], tps[len(tps)-traceParentLen:len(tps):len(tps)])
			hs = hs[:n+len(slab[i].Headers)]
			copies[i] = &slab[i]
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
