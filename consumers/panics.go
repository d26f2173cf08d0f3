package consumers

import (
	"bytes"
	"context"
	"fmt"
	"runtime/debug"

	"github.com/twmb/franz-go/pkg/kgo"
)

// MaxStackLength bounds the stack of a panic kept in a dead letter
// (header HeaderStack) and in a PanicError.
const MaxStackLength = 4096

// PanicError is the error of a handler call that panicked: the runtime
// recovers a panic in Handle, HandleBatch or PartitionsRevoked (and so in
// whatever they call: decide, evolve, a codec), and logs one in a WithStats
// or OnConnectivity callback, so that one bad record does
// not kill the process and, redelivered after every restart, kill it
// again. It is permanent (IsPermanent): the record is dead-lettered with
// reason "panic", the panic value in HeaderError and the stack in
// HeaderStack. It unwraps to the panic value when that is an error.
type PanicError struct {
	// Value is what the handler panicked with.
	Value any
	// Stack is the panicking goroutine's stack from the panicking frame
	// on, truncated to MaxStackLength bytes.
	Stack []byte
}

// Error describes the panic (without the stack).
func (e *PanicError) Error() string { return fmt.Sprintf("consumers: handler panicked: %v", e.Value) }

// Unwrap returns the panic value if it is an error.
func (e *PanicError) Unwrap() error {
	if err, ok := e.Value.(error); ok {
		return err
	}
	return nil
}

// newPanicError builds the PanicError of a recovered value v, with the
// stack of the goroutine that panicked (called in its deferred function).
func newPanicError(v any) *PanicError {
	return &PanicError{Value: v, Stack: panicStack(debug.Stack())}
}

// panicStack cuts a debug.Stack taken while recovering to the frames from
// the one that panicked on: it drops the goroutine line and the frames of
// debug.Stack, the deferred function and runtime's panic, then truncates.
func panicStack(s []byte) []byte {
	if i := bytes.Index(s, []byte("\npanic(")); i >= 0 {
		rest := s[i+1:]
		// Skip the panic( line and its file line.
		for range 2 {
			if j := bytes.IndexByte(rest, '\n'); j >= 0 {
				rest = rest[j+1:]
			}
		}
		s = rest
	}
	if len(s) > MaxStackLength {
		s = append([]byte(truncate(string(s), MaxStackLength)), "…"...)
	}
	return bytes.Clone(s)
}

// handle calls the handler on rec, turning a panic into a PanicError.
func (g *Group) handle(ctx context.Context, rec *kgo.Record) (err error) {
	defer func() {
		if v := recover(); v != nil {
			pe := newPanicError(v)
			g.log.ErrorContext(ctx, "handler panicked", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset,
				"panic", fmt.Sprint(v), "stack", string(pe.Stack))
			err = pe
		}
	}()
	return g.h.Handle(ctx, rec)
}

// handleBatch calls the batch handler on recs; a panic is returned as a
// PanicError (then no record's result is known).
func (g *Group) handleBatch(ctx context.Context, bh BatchHandler, recs []*kgo.Record) (res []error, err error) {
	defer func() {
		if v := recover(); v != nil {
			pe := newPanicError(v)
			g.log.ErrorContext(ctx, "batch handler panicked: handling its records one at a time", "topic", recs[0].Topic,
				"partition", recs[0].Partition, "records", len(recs), "panic", fmt.Sprint(v), "stack", string(pe.Stack))
			res, err = nil, pe
		}
	}()
	return bh.HandleBatch(ctx, recs), nil
}

// partitionsRevoked tells a PartitionAware handler, logging a panic.
func (g *Group) partitionsRevoked(pa PartitionAware, topic string, parts []int32) {
	defer func() {
		if v := recover(); v != nil {
			g.log.Error("PartitionsRevoked panicked", "topic", topic, "partitions", parts, "panic", fmt.Sprint(v),
				"stack", string(newPanicError(v).Stack))
		}
	}()
	pa.PartitionsRevoked(topic, parts)
}

// callback runs a callback the user gave an option (WithStats,
// OnConnectivity), logging a panic instead of ending the process.
func (g *Group) callback(option string, f func()) {
	defer func() {
		if v := recover(); v != nil {
			g.log.Error(option+" callback panicked", "panic", fmt.Sprint(v), "stack", string(newPanicError(v).Stack))
		}
	}()
	f()
}
