package consumers

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/twmb/franz-go/pkg/kgo"
)

// EventHandler handles one decoded event whose payload is a T.
type EventHandler[T any] func(ctx context.Context, e orchestrix.Event, payload T) error

// Router is a Handler for topics of CloudEvents (an events topic, a
// saga's inbox): it decodes each record with a codec.Registry and calls
// the EventHandler registered for the payload's type. It is the
// in-process message bus of the original design, on Kafka: one record,
// one typed call, in partition order.
//
// A record that is not a valid CloudEvent, or whose payload does not
// decode, fails permanently (the failure policy dead-letters it with the
// reason). A valid event of a type with no handler is skipped, since an
// events topic carries every type of its context; RejectUnhandled makes
// it a permanent failure instead. Register every handler before Run; a
// Router is safe for concurrent use.
type Router struct {
	reg             *codec.Registry
	mu              sync.RWMutex
	routes          map[string]func(context.Context, orchestrix.Event) error
	rejectUnhandled bool
}

// NewRouter returns a router decoding with reg.
func NewRouter(reg *codec.Registry) *Router {
	return &Router{reg: reg, routes: map[string]func(context.Context, orchestrix.Event) error{}}
}

// RejectUnhandled makes an event of a type without a handler a permanent
// failure (dead-lettered) instead of a skip.
func (r *Router) RejectUnhandled() *Router { r.rejectUnhandled = true; return r }

// ErrNoRoute is the error of an event of a type without a handler on a
// router that RejectUnhandled. It is permanent.
var ErrNoRoute = errors.New("consumers: no handler for the event's type")

// On registers h for the events whose payload is a T, under the type name
// T is registered with in r's registry. Registering a type twice, or a T
// the registry does not know, is an error.
func On[T any](r *Router, h EventHandler[T]) error {
	name, ok := codec.TypeNameOf[T](r.reg)
	if !ok {
		var zero T
		return fmt.Errorf("consumers: route %T: not in the registry: %w", zero, orchestrix.ErrUnknownType)
	}
	if h == nil {
		return fmt.Errorf("consumers: route %s: nil handler: %w", name, orchestrix.ErrInvalid)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.routes[name]; dup {
		return fmt.Errorf("consumers: route %s: registered twice: %w", name, orchestrix.ErrInvalid)
	}
	r.routes[name] = func(ctx context.Context, e orchestrix.Event) error {
		p, ok := e.Payload.(T)
		if !ok {
			return Permanent(fmt.Errorf("event %s (%s): payload is %T, want %T", e.ID, e.Type, e.Payload, p))
		}
		return h(ctx, e, p)
	}
	return nil
}

// Handle implements Handler.
func (r *Router) Handle(ctx context.Context, rec *kgo.Record) error {
	e, err := codec.RecordToEvent(rec)
	if err != nil {
		return Permanent(fmt.Errorf("record %s/%d@%d is not a valid event: %w", rec.Topic, rec.Partition, rec.Offset, err))
	}
	r.mu.RLock()
	route, ok := r.routes[e.Type]
	r.mu.RUnlock()
	if !ok {
		// Upcasters may turn an old type into a handled one: decode first
		// when the type is known to the registry.
		if err := r.reg.DecodeEvent(&e); err == nil {
			r.mu.RLock()
			route, ok = r.routes[e.Type]
			r.mu.RUnlock()
		}
		if !ok {
			if r.rejectUnhandled {
				return Permanent(fmt.Errorf("event %s of type %q: %w", e.ID, e.Type, ErrNoRoute))
			}
			return nil
		}
		return route(ctx, e)
	}
	if err := r.reg.DecodeEvent(&e); err != nil {
		return Permanent(fmt.Errorf("event %s (%s): %w", e.ID, e.Type, err))
	}
	return route(ctx, e)
}

// Middleware wraps a Handler (logging, metrics, tracing, a deadline).
// Middlewares see one record per call: a BatchHandler wrapped by one is
// called record by record.
type Middleware func(Handler) Handler

// Chain returns h wrapped by mws, the first the outermost: Chain(h, a, b)
// calls a, which calls b, which calls h.
func Chain(h Handler, mws ...Middleware) Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}
