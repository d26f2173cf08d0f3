package consumers_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/twmb/franz-go/pkg/kgo"
)

type signedUp struct{ Name string }
type churned struct{ Reason string }
type unrouted struct{}

func eventRecord(t *testing.T, reg *codec.Registry, payload any) *kgo.Record {
	t.Helper()
	e := orchestrix.Event{Metadata: orchestrix.Metadata{ID: "e1", Source: "/test", Time: time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)}, StreamID: "s", Version: 1, Payload: payload}
	if err := reg.EncodeEvent(&e); err != nil {
		t.Fatal(err)
	}
	r, err := codec.EventToRecord("events", e)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRouter: each event reaches the handler of its payload's type, typed;
// an event without a handler is skipped (or, with RejectUnhandled, fails
// permanently); a record that is no event, or whose payload does not
// decode, fails permanently; a handler's error is returned as it is.
func TestRouter(t *testing.T) {
	reg := codec.NewRegistry()
	for _, err := range []error{
		codec.RegisterJSON[signedUp](reg, "test.SignedUp"),
		codec.RegisterJSON[churned](reg, "test.Churned"),
		codec.RegisterJSON[unrouted](reg, "test.Unrouted"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	boom := errors.New("boom")
	r := consumers.NewRouter(reg)
	if err := consumers.On(r, func(_ context.Context, e orchestrix.Event, p signedUp) error {
		got = append(got, "signed up "+p.Name+" ("+e.Type+")")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := consumers.On(r, func(_ context.Context, _ orchestrix.Event, p churned) error { return boom }); err != nil {
		t.Fatal(err)
	}
	if err := consumers.On(r, func(context.Context, orchestrix.Event, signedUp) error { return nil }); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Errorf("a second route for one type: %v, want ErrInvalid", err)
	}
	type notRegistered struct{}
	if err := consumers.On(r, func(context.Context, orchestrix.Event, notRegistered) error { return nil }); !errors.Is(err, orchestrix.ErrUnknownType) {
		t.Errorf("a route for an unregistered type: %v, want ErrUnknownType", err)
	}
	ctx := t.Context()
	if err := r.Handle(ctx, eventRecord(t, reg, signedUp{Name: "ada"})); err != nil || len(got) != 1 || got[0] != "signed up ada (test.SignedUp)" {
		t.Fatalf("routed event: %v, calls %v", err, got)
	}
	if err := r.Handle(ctx, eventRecord(t, reg, churned{})); !errors.Is(err, boom) || consumers.IsPermanent(err) {
		t.Errorf("handler error = %v, want boom as it is (transient)", err)
	}
	if err := r.Handle(ctx, eventRecord(t, reg, unrouted{})); err != nil {
		t.Errorf("unrouted event: %v, want skipped", err)
	}
	bad := eventRecord(t, reg, signedUp{Name: "x"})
	bad.Value = []byte("{not json")
	if err := r.Handle(ctx, bad); !consumers.IsPermanent(err) {
		t.Errorf("undecodable payload: %v, want permanent", err)
	}
	if err := r.Handle(ctx, &kgo.Record{Topic: "events", Value: []byte("garbage")}); !consumers.IsPermanent(err) {
		t.Errorf("not an event: %v, want permanent", err)
	}
	r.RejectUnhandled()
	if err := r.Handle(ctx, eventRecord(t, reg, unrouted{})); !consumers.IsPermanent(err) || !errors.Is(err, consumers.ErrNoRoute) {
		t.Errorf("unrouted event with RejectUnhandled: %v, want permanent ErrNoRoute", err)
	}
}

// TestChain: middlewares wrap in order, the first outermost.
func TestChain(t *testing.T) {
	var trail []string
	mw := func(name string) consumers.Middleware {
		return func(next consumers.Handler) consumers.Handler {
			return consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
				trail = append(trail, name)
				return next.Handle(ctx, r)
			})
		}
	}
	h := consumers.Chain(consumers.HandlerFunc(func(context.Context, *kgo.Record) error { trail = append(trail, "h"); return nil }), mw("a"), mw("b"))
	if err := h.Handle(t.Context(), &kgo.Record{}); err != nil || len(trail) != 3 || trail[0] != "a" || trail[1] != "b" || trail[2] != "h" {
		t.Fatalf("trail = %v, %v; want [a b h]", trail, err)
	}
}
