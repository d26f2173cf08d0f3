package otel_test

import (
	"context"
	"fmt"

	"github.com/orchestrix/orchestrix/consumers"
	orxotel "github.com/orchestrix/orchestrix/tracing/otel"
	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// The middleware handles each record in a span that continues the
// record's trace, and hands the handler the record with the span as its
// ce_traceparent: whatever the handler derives from it (events,
// forwarded copies, a saga's commands) continues the trace.
func ExampleTracer_Middleware() {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	tracer := orxotel.New(orxotel.WithTracerProvider(tp))

	var seen string
	handler := consumers.HandlerFunc(func(_ context.Context, r *kgo.Record) error {
		for _, h := range r.Headers {
			if h.Key == orxotel.HeaderTraceParent {
				seen = string(h.Value)
			}
		}
		return nil
	})
	h := consumers.Chain(handler, tracer.Middleware("bank-aggregates"))
	// (consumers.New(seeds, "bank-aggregates", topics, h) runs it.)

	sent := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	_ = h.Handle(context.Background(), &kgo.Record{Topic: "bank.commands",
		Headers: []kgo.RecordHeader{{Key: orxotel.HeaderTraceParent, Value: []byte(sent)}}})

	span := rec.Ended()[0]
	fmt.Println(span.Name(), span.SpanKind())
	fmt.Println("same trace:", span.SpanContext().TraceID().String() == sent[3:35])
	fmt.Println("child of the sender:", span.Parent().SpanID().String() == sent[36:52])
	fmt.Println("handler sees the span:", seen == orxotel.Format(span.SpanContext()))
	// Output:
	// process bank.commands consumer
	// same trace: true
	// child of the sender: true
	// handler sees the span: true
}
