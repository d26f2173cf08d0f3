package otel_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/orchestrix/orchestrix/topics"
	orxotel "github.com/orchestrix/orchestrix/tracing/otel"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// benchMode is one way of running the pipeline: without tracing, or
// traced with a sampler.
type benchMode struct {
	name string
	// sampler: nil means no tracing at all (no middleware, no hooks, no
	// traceparent on the commands).
	sampler sdktrace.Sampler
	// sampled is the flag of the commands' traceparents (what the
	// sending service decided).
	sampled bool
	opts    []orxotel.Option
}

// BenchmarkPipelineTracing measures the command pipeline (command
// processor → memory store → relay to the events topic, and a projection
// of the store) with tracing off, with a sampler that drops (parent
// based; the senders did not sample: the usual production setting),
// the same with SkipUnsampled, and
// with every span recorded and exported (to a no-op exporter through the
// SDK's batch span processor). Each round preloads TRACE_BENCH_COMMANDS
// commands (default 20,000, over 1,000 accounts) and times the pipeline
// from the projection's first commit until the relay published and the
// projection applied every event. After a warm-up round, the modes are
// interleaved, TRACE_BENCH_ROUNDS rounds (default 3), and the medians
// compared:
//
//	go test -run '^$' -bench PipelineTracing -benchtime 1x ./tracing/otel/
//
// With TRACE_BENCH_REAL=1 it runs on the real broker and PostgreSQL
// (event store and projection backend; a fresh schema per round).
func BenchmarkPipelineTracing(b *testing.B) {
	n := envInt("TRACE_BENCH_COMMANDS", 20000)
	rounds := envInt("TRACE_BENCH_ROUNDS", 3)
	seeds := testenv.FakeBrokers(b)
	real := os.Getenv("TRACE_BENCH_REAL") == "1"
	var pool *pgxpool.Pool
	if real {
		seeds, pool = testenv.Brokers(b), testenv.Pool(b)
	}
	modes := []benchMode{
		{name: "off"},
		{name: "drop", sampler: sdktrace.ParentBased(sdktrace.NeverSample())},
		{name: "drop-skip", sampler: sdktrace.ParentBased(sdktrace.NeverSample()), opts: []orxotel.Option{orxotel.SkipUnsampled()}},
		{name: "always", sampler: sdktrace.AlwaysSample(), sampled: true},
	}
	if v := os.Getenv("TRACE_BENCH_MODES"); v != "" {
		modes = slices.DeleteFunc(modes, func(m benchMode) bool { return !slices.Contains(strings.Split(v, ","), m.name) })
	}
	rates, cpus := map[string][]float64{}, map[string][]float64{}
	for range b.N {
		// A warm-up round, not counted: the first round pays for
		// connections, caches and the broker's first topics.
		res := pipelineRate(b, seeds, pool, modes[0], n)
		b.Logf("warm-up %-6s %8.0f commands/s", modes[0].name, res.rate)
		for r := range rounds {
			for i := range modes {
				m := modes[(i+r)%len(modes)] // rotate: no mode always runs first
				res := pipelineRate(b, seeds, pool, m, n)
				rates[m.name] = append(rates[m.name], res.rate)
				cpus[m.name] = append(cpus[m.name], res.cpu)
				b.Logf("round %d %-6s %8.0f commands/s %6.1f µs CPU per command", r, m.name, res.rate, res.cpu)
			}
		}
	}
	off, offCPU := median(rates["off"]), median(cpus["off"])
	for _, m := range modes {
		rate, cpu := median(rates[m.name]), median(cpus[m.name])
		b.ReportMetric(rate, "cmd/s-"+m.name)
		b.ReportMetric(cpu, "µsCPU/cmd-"+m.name)
		if m.name != "off" && off > 0 {
			b.ReportMetric(rate/off, "ratio-"+m.name)
			b.Logf("median %-6s %8.0f commands/s = %.3fx off (throughput overhead %.1f%%); CPU %.1f µs/command = %.3fx off",
				m.name, rate, rate/off, 100*(1-rate/off), cpu, cpu/offCPU)
		}
	}
}

func hooked(name string) bool {
	v := os.Getenv("TRACE_BENCH_HOOKS")
	return v == "" || slices.Contains(strings.Split(v, ","), name)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// result is one round's figures: commands/s, and the process's CPU time
// (the in-process kfake broker's included) per command in µs.
type result struct{ rate, cpu float64 }

// processCPU returns the process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pipelineRate preloads n commands, runs the pipeline in mode m until
// every event is published and projected, and returns its figures.
// With pool, the store and the projection are PostgreSQL's (a fresh
// schema per round); without, the memory ones.
func pipelineRate(b *testing.B, seeds []string, pool *pgxpool.Pool, m benchMode, n int) result {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bc := testenv.Name("tb")
	reg := testdomain.Registry(b)
	cl, err := producers.NewClient(seeds, kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	group := bc + "-aggregates"
	specs := append(topics.ForContext(bc, 4, 1), topics.Spec{Name: consumers.DeadLetterTopic(topics.Commands(bc), group), Partitions: 1, ReplicationFactor: 1})
	adm := kadm.NewClient(cl)
	if _, err := topics.Ensure(ctx, adm, specs...); err != nil {
		b.Fatal(err)
	}
	defer func() {
		names := make([]string, len(specs))
		for i, s := range specs {
			names[i] = s.Name
		}
		_, _ = adm.DeleteTopics(context.Background(), names...)
	}()
	preload(b, ctx, cl, reg, bc, m, n)

	var tr *orxotel.Tracer
	var popts []aggregates.ProcessorOption
	var h consumers.Handler
	ropts := []outbox.Option{outbox.ToTopic(topics.Events(bc)), outbox.Instance(bc)}
	// The clock starts at the projection's first commit, so that the
	// groups' joins (which vary by hundreds of milliseconds) are not
	// measured: steady-state throughput.
	var first time.Time
	var firstN int
	var cpu0 time.Duration
	var mu sync.Mutex
	project := func(c projections.Commit) {
		mu.Lock()
		if first.IsZero() && len(c.Events) > 0 {
			first, firstN, cpu0 = time.Now(), len(c.Events), processCPU()
		}
		mu.Unlock()
		if tr != nil && hooked("projection") {
			tr.Projection(c)
		}
	}
	jopts := []projections.Option{projections.OnCommit(project)}
	if m.sampler != nil {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(m.sampler), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		tr = orxotel.New(append(m.opts, orxotel.WithTracerProvider(tp))...)
		// TRACE_BENCH_HOOKS (default all) picks the hooks, to find what
		// costs: any of mw, append, relay, projection, comma-separated.
		if hooked("append") {
			popts = append(popts, aggregates.OnAppend(tr.Append))
		}
		if hooked("relay") {
			ropts = append(ropts, outbox.OnCommit(tr.Relay))
		}
	}
	var store interface {
		stores.EventStore
		outbox.Source
	} = memory.New()
	var runner interface {
		Run(context.Context) error
		WaitForNonStale(context.Context) error
	}
	if pool != nil {
		pg := pgtest.Store(b, pool)
		back, err := projections.NewPostgres(pool, pg.Schema())
		if err != nil {
			b.Fatal(err)
		}
		store = pg
		if runner, err = projections.New("bench", back, projections.FromStore(store), func(context.Context, pgx.Tx, projections.Batch) error { return nil }, jopts...); err != nil {
			b.Fatal(err)
		}
	} else if runner, err = projections.New("bench", projections.NewMemory(), projections.FromStore(store), countEvents, jopts...); err != nil {
		b.Fatal(err)
	}
	repo, err := aggregates.NewRepository(testdomain.Aggregate(b), store, reg, "/"+bc)
	if err != nil {
		b.Fatal(err)
	}
	proc, err := aggregates.NewProcessor(repo, popts...)
	if err != nil {
		b.Fatal(err)
	}
	h = proc
	if tr != nil && hooked("mw") {
		h = consumers.Chain(proc, tr.Middleware(group))
	}
	g, err := consumers.New(seeds, group, []string{topics.Commands(bc)}, h)
	if err != nil {
		b.Fatal(err)
	}
	relay, err := outbox.NewRelay(store, seeds, ropts...)
	if err != nil {
		b.Fatal(err)
	}

	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{g.Run, relay.Run, runner.Run} {
		wg.Go(func() { _ = run(runCtx) })
	}
	for relay.Stats().Events < uint64(n) {
		if ctx.Err() != nil {
			b.Fatalf("%s: relay published %d of %d events", m.name, relay.Stats().Events, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := runner.WaitForNonStale(ctx); err != nil {
		b.Fatal(err)
	}
	end, cpu := time.Now(), processCPU()
	stop()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	return result{rate: float64(n-firstN) / end.Sub(first).Seconds(), cpu: float64((cpu - cpu0).Microseconds()) / float64(n-firstN)}
}

// preload produces n commands over 1,000 accounts (an Open, then
// credits), with a traceparent per command when m traces.
func preload(b *testing.B, ctx context.Context, cl *kgo.Client, reg *codec.Registry, bc string, m benchMode, n int) {
	b.Helper()
	sender, err := producers.NewSender(cl, reg, topics.Commands(bc), "/bench")
	if err != nil {
		b.Fatal(err)
	}
	const accounts = 1000
	recs := make([]*kgo.Record, 0, n)
	for i := range n {
		id := fmt.Sprintf("acct-%04d", i%accounts)
		var p any = testdomain.Post{Amount: 1}
		if i < accounts {
			p = testdomain.Open{Name: id}
		}
		c, err := sender.Command(id, p)
		if err != nil {
			b.Fatal(err)
		}
		if m.sampler != nil {
			c.TraceParent = randomTraceParent(m.sampled)
		}
		r, err := codec.CommandToRecord(topics.Commands(bc), c)
		if err != nil {
			b.Fatal(err)
		}
		recs = append(recs, r)
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		b.Fatal(err)
	}
}

func randomTraceParent(sampled bool) string {
	var ids [24]byte
	_, _ = rand.Read(ids[:])
	flags := "00"
	if sampled {
		flags = "01"
	}
	return "00-" + hex.EncodeToString(ids[:16]) + "-" + hex.EncodeToString(ids[16:]) + "-" + flags
}
