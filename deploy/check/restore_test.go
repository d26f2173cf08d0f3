package check

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestRestoreReseedIntegration checks what docs/deployment.md says about
// a logical restore (pg_dump, pg_restore into another cluster): the
// events keep the tx_id of the cluster that wrote them, the new cluster
// counts its transaction IDs from wherever it stands. Restored events
// with a tx_id above the new cluster's horizon are not published at all
// while new events are; the guide's re-seed (one UPDATE giving every
// restored row the ID of the fixing transaction, then a relay on a new
// events topic) publishes everything once, in position order, with new
// events after.
func TestRestoreReseedIntegration(t *testing.T) {
	dsn := testenv.DatabaseURL(t)
	seeds := testenv.Brokers(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pool := openPool(t, dsn)
	store := pgtest.Store(t, pool)
	schema := store.Schema()
	const restored = 40
	for i := range restored {
		if _, err := store.Append(ctx, "acc-"+strconv.Itoa(i%4), stores.Any, []orchestrix.Event{event("Deposited", i)}); err != nil {
			t.Fatal(err)
		}
	}
	// The restore: these rows come from a cluster 1,000,000 transactions
	// ahead of this one.
	events := pgx.Identifier{schema, "events"}.Sanitize()
	if _, err := pool.Exec(ctx, "UPDATE "+events+" SET tx_id = (pg_current_xact_id()::text::bigint + 1000000)::text::xid8"); err != nil {
		t.Fatal(err)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	sfx := suffix()
	before, after := "orx."+sfx+".events", "orx."+sfx+".events-restored"
	if _, err := topics.Ensure(ctx, adm, topics.Spec{Name: before, Partitions: 1, ReplicationFactor: 1},
		topics.Spec{Name: after, Partitions: 1, ReplicationFactor: 1}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = adm.DeleteTopics(context.Background(), before, after, before+outbox.CheckpointSuffix, after+outbox.CheckpointSuffix)
	})
	appendNew := func(n int) {
		for i := range n {
			if _, err := store.Append(ctx, "new-"+strconv.Itoa(i), stores.Any, []orchestrix.Event{event("Opened", i)}); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Without the re-seed: a relay from an empty checkpoint publishes
	// the new events and none of the restored ones.
	appendNew(3)
	// (relayUntil returns once it has 3 and a moment more; the minute is
	// for a busy cluster, where a transaction left open by another test
	// holds back every gap-safe reader: 3 s failed once in 20 runs.)
	got := relayUntil(ctx, t, store, seeds, before, 3, time.Minute)
	if len(got) != 3 || !strings.HasPrefix(got[0], "new-") {
		t.Fatalf("without the re-seed the relay published %v, want the 3 new events only", got)
	}
	t.Logf("without the re-seed: %d of %d restored events published, the %d new ones were", 0, restored, len(got))

	// The re-seed: deploy/postgres/reseed.sql, as the guide runs it (no
	// writer running), with new positions from 1000.
	runSQLFile(ctx, t, pool, "../postgres/reseed.sql", map[string]string{"schema": schema, "next_position": "1000"})
	appendNew(2)
	got = relayUntil(ctx, t, store, seeds, after, restored+5, time.Minute)
	if len(got) != restored+5 {
		t.Fatalf("after the re-seed the relay published %d events, want %d", len(got), restored+5)
	}
	// Position order: the restored events, the 3 appended before the
	// fix, then the 2 after, from position 1000.
	var positions []int
	for _, p := range got {
		n, _ := strconv.Atoi(strings.SplitN(p, "@", 2)[1])
		positions = append(positions, n)
	}
	for i := 1; i < len(positions); i++ {
		if positions[i] <= positions[i-1] {
			t.Fatalf("not in position order at %d: %v", i, got)
		}
	}
	if positions[len(positions)-1] < 1000 {
		t.Fatalf("the events after the re-seed did not get positions from 1000: %v", got)
	}
	t.Logf("after the re-seed: all %d events published once, in position order", len(got))
}

// relayUntil runs a relay to topic until it holds want records or wait
// passed, and returns "stream@position" of each record.
func relayUntil(ctx context.Context, t *testing.T, store *postgres.Store, seeds []string, topic string, want int, wait time.Duration) []string {
	t.Helper()
	_, stop := startRelay(ctx, t, store, seeds, topic, "relay")
	defer stop()
	cons, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	var got []string
	deadline, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		fs := cons.PollFetches(deadline)
		fs.EachRecord(func(r *kgo.Record) {
			pos := ""
			for _, h := range r.Headers {
				if h.Key == "ce_position" {
					pos = string(h.Value)
				}
			}
			got = append(got, string(r.Key)+"@"+pos)
		})
		if deadline.Err() != nil || len(got) >= want {
			// Wait a moment more for records beyond want.
			if len(got) >= want && deadline.Err() == nil {
				extra, c := context.WithTimeout(ctx, 500*time.Millisecond)
				cons.PollFetches(extra).EachRecord(func(r *kgo.Record) { got = append(got, string(r.Key)+"@?") })
				c()
			}
			return got
		}
	}
}
