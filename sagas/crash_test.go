package sagas

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestCrashPointsIntegration: a transition that dies at each point of its
// transaction (after the inbox insert and the read; after every write,
// before the commit) leaves nothing behind — no inbox row, no new
// version, no history row, no outbox row, the old timer — and the same
// input handled again applies once.
func TestCrashPointsIntegration(t *testing.T) {
	for _, point := range []string{"read", "written"} {
		t.Run(point, func(t *testing.T) {
			be := postgresBackend(t)
			s := be.store.(*PostgresStore)
			ctx := t.Context()
			rt := benchRuntime(t, s)
			if err := rt.Start(ctx, "s1", xfer{From: "a", To: "b", Amount: 10}); err != nil {
				t.Fatal(err)
			}
			snapshot := func() string {
				var out string
				err := s.Pool().QueryRow(ctx, `SELECT concat_ws('|',
					(SELECT count(*) FROM `+s.t["saga_inbox"]+`), (SELECT max(version) FROM `+s.t["saga_instances"]+`),
					(SELECT count(*) FROM `+s.t["saga_transitions"]+`), (SELECT count(*) FROM `+pgx.Identifier{s.Schema(), "outbox"}.Sanitize()+`),
					(SELECT string_agg(phase || step || try || kind || due_at::text, ',') FROM `+s.t["saga_timers"]+`))`).Scan(&out)
				if err != nil {
					t.Fatal(err)
				}
				return out
			}
			before := snapshot()
			cid := CommandID("transfer", "s1", PhaseAction, 0, 1)
			o, _ := json.Marshal(orchestrix.Outcome{CommandID: cid, CorrelationID: Correlation("transfer", "s1"), Status: orchestrix.OutcomeAccepted})
			m := InboxMessage(rt.Inbox(), "s1", KindOutcome, "outcome:"+cid, o)
			rec := &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: m.Headers}
			crash := errors.New("crash")
			s.crashAt = func(p string) error {
				if p == point {
					return crash
				}
				return nil
			}
			if err := rt.Handle(ctx, rec); !errors.Is(err, crash) {
				t.Fatalf("handle with a crash at %s: %v", point, err)
			}
			if after := snapshot(); after != before {
				t.Fatalf("a crash at %s left %s, before %s", point, after, before)
			}
			s.crashAt = nil
			for range 2 {
				if err := rt.Handle(ctx, rec); err != nil {
					t.Fatal(err)
				}
			}
			i, err := s.Get(ctx, "transfer", "s1")
			if err != nil || i.Version != 2 || i.Step != 1 {
				t.Fatalf("after the redelivery: %+v %v", i, err)
			}
			if out := be.outbox(t); len(out) != 2 {
				t.Fatalf("%d commands in the outbox, want 2", len(out))
			}
		})
	}
}
