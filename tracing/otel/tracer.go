package otel

import (
	"context"
	"encoding/hex"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/producers"
	gotel "go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the spans this package makes.
const ScopeName = "github.com/orchestrix/orchestrix/tracing/otel"

// HeaderTraceParent is the Kafka header that carries a message's W3C
// traceparent (the CloudEvents traceparent extension in binary mode).
const HeaderTraceParent = codec.HeaderPrefix + "traceparent"

// Tracer makes the spans of Orchestrix's runtimes. It is safe for
// concurrent use; one Tracer serves every runtime of a process.
type Tracer struct {
	tr            trace.Tracer
	skipUnsampled bool
}

// Option configures a Tracer.
type Option func(*config)

type config struct {
	tp            trace.TracerProvider
	skipUnsampled bool
}

// SkipUnsampled makes the middleware start no span for a record whose
// trace context says it was not sampled: the handler runs under that
// context (any span it starts is its child, and not sampled under a
// parent-based sampler), and gets the record as it is. That is what a
// parent-based sampler (OpenTelemetry's default) decides anyway, without
// the cost of a span that is not recorded (about half of the middleware's
// cost per record with a dropping sampler). Do not use it
// with a sampler that may sample a record whose parent was not sampled.
func SkipUnsampled() Option { return func(c *config) { c.skipUnsampled = true } }

// WithTracerProvider sets the provider the spans come from (default: the
// global one, go.opentelemetry.io/otel.GetTracerProvider, which does
// nothing until the program sets one).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// New returns a Tracer.
func New(opts ...Option) *Tracer {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.tp == nil {
		c.tp = gotel.GetTracerProvider()
	}
	return &Tracer{tr: c.tp.Tracer(ScopeName), skipUnsampled: c.skipUnsampled}
}

// Attribute keys, after OpenTelemetry's messaging conventions where one
// applies.
const (
	attrSystem      = attribute.Key("messaging.system")
	attrOperation   = attribute.Key("messaging.operation.type")
	attrDestination = attribute.Key("messaging.destination.name")
	attrPartition   = attribute.Key("messaging.destination.partition.id")
	attrOffset      = attribute.Key("messaging.kafka.offset")
	attrKey         = attribute.Key("messaging.kafka.message.key")
	attrMessageID   = attribute.Key("messaging.message.id")
	attrGroup       = attribute.Key("messaging.consumer.group.name")
	attrBatch       = attribute.Key("messaging.batch.message_count")
	attrType        = attribute.Key("orchestrix.type")
)

// Send produces cmd with s inside a producer span ("send <topic>") and
// waits for the acknowledgement: the command's TraceParent becomes the
// span's context, so the processor's span is its child. The span is a
// child of ctx's span, if any.
func (t *Tracer) Send(ctx context.Context, s *producers.Sender, cmd orchestrix.Command) error {
	ctx, span := t.tr.Start(ctx, "send "+s.Topic(), trace.WithSpanKind(trace.SpanKindProducer))
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attrSystem.String("kafka"), attrOperation.String("send"), attrDestination.String(s.Topic()),
			attrMessageID.String(cmd.ID), attrKey.String(cmd.AggregateID), attrType.String(cmd.Type))
	}
	Inject(ctx, &cmd.Metadata)
	err := s.Send(ctx, cmd)
	fail(span, err)
	return err
}

// Inject sets m.TraceParent to the span context of ctx, if it has a valid
// one (m is left alone otherwise). Use it for messages this package does
// not send itself: a command built by hand, an outbox message.
func Inject(ctx context.Context, m *orchestrix.Metadata) {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		m.TraceParent = Format(sc)
	}
}

// TraceParent returns the W3C traceparent of ctx's span, "" when ctx has
// none: the function the core's trace hooks take
// (producers.WithTraceContext, sagas.WithTraceContext).
func TraceParent(ctx context.Context) string {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return Format(sc)
	}
	return ""
}

// Extract returns ctx with the remote span context that traceParent
// names, so that a span started from it is its child; ctx itself when
// traceParent is empty or malformed (a bad header never fails a message).
func Extract(ctx context.Context, traceParent string) context.Context {
	if sc, ok := Parse(traceParent); ok {
		return trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	return ctx
}

// traceParentLen is the length of a version 00 traceparent.
const traceParentLen = 55

// Format renders sc as a W3C traceparent (version 00).
func Format(sc trace.SpanContext) string {
	var b [traceParentLen]byte
	return string(formatTo(b[:0], sc))
}

// formatTo appends sc's traceparent to dst.
func formatTo(dst []byte, sc trace.SpanContext) []byte {
	tid, sid := sc.TraceID(), sc.SpanID()
	dst = append(dst, '0', '0', '-')
	dst = hex.AppendEncode(dst, tid[:])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, sid[:])
	return append(dst, '-', hexDigits[sc.TraceFlags()>>4], hexDigits[sc.TraceFlags()&0xf])
}

const hexDigits = "0123456789abcdef"

// Parse reads a W3C traceparent: version 00 exactly, a later version by
// its first four fields. A malformed value, the invalid version ff, or an
// all-zero trace or span ID is not ok.
func Parse(s string) (trace.SpanContext, bool) { return parse(s) }

func parse[T string | []byte](s T) (trace.SpanContext, bool) {
	if len(s) < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return trace.SpanContext{}, false
	}
	ver, ok := hexByte(s[0], s[1])
	if !ok || ver == 0xff || (len(s) > 55 && (ver == 0 || s[55] != '-')) {
		return trace.SpanContext{}, false
	}
	var tid trace.TraceID
	var sid trace.SpanID
	for i := range tid {
		if tid[i], ok = hexByte(s[3+2*i], s[4+2*i]); !ok {
			return trace.SpanContext{}, false
		}
	}
	for i := range sid {
		if sid[i], ok = hexByte(s[36+2*i], s[37+2*i]); !ok {
			return trace.SpanContext{}, false
		}
	}
	flags, ok := hexByte(s[53], s[54])
	if !ok {
		return trace.SpanContext{}, false
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.TraceFlags(flags) & trace.FlagsSampled, Remote: true})
	return sc, sc.IsValid()
}

// hexByte decodes two lower-case hex digits (the W3C format forbids upper
// case).
func hexByte(a, b byte) (byte, bool) {
	x, y := hexValue[a], hexValue[b]
	return x<<4 | y&0xf, x|y < 0x10
}

// hexValue maps a lower-case hex digit to its value, anything else to 0xff.
var hexValue = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i, c := range hexDigits {
		t[c] = byte(i)
	}
	return t
}()

// fail marks span as failed with err, if err is not nil.
func fail(span trace.Span, err error) {
	if err == nil || !span.IsRecording() {
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
}
