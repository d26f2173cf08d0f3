package projections_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
)

// TestBlueGreenIntegration: v1 serves through the view while v2 builds
// from zero; queries through the view during the rebuild always see the
// complete v1 (never a partial v2); a cut-over is refused while v2 lags
// and done in one transaction once it has caught up; v1 had side effects
// only for events newer than itself, v2 none while building; rollback
// returns to v1.
func TestBlueGreenIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	store := pgtest.Store(t, pool)
	schema := store.Schema()
	seed(t, store, "s", 30_000, 300)
	back, err := projections.NewPostgres(pool, schema, projections.Views("streams"))
	if err != nil {
		t.Fatal(err)
	}
	var effects [3]atomic.Int64
	h := pgHandler(schema)
	handler := func(ctx context.Context, tx pgx.Tx, b projections.Batch) error {
		if !b.Replaying {
			effects[b.Version].Add(int64(len(b.Events)))
		}
		return h(ctx, tx, b)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r, err := projections.New("counts", back, projections.FromStore(store), handler, projections.Shards(2), projections.Setup(pgSetup(schema)),
		projections.VersionScan(100*time.Millisecond), projections.BatchSize(450))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	if err := r.WaitForNonStale(ctx); err != nil {
		t.Fatal(err)
	}
	want := pgOracle(t, pool, schema)
	if d := diffModels(want, pgModel(t, pool, schema, "streams")); d != "" {
		t.Fatalf("v1 through the view: %s", d)
	}
	if got := effects[1].Load(); got != 0 {
		t.Fatalf("v1 had %d side effects catching up on events older than itself, want 0", got)
	}
	seed(t, store, "live", 300, 3)
	if err := r.WaitForNonStale(ctx); err != nil {
		t.Fatal(err)
	}
	if got := effects[1].Load(); got != 300 {
		t.Fatalf("v1 (active) had %d side effects for 300 new events", got)
	}
	want = pgOracle(t, pool, schema)

	v2, err := back.Rebuild(ctx, "counts", 3)
	if err != nil || v2 != 2 {
		t.Fatalf("rebuild = %d, %v", v2, err)
	}
	if err := back.Cutover(ctx, "counts", v2, 0); !errors.Is(err, projections.ErrLagging) {
		t.Fatalf("cut-over of an unbuilt v2 = %v, want ErrLagging", err)
	}
	// Queries through the view while v2 builds: always the whole v1.
	var partial atomic.Int64
	qctx, stopQueries := context.WithCancel(ctx)
	queries := make(chan int, 1)
	go func() {
		n := 0
		defer func() { queries <- n }()
		for qctx.Err() == nil {
			var rows, sum int64
			err := pool.QueryRow(qctx, "SELECT count(*), COALESCE(sum(count), 0) FROM "+pgx.Identifier{schema}.Sanitize()+".streams").Scan(&rows, &sum)
			if err != nil {
				return
			}
			n++
			if rows != 303 || sum != 30_300 {
				partial.Add(1)
			}
		}
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := back.Status(ctx, "counts")
		if err != nil {
			t.Fatal(err)
		}
		caught := 0
		for _, s := range st {
			if s.Version == v2 && s.LagEvents == 0 && s.Cursor != "" {
				caught++
			}
		}
		if caught == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("v2 did not catch up: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := back.Cutover(ctx, "counts", v2, 0); err != nil {
		t.Fatal(err)
	}
	stopQueries()
	if n := <-queries; n == 0 || partial.Load() != 0 {
		t.Fatalf("%d of %d queries during the rebuild saw something else than the whole v1", partial.Load(), n)
	}
	if got := effects[2].Load(); got != 0 {
		t.Fatalf("v2 had %d side effects while building", got)
	}
	if d := diffModels(want, pgModel(t, pool, schema, "streams")); d != "" {
		t.Fatalf("v2 through the view after the cut-over: %s", d)
	}
	vs, err := back.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 || vs[0].Status != "retired" || vs[1].Status != "active" {
		t.Fatalf("versions after the cut-over: %+v", vs)
	}
	// New events reach both versions; only the active one has effects now.
	seed(t, store, "new", 100, 10)
	if err := r.WaitForNonStale(ctx); err != nil {
		t.Fatal(err)
	}
	if effects[2].Load() != 100 || effects[1].Load() != 300 {
		t.Fatalf("effects after the cut-over: v1 %d, v2 %d", effects[1].Load(), effects[2].Load())
	}
	back1, err := back.Rollback(ctx, "counts")
	if err != nil || back1 != 1 {
		t.Fatalf("rollback = %d, %v", back1, err)
	}
	if d := diffModels(pgOracle(t, pool, schema), pgModel(t, pool, schema, "streams")); d != "" {
		t.Fatalf("v1 through the view after the rollback: %s", d)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestPoisonIntegration: a poison event stops the shard (status stopped
// with the error; later events wait), or under Park is parked with its
// error while the rest is applied; parked events can be listed, retried
// (failing again keeps them parked) and skipped.
func TestPoisonIntegration(t *testing.T) {
	for _, policy := range []projections.Policy{projections.Stop, projections.Park} {
		t.Run(policy.String(), func(t *testing.T) {
			pool := testenv.Pool(t)
			store := pgtest.Store(t, pool)
			schema := store.Schema()
			seed(t, store, "a", 100, 10)
			if _, err := store.Append(t.Context(), "bad", stores.NoStream, events(1, "Poison")); err != nil {
				t.Fatal(err)
			}
			seed(t, store, "c", 100, 10)
			back, err := projections.NewPostgres(pool, schema)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			r, err := projections.New("counts", back, projections.FromStore(store), pgHandler(schema), projections.Setup(pgSetup(schema)),
				projections.OnPoison(policy), projections.Attempts(2), projections.RetryStopped(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			err = r.WaitForNonStale(ctx)
			st, serr := back.Status(ctx, "counts")
			if serr != nil {
				t.Fatal(serr)
			}
			model := pgModel(t, pool, schema, "streams_v1")
			if policy == projections.Stop {
				var pe *projections.PoisonError
				if !errors.As(err, &pe) || pe.Event.StreamID != "bad" {
					t.Fatalf("WaitForNonStale = %v, want the PoisonError of stream bad", err)
				}
				if st[0].Status != "stopped" || !strings.Contains(st[0].Error, "cannot apply Poison") || st[0].LagEvents != 101 {
					t.Fatalf("status %+v: want stopped, the error, lag 101", st[0])
				}
				if len(model) != 10 {
					t.Fatalf("model has %d streams, want the 10 before the poison event", len(model))
				}
				// The operator's way out without a deploy: skip (park) it.
				if err := back.SkipStopped(ctx, "counts", 0, 0); err != nil {
					t.Fatal(err)
				}
				deadline := time.Now().Add(20 * time.Second)
				for r.WaitForNonStale(ctx) != nil {
					if time.Now().After(deadline) {
						t.Fatal("the shard did not go on after SkipStopped")
					}
					time.Sleep(50 * time.Millisecond)
				}
				if d := diffModels(pgOracle(t, pool, schema), pgModel(t, pool, schema, "streams_v1")); d != "" {
					t.Fatalf("after the skip: %s", d)
				}
				if dls, err := back.DeadLetters(ctx, "counts", false, 10); err != nil || len(dls) != 1 || !strings.Contains(dls[0].Error, "skipped by an operator") {
					t.Fatalf("dead letters after the skip: %+v, %v", dls, err)
				}
				cancel()
				<-done
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st[0].Status != "running" || st[0].Parked != 1 || st[0].LagEvents != 0 {
				t.Fatalf("status %+v: want running, 1 parked, lag 0", st[0])
			}
			if d := diffModels(pgOracle(t, pool, schema), model); d != "" {
				t.Fatal(d)
			}
			dls, err := back.DeadLetters(ctx, "counts", false, 10)
			if err != nil || len(dls) != 1 || dls[0].Event.StreamID != "bad" || dls[0].Event.Type != "Poison" || !strings.Contains(dls[0].Error, "cannot apply") {
				t.Fatalf("dead letters %+v, %v", dls, err)
			}
			if n, err := back.RetryParked(ctx, "counts", nil); n != 1 || err != nil {
				t.Fatalf("retry = %d, %v", n, err)
			}
			deadline := time.Now().Add(20 * time.Second)
			for {
				dls, err = back.DeadLetters(ctx, "counts", false, 10)
				if err != nil {
					t.Fatal(err)
				}
				if len(dls) == 1 && dls[0].Status == "parked" && dls[0].Attempts == 3 {
					break // retried, failed again, parked again
				}
				if time.Now().After(deadline) {
					t.Fatalf("retry not done: %+v", dls)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if n, err := back.SkipParked(ctx, "counts", []int64{dls[0].ID}); n != 1 || err != nil {
				t.Fatalf("skip = %d, %v", n, err)
			}
			if dls, _ := back.DeadLetters(ctx, "counts", false, 10); len(dls) != 0 {
				t.Fatalf("still parked after skip: %+v", dls)
			}
			if st, _ := back.Status(ctx, "counts"); st[0].Parked != 0 {
				t.Fatalf("parked %d after skip", st[0].Parked)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}
