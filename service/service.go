// Package service runs the workers of one service — aggregate
// processors, the outbox relay, saga and projection consumers: anything
// with a Run(ctx) error — under one lifecycle, from a user's own main:
//
//	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//	defer stop()
//	err := service.Run(ctx, service.Options{ShutdownTimeout: 30 * time.Second},
//		service.Named("processor", group), service.Named("relay", relay))
//
// Every worker runs until ctx ends (SIGTERM): then each drains and
// returns, and Run returns once all have. The first worker that fails —
// returns an error, or returns at all before the shutdown — cancels the
// others (errgroup semantics), so a service never runs on with a part of
// it silently gone: an orchestrator sees the process exit and restarts
// it.
package service

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"
)

// Worker is one long-running part of a service. Run blocks until ctx
// ends, drains, and returns nil on a clean shutdown.
type Worker interface {
	Run(ctx context.Context) error
}

// WorkerFunc is a function that is a Worker.
type WorkerFunc func(ctx context.Context) error

// Run calls f.
func (f WorkerFunc) Run(ctx context.Context) error { return f(ctx) }

type named struct {
	name string
	w    Worker
}

func (n named) Run(ctx context.Context) error { return n.w.Run(ctx) }

// Named gives w a name for Run's errors.
func Named(name string, w Worker) Worker { return named{name, w} }

func nameOf(i int, w Worker) string {
	if n, ok := w.(named); ok {
		return n.name
	}
	return fmt.Sprintf("worker %d (%T)", i, w)
}

// Options configures Run.
type Options struct {
	// ShutdownTimeout bounds the wait for the workers once the shutdown
	// began (ctx ended or a worker failed); 0 waits as long as they take.
	// Workers still running then are reported in the error and left
	// behind: set it below the orchestrator's grace period
	// (terminationGracePeriodSeconds) so the process reports them before
	// it is killed.
	ShutdownTimeout time.Duration
	// Addr, when set (e.g. ":8080"), serves the service's health for
	// probes: /livez from the workers themselves (running, and a recent
	// heartbeat where a worker is a Heartbeater), /readyz from Ready and
	// the shutdown (failing once it began), and /metrics from Metrics. Run
	// fails at once when it cannot listen there.
	Addr string
	// Ready are the readiness checks served at /readyz.
	Ready []Check
	// Metrics serves /metrics (for example promhttp.Handler() of a
	// Prometheus registry); nil: no /metrics.
	Metrics http.Handler
	// LiveTimeout is the heartbeat age at which /livez fails (default
	// DefaultLiveTimeout).
	LiveTimeout time.Duration
	// OnListen, when set, is called with the address the endpoints listen
	// on (useful with Addr ":0").
	OnListen func(addr string)
}

// ErrStoppedEarly reports a worker that returned nil before the
// shutdown: a service with a part silently gone is a failure.
var ErrStoppedEarly = errors.New("service: worker stopped before the shutdown")

// ErrShutdownTimeout reports workers still running when
// Options.ShutdownTimeout ran out.
var ErrShutdownTimeout = errors.New("service: workers did not stop in time")

// Run runs workers until ctx ends or one fails; see the package doc. It
// returns nil when every worker returned nil after ctx ended, and
// otherwise the failures joined, each with its worker's name.
func Run(ctx context.Context, opts Options, workers ...Worker) error {
	if len(workers) == 0 {
		return nil
	}
	var h *health
	if opts.Addr != "" {
		var err error
		if h, err = newHealth(opts, workers); err != nil {
			return err
		}
		defer h.close()
		if opts.OnListen != nil {
			opts.OnListen(h.addr())
		}
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(workers))
	for i, w := range workers {
		if h != nil {
			h.running[i].Store(true)
		}
		go func() {
			err := w.Run(runCtx)
			if h != nil {
				h.running[i].Store(false)
			}
			if err == nil && runCtx.Err() == nil {
				err = ErrStoppedEarly
			}
			results <- result{i, err}
		}()
	}
	var (
		errs    = map[int]error{}
		running = len(workers)
		timeout <-chan time.Time
	)
	done := make([]bool, len(workers))
	startShutdown := func() {
		if h != nil {
			h.stopping.Store(true)
		}
		if timeout == nil && opts.ShutdownTimeout > 0 {
			timeout = time.After(opts.ShutdownTimeout)
		}
		cancel()
	}
	ctxDone := ctx.Done()
	for running > 0 {
		select {
		case r := <-results:
			running--
			done[r.i] = true
			if r.err != nil && !(errors.Is(r.err, context.Canceled) && runCtx.Err() != nil) {
				errs[r.i] = fmt.Errorf("%s: %w", nameOf(r.i, workers[r.i]), r.err)
				startShutdown()
			}
		case <-ctxDone:
			ctxDone = nil
			startShutdown()
		case <-timeout:
			var left []string
			for i, d := range done {
				if !d {
					left = append(left, nameOf(i, workers[i]))
				}
			}
			errs[-1] = fmt.Errorf("%w after %s: %v", ErrShutdownTimeout, opts.ShutdownTimeout, left)
			running = 0
		}
	}
	keys := make([]int, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var out []error
	for _, k := range keys {
		out = append(out, errs[k])
	}
	return errors.Join(out...)
}
