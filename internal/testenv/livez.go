package testenv

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/service"
)

// Livez runs w under service.Run with /livez served at liveTimeout until
// the test ends, and returns a function that GETs /livez (status, body).
// It is how a test checks a worker's heartbeat the way a probe does.
func Livez(t testing.TB, w service.Worker, liveTimeout time.Duration) func() (int, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	addrC := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- service.Run(ctx, service.Options{Addr: "127.0.0.1:0", LiveTimeout: liveTimeout,
			OnListen: func(a string) { addrC <- a }}, service.Named("worker", w))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("service.Run: %v", err)
		}
	})
	var addr string
	select {
	case addr = <-addrC:
	case err := <-done:
		t.Fatalf("service.Run returned at once: %v", err)
	}
	return func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + "/livez")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}
