package service_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/orchestrix/orchestrix/service"
)

// untilDone is a well-behaved worker: it runs until ctx ends, then takes
// drain to stop.
func untilDone(drain time.Duration, stopped *bool) service.Worker {
	return service.WorkerFunc(func(ctx context.Context) error {
		<-ctx.Done()
		time.Sleep(drain)
		*stopped = true
		return nil
	})
}

func TestRun(t *testing.T) {
	boom := errors.New("boom")
	t.Run("clean shutdown", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			var a, b bool
			if err := service.Run(ctx, service.Options{}, untilDone(time.Second, &a), untilDone(2*time.Second, &b)); err != nil {
				t.Fatal(err)
			}
			if !a || !b {
				t.Fatal("Run returned before every worker stopped")
			}
		})
	})
	t.Run("a failure stops the others", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var a bool
			start := time.Now()
			err := service.Run(t.Context(), service.Options{},
				service.Named("steady", untilDone(time.Second, &a)),
				service.Named("relay", service.WorkerFunc(func(ctx context.Context) error { time.Sleep(5 * time.Second); return boom })))
			if !errors.Is(err, boom) || !strings.Contains(err.Error(), "relay: boom") || !a {
				t.Fatalf("err = %v, steady stopped %v; want relay's boom, steady stopped", err, a)
			}
			if d := time.Since(start); d != 6*time.Second {
				t.Fatalf("took %s, want 6s (fail at 5s, drain 1s)", d)
			}
		})
	})
	t.Run("a worker that stops early is a failure", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var a bool
			err := service.Run(t.Context(), service.Options{}, untilDone(0, &a),
				service.Named("quitter", service.WorkerFunc(func(context.Context) error { return nil })))
			if !errors.Is(err, service.ErrStoppedEarly) || !strings.Contains(err.Error(), "quitter") || !a {
				t.Fatalf("err = %v; want quitter stopped early, the other stopped", err)
			}
		})
	})
	t.Run("shutdown timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			var a bool
			release := make(chan struct{})
			defer close(release)
			err := service.Run(ctx, service.Options{ShutdownTimeout: 10 * time.Second}, untilDone(0, &a),
				service.Named("stuck", service.WorkerFunc(func(context.Context) error { <-release; return nil })))
			if !errors.Is(err, service.ErrShutdownTimeout) || !strings.Contains(err.Error(), "stuck") {
				t.Fatalf("err = %v; want a shutdown timeout naming stuck", err)
			}
		})
	})
	t.Run("canceled after shutdown is clean", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := service.Run(ctx, service.Options{}, service.WorkerFunc(func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })); err != nil {
			t.Fatalf("err = %v, want nil", err)
		}
	})
}
