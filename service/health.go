package service

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Heartbeater is an optional Worker interface: Heartbeat returns when the
// worker's loop last went round (a poll returned, an idle wait ended).
// /livez fails when a worker's heartbeat is older than
// Options.LiveTimeout: a loop stuck in a call that never returns is the
// failure a restart cures. Brokers and databases being unreachable is
// not: a worker waiting for them still beats, so an outage does not turn
// into a restart storm.
type Heartbeater interface {
	Heartbeat() time.Time
}

// Check is a readiness check: a dependency reachable, migrations applied.
type Check struct {
	Name  string
	Check func(ctx context.Context) error
}

// DefaultLiveTimeout is the heartbeat age at which /livez fails.
const DefaultLiveTimeout = 2 * time.Minute

// health serves /livez, /readyz and /metrics for a Run.
type health struct {
	opts     Options
	workers  []Worker
	running  []atomic.Bool
	stopping atomic.Bool
	srv      *http.Server
	ln       net.Listener
	wg       sync.WaitGroup
}

func newHealth(opts Options, workers []Worker) (*health, error) {
	h := &health{opts: opts, workers: workers, running: make([]atomic.Bool, len(workers))}
	// Running from the start: the endpoints answer before Run has started
	// the workers' goroutines, and a /livez probe in between must not see
	// a worker "stopped" (found by internal/lifecycletest).
	for i := range h.running {
		h.running[i].Store(true)
	}
	if h.opts.LiveTimeout <= 0 {
		h.opts.LiveTimeout = DefaultLiveTimeout
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("service: health endpoints on %s: %w", opts.Addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", h.livez)
	mux.HandleFunc("GET /readyz", h.readyz)
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", opts.Metrics)
	}
	h.ln, h.srv = ln, &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	h.wg.Go(func() { _ = h.srv.Serve(ln) })
	return h, nil
}

// Addr returns the address the endpoints listen on.
func (h *health) addr() string { return h.ln.Addr().String() }

func (h *health) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = h.srv.Shutdown(ctx)
	h.wg.Wait()
}

type report struct {
	Status  string            `json:"status"`
	Workers map[string]string `json:"workers,omitempty"`
	Checks  map[string]string `json:"checks,omitempty"`
}

func reply(w http.ResponseWriter, ok bool, r report) {
	w.Header().Set("Content-Type", "application/json")
	r.Status = "ok"
	if !ok {
		r.Status = "failing"
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(r)
}

// livez: every worker still runs and, where it beats, beat recently.
func (h *health) livez(w http.ResponseWriter, _ *http.Request) {
	ok := true
	rep := report{Workers: map[string]string{}}
	now := time.Now()
	for i, wk := range h.workers {
		name := nameOf(i, wk)
		state := "running"
		if !h.running[i].Load() {
			state, ok = "stopped", ok && h.stopping.Load()
		} else if hb, beats := unwrap(wk).(Heartbeater); beats {
			if age := now.Sub(hb.Heartbeat()); age > h.opts.LiveTimeout {
				state, ok = fmt.Sprintf("stuck: last heartbeat %s ago", age.Round(time.Second)), false
			} else {
				state = fmt.Sprintf("running, heartbeat %s ago", age.Round(time.Millisecond))
			}
		}
		rep.Workers[name] = state
	}
	reply(w, ok, rep)
}

// readyz: not shutting down, and every check passes within 2 seconds.
func (h *health) readyz(w http.ResponseWriter, r *http.Request) {
	ok := !h.stopping.Load()
	rep := report{Checks: map[string]string{}}
	if !ok {
		rep.Checks["shutdown"] = "shutting down"
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	for _, c := range h.opts.Ready {
		if err := c.Check(ctx); err != nil {
			ok = false
			rep.Checks[c.Name] = err.Error()
		} else {
			rep.Checks[c.Name] = "ok"
		}
	}
	reply(w, ok, rep)
}

func unwrap(w Worker) Worker {
	if n, ok := w.(named); ok {
		return n.w
	}
	return w
}
