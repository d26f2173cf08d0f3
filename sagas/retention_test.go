package sagas

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestInboxRetention (memory and PostgreSQL): a completed and a
// compensated instance lose their inbox rows to PruneInbox once they are
// older than the retention; a running one and one in
// compensation_failed keep theirs. Then every input of every instance is
// delivered again, in a random order, one by one and in batches: nothing
// changes — no version, status, history row or command — and a second
// start of an ended instance does not restart it.
func TestInboxRetention(t *testing.T) {
	for name, mk := range map[string]func(testing.TB) backend{"memory": memoryBackend, "postgres": postgresBackend} {
		t.Run(name, func(t *testing.T) { testInboxRetention(t, mk(t)) })
	}
}

func testInboxRetention(t *testing.T, be backend) {
	ctx := t.Context()
	var mu sync.Mutex
	now := time.Now().UTC().Add(-2 * time.Hour)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	rt := benchRuntime(t, be.store)
	WithClock(clock)(rt)
	inputs := map[string][]*kgo.Record{}
	apply := func(id string, rec *kgo.Record) {
		t.Helper()
		inputs[id] = append(inputs[id], rec)
		if err := rt.Handle(ctx, rec); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	outcome := func(id string, phase Phase, step, attempt int, status string) {
		cid := CommandID("transfer", id, phase, step, attempt)
		o, _ := json.Marshal(orchestrix.Outcome{CommandID: cid, CorrelationID: Correlation("transfer", id), Status: status, Code: "no"})
		apply(id, record(InboxMessage(rt.Inbox(), id, KindOutcome, "outcome:"+cid, o)))
	}
	start := func(id string) {
		st, _ := json.Marshal(xfer{From: "a", To: "b", Amount: 10})
		apply(id, record(InboxMessage(rt.Inbox(), id, KindStart, startID(id), st)))
	}
	// done: three steps accepted.
	start("done")
	for step := range 3 {
		outcome("done", PhaseAction, step, 1, orchestrix.OutcomeAccepted)
	}
	// comp: the credit rejected, the debit refunded.
	start("comp")
	outcome("comp", PhaseAction, 0, 1, orchestrix.OutcomeAccepted)
	outcome("comp", PhaseAction, 1, 1, orchestrix.OutcomeRejected)
	outcome("comp", PhaseCompensation, 0, 1, orchestrix.OutcomeAccepted)
	// failed: the refund rejected twice (a retry timer between).
	start("failed")
	outcome("failed", PhaseAction, 0, 1, orchestrix.OutcomeAccepted)
	outcome("failed", PhaseAction, 1, 1, orchestrix.OutcomeRejected)
	outcome("failed", PhaseCompensation, 0, 1, orchestrix.OutcomeRejected)
	f := TimerFired{Phase: PhaseCompensation, Step: 0, Try: 1, Kind: waitRetry}
	fb, _ := json.Marshal(f)
	apply("failed", record(InboxMessage(rt.Inbox(), "failed", KindTimer, f.ID(), fb)))
	outcome("failed", PhaseCompensation, 0, 2, orchestrix.OutcomeRejected)
	// running: started only.
	start("running")

	want := map[string]Status{"done": StatusCompleted, "comp": StatusCompensated, "failed": StatusCompensationFailed, "running": StatusRunning}
	type snap struct {
		inst    Instance
		history int
	}
	snapshot := func() (map[string]snap, int) {
		out := map[string]snap{}
		for id := range want {
			i, err := be.store.Get(ctx, "transfer", id)
			if err != nil {
				t.Fatal(err)
			}
			h, err := be.store.History(ctx, "transfer", id)
			if err != nil {
				t.Fatal(err)
			}
			out[id] = snap{i, len(h)}
		}
		return out, len(be.outbox(t))
	}
	before, sent := snapshot()
	for id, st := range want {
		if before[id].inst.Status != st {
			t.Fatalf("%s: %s, want %s", id, before[id].inst.Status, st)
		}
		if n := inboxRows(t, be.store, id); n != len(inputs[id]) {
			t.Fatalf("%s: %d inbox rows, want %d", id, n, len(inputs[id]))
		}
	}

	// Not old enough yet: nothing is pruned.
	mu.Lock()
	now = now.Add(30 * time.Minute)
	mu.Unlock()
	if n, k, err := rt.PruneInbox(ctx, time.Hour); err != nil || n != 0 || k != 0 {
		t.Fatalf("prune within the retention: %d instances, %d rows, %v", n, k, err)
	}
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	n, k, err := rt.PruneInbox(ctx, time.Hour)
	if err != nil || n != 2 || k != len(inputs["done"])+len(inputs["comp"]) {
		t.Fatalf("prune: %d instances, %d rows, %v; want 2 instances, %d rows", n, k, err, len(inputs["done"])+len(inputs["comp"]))
	}
	for id := range want {
		keep := len(inputs[id])
		if ended(want[id]) {
			keep = 0
		}
		if got := inboxRows(t, be.store, id); got != keep {
			t.Fatalf("%s after the prune: %d inbox rows, want %d", id, got, keep)
		}
	}

	// Every input again, shuffled, one by one, then in batches of a
	// partition's poll.
	var all []*kgo.Record
	for _, recs := range inputs {
		all = append(all, recs...)
	}
	rng := rand.New(rand.NewPCG(testenv.Seed(t), 0))
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	for _, rec := range all {
		if err := rt.Handle(ctx, rec); err != nil {
			t.Fatalf("%s again after the prune: %v", rec.Key, err)
		}
	}
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	for i := 0; i < len(all); i += 5 {
		for _, err := range rt.HandleBatch(ctx, all[i:min(i+5, len(all))]) {
			if err != nil {
				t.Fatalf("batch again after the prune: %v", err)
			}
		}
	}
	// A start of the same ID after the prune starts nothing.
	if err := rt.Start(ctx, "done", xfer{From: "x", To: "y", Amount: 99}); err != nil {
		t.Fatal(err)
	}
	// An operator's retry of an ended instance is refused (dead-lettered).
	op := record(OperatorMessage("transfer", "done", KindRetry, "late-op", "again"))
	if err := rt.Handle(ctx, op); !errors.Is(err, ErrNotAllowed) || !consumers.IsPermanent(err) {
		t.Fatalf("operator retry of a completed instance: %v", err)
	}
	after, sentAfter := snapshot()
	for id := range want {
		if b, a := before[id], after[id]; a.history != b.history || a.inst.Version != b.inst.Version || a.inst.Status != b.inst.Status ||
			string(a.inst.State) != string(b.inst.State) {
			t.Fatalf("%s changed: %+v -> %+v", id, b, a)
		}
	}
	if sentAfter != sent {
		t.Fatalf("%d commands in the outbox after the redeliveries, %d before", sentAfter, sent)
	}
	// Pruned instances are not scanned again (PostgreSQL marks them).
	if pg, ok := be.store.(*PostgresStore); ok {
		if n, _, err := pg.PruneInbox(ctx, "transfer", now, PruneBatch); err != nil || n != 0 {
			t.Fatalf("second prune: %d instances, %v", n, err)
		}
	}
}

func record(m outbox.Message) *kgo.Record {
	return &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: m.Headers}
}

// inboxRows counts an instance's inbox rows.
func inboxRows(t *testing.T, s Store, id string) int {
	t.Helper()
	switch s := s.(type) {
	case *MemoryStore:
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.inbox[key{"transfer", id}])
	case *PostgresStore:
		var n int
		if err := s.pool.QueryRow(t.Context(), `SELECT count(*) FROM `+s.t["saga_inbox"]+` WHERE saga_type = 'transfer' AND saga_id = $1`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	t.Fatalf("store %T", s)
	return 0
}
