package exampleapp

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Sending is a driver's paced sender, running in its own goroutine while
// the driver reads what became of what it sent (see [Pace]).
type Sending struct {
	errc     chan error
	timeout  time.Duration
	done     bool
	deadline time.Time
}

// Pace calls send(ctx, i) for i from 0 to n-1 at rate calls a second, in
// a goroutine of its own, stopping at the first error or when ctx ends.
// The driver's reading loop asks [Sending.Over] after each poll.
// timeout is how long the driver waits for outcomes after the last send.
func Pace(ctx context.Context, rate float64, n int, timeout time.Duration, send func(ctx context.Context, i int) error) *Sending {
	s := &Sending{errc: make(chan error, 1), timeout: timeout}
	go func() {
		tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer tick.Stop()
		for i := range n {
			select {
			case <-ctx.Done():
				s.errc <- ctx.Err()
				return
			case <-tick.C:
			}
			if err := send(ctx, i); err != nil {
				s.errc <- err
				return
			}
		}
		s.errc <- nil
	}()
	return s
}

// Over returns the sender's error if it failed, and whether the wait for
// outcomes is over: the sender finished more than the timeout ago. It
// does not block; call it from one goroutine.
func (s *Sending) Over() (bool, error) {
	if s.done {
		return time.Now().After(s.deadline), nil
	}
	select {
	case err := <-s.errc:
		if err != nil {
			return true, err
		}
		s.done, s.deadline = true, time.Now().Add(s.timeout)
	default:
	}
	return false, nil
}

// Poll polls cl for at most d, so that a driver's loop gets to check
// [Sending.Over] between polls; the error is ctx's once ctx has ended.
func Poll(ctx context.Context, cl *kgo.Client, d time.Duration) (kgo.Fetches, error) {
	pctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	fs := cl.PollFetches(pctx)
	return fs, ctx.Err()
}
