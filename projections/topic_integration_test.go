package projections_test

import (
	"context"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestStoreEqualsTopicIntegration: the same events read from the store
// (gap-safe log, 3 shards) and from a 4-partition events topic (offsets
// kept in the read model's database; the topic runner is stopped midway
// and a new one resumes from the stored offsets) build the same model,
// and each event is applied once.
func TestStoreEqualsTopicIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	seeds := testenv.Brokers(t)
	store := pgtest.Store(t, pool)
	schema := store.Schema()
	seed(t, store, "s", 20_000, 200)
	waitHorizon(t, pool)
	topic := testenv.Topic(t, seeds, 4, nil)

	// Publish the log to the topic as the relay would: keyed by stream.
	cl := testenv.Client(t, seeds, kgo.DefaultProduceTopic(topic))
	var recs []*kgo.Record
	for e, err := range store.ReadAll(t.Context(), stores.Cursor{}, 0) {
		if err != nil {
			t.Fatal(err)
		}
		r, err := codec.EventToRecord(topic, e.Event)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}

	run := func(schema string, src projections.Source, shards int, until func(ctx context.Context, r *projections.Runner[pgxTx]) error) {
		t.Helper()
		back, err := projections.NewPostgres(pool, schema)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		r, err := projections.New("counts", back, src, pgHandler(schema), projections.Setup(pgSetup(schema)), projections.Shards(shards), projections.BatchSize(800))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		if err := until(ctx, r); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	wait := func(ctx context.Context, r *projections.Runner[pgxTx]) error { return r.WaitForNonStale(ctx) }
	run(schema, projections.FromStore(store), 3, wait)

	tschema := pgtest.Store(t, pool).Schema()
	src := projections.FromTopic(seeds, topic)
	// Stop the first topic runner after some progress.
	run(tschema, src, 1, func(ctx context.Context, r *projections.Runner[pgxTx]) error {
		for ctx.Err() == nil {
			var applied int64
			_ = pool.QueryRow(ctx, "SELECT COALESCE(sum(applied), 0) FROM "+tschema+".projection_checkpoints").Scan(&applied)
			if applied > 2000 {
				return nil
			}
			time.Sleep(5 * time.Millisecond)
		}
		return ctx.Err()
	})
	var partial int64
	_ = pool.QueryRow(t.Context(), "SELECT sum(applied) FROM "+tschema+".projection_checkpoints").Scan(&partial)
	run(tschema, src, 1, wait)

	fromStore := pgModel(t, pool, schema, "streams_v1")
	if d := diffModels(pgOracle(t, pool, schema), fromStore); d != "" {
		t.Fatalf("store-built vs log: %s", d)
	}
	if d := diffModels(fromStore, pgModel(t, pool, tschema, "streams_v1")); d != "" {
		t.Fatalf("topic-built vs store-built: %s", d)
	}
	if got := totalApplied(t, pool, tschema, 1); got != 20_000 {
		t.Fatalf("topic runner applied %d events, want 20000", got)
	}
	bk, _ := projections.NewPostgres(pool, tschema)
	st, err := bk.Status(t.Context(), "counts")
	if err != nil || len(st) != 4 {
		t.Fatalf("status: %+v, %v: want one checkpoint per partition", st, err)
	}
	t.Logf("topic runner stopped after %d events and resumed from its stored offsets; models equal", partial)
}

// pgxTx is the PostgreSQL backend's transaction type.
type pgxTx = pgx.Tx

// TestTopicKillNineIntegration: a projection process reading a 4-partition
// events topic (offsets only in its checkpoint rows) is killed -9 at
// random points while it catches up 100k events, and restarted each time:
// the final model equals the store-side oracle of the same events, each
// applied once.
func TestTopicKillNineIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	seeds := testenv.Brokers(t)
	store := pgtest.Store(t, pool)
	schema := store.Schema()
	n := 100_000
	seed(t, store, "s", n, 1000)
	waitHorizon(t, pool)
	topic := testenv.Topic(t, seeds, 4, nil)
	cl := testenv.Client(t, seeds, kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(5*time.Millisecond))
	var recs []*kgo.Record
	for e, err := range store.ReadAll(t.Context(), stores.Cursor{}, 0) {
		if err != nil {
			t.Fatal(err)
		}
		r, err := codec.EventToRecord(topic, e.Event)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	if len(recs) != n {
		t.Fatalf("read %d events to publish, want %d (the horizon?)", len(recs), n)
	}
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	// The read model lives in its own schema (its tables are named like
	// the store-side ones).
	rschema := pgtest.Store(t, pool).Schema()
	applied := func() int64 {
		var a int64
		_ = pool.QueryRow(t.Context(), "SELECT COALESCE(sum(applied), 0) FROM "+rschema+".projection_checkpoints").Scan(&a)
		return a
	}
	kills, midway := 0, 0
	var progress []int64
	for kills < 40 && (kills < 6 || applied() < int64(n)) {
		before := applied()
		c := startChild(t, rschema, childTopicEnv+"="+topic, childBatchEnv+"=100")
		// Kill at a random point of the catch-up, not of the start-up: on
		// a loaded machine (CI runs packages in parallel) a child can take
		// longer than the random delay to commit its first batch, and
		// every kill then hit the start-up (0 of 40 midway, seen in CI).
		for wait := time.Now().Add(20 * time.Second); applied() == before && before < int64(n) && time.Now().Before(wait); {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(time.Duration(50+rand.IntN(400)) * time.Millisecond)
		c.kill()
		kills++
		a := applied()
		progress = append(progress, a)
		if a > 0 && a < int64(n) {
			midway++
		}
	}
	c := startChild(t, rschema, childTopicEnv+"="+topic)
	deadline := time.Now().Add(2 * time.Minute)
	for applied() < int64(n) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	<-c.done
	if midway < 3 {
		t.Fatalf("only %d of %d kills hit the catch-up midway (applied after each: %v)", midway, kills, progress)
	}
	if d := diffModels(pgOracle(t, pool, schema), pgModel(t, pool, rschema, "streams_v1")); d != "" {
		t.Fatalf("topic-built model after %d kills: %s", kills, d)
	}
	if got := totalApplied(t, pool, rschema, 1); got != int64(n) {
		t.Fatalf("applied %d events, the topic has %d", got, n)
	}
	t.Logf("%d kills, applied after each: %v; model exact", kills, progress)
}
