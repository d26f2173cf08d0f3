package service_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/service"
)

// beater is a worker with a heartbeat the test sets.
type beater struct {
	beat  atomic.Int64
	drain chan struct{}
}

func (b *beater) Heartbeat() time.Time { return time.Unix(0, b.beat.Load()) }
func (b *beater) Run(ctx context.Context) error {
	<-ctx.Done()
	<-b.drain
	return nil
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHealth: /livez follows the workers' heartbeats, not their
// dependencies; /readyz follows the checks and fails once the shutdown
// began; /metrics serves the given handler.
func TestHealth(t *testing.T) {
	b := &beater{drain: make(chan struct{})}
	b.beat.Store(time.Now().UnixNano())
	var dbDown atomic.Bool
	addrC := make(chan string, 1)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- service.Run(ctx, service.Options{
			Addr: "127.0.0.1:0", OnListen: func(a string) { addrC <- a }, LiveTimeout: time.Minute,
			Ready: []service.Check{{Name: "postgres", Check: func(context.Context) error {
				if dbDown.Load() {
					return errors.New("connection refused")
				}
				return nil
			}}},
			Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "orchestrix_up 1\n") }),
		}, service.Named("processor", b))
	}()
	base := "http://" + <-addrC
	if code, body := get(t, base+"/livez"); code != 200 || !strings.Contains(body, "processor") {
		t.Fatalf("/livez = %d %s", code, body)
	}
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz = %d, want 200", code)
	}
	if code, body := get(t, base+"/metrics"); code != 200 || body != "orchestrix_up 1\n" {
		t.Fatalf("/metrics = %d %q", code, body)
	}
	// A dependency down: not ready, still live.
	dbDown.Store(true)
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "connection refused") {
		t.Fatalf("/readyz with the database down = %d %s, want 503 naming the error", code, body)
	}
	if code, _ := get(t, base+"/livez"); code != 200 {
		t.Fatalf("/livez with the database down = %d, want 200 (an outage is no reason to restart)", code)
	}
	dbDown.Store(false)
	// A stuck loop: not live.
	b.beat.Store(time.Now().Add(-2 * time.Minute).UnixNano())
	if code, body := get(t, base+"/livez"); code != 503 || !strings.Contains(body, "stuck") {
		t.Fatalf("/livez with a stale heartbeat = %d %s, want 503 stuck", code, body)
	}
	b.beat.Store(time.Now().UnixNano())
	// Shutting down: not ready while the worker drains.
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, _ := get(t, base+"/readyz")
		if code == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz still 200 during the shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(b.drain)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestHealthAddressInUse: Run fails at once, before starting any worker.
func TestHealthAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	started := false
	err = service.Run(t.Context(), service.Options{Addr: ln.Addr().String()}, service.WorkerFunc(func(ctx context.Context) error { started = true; return nil }))
	if err == nil || started {
		t.Fatalf("Run on a busy address = %v, worker started %v; want an error and no worker", err, started)
	}
}
