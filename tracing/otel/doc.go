// Package otel traces Orchestrix with OpenTelemetry. It is a module of its
// own, like franz-go's plugin/kotel, so that the core does not import
// OpenTelemetry: the core carries a W3C traceparent on every message
// (orchestrix.Metadata.TraceParent, the CloudEvents header ce_traceparent,
// the events table's traceparent column) and exposes hooks; this package
// turns them into spans.
//
// One command's trace, end to end:
//
//	send          Tracer.Send: a producer span; the command's TraceParent is that span
//	process       Tracer.Middleware around the command processor: a consumer span per
//	              record, child of the record's ce_traceparent; the processor's events
//	              carry this span as their traceparent
//	append        Tracer.Append (aggregates.OnAppend): one span per store transaction
//	relay         Tracer.Relay (outbox.OnCommit): one span per Kafka transaction
//	process       Tracer.Middleware around any event consumer, the saga forwarder
//	              and the saga inbox
//	saga          Tracer.Saga (sagas.OnTransitionTraced): a span per transition; the
//	              saga's commands carry the input's trace context
//	projection    Tracer.Projection (projections.OnCommit): one span per batch
//
// Batches (a store transaction, a relay transaction, a projection batch)
// get a span with a link to each message's span context they cover (up to
// 128, the SDK's default limit); when every message of the batch belongs
// to one trace, the span is also a child in that trace (the last
// message's span is its parent), so a single command's trace reaches its
// projection batch under one trace ID. A batch that mixes traces starts a
// trace of its own and is found from each message's trace through its
// links.
//
// Wiring, with a TracerProvider from the OpenTelemetry SDK:
//
//	t := otel.New(otel.WithTracerProvider(tp))
//	err := t.Send(ctx, sender, cmd) // client side, a producer span; or:
//	sender, _ := producers.NewSender(cl, reg, topic, source, producers.WithTraceContext(otel.TraceParent))
//	processor, _ := aggregates.NewProcessor(repo, aggregates.OnAppend(t.Append))
//	group, _ := consumers.New(seeds, "bank-aggregates", []string{"bank.commands"},
//		consumers.Chain(processor, t.Middleware("bank-aggregates")))
//	relay, _ := outbox.NewRelay(store, seeds, outbox.ToTopic("bank.events"), outbox.OnCommit(t.Relay))
//	runtime, _ := sagas.NewRuntime(sagaStore, reg, defs, sagas.OnTransitionTraced(t.Saga),
//		sagas.WithTraceContext(otel.TraceParent))
//	inbox, _ := consumers.New(seeds, "transfer-sagas", []string{runtime.Inbox()},
//		consumers.Chain(runtime, t.Middleware("transfer-sagas")))
//	runner, _ := projections.New("balances", back, src, apply, projections.OnCommit(t.Projection))
//
// The middleware keeps a batch handler a batch handler (the command
// processor's one transaction per poll stays one transaction) and forwards
// the consumers runtime's optional interfaces (PartitionAware,
// Assignable). It hands the wrapped handler a shallow copy of each record
// whose ce_traceparent names the handling span: that is how the events a
// processor appends, the records the saga forwarder copies and the
// commands a saga writes continue the trace without the core knowing
// about spans. The runtime's own copy of the record (dead letters, retry
// topics) keeps the original header.
//
// Cost: with a sampler that drops (the usual production setting, e.g.
// ParentBased(TraceIDRatioBased(0.01))), spans are not recorded and the
// hooks do little more than parse and format traceparents; see
// docs/observability.md for the measured overhead.
package otel
