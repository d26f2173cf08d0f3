package consumers

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// BenchmarkCall measures the runtime's cost around one call of an empty
// handler: recover, and the attempt deadline through a lane's slot (what
// the group does) or with a context.WithTimeout per call (the fallback).
func BenchmarkCall(b *testing.B) {
	for _, c := range []struct {
		name string
		d    time.Duration
		slot bool
	}{{"no-deadline", 0, false}, {"deadline-slot", DefaultAttemptTimeout, true}, {"deadline-withtimeout", DefaultAttemptTimeout, false}} {
		b.Run(c.name, func(b *testing.B) {
			g := testGroup(DefaultFailurePolicy().WithAttemptTimeout(c.d), HandlerFunc(func(context.Context, *kgo.Record) error { return nil }))
			r := &kgo.Record{Topic: "t"}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if c.slot {
				var retire func()
				ctx, retire = g.withSlot(ctx)
				defer retire()
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := g.call(ctx, chainPos{origin: "t"}, r, meta{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestSlotDeadline: a call through a lane's slot sees its deadline, ends
// with context.DeadlineExceeded (cause ErrAttemptTimeout) when the
// watchdog cancels it on time, fails with ErrAttemptTimeout, and the
// slot's next call gets a live context.
func TestSlotDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			deadline  time.Time
			ctxErr    error
			cause     error
			ended     time.Duration
			hang      = true
			calls     int
			startedAt time.Time
		)
		h := HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
			calls++
			startedAt = time.Now()
			deadline, _ = ctx.Deadline()
			if !hang {
				return ctx.Err()
			}
			<-ctx.Done()
			ended = time.Since(startedAt)
			ctxErr, cause = ctx.Err(), context.Cause(ctx)
			return ctxErr
		})
		g := testGroup(DefaultFailurePolicy().WithAttemptTimeout(2*time.Second), h)
		ctx, retire := g.withSlot(t.Context())
		defer retire()
		err := g.call(ctx, chainPos{origin: "t"}, &kgo.Record{Topic: "t"}, meta{})
		if !errors.Is(err, ErrAttemptTimeout) || !errors.Is(err, context.DeadlineExceeded) || ErrorReason(err) != ReasonTimeout {
			t.Fatalf("call = %v, want ErrAttemptTimeout wrapping context.DeadlineExceeded", err)
		}
		if ended != 2*time.Second || !deadline.Equal(startedAt.Add(2*time.Second)) || ctxErr != context.DeadlineExceeded || cause != ErrAttemptTimeout {
			t.Fatalf("ended after %s, deadline %s after start, err %v, cause %v", ended, deadline.Sub(startedAt), ctxErr, cause)
		}
		hang = false
		if err := g.call(ctx, chainPos{origin: "t"}, &kgo.Record{Topic: "t"}, meta{}); err != nil || calls != 2 {
			t.Fatalf("next call = %v (calls %d), want a live context", err, calls)
		}
	})
}
