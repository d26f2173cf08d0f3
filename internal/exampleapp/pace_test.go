package exampleapp

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// TestPace: every item is sent at the rate; the wait is over the timeout
// after the last send, or at once when a send fails.
func TestPace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sent []time.Duration
		start := time.Now()
		s := Pace(t.Context(), 10, 3, time.Second, func(_ context.Context, i int) error {
			sent = append(sent, time.Since(start))
			return nil
		})
		synctest.Wait()
		if over, err := s.Over(); over || err != nil {
			t.Fatalf("before any send: over %v, %v", over, err)
		}
		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		if over, err := s.Over(); over || err != nil || len(sent) != 3 {
			t.Fatalf("after the last send: over %v, %v, sent %v", over, err, sent)
		}
		if want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond}; sent[0] != want[0] || sent[2] != want[2] {
			t.Errorf("sent at %v, want %v", sent, want)
		}
		time.Sleep(time.Second + time.Millisecond)
		if over, err := s.Over(); !over || err != nil {
			t.Fatalf("a timeout after the last send: over %v, %v", over, err)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		boom := errors.New("boom")
		s := Pace(t.Context(), 10, 3, time.Minute, func(context.Context, int) error { return boom })
		time.Sleep(150 * time.Millisecond)
		synctest.Wait()
		if over, err := s.Over(); !over || !errors.Is(err, boom) {
			t.Fatalf("a failed send: over %v, %v", over, err)
		}
	})
}
