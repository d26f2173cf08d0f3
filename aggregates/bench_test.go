package aggregates_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/twmb/franz-go/pkg/kgo"
)

// oneByOneStore hides the optional interfaces of a store, so the
// processor loads each aggregate with its own round trips.
type oneByOneStore struct{ stores.EventStore }

// BenchmarkColdPoll measures a poll of 500 commands on 500 aggregates
// that no processor has cached (a member that just started or got the
// partition in a rebalance), each aggregate holding 10 events, on
// PostgreSQL: the processor as it is (the cold aggregates loaded
// together), the processor loading them one by one (as before), and the
// baseline, raw pgx reading the same 5,000 events in one query. The
// command lookup, the append and its transaction are in the first two and
// not in the baseline.
//
//	go test -run '^$' -bench ColdPoll -benchtime 20x ./aggregates/
func BenchmarkColdPoll(b *testing.B) {
	const aggs, events = 500, 10
	pool := testenv.Pool(b)
	store := pgtest.Store(b, pool)
	reg := testdomain.Registry(b)
	repo, err := aggregates.NewRepository(testdomain.Aggregate(b), store, reg, "/bench")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	ids := make([]string, aggs)
	for a := range aggs {
		ids[a] = fmt.Sprintf("cold-%04d", a)
		var reqs []stores.AppendRequest
		cmd0 := orchestrix.Command{Metadata: orchestrix.Metadata{ID: ids[a] + "-open", Source: "/bench"}, AggregateID: ids[a], Payload: testdomain.Open{Name: "b"}}
		evs, err := repo.NewEvents(cmd0, []any{testdomain.Opened{Name: "b"}})
		if err != nil {
			b.Fatal(err)
		}
		for range events - 1 {
			more, err := repo.NewEvents(cmd0, []any{testdomain.Posted{Amount: 1}})
			if err != nil {
				b.Fatal(err)
			}
			evs = append(evs, more...)
		}
		reqs = append(reqs, stores.AppendRequest{StreamID: ids[a], Expected: stores.NoStream, Events: evs})
		if _, err := store.AppendMany(ctx, reqs); err != nil {
			b.Fatal(err)
		}
	}
	round := 0
	poll := func(b *testing.B) []*kgo.Record {
		round++
		var recs []*kgo.Record
		for a, id := range ids {
			recs = append(recs, commandRecord(b, reg, orchestrix.Command{Metadata: orchestrix.Metadata{ID: fmt.Sprintf("r%d-%s", round, id), Source: "/bench"}, AggregateID: id, Payload: testdomain.Post{Amount: 1}}, int64(a)))
		}
		return recs
	}
	run := func(b *testing.B, s stores.EventStore) {
		repo, err := aggregates.NewRepository(testdomain.Aggregate(b), s, reg, "/bench")
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			b.StopTimer()
			recs := poll(b)
			p, err := aggregates.NewProcessor(repo) // cold cache
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			for i, err := range p.HandleBatch(ctx, recs) {
				if err != nil {
					b.Fatalf("record %d: %v", i, err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/poll")
	}
	b.Run("processor", func(b *testing.B) { run(b, store) })
	b.Run("processor-one-by-one", func(b *testing.B) { run(b, oneByOneStore{store}) })
	b.Run("raw-pgx-read", func(b *testing.B) {
		q := `SELECT stream_id, version, data FROM ` + pgx.Identifier{store.Schema()}.Sanitize() + `.events WHERE stream_id = ANY($1) ORDER BY stream_id, version`
		for b.Loop() {
			rows, err := pool.Query(ctx, q, ids)
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for rows.Next() {
				n++
			}
			if err := rows.Err(); err != nil {
				b.Fatal(err)
			}
			if n < aggs*events {
				b.Fatalf("read %d events, want at least %d", n, aggs*events)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/poll")
	})
}
