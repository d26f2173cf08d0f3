package projections_test

import (
	"context"
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
