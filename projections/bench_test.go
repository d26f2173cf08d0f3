package projections_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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
// projection.
func BenchmarkCatchUp(b *testing.B) {
	pool := testenv.Pool(b)
	store := pgtest.Store(b, pool)
	schema := store.Schema()
	q := pgx.Identifier{schema}.Sanitize() + "."
	const n = 200_000
	seed(b, store, "s", n, 2000)
	ctx := b.Context()

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
				start := time.Now()
				done := make(chan error, 1)
				go func() { done <- r.Run(ctx) }()
				if err := r.WaitForNonStale(ctx); err != nil {
					b.Fatal(err)
				}
				elapsed := time.Since(start)
				cancel()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				rate := n / elapsed.Seconds()
				b.ReportMetric(rate, "events/s")
				b.ReportMetric(rate/(n/tc.baseRef.Seconds()), "x-baseline")
				b.ReportMetric(n/read.Seconds(), "raw-read-events/s")
				b.ReportMetric(n/insert.Seconds(), "raw-insert-rows/s")
			}
		})
	}
}

func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}
