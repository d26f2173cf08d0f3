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
// the test ends, and returns a probe of its /livez: how a test checks a
// worker's heartbeat the way an orchestrator does. ready are the
// service's readiness checks (/readyz: Probe.Ready).
func Livez(t testing.TB, w service.Worker, liveTimeout time.Duration, ready ...service.Check) *Probe {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	addrC := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- service.Run(ctx, service.Options{Addr: "127.0.0.1:0", LiveTimeout: liveTimeout, Ready: ready,
			OnListen: func(a string) { addrC <- a }}, service.Named("worker", w))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("service.Run: %v", err)
		}
	})
	select {
	case addr := <-addrC:
		return &Probe{t: t, url: "http://" + addr + "/livez", readyURL: "http://" + addr + "/readyz"}
	case err := <-done:
		t.Fatalf("service.Run returned at once: %v", err)
		return nil
	}
}

// Probe GETs a worker's /livez (see Livez).
type Probe struct {
	t             testing.TB
	url, readyURL string
}

// Get returns /livez's status code and body.
func (p *Probe) Get() (int, string) {
	p.t.Helper()
	resp, err := http.Get(p.url)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Ready returns /readyz's status code and body.
func (p *Probe) Ready() (int, string) {
	p.t.Helper()
	resp, err := http.Get(p.readyURL)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Holds fails the test unless /livez answers code throughout d (asked
// every 100ms).
func (p *Probe) Holds(code int, d time.Duration, what string) {
	p.t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if got, body := p.Get(); got != code {
			p.t.Fatalf("%s: /livez = %d %s, want %d throughout %s", what, got, body, code, d)
		}
	}
}

// Await fails the test unless /livez answers code within d, and returns
// how long that took and the body.
func (p *Probe) Await(code int, d time.Duration, what string) (time.Duration, string) {
	p.t.Helper()
	start := time.Now()
	for {
		got, body := p.Get()
		if got == code {
			return time.Since(start), body
		}
		if time.Since(start) > d {
			p.t.Fatalf("%s: /livez = %d %s after %s, want %d", what, got, body, d, code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
