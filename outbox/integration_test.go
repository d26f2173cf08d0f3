package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Environment of a relay child process (see TestMain).
const (
	childEnv         = "ORCHESTRIX_OUTBOX_CHILD"
	childSchemaEnv   = "ORCHESTRIX_OUTBOX_CHILD_SCHEMA"
	childTopicEnv    = "ORCHESTRIX_OUTBOX_CHILD_TOPIC"
	childInstanceEnv = "ORCHESTRIX_OUTBOX_CHILD_INSTANCE"
	childLeaseEnv    = "ORCHESTRIX_OUTBOX_CHILD_LEASE"
	childStatsEnv    = "ORCHESTRIX_OUTBOX_CHILD_STATS"
	// childProfileEnv names a file for a CPU profile that the child
	// starts on SIGUSR1 and ends when it exits.
	childProfileEnv = "ORCHESTRIX_OUTBOX_CHILD_CPUPROFILE"
)

// TestMain runs the test binary as a relay process when childEnv is set,
// so tests can kill -9, SIGSTOP and SIGCONT a real relay process.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(relayChild())
	}
	os.Exit(m.Run())
}

// relayChild runs a relay until SIGTERM or SIGINT, logging to stderr.
func relayChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	fail := func(err error) int { log.Error("relay child", "err", err); return 1 }
	if path := os.Getenv(childProfileEnv); path != "" {
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		var mu sync.Mutex
		var f *os.File
		go func() {
			<-usr1
			mu.Lock()
			defer mu.Unlock()
			if f, _ = os.Create(path); f != nil {
				_ = pprof.StartCPUProfile(f)
			}
		}()
		defer func() {
			mu.Lock()
			defer mu.Unlock()
			if f != nil {
				pprof.StopCPUProfile()
				f.Close()
			}
		}()
	}
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	store, err := postgres.New(ctx, pool, postgres.WithSchema(os.Getenv(childSchemaEnv)))
	if err != nil {
		return fail(err)
	}
	lease, err := time.ParseDuration(os.Getenv(childLeaseEnv))
	if err != nil {
		lease = outbox.DefaultLease
	}
	every, err := time.ParseDuration(os.Getenv(childStatsEnv))
	if err != nil {
		every = time.Second
	}
	r, err := outbox.NewRelay(store, strings.Split(os.Getenv("KAFKA_BROKERS"), ","),
		outbox.ToTopic(os.Getenv(childTopicEnv)), outbox.Instance(os.Getenv(childInstanceEnv)),
		outbox.Lease(lease), outbox.WithLogger(log), outbox.ReportStats(every, nil), outbox.WithClientOpts(benchClientOpts()...))
	if err != nil {
		return fail(err)
	}
	if err := r.Run(ctx); err != nil {
		return fail(err)
	}
	cpu := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}, {Name: "/cpu/classes/total:cpu-seconds"}, {Name: "/cpu/classes/idle:cpu-seconds"}}
	metrics.Read(cpu)
	busy := cpu[1].Value.Float64() - cpu[2].Value.Float64()
	log.Info("relay child stopped", "cpu_seconds", busy, "gc_cpu_seconds", cpu[0].Value.Float64(), "gc_share", cpu[0].Value.Float64()/busy)
	return 0
}

// child is a relay process.
type child struct {
	cmd  *exec.Cmd
	log  string
	name string
	done chan struct{}
}

func startChild(t testing.TB, schema, topic, instance string, lease time.Duration, env ...string) *child {
	t.Helper()
	logPath := fmt.Sprintf("%s/%s.log", t.TempDir(), instance)
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	testenv.OwnProcessGroup(cmd) // stays stopped when SIGSTOPped, whatever happens to the test's own group
	cmd.Env = append(os.Environ(), childEnv+"=1", childSchemaEnv+"="+schema, childTopicEnv+"="+topic,
		childInstanceEnv+"="+instance, childLeaseEnv+"="+lease.String())
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, log: logPath, name: instance, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(c.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-c.done
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			t.Logf("last lines of %s:\n%s", instance, strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
	})
	return c
}

func (c *child) signal(t testing.TB, s syscall.Signal) {
	t.Helper()
	// Process.Signal, not syscall.Kill on the PID: once the child has
	// been reaped, its PID may be another process's.
	if err := c.cmd.Process.Signal(s); err != nil {
		t.Fatalf("signal %v to %s: %v", s, c.name, err)
	}
}

// stop ends the child with SIGTERM and waits for it.
func (c *child) stop(t testing.TB) {
	t.Helper()
	c.signal(t, syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(time.Minute):
		t.Fatalf("%s did not stop within a minute after SIGTERM", c.name)
	}
	if code := c.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("%s exited with %d", c.name, code)
	}
}

func (c *child) logText() string {
	b, _ := os.ReadFile(c.log)
	return string(b)
}

// env is one integration test's database schema, store and topic.
type env struct {
	pool   *pgxpool.Pool
	store  *postgres.Store
	schema string
	seeds  []string
	topic  string
}

// newEnv makes a migrated schema, its store and an events topic; the
// relay's checkpoint topic is deleted when the test or benchmark ends.
func newEnv(t testing.TB, partitions int32) *env {
	t.Helper()
	pool := testenv.Pool(t)
	seeds := testenv.Brokers(t)
	store := pgtest.Store(t, pool)
	schema := store.Schema()
	topic := testenv.Topic(t, seeds, partitions, nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
		if err == nil {
			defer cl.Close()
			_, _ = kadm.NewClient(cl).DeleteTopics(ctx, topic+outbox.CheckpointSuffix, topic+outbox.DeadLetterSuffix)
		}
	})
	return &env{pool: pool, store: store, schema: schema, seeds: seeds, topic: topic}
}

// committed returns every event in the events table: exactly what was
// committed, nothing rolled back.
func (e *env) committed(t testing.TB) map[string]expected {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), "SELECT id, stream_id, version FROM "+pgx.Identifier{e.schema, "events"}.Sanitize())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]expected{}
	for rows.Next() {
		var id, stream string
		var v int64
		if err := rows.Scan(&id, &stream, &v); err != nil {
			t.Fatal(err)
		}
		out[id] = expected{stream, uint64(v)}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// explainMissing logs, for each committed event missing from got, where
// it is in the log (tx/position) against the relay's checkpoint: an event
// before the checkpoint was skipped by the relay, one after it was
// committed after the relay stopped reading.
func (e *env) explainMissing(t testing.TB, got []published, checkpoint stores.Cursor) {
	t.Helper()
	seen := map[string]bool{}
	for _, p := range got {
		seen[p.ID] = true
	}
	rows, err := e.pool.Query(context.Background(), "SELECT id, tx_id::text, position FROM "+pgx.Identifier{e.schema, "events"}.Sanitize()+" ORDER BY tx_id, position")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var last stores.Cursor
	n := 0
	for rows.Next() {
		var id, tx string
		var pos int64
		if err := rows.Scan(&id, &tx, &pos); err != nil {
			t.Fatal(err)
		}
		x, _ := strconv.ParseUint(tx, 10, 64)
		c := stores.Cursor{Tx: x, Position: uint64(pos)}
		last = c
		if seen[id] {
			continue
		}
		where := "after"
		if c.Tx < checkpoint.Tx || (c.Tx == checkpoint.Tx && c.Position <= checkpoint.Position) {
			where = "at or before"
		}
		if n++; n <= 20 {
			t.Logf("missing %s at %s: %s the relay's checkpoint %s", id, c, where, checkpoint)
		}
	}
	if n > 0 {
		t.Logf("%d events missing; the log ends at %s, the relay's checkpoint is %s", n, last, checkpoint)
	}
}

// lastCursor returns the cursor of the last event in log order.
func (e *env) lastCursor(t testing.TB) stores.Cursor {
	t.Helper()
	var tx string
	var pos int64
	err := e.pool.QueryRow(context.Background(), "SELECT ev.tx_id::text, ev.position FROM "+pgx.Identifier{e.schema, "events"}.Sanitize()+" AS ev ORDER BY ev.tx_id DESC, ev.position DESC LIMIT 1").Scan(&tx, &pos)
	if errors.Is(err, pgx.ErrNoRows) {
		return stores.Cursor{}
	}
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.ParseUint(tx, 10, 64)
	return stores.Cursor{Tx: n, Position: uint64(pos)}
}

// relay returns a relay on the env's store with test-friendly options.
func (e *env) relay(t testing.TB, instance string, opts ...outbox.Option) *outbox.Relay {
	t.Helper()
	base := []outbox.Option{outbox.ToTopic(e.topic), outbox.Instance(instance), outbox.WithLogger(testLogger(t)), outbox.Lease(2 * time.Second)}
	r, err := outbox.NewRelay(e.store, e.seeds, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// waitCaughtUp waits until r's committed checkpoint reaches the last event;
// if it does not, it reports what holds the read horizon.
func (e *env) waitCaughtUp(t testing.TB, r *outbox.Relay, d time.Duration) {
	t.Helper()
	// The last cursor is read again each time: a writer whose commit was
	// cut short by its cancelled context may still commit on the server
	// after the load has stopped.
	last := e.lastCursor(t)
	deadline := time.Now().Add(d)
	for r.Stats().Checkpoint.Events != last {
		if last = e.lastCursor(t); r.Stats().Checkpoint.Events == last {
			break
		}
		if time.Now().After(deadline) {
			var xmin string
			_ = e.pool.QueryRow(context.Background(), "SELECT pg_snapshot_xmin(pg_current_snapshot())::text").Scan(&xmin)
			var holders []string
			rows, err := e.pool.Query(context.Background(), `SELECT pid::text || ' ' || coalesce(application_name, '') || ' ' || state || ' xid ' || coalesce(backend_xid::text, '-') || ' since ' || coalesce((now() - xact_start)::text, '-') || ': ' || left(query, 80)
				FROM pg_stat_activity WHERE backend_xid IS NOT NULL OR backend_xmin IS NOT NULL ORDER BY xact_start LIMIT 10`)
			if err == nil {
				holders, _ = pgx.CollectRows(rows, pgx.RowTo[string])
			}
			t.Fatalf("relay did not reach %s within %s: stats %+v; horizon (xmin) %s; oldest transactions:\n%s",
				last, d, r.Stats(), xmin, strings.Join(holders, "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// event returns one test event.
func event(id string) orchestrix.Event {
	return orchestrix.Event{Metadata: orchestrix.Metadata{ID: id, Type: "Happened", Source: "/test"}, Data: []byte(`{}`), ContentType: "application/json"}
}

// load appends events from writers goroutines until ctx ends or n
// events are committed (n ≤ 0: no limit), at most rate events/s (≤ 0: no
// limit): transactions of 1-maxBatch events on random streams of prefix,
// a tenth of them rolled back. It returns counters of the events committed
// and rolled back, and a function waiting for the writers.
//
// When wait returns, every transaction of the writers has ended on the
// server: a transaction is never cut short by ctx (a COMMIT cancelled on
// the client may still commit on the server a moment later, after the
// test checked that the relay caught up: TestPostgresRestartIntegration
// and TestKafkaRestartIntegration then missed that last transaction's
// events, one run in five).
func load(ctx context.Context, t testing.TB, e *env, prefix string, writers, streams, maxBatch, n int, rate float64) (committed, rolledBack *atomic.Int64, wait func()) {
	committed, rolledBack = new(atomic.Int64), new(atomic.Int64)
	var wg sync.WaitGroup
	var seq atomic.Int64
	start := time.Now()
	seed := testenv.Seed(t)
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), seed))
			for ctx.Err() == nil && (n <= 0 || committed.Load() < int64(n)) {
				size := 1 + rng.IntN(maxBatch)
				evs := make([]orchestrix.Event, size)
				for i := range evs {
					evs[i] = event(fmt.Sprintf("%s-%d", prefix, seq.Add(1)))
				}
				stream := fmt.Sprintf("%s-s%04d", prefix, rng.IntN(streams))
				rollback := rng.IntN(10) == 0
				tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
				err := pgx.BeginFunc(tctx, e.pool, func(tx pgx.Tx) error {
					if _, err := e.store.AppendTx(tctx, tx, []stores.AppendRequest{{StreamID: stream, Expected: stores.Any, Events: evs}}); err != nil {
						return err
					}
					if rollback {
						return errRollback
					}
					return nil
				})
				cancel()
				switch {
				case errors.Is(err, errRollback):
					rolledBack.Add(int64(size))
				case err == nil:
					committed.Add(int64(size))
				case errors.Is(err, stores.ErrConflict) || ctx.Err() != nil:
				default:
					var pe interface{ SQLState() string }
					if errors.As(err, &pe) && pe.SQLState() == "23505" { // lost a race on the stream: retry
						continue
					}
					t.Errorf("load: %v", err)
					return
				}
				if rate > 0 {
					due := start.Add(time.Duration(float64(committed.Load()+rolledBack.Load()) / rate * float64(time.Second)))
					time.Sleep(time.Until(due))
				}
			}
		})
	}
	return committed, rolledBack, wg.Wait
}

var errRollback = errors.New("rollback on purpose")

// TestReverseCommitIntegration opens several transactions at once,
// commits them in reverse (or random) order, rolls some back, 1000 times,
// while the relay runs: every committed event is relayed exactly once and
// in stream order, no rolled-back one is; likewise the outbox messages
// the same transactions write.
func TestReverseCommitIntegration(t *testing.T) {
	e := newEnv(t, 4)
	cmdTopic := testenv.Topic(t, e.seeds, 2, nil)
	w, err := outbox.NewWriter(e.schema)
	if err != nil {
		t.Fatal(err)
	}
	r := e.relay(t, "reverse")
	stop := runRelay(t, r)
	ctx := t.Context()

	const rounds, workers = 1000, 4
	wantMsgs := map[string]expected{}
	var mu sync.Mutex
	var rolledBack atomic.Int64
	var wg sync.WaitGroup
	for wk := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(wk), 7))
			for round := wk; round < rounds; round += workers {
				k := 2 + rng.IntN(3)
				streams := rng.Perm(10)[:k] // distinct streams: concurrent transactions must not wait on each other
				txs := make([]pgx.Tx, k)
				msgs := make([]map[string]expected, k)
				for i := range txs {
					tx, err := e.pool.Begin(ctx)
					if err != nil {
						t.Error(err)
						return
					}
					txs[i] = tx
					stream := fmt.Sprintf("w%d-s%d", wk, streams[i])
					n := 1 + rng.IntN(3)
					evs := make([]orchestrix.Event, n)
					for j := range evs {
						evs[j] = event(fmt.Sprintf("r%d-t%d-e%d", round, i, j))
					}
					res, err := e.store.AppendTx(ctx, tx, []stores.AppendRequest{{StreamID: stream, Expected: stores.Any, Events: evs}})
					if err != nil {
						t.Error(err)
						return
					}
					if rng.IntN(2) == 0 {
						cmd := orchestrix.Command{Metadata: orchestrix.Metadata{ID: fmt.Sprintf("r%d-t%d-cmd", round, i), Type: "Do", Source: "/saga", Time: time.Now()},
							AggregateID: stream, Data: []byte(`{}`), ContentType: "application/json"}
						if err := w.WriteCommands(ctx, tx, cmdTopic, cmd); err != nil {
							t.Error(err)
							return
						}
						msgs[i] = map[string]expected{cmd.ID: {stream, res[0].ToVersion}}
					}
				}
				order := make([]int, k)
				for i := range order {
					order[i] = k - 1 - i // reverse
				}
				if round%2 == 1 {
					rng.Shuffle(k, func(i, j int) { order[i], order[j] = order[j], order[i] })
				}
				for _, i := range order {
					if rng.IntN(5) == 0 {
						if err := txs[i].Rollback(ctx); err != nil {
							t.Error(err)
							return
						}
						rolledBack.Add(1)
						continue
					}
					if err := txs[i].Commit(ctx); err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for id, x := range msgs[i] {
						wantMsgs[id] = x
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	want := e.committed(t)
	e.waitCaughtUp(t, r, 2*time.Minute)
	waitFor(t, time.Minute, "outbox messages", func() bool { return r.Stats().Messages == uint64(len(wantMsgs)) })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	verify(t, readTopic(t, e.seeds, e.topic), want)
	verifyMessages(t, readTopic(t, e.seeds, cmdTopic), wantMsgs)
	t.Logf("%d rounds: %d events and %d outbox messages committed, %d transactions rolled back; relay stats %+v",
		rounds, len(want), len(wantMsgs), rolledBack.Load(), r.Stats())
}

// verifyMessages checks outbox commands: each once, none else, each
// aggregate's in the order of the stream versions written with them.
func verifyMessages(t testing.TB, got []published, want map[string]expected) {
	t.Helper()
	seen := map[string]bool{}
	last := map[string]uint64{}
	for _, p := range got {
		w, ok := want[p.ID]
		if !ok || seen[p.ID] {
			t.Fatalf("message %s: unexpected or duplicate (known %v)", p.ID, ok)
		}
		seen[p.ID] = true
		if w.version <= last[w.stream] {
			t.Fatalf("messages of %s out of order: %d after %d", w.stream, w.version, last[w.stream])
		}
		last[w.stream] = w.version
	}
	if len(seen) != len(want) {
		t.Fatalf("%d of %d messages published", len(seen), len(want))
	}
}

// longHold is how long TestLongTransactionIntegration holds its
// transaction open (3s with -short). The xmin horizon is cluster-wide:
// while it is held, every gap-safe reader on the same PostgreSQL cluster
// (other packages' tests too) stalls with it.
func longHold() time.Duration {
	if testing.Short() {
		return 3 * time.Second
	}
	return 30 * time.Second
}

// TestLongTransactionIntegration holds a transaction open during load,
// between two appends of one stream (the trap of DESIGN §5): the relay
// publishes what committed below it, holds back what committed above it
// (never skipping it), and publishes it once the long transaction ends;
// the long transaction's own event and outbox message are published too.
func TestLongTransactionIntegration(t *testing.T) {
	e := newEnv(t, 4)
	cmdTopic := testenv.Topic(t, e.seeds, 1, nil)
	w, err := outbox.NewWriter(e.schema)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	publishedAt := map[string]time.Time{}
	r := e.relay(t, "long", outbox.OnCommit(func(c outbox.Commit) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		for _, rec := range c.Records {
			for _, h := range rec.Headers {
				if h.Key == "ce_id" {
					publishedAt[string(h.Value)] = now
				}
			}
		}
	}))
	isPublished := func(id string) bool { mu.Lock(); defer mu.Unlock(); _, ok := publishedAt[id]; return ok }
	stop := runRelay(t, r)
	ctx := t.Context()

	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	_, _, waitLoad := load(loadCtx, t, e, "bg", 2, 50, 5, 0, 1000)

	if _, err := e.store.Append(ctx, "trap", stores.NoStream, []orchestrix.Event{event("trap-1")}); err != nil {
		t.Fatal(err)
	}
	long, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = long.Rollback(context.Background()) }()
	if _, err := e.store.AppendTx(ctx, long, []stores.AppendRequest{{StreamID: "long", Expected: stores.NoStream, Events: []orchestrix.Event{event("long-1")}}}); err != nil {
		t.Fatal(err)
	}
	cmd := orchestrix.Command{Metadata: orchestrix.Metadata{ID: "long-cmd", Type: "Do", Source: "/saga", Time: time.Now()}, AggregateID: "long", Data: []byte(`{}`)}
	if err := w.WriteCommands(ctx, long, cmdTopic, cmd); err != nil {
		t.Fatal(err)
	}
	// trap-2 commits after the long transaction took its ID: it stays
	// behind the horizon until the long transaction ends.
	if _, err := e.store.Append(ctx, "trap", stores.Exact(1), []orchestrix.Event{event("trap-2")}); err != nil {
		t.Fatal(err)
	}
	holdStart := time.Now()
	waitFor(t, time.Minute, "trap-1 published", func() bool { return isPublished("trap-1") })
	time.Sleep(longHold() - time.Since(holdStart))
	if isPublished("trap-2") || isPublished("long-1") {
		t.Fatalf("an event above the horizon was published while the long transaction was open")
	}
	published := r.Stats().Events
	if err := long.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	ended := time.Now()
	waitFor(t, time.Minute, "trap-2 published", func() bool { return isPublished("trap-2") && isPublished("long-1") })
	mu.Lock()
	delay := publishedAt["trap-2"].Sub(ended)
	mu.Unlock()
	t.Logf("held %s; %d events published during the hold; the held-back events were published %s after the long transaction committed",
		time.Since(holdStart).Round(time.Millisecond), published, delay.Round(time.Millisecond))

	time.Sleep(500 * time.Millisecond)
	stopLoad()
	waitLoad()
	e.waitCaughtUp(t, r, 2*time.Minute)
	waitFor(t, time.Minute, "the long transaction's outbox message", func() bool { return r.Stats().Messages == 1 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	verify(t, readTopic(t, e.seeds, e.topic), e.committed(t))
	verifyMessages(t, readTopic(t, e.seeds, cmdTopic), map[string]expected{"long-cmd": {"long", 1}})
}

// killLoad is the number of events TestKillNineIntegration appends, and
// over how long: long enough for 20+ relay processes to be killed while
// it runs.
func killLoad() (int, time.Duration) {
	if testing.Short() {
		return 20_000, 20 * time.Second
	}
	return 100_000, 25 * time.Second
}

// TestKillNineIntegration kills relay processes with SIGKILL (20+ times)
// during a load of 100k events: in the end every committed event is in the
// topic exactly once, in stream order, and no rolled-back one.
func TestKillNineIntegration(t *testing.T) {
	e := newEnv(t, 8)
	ctx := t.Context()
	n, over := killLoad()
	committed, rolledBack, waitLoad := load(ctx, t, e, "k", 4, 500, 40, n, float64(n)/over.Seconds())
	loadDone := make(chan struct{})
	go func() { waitLoad(); close(loadDone) }()

	rng := rand.New(rand.NewPCG(1, testenv.Seed(t)))
	kills := 0
	for done := false; !done || kills < 20; kills++ {
		c := startChild(t, e.schema, e.topic, fmt.Sprintf("k%02d", kills), 2*time.Second)
		// Alive 0.3–1.5s: some die while starting, most mid-transaction.
		time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		c.signal(t, syscall.SIGKILL)
		<-c.done
		select {
		case <-loadDone:
			done = true
		default:
		}
	}
	if t.Failed() {
		return
	}
	r := e.relay(t, "final")
	stop := runRelay(t, r)
	e.waitCaughtUp(t, r, 2*time.Minute)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got := readTopic(t, e.seeds, e.topic)
	verify(t, got, e.committed(t))
	by := map[string]int{}
	for _, p := range got {
		by[p.Instance]++
	}
	aborted := len(readTopicIsolation(t, e.seeds, e.topic, kgo.ReadUncommitted())) - len(got)
	t.Logf("%d kills; %d events committed, %d rolled back; published by instance: %v; %d records of transactions cut by a kill were aborted (read_uncommitted consumers would see them)",
		kills, committed.Load(), rolledBack.Load(), by, aborted)
}

// TestFencingIntegration starts two relay processes, pauses the leader
// (SIGSTOP) until the standby has taken over, then resumes it (SIGCONT):
// nothing from the paused leader is committed after the takeover, and
// every event is in the topic exactly once.
func TestFencingIntegration(t *testing.T) {
	e := newEnv(t, 4)
	ctx := t.Context()
	const lease = 2 * time.Second
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	_, _, waitLoad := load(loadCtx, t, e, "f", 2, 100, 10, 0, 2000)

	// A background read_committed consumer notes who published.
	var mu sync.Mutex
	firstFrom := map[string]time.Time{}
	cl := testenv.Client(t, e.seeds, kgo.ConsumeTopics(e.topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.FetchMaxWait(100*time.Millisecond))
	go func() {
		for {
			fs := cl.PollFetches(ctx)
			if ctx.Err() != nil || fs.IsClientClosed() {
				return
			}
			now := time.Now()
			fs.EachRecord(func(r *kgo.Record) {
				for _, h := range r.Headers {
					if h.Key == outbox.InstanceHeader {
						mu.Lock()
						if _, ok := firstFrom[string(h.Value)]; !ok {
							firstFrom[string(h.Value)] = now
						}
						mu.Unlock()
					}
				}
			})
		}
	}()
	seen := func(inst string) bool { mu.Lock(); defer mu.Unlock(); _, ok := firstFrom[inst]; return ok }

	a := startChild(t, e.schema, e.topic, "A", lease)
	waitFor(t, time.Minute, "A publishing", func() bool { return seen("A") })
	b := startChild(t, e.schema, e.topic, "B", lease)
	time.Sleep(2 * time.Second) // B is a standby now
	if seen("B") {
		t.Fatal("B published while A was leader")
	}
	a.signal(t, syscall.SIGSTOP)
	stopped := time.Now()
	waitFor(t, time.Minute, "B to take over", func() bool { return seen("B") })
	t.Logf("B took over %s after A was paused (lease %s)", time.Since(stopped).Round(time.Millisecond), lease)
	a.signal(t, syscall.SIGCONT)
	waitFor(t, time.Minute, "A to notice it lost", func() bool { return strings.Contains(a.logText(), "stepping down") })
	time.Sleep(2 * time.Second) // let A try, and B publish on
	stopLoad()
	waitLoad()

	// B is leader; wait until it has published everything, as seen in
	// the checkpoint topic, then stop both. The last cursor is read again
	// each time: a writer whose commit was cut short by its cancelled
	// context may still commit after the load stopped (a CI run saw B's
	// checkpoint pass a last cursor read once).
	waitFor(t, 2*time.Minute, "B to reach the last event", func() bool {
		return checkpointOf(t, e.seeds, e.topic) == e.lastCursor(t)
	})
	a.stop(t)
	b.stop(t)

	got := readTopic(t, e.seeds, e.topic)
	verify(t, got, e.committed(t))
	maxA, minB := map[int32]int64{}, map[int32]int64{}
	count := map[string]int{}
	for _, p := range got {
		count[p.Instance]++
		switch p.Instance {
		case "A":
			maxA[p.Partition] = max(maxA[p.Partition], p.Offset)
		case "B":
			if o, ok := minB[p.Partition]; !ok || p.Offset < o {
				minB[p.Partition] = p.Offset
			}
		default:
			t.Fatalf("record from unknown instance %q", p.Instance)
		}
	}
	for part, o := range minB {
		if a, ok := maxA[part]; ok && a > o {
			t.Errorf("partition %d: A committed offset %d after B's first record at %d", part, a, o)
		}
	}
	if !strings.Contains(a.logText(), "stepping down") {
		t.Errorf("A's log does not show it stepping down")
	}
	t.Logf("published by A %d, by B %d", count["A"], count["B"])
}

// checkpointOf reads the last committed events checkpoint of topic's
// relay (read_committed).
func checkpointOf(t testing.TB, seeds []string, topic string) stores.Cursor {
	t.Helper()
	var c stores.Cursor
	for _, p := range readTopicRaw(t, seeds, topic+outbox.CheckpointSuffix) {
		if string(p.Key) == "events" {
			var err error
			if c, err = stores.ParseCursor(string(p.Value)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return c
}

// readTopicRaw reads a one-partition topic's committed records up to its
// last stable offset.
func readTopicRaw(t testing.TB, seeds []string, topic string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	adm := kadm.NewClient(testenv.Client(t, seeds))
	ends, err := adm.ListCommittedOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	end, ok := ends.Lookup(topic, 0)
	if !ok || end.Offset == 0 {
		return nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords(), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %s: %v", topic, ctx.Err())
		}
		done := false
		fs.EachRecord(func(r *kgo.Record) {
			if !r.Attrs.IsControl() {
				out = append(out, r)
			}
			if r.Offset >= end.Offset-1 {
				done = true
			}
		})
		if done {
			return out
		}
	}
}

// TestPostgresRestartIntegration terminates the relay's database sessions
// (its pool and its lock connection, as a PostgreSQL restart would)
// several times during load: the relay recovers by itself and every event
// is published exactly once.
func TestPostgresRestartIntegration(t *testing.T) {
	e := newEnv(t, 4)
	ctx := t.Context()
	app := testenv.Name("relaypool")
	cfg, err := pgxpool.ParseConfig(testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	relayStore, err := postgres.New(ctx, pool, postgres.WithSchema(e.schema))
	if err != nil {
		t.Fatal(err)
	}
	var recovered atomic.Int64
	r, err := outbox.NewRelay(relayStore, e.seeds, outbox.ToTopic(e.topic), outbox.Instance(app), outbox.Lease(2*time.Second),
		outbox.WithLogger(testLogger(t)), outbox.OnError(func(error) { recovered.Add(1) }))
	if err != nil {
		t.Fatal(err)
	}
	stop := runRelay(t, r)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	_, _, waitLoad := load(loadCtx, t, e, "p", 2, 100, 10, 0, 3000)

	terminated := 0
	for range 5 {
		time.Sleep(1500 * time.Millisecond)
		var n int
		err := e.pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE application_name IN ($1, $2) AND pid <> pg_backend_pid()`, app, "orchestrix-relay "+app).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		terminated += n
	}
	time.Sleep(time.Second)
	stopLoad()
	waitLoad()
	e.waitCaughtUp(t, r, 2*time.Minute)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got := readTopic(t, e.seeds, e.topic)
	e.explainMissing(t, got, r.Stats().Checkpoint.Events)
	verify(t, got, e.committed(t))
	if recovered.Load() == 0 {
		t.Errorf("terminated %d backends, yet the relay reported no recovered error", terminated)
	}
	t.Logf("terminated %d backends; the relay recovered from %d errors; stats %+v", terminated, recovered.Load(), r.Stats())
}

// TestKafkaRestartIntegration kills its own Kafka broker (kill -9, a
// single-node KRaft broker started for this test from the jars
// scripts/services.sh caches, so the shared one is left alone) during
// load, mid-transaction, and restarts it: the relay recovers by itself and every
// event is published exactly once, in stream order. (Often the relay sees
// no error at all: the producer retries until the broker is back, and the
// transaction, in the broker's transaction log, survives.)
func TestKafkaRestartIntegration(t *testing.T) {
	broker := testenv.OwnBroker(t)
	e := newEnv(t, 4)
	e.seeds = broker.Seeds()
	e.topic = testenv.Topic(t, e.seeds, 4, nil)
	ctx := t.Context()
	var recovered atomic.Int64
	r := e.relay(t, "kafka-restart", outbox.OnError(func(error) { recovered.Add(1) }),
		// Give up on a dead broker's requests soon, as a deployment
		// would with its own timeouts.
		outbox.WithClientOpts(kgo.RequestTimeoutOverhead(2*time.Second), kgo.RetryTimeout(5*time.Second)))
	stop := runRelay(t, r)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	_, _, waitLoad := load(loadCtx, t, e, "kr", 2, 100, 10, 0, 2000)
	time.Sleep(2 * time.Second)
	before := r.Stats().Events
	broker.Kill(t)
	t.Logf("killed the broker after %d events", before)
	time.Sleep(500 * time.Millisecond)
	broker.Start(t)
	waitFor(t, time.Minute, "the relay publishing again", func() bool { return r.Stats().Events > before })
	time.Sleep(time.Second)
	stopLoad()
	waitLoad()
	e.waitCaughtUp(t, r, 2*time.Minute)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got := readTopic(t, e.seeds, e.topic)
	e.explainMissing(t, got, r.Stats().Checkpoint.Events)
	verify(t, got, e.committed(t))
	t.Logf("the relay recovered from %d errors; stats %+v", recovered.Load(), r.Stats())
}

// TestTakeoverLagIntegration: a relay that takes over from a checkpoint
// reports its lag from that checkpoint, not from position 0 (its first
// reports showed every event in the store as lag until it committed).
func TestTakeoverLagIntegration(t *testing.T) {
	e := newEnv(t, 1)
	ctx := t.Context()
	for i := range 50 {
		if _, err := e.store.Append(ctx, fmt.Sprintf("s-%d", i), stores.NoStream, []orchestrix.Event{event(fmt.Sprintf("lag-%d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	first := e.relay(t, "first")
	stop := runRelay(t, first)
	e.waitCaughtUp(t, first, time.Minute)
	if err := stop(); err != nil {
		t.Fatalf("first relay: %v", err)
	}

	reports := make(chan outbox.Stats, 100)
	second := e.relay(t, "second", outbox.ReportStats(20*time.Millisecond, func(s outbox.Stats) {
		select {
		case reports <- s:
		default:
		}
	}))
	stop = runRelay(t, second)
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("second relay: %v", err)
		}
	}()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case s := <-reports:
			if !s.Leader || s.LagEvents < 0 {
				continue
			}
			if s.LagEvents != 0 {
				t.Fatalf("first report as leader over a published store: lag %d events, want 0 (stats %+v)", s.LagEvents, s)
			}
			return
		case <-deadline:
			t.Fatal("no report as leader within 30s")
		}
	}
}
