package projections_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
)

// Environment of a projection child process (see TestMain).
const (
	childEnv       = "ORCHESTRIX_PROJECTION_CHILD"
	childSchemaEnv = "ORCHESTRIX_PROJECTION_CHILD_SCHEMA"
	// childStopEnv makes the child SIGSTOP itself inside the transaction
	// of its Nth batch, after the checkpoint update and before the commit.
	childStopEnv = "ORCHESTRIX_PROJECTION_CHILD_STOP_AT"
	// childTopicEnv makes the child read this topic instead of the store.
	childTopicEnv = "ORCHESTRIX_PROJECTION_CHILD_TOPIC"
	// childBatchEnv sets the child's BatchSize (default 700): the kill
	// tests use small batches so that a catch-up lasts long enough to be
	// killed midway however quiet the machine is.
	childBatchEnv = "ORCHESTRIX_PROJECTION_CHILD_BATCH"
	childLease    = 2 * time.Second
)

// TestMain runs the test binary as a projection process when childEnv is
// set, so tests can kill -9, SIGSTOP and SIGCONT a real owner.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(projectionChild())
	}
	os.Exit(m.Run())
}

func projectionChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	fail := func(err error) int { log.Error("projection child", "err", err); return 1 }
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	schema := os.Getenv(childSchemaEnv)
	store, err := postgres.New(ctx, pool, postgres.WithSchema(schema))
	if err != nil {
		return fail(err)
	}
	back, err := projections.NewPostgres(pool, schema, projections.Views("streams"), projections.TxIdleTimeout(childLease))
	if err != nil {
		return fail(err)
	}
	batch, err := strconv.Atoi(os.Getenv(childBatchEnv))
	if err != nil {
		batch = 700
	}
	opts := []projections.Option{projections.Shards(2), projections.Lease(childLease), projections.BatchSize(batch), projections.WithLogger(log),
		projections.Instance(strconv.Itoa(os.Getpid())), projections.Setup(pgSetup(schema))}
	if n, err := strconv.Atoi(os.Getenv(childStopEnv)); err == nil {
		batches := 0
		opts = append(opts, projections.BeforeCommit(func(ctx context.Context, version, shard int) error {
			if batches++; batches == n {
				log.Info("stopping myself inside a batch transaction")
				_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
				time.Sleep(100 * time.Millisecond) // the stop lands within this
				log.Info("resumed; committing")
			}
			return nil
		}))
	}
	src := projections.FromStore(store)
	if topic := os.Getenv(childTopicEnv); topic != "" {
		src = projections.FromTopic(strings.Split(os.Getenv("KAFKA_BROKERS"), ","), topic)
	}
	r, err := projections.New("counts", back, src, pgHandler(schema), opts...)
	if err != nil {
		return fail(err)
	}
	if err := r.Run(ctx); err != nil {
		return fail(err)
	}
	return 0
}

// pgSetup creates a version's tables: streams_vN (one row per stream)
// and totals_vN (every applied event counted once, unchecked: a double
// apply shows there).
func pgSetup(schema string) func(ctx context.Context, tx pgx.Tx, version int) error {
	return func(ctx context.Context, tx pgx.Tx, version int) error {
		q := pgx.Identifier{schema}.Sanitize() + "."
		_, err := tx.Exec(ctx, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %[1]s%[2]s (stream_id text PRIMARY KEY, count bigint NOT NULL, last bigint NOT NULL, sum bigint NOT NULL);
			CREATE TABLE IF NOT EXISTS %[1]s%[3]s (id int PRIMARY KEY, applied bigint NOT NULL);
			INSERT INTO %[1]s%[3]s VALUES (1, 0) ON CONFLICT DO NOTHING`, q, projections.VersionTable("streams", version), projections.VersionTable("totals", version)))
		return err
	}
}

// pgHandler applies a batch with one multi-row upsert: per stream the
// row moves from last to last+count only if last is where the batch's
// first event continues it (else the handler fails: a skip or a double
// apply is loud).
func pgHandler(schema string) projections.Handler[pgx.Tx] {
	return func(ctx context.Context, tx pgx.Tx, b projections.Batch) error {
		type agg struct {
			first, last uint64
			count, sum  int64
		}
		per := map[string]*agg{}
		var order []string
		for _, e := range b.Events {
			if e.Type == "Poison" {
				return fmt.Errorf("cannot apply %s", e.Type)
			}
			a := per[e.StreamID]
			if a == nil {
				a = &agg{first: e.Version, last: e.Version - 1}
				per[e.StreamID] = a
				order = append(order, e.StreamID)
			}
			if e.Version != a.last+1 {
				return fmt.Errorf("stream %s: version %d after %d in one batch", e.StreamID, e.Version, a.last)
			}
			a.last, a.count, a.sum = e.Version, a.count+1, a.sum+int64(len(e.Data))
		}
		ids := make([]string, len(order))
		counts, lasts, sums := make([]int64, len(order)), make([]int64, len(order)), make([]int64, len(order))
		for i, id := range order {
			a := per[id]
			ids[i], counts[i], lasts[i], sums[i] = id, a.count, int64(a.last), a.sum
		}
		q := pgx.Identifier{schema}.Sanitize() + "."
		tag, err := tx.Exec(ctx, `INSERT INTO `+q+b.Table("streams")+` AS t (stream_id, count, last, sum)
			SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
			ON CONFLICT (stream_id) DO UPDATE SET count = t.count + excluded.count, last = excluded.last, sum = t.sum + excluded.sum
			WHERE t.last = excluded.last - excluded.count`, ids, counts, lasts, sums)
		if err != nil {
			return err
		}
		if int(tag.RowsAffected()) != len(ids) {
			return fmt.Errorf("%d of %d streams did not continue where the read model was (skip or double apply)", len(ids)-int(tag.RowsAffected()), len(ids))
		}
		// Versions start at 1: count = last unless an event was skipped.
		var bad int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM "+q+b.Table("streams")+" WHERE stream_id = ANY($1) AND count <> last", ids).Scan(&bad); err != nil {
			return err
		}
		if bad > 0 {
			return fmt.Errorf("%d streams would skip an event", bad)
		}
		_, err = tx.Exec(ctx, "UPDATE "+q+b.Table("totals")+" SET applied = applied + $1", len(b.Events))
		return err
	}
}

// modelRow is one stream's expected row.
type modelRow struct{ count, last, sum int64 }

// pgOracle computes the model from the events table, independently.
func pgOracle(t testing.TB, pool *pgxpool.Pool, schema string) map[string]modelRow {
	t.Helper()
	return pgRows(t, pool, "SELECT stream_id, count(*), max(version), sum(length(data)) FROM "+pgx.Identifier{schema}.Sanitize()+".events WHERE type <> 'Poison' GROUP BY stream_id")
}

func pgModel(t testing.TB, pool *pgxpool.Pool, schema, table string) map[string]modelRow {
	t.Helper()
	return pgRows(t, pool, "SELECT stream_id, count, last, sum FROM "+pgx.Identifier{schema}.Sanitize()+"."+table)
}

func pgRows(t testing.TB, pool *pgxpool.Pool, sql string) map[string]modelRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), sql)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]modelRow{}
	for rows.Next() {
		var id string
		var r modelRow
		if err := rows.Scan(&id, &r.count, &r.last, &r.sum); err != nil {
			t.Fatal(err)
		}
		out[id] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func diffModels(want, got map[string]modelRow) string {
	var b strings.Builder
	n := 0
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			if n++; n <= 5 {
				fmt.Fprintf(&b, "stream %s: want %+v, got %+v (present %v)\n", k, w, g, ok)
			}
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			if n++; n <= 5 {
				fmt.Fprintf(&b, "stream %s: not in the log\n", k)
			}
		}
	}
	if n > 0 {
		fmt.Fprintf(&b, "%d streams differ (%d expected, %d in the model)", n, len(want), len(got))
	}
	return b.String()
}

func totalApplied(t testing.TB, pool *pgxpool.Pool, schema string, version int) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), "SELECT applied FROM "+pgx.Identifier{schema}.Sanitize()+"."+projections.VersionTable("totals", version)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func countEvents(t testing.TB, pool *pgxpool.Pool, schema string) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+pgx.Identifier{schema}.Sanitize()+".events").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// seed appends n events over streams streams, 1,000 per AppendMany.
func seed(t testing.TB, store *postgres.Store, prefix string, n, streams int) {
	t.Helper()
	per := n / streams
	for done := 0; done < streams; {
		var reqs []stores.AppendRequest
		for ; done < streams && len(reqs)*per < 1000; done++ {
			reqs = append(reqs, stores.AppendRequest{StreamID: fmt.Sprintf("%s-%d", prefix, done), Expected: stores.Any, Events: events(per, "Counted")})
		}
		if _, err := store.AppendMany(context.Background(), reqs); err != nil {
			t.Fatal(err)
		}
	}
}

func events(n int, typ string) []orchestrix.Event {
	evs := make([]orchestrix.Event, n)
	for i := range evs {
		evs[i] = orchestrix.Event{Metadata: orchestrix.Metadata{Type: typ, Source: "/test", Time: time.Now()}, ContentType: "application/json",
			Data: []byte(fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", i%7)))}
	}
	return evs
}

// reverseWriters appends, round after round until ctx ends, from several
// transactions committed in the reverse order of their first writes, one
// of them rolled back, and one kept open across rounds: the gap-safe read
// must still apply every committed event once and no rolled-back one.
func reverseWriters(ctx context.Context, t testing.TB, pool *pgxpool.Pool, store *postgres.Store) <-chan int {
	done := make(chan int, 1)
	go func() {
		round := 0
		defer func() { done <- round }()
		for ; ctx.Err() == nil; round++ {
			var txs []pgx.Tx
			// Whatever happens, no transaction is left open: an open one
			// keeps its connection, and the pool's Close waits forever.
			abandon := func() {
				for _, tx := range txs {
					_ = tx.Rollback(context.Background())
				}
			}
			for w := range 4 {
				tx, err := pool.Begin(ctx)
				if err != nil {
					abandon()
					return
				}
				txs = append(txs, tx)
				if _, err := store.AppendTx(ctx, tx, []stores.AppendRequest{{StreamID: fmt.Sprintf("w%d-r%d", w, round), Expected: stores.NoStream, Events: events(3, "Counted")}}); err != nil {
					abandon()
					if ctx.Err() == nil {
						t.Errorf("append tx: %v", err)
					}
					return
				}
			}
			time.Sleep(time.Duration(rand.IntN(50)) * time.Millisecond)
			_ = txs[1].Rollback(context.Background())
			for i := len(txs) - 1; i >= 0; i-- {
				if i == 1 {
					continue
				}
				if err := txs[i].Commit(context.Background()); err != nil && ctx.Err() == nil {
					t.Errorf("commit: %v", err)
				}
				time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			}
		}
	}()
	return done
}

// child is a projection process.
type child struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startChild(t testing.TB, schema string, env ...string) *child {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "child-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	testenv.OwnProcessGroup(cmd) // stays stopped when SIGSTOPped, whatever happens to the test's own group
	cmd.Env = append(os.Environ(), childEnv+"=1", childSchemaEnv+"="+schema)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, log: f.Name(), done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(c.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-c.done
		if t.Failed() {
			b, _ := os.ReadFile(c.log)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			t.Logf("last lines of child %d:\n%s", cmd.Process.Pid, strings.Join(lines[max(0, len(lines)-20):], "\n"))
		}
	})
	return c
}

func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	<-c.done
}

func (c *child) logText() string {
	b, _ := os.ReadFile(c.log)
	return string(b)
}

// waitCaughtUp polls until version's totals count every event of the log
// (less the poison ones) and every shard's lag is 0.
func waitCaughtUp(t testing.TB, pool *pgxpool.Pool, back *projections.Postgres, schema string, version int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := back.Status(context.Background(), "counts")
		if err == nil {
			lag := int64(0)
			found := false
			for _, s := range st {
				if s.Version == version {
					found = true
					lag += s.LagEvents
				}
			}
			if found && lag == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("v%d not caught up within %s: %+v", version, within, st)
			}
		} else if time.Now().After(deadline) {
			t.Fatalf("status: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestCatchUpKillNineIntegration: a projection process catching up 100k
// events (two shards) is killed -9 at random points, restarted each time,
// while concurrent writers commit in reverse order (one rolling back);
// the final read model equals the one computed independently from the
// events table and every event was applied exactly once (totals).
func TestCatchUpKillNineIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	store := pgtest.Store(t, pool)
	schema := store.Schema()
	n := 100_000
	if testing.Short() {
		n = 20_000
	}
	seed(t, store, "s", n, 1000)
	back, err := projections.NewPostgres(pool, schema)
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopWriters := context.WithCancel(t.Context())
	writers := reverseWriters(wctx, t, pool, store)
	kills, midway := 0, 0
	var progress []int64
	for kills < 40 && (kills < 8 || len(progress) == 0 || progress[len(progress)-1] < int64(n)) {
		sum := func() int64 {
			var a int64
			_ = pool.QueryRow(t.Context(), "SELECT COALESCE(sum(applied), 0) FROM "+pgx.Identifier{schema}.Sanitize()+".projection_checkpoints").Scan(&a)
			return a
		}
		before := sum()
		c := startChild(t, schema, childBatchEnv+"=150")
		// Kill at a random point of the catch-up, not of a slow start-up
		// on a loaded machine (see TestTopicKillNineIntegration).
		for wait := time.Now().Add(20 * time.Second); sum() == before && before < int64(n) && time.Now().Before(wait); {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(time.Duration(50+rand.IntN(400)) * time.Millisecond)
		c.kill()
		kills++
		applied := sum()
		progress = append(progress, applied)
		if applied > 0 && applied < int64(n) {
			midway++
		}
	}
	stopWriters()
	rounds := <-writers
	c := startChild(t, schema)
	waitCaughtUp(t, pool, back, schema, 1, 2*time.Minute)
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	<-c.done
	want := pgOracle(t, pool, schema)
	if d := diffModels(want, pgModel(t, pool, schema, "streams_v1")); d != "" {
		t.Fatalf("model differs from the log after %d kills:\n%s", kills, d)
	}
	total := countEvents(t, pool, schema)
	if got := totalApplied(t, pool, schema, 1); got != total {
		t.Fatalf("applied %d events, the log has %d (kills %d)", got, total, kills)
	}
	if total <= int64(n) || rounds == 0 {
		t.Fatalf("the concurrent writers added nothing (%d events, %d rounds)", total, rounds)
	}
	if midway < 3 {
		t.Fatalf("only %d of %d kills hit the catch-up midway (applied after each: %v): the test did not test", midway, kills, progress)
	}
	t.Logf("applied after each kill: %v", progress)
	t.Logf("%d kills, %d events (%d from %d rounds of reverse-order writers), model exact", kills, total, total-int64(n), rounds)
}

// TestPausedOwnerFencedIntegration: an owner that SIGSTOPs itself inside a
// batch transaction (after moving the checkpoint, before the commit) is
// replaced by a second process; resumed after the takeover, its commit
// fails and the model is exact (nothing applied twice).
func TestPausedOwnerFencedIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	store := pgtest.Store(t, pool)
	schema := store.Schema()
	seed(t, store, "s", 20_000, 200)
	back, err := projections.NewPostgres(pool, schema)
	if err != nil {
		t.Fatal(err)
	}
	a := startChild(t, schema, childStopEnv+"=3")
	waitState(t, a.cmd.Process.Pid, 'T', 30*time.Second)
	before, err := back.Status(t.Context(), "counts")
	if err != nil {
		t.Fatal(err)
	}
	b := startChild(t, schema)
	// b takes over once the server has ended a's sessions (lease, idle in
	// transaction) and then moves every shard past where a stopped.
	waitCaughtUp(t, pool, back, schema, 1, time.Minute)
	after, err := back.Status(t.Context(), "counts")
	if err != nil {
		t.Fatal(err)
	}
	for i := range after {
		if after[i].OwnerEpoch <= before[i].OwnerEpoch {
			t.Fatalf("shard %d: epoch %d after the takeover, %d before", i, after[i].OwnerEpoch, before[i].OwnerEpoch)
		}
	}
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// Let a try to commit and fail, then check nothing moved.
	deadline := time.Now().Add(20 * time.Second)
	for (!strings.Contains(a.logText(), "resumed; committing") || strings.Count(a.logText(), "shard lost") < 2) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(a.logText(), "resumed; committing") || strings.Count(a.logText(), "shard lost") < 2 {
		t.Fatalf("the paused owner did not report a failed commit:\n%s", a.logText())
	}
	appendAndCheck(t, pool, store, back, schema)
	t.Logf("paused owner's log:\n%s", a.logText())
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	<-b.done
	<-a.done
}

// appendAndCheck appends more, waits for the projection and compares.
func appendAndCheck(t testing.TB, pool *pgxpool.Pool, store *postgres.Store, back *projections.Postgres, schema string) {
	t.Helper()
	seed(t, store, "late", 1000, 10)
	waitCaughtUp(t, pool, back, schema, 1, time.Minute)
	if d := diffModels(pgOracle(t, pool, schema), pgModel(t, pool, schema, "streams_v1")); d != "" {
		t.Fatal(d)
	}
	if got, want := totalApplied(t, pool, schema, 1), countEvents(t, pool, schema); got != want {
		t.Fatalf("applied %d, log has %d", got, want)
	}
}

// waitState polls /proc until the process is in state s (T: stopped).
func waitState(t testing.TB, pid int, s byte, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err == nil {
			if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == s {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("process %d not in state %c within %s", pid, s, within)
}

var _ = errors.New
