package consumers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The attempt deadline (FailurePolicy.AttemptTimeout) costs a
// context.WithTimeout per call done naively: about 0.6 us and 4
// allocations, a fifth of a 2 us handler's time, and more with a watch for
// handlers that ignore it. Instead each lane of a partition's processing
// has a slot: one cancellable context its calls share (replaced once a
// timeout cancelled it), the start of the call in flight, and the group's
// watchdog goroutine cancels the context of a call that outlives the
// timeout and logs one that does not return long after. A call costs a
// clock read, an uncontended lock and one small allocation; handlers still
// see the deadline (ctx.Deadline).

// callSlot is the deadline state of one lane's handler calls.
type callSlot struct {
	mu     sync.Mutex
	parent context.Context
	ctx    context.Context
	cancel context.CancelCauseFunc
	// start is when the call in flight began (zero: none), rec its record.
	start time.Time
	rec   *kgo.Record
	// timedOut says the watchdog cancelled the call in flight; logged is
	// when it last logged it as overdue.
	timedOut bool
	logged   time.Time
}

type slotKey struct{}

// withSlot returns ctx carrying a new deadline slot for the calls made
// under it, and a function that retires the slot. Without an attempt
// timeout it returns ctx unchanged.
func (g *Group) withSlot(ctx context.Context) (context.Context, func()) {
	if g.cfg.policy.AttemptTimeout <= 0 {
		return ctx, func() {}
	}
	s := &callSlot{parent: ctx}
	g.slotMu.Lock()
	if g.slots == nil {
		g.slots, g.wake = map[*callSlot]struct{}{}, make(chan struct{}, 1)
	}
	g.slots[s] = struct{}{}
	if !g.watching {
		g.watching = true
		go g.watch()
	}
	g.slotMu.Unlock()
	return context.WithValue(ctx, slotKey{}, s), func() {
		g.slotMu.Lock()
		delete(g.slots, s)
		if len(g.slots) == 0 && g.watching {
			// Let the watchdog exit now rather than after its sleep.
			select {
			case g.wake <- struct{}{}:
			default:
			}
		}
		g.slotMu.Unlock()
		s.mu.Lock()
		if s.cancel != nil {
			s.cancel(context.Canceled)
		}
		s.mu.Unlock()
	}
}

// deadlineCtx is a slot's context with the call's deadline. Done and
// Value are the slot context's, so contexts derived from it attach to its
// cancellation without a goroutine.
type deadlineCtx struct {
	context.Context
	deadline time.Time
}

func (c *deadlineCtx) Deadline() (time.Time, bool) { return c.deadline, true }

// Err is context.DeadlineExceeded once the watchdog ended the call for
// its deadline (context.Cause: ErrAttemptTimeout). Contexts derived from
// it end with context.Canceled and the same cause.
func (c *deadlineCtx) Err() error {
	err := c.Context.Err()
	if err != nil && errors.Is(context.Cause(c.Context), ErrAttemptTimeout) {
		return context.DeadlineExceeded
	}
	return err
}

// begin starts a call of rec in the slot and returns its context.
func (s *callSlot) begin(rec *kgo.Record, d time.Duration) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx == nil || s.ctx.Err() != nil {
		s.ctx, s.cancel = context.WithCancelCause(s.parent)
	}
	s.start, s.rec, s.timedOut, s.logged = time.Now(), rec, false, time.Time{}
	return &deadlineCtx{s.ctx, s.start.Add(d)}
}

// end ends the call in flight and reports whether the watchdog cancelled
// it, and for how long it was overdue if that was logged.
func (s *callSlot) end() (timedOut bool, overdue time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	timedOut = s.timedOut
	if !s.logged.IsZero() {
		overdue = time.Since(s.start)
	}
	s.start, s.rec, s.timedOut = time.Time{}, nil, false
	return timedOut, overdue
}

// callWithDeadline runs the handler on rec under the attempt deadline d:
// through the lane's slot when ctx has one, else with its own timeout. A
// call that fails after its deadline passed fails with ErrAttemptTimeout.
func (g *Group) callWithDeadline(ctx context.Context, rec *kgo.Record, d time.Duration) error {
	s, _ := ctx.Value(slotKey{}).(*callSlot)
	if s == nil {
		actx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		err := g.handle(actx, rec)
		if err != nil && ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w (%s): %w", ErrAttemptTimeout, d, err)
		}
		return err
	}
	err := g.handle(s.begin(rec, d), rec)
	timedOut, overdue := s.end()
	if overdue > 0 {
		g.log.Warn("overdue handler returned", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset,
			"took", overdue.Round(time.Millisecond))
	}
	if err != nil && timedOut && ctx.Err() == nil {
		err = fmt.Errorf("%w (%s): %w", ErrAttemptTimeout, d, err)
	}
	return err
}

// callBatch runs the batch handler on recs under the attempt deadline,
// through the partition's slot. Records a batch failed, for its deadline
// too, go through the failure policy one by one (retried alone with
// Handle): the deadline is not theirs, so their errors are not
// ErrAttemptTimeout.
func (g *Group) callBatch(ctx context.Context, bh BatchHandler, recs []*kgo.Record) ([]error, error) {
	s, _ := ctx.Value(slotKey{}).(*callSlot)
	if d := g.cfg.policy.AttemptTimeout; d > 0 && s != nil {
		bctx := s.begin(recs[0], d)
		defer func() {
			if _, overdue := s.end(); overdue > 0 {
				g.log.Warn("overdue batch handler returned", "topic", recs[0].Topic, "partition", recs[0].Partition,
					"records", len(recs), "took", overdue.Round(time.Millisecond))
			}
		}()
		return g.handleBatch(bctx, bh, recs)
	}
	return g.handleBatch(ctx, bh, recs)
}

// watch is the watchdog of the slots: it cancels calls older than the
// attempt timeout d and logs, at error level, calls still running d after
// that (a handler that ignores its context, which Go cannot stop: its
// partition and, through the batch barrier, the member's polls wait for
// it), again every minute. It exits when no slot is left.
func (g *Group) watch() {
	d := g.cfg.policy.AttemptTimeout
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		g.slotMu.Lock()
		if len(g.slots) == 0 {
			g.watching = false
			g.slotMu.Unlock()
			return
		}
		slots := make([]*callSlot, 0, len(g.slots))
		for s := range g.slots {
			slots = append(slots, s)
		}
		g.slotMu.Unlock()
		now := time.Now()
		next := d
		for _, s := range slots {
			s.mu.Lock()
			if !s.start.IsZero() {
				age := now.Sub(s.start)
				switch {
				case !s.timedOut && age >= d:
					s.timedOut = true
					s.cancel(ErrAttemptTimeout)
					next = min(next, d)
				case !s.timedOut:
					next = min(next, d-age)
				case age >= 2*d && (s.logged.IsZero() || now.Sub(s.logged) >= time.Minute):
					s.logged = now
					g.log.Error("handler has not returned after its context ended: it ignores ctx; its partition and the group's polls wait for it",
						"topic", s.rec.Topic, "partition", s.rec.Partition, "offset", s.rec.Offset, "attempt_timeout", d,
						"running", age.Round(time.Millisecond))
					next = min(next, time.Minute)
				case s.logged.IsZero():
					next = min(next, 2*d-age)
				}
			}
			s.mu.Unlock()
		}
		t.Reset(max(next, time.Millisecond))
		select {
		case <-t.C:
		case <-g.wake:
			t.Stop()
		}
	}
}

// ErrAttemptTimeout marks a handler call that failed after its deadline
// (FailurePolicy.AttemptTimeout) passed. It is transient but not retried
// in place: the record goes to the next retry level, or to the dead-letter
// topic with reason "timeout".
var ErrAttemptTimeout = errors.New("consumers: handler call exceeded its attempt timeout")
