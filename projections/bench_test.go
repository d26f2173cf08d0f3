package projections_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
)

// BenchmarkCatchUp measures a projection catching up a 200k-event log on
// the real PostgreSQL, with two baselines measured in the same run on the
// same log: the store's raw ReadAll rate and a raw multi-row INSERT of the
// same number of rows (1,000 per transaction). Sub-benchmarks: a counting
// projection (one UPDATE per batch) and a one-upsert-per-event projection
// (one multi-row upsert per batch, a row per event). Run with
// -benchtime=1x: each iteration catches up the whole log with a fresh
// projection. ORCHESTRIX_BENCH_EVENTS sets the log's size (1000000 for
// the rebuild-of-1M figure).
func BenchmarkCatchUp(b *testing.B) {
	pool := testenv.Pool(b)
	store := pgtest.Store(b, pool)
	schema := store.Schema()
	q := pgx.Identifier{schema}.Sanitize() + "."
	n := 200_000
	if v, err := strconv.Atoi(os.Getenv("ORCHESTRIX_BENCH_EVENTS")); err == nil && v >= 2000 {
		n = v / 2000 * 2000
	}
	seed(b, store, "s", n, 2000)
	ctx := b.Context()
	waitHorizon(b, pool)

	read := timed(func() {
		c := 0
		for _, err := range store.ReadAll(ctx, stores.Cursor{}, 0) {
			if err != nil {
				b.Fatal(err)
			}
			c++
		}
		if c != n {
			b.Fatalf("read %d", c)
		}
	})
	if _, err := pool.Exec(ctx, "CREATE TABLE "+q+"raw (stream_id text, version bigint, amount bigint, PRIMARY KEY (stream_id, version))"); err != nil {
		b.Fatal(err)
	}
	insert := timed(func() {
		for i := 0; i < n; i += 1000 {
			ids, vs, as := make([]string, 1000), make([]int64, 1000), make([]int64, 1000)
			for j := range 1000 {
				ids[j], vs[j], as[j] = fmt.Sprintf("s-%d", (i+j)/100), int64((i+j)%100+1), int64(j)
			}
			if _, err := pool.Exec(ctx, "INSERT INTO "+q+"raw SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])", ids, vs, as); err != nil {
				b.Fatal(err)
			}
		}
	})

	counting := func(ctx context.Context, tx pgx.Tx, bt projections.Batch) error {
		_, err := tx.Exec(ctx, "UPDATE "+q+bt.Projection+"_"+bt.Table("totals")+" SET n = n + $1", len(bt.Events))
		return err
	}
	upsert := func(ctx context.Context, tx pgx.Tx, bt projections.Batch) error {
		ids, vs, as := make([]string, len(bt.Events)), make([]int64, len(bt.Events)), make([]int64, len(bt.Events))
		for i, e := range bt.Events {
			ids[i], vs[i], as[i] = e.StreamID, int64(e.Version), int64(len(e.Data))
		}
		_, err := tx.Exec(ctx, "INSERT INTO "+q+bt.Projection+"_"+bt.Table("rows")+" SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) ON CONFLICT (stream_id, version) DO UPDATE SET amount = excluded.amount", ids, vs, as)
		return err
	}
	setup := func(ctx context.Context, tx pgx.Tx, name string, v int) error {
		_, err := tx.Exec(ctx, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %[1]s%[2]s_%[3]s (n bigint NOT NULL); INSERT INTO %[1]s%[2]s_%[3]s SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM %[1]s%[2]s_%[3]s);
			CREATE TABLE IF NOT EXISTS %[1]s%[2]s_%[4]s (stream_id text, version bigint, amount bigint, PRIMARY KEY (stream_id, version))`,
			q, name, projections.VersionTable("totals", v), projections.VersionTable("rows", v)))
		return err
	}
	back, err := projections.NewPostgres(pool, schema)
	if err != nil {
		b.Fatal(err)
	}
	iter := 0
	for _, tc := range []struct {
		name    string
		h       projections.Handler[pgx.Tx]
		shards  int
		batch   int
		baseRef time.Duration
	}{
		{"counting", counting, 1, 2000, read},
		{"counting-2shards", counting, 2, 2000, read},
		{"upsert", upsert, 1, 1000, insert},
		{"upsert-2shards", upsert, 2, 1000, insert},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				iter++
				name := fmt.Sprintf("bench%d", iter)
				ctx, cancel := context.WithCancel(b.Context())
				r, err := projections.New(name, back, projections.FromStore(store), tc.h, projections.Shards(tc.shards), projections.BatchSize(tc.batch),
					projections.Setup(func(ctx context.Context, tx pgx.Tx, v int) error { return setup(ctx, tx, name, v) }))
				if err != nil {
					b.Fatal(err)
				}
				runtime.GC()
				var peak atomic.Uint64
				stopSampling := make(chan struct{})
				sampled := make(chan struct{})
				go func() {
					defer close(sampled)
					var ms runtime.MemStats
					for {
						runtime.ReadMemStats(&ms)
						if ms.HeapAlloc > peak.Load() {
							peak.Store(ms.HeapAlloc)
						}
						select {
						case <-stopSampling:
							return
						case <-time.After(20 * time.Millisecond):
						}
					}
				}()
				start := time.Now()
				done := make(chan error, 1)
				go func() { done <- r.Run(ctx) }()
				if err := r.WaitForNonStale(ctx); err != nil {
					b.Fatal(err)
				}
				elapsed := time.Since(start)
				close(stopSampling)
				<-sampled
				b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MB")
				cancel()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				rate := float64(n) / elapsed.Seconds()
				b.ReportMetric(rate, "events/s")
				b.ReportMetric(rate/(float64(n)/tc.baseRef.Seconds()), "x-baseline")
				b.ReportMetric(float64(n)/read.Seconds(), "raw-read-events/s")
				b.ReportMetric(float64(n)/insert.Seconds(), "raw-insert-rows/s")
			}
		})
	}
}

func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

// BenchmarkLiveLag offers 1,000 events/s (10 every 10ms, 10 streams) for
// 10s to a running counting projection and reports the latency from an
// event's creation (its Time, set just before the append) to the commit
// of the batch that applied it: p50, p99, max. The baseline is the append
// itself (creation to append returned), measured on the same events.
func BenchmarkLiveLag(b *testing.B) {
	pool := testenv.Pool(b)
	store := pgtest.Store(b, pool)
	schema := store.Schema()
	q := pgx.Identifier{schema}.Sanitize() + "."
	back, err := projections.NewPostgres(pool, schema)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		var mu sync.Mutex
		var lags []time.Duration
		ctx, cancel := context.WithCancel(b.Context())
		r, err := projections.New("live", back, projections.FromStore(store),
			func(ctx context.Context, tx pgx.Tx, bt projections.Batch) error {
				_, err := tx.Exec(ctx, "UPDATE "+q+bt.Table("live")+" SET n = n + $1", len(bt.Events))
				return err
			},
			projections.PollInterval(5*time.Millisecond),
			projections.Setup(func(ctx context.Context, tx pgx.Tx, v int) error {
				_, err := tx.Exec(ctx, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %[1]s%[2]s (n bigint); INSERT INTO %[1]s%[2]s VALUES (0)", q, projections.VersionTable("live", v)))
				return err
			}),
			projections.OnCommit(func(c projections.Commit) {
				now := time.Now()
				mu.Lock()
				for _, e := range c.Events {
					lags = append(lags, now.Sub(e.Time))
				}
				mu.Unlock()
			}))
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		if err := r.WaitForNonStale(ctx); err != nil {
			b.Fatal(err)
		}
		var appends []time.Duration
		tick := time.NewTicker(10 * time.Millisecond)
		for i := range 1000 {
			<-tick.C
			now := time.Now()
			reqs := make([]stores.AppendRequest, 10)
			for j := range reqs {
				reqs[j] = stores.AppendRequest{StreamID: fmt.Sprintf("live-%d", j), Expected: stores.Any, Events: events(1, "Live")}
				reqs[j].Events[0].Time = now
			}
			if _, err := store.AppendMany(ctx, reqs); err != nil {
				b.Fatal(err)
			}
			appends = append(appends, time.Since(now))
			_ = i
		}
		tick.Stop()
		if err := r.WaitForNonStale(ctx); err != nil {
			b.Fatal(err)
		}
		cancel()
		<-done
		mu.Lock()
		if len(lags) != 10_000 {
			b.Fatalf("%d events applied, want 10000", len(lags))
		}
		pct := func(d []time.Duration, p float64) float64 {
			slices.Sort(d)
			return float64(d[int(float64(len(d)-1)*p)].Microseconds()) / 1000
		}
		b.ReportMetric(pct(lags, 0.5), "p50-ms")
		b.ReportMetric(pct(lags, 0.99), "p99-ms")
		b.ReportMetric(pct(lags, 1), "max-ms")
		b.ReportMetric(pct(appends, 0.99), "append-p99-ms")
		mu.Unlock()
	}
}

// waitHorizon waits until every transaction that exists now has ended, so
// that the store's gap-safe ReadAll sees everything committed so far (on a
// shared database another session's long transaction holds it back).
func waitHorizon(b testing.TB, pool *pgxpool.Pool) {
	b.Helper()
	var target, horizon uint64
	if err := pool.QueryRow(b.Context(), "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").Scan(&target); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err := pool.QueryRow(b.Context(), "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").Scan(&horizon); err != nil {
			b.Fatal(err)
		}
		if horizon >= target {
			return
		}
	}
	b.Fatal("the horizon did not pass the seed within 5 minutes")
}
