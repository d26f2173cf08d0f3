package outbox_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores/memory"
)

// TestTransactionalIDMismatch: relays of one events topic with different
// transactional IDs hold different leader locks and would both publish;
// a relay that finds another ID's session in the checkpoint topic says
// so, and one that finds only its own says nothing.
func TestTransactionalIDMismatch(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	store := memory.New()
	createTopic(t, seeds, "txn.events", 1)
	want := map[string]expected{}
	appendEvents(t, store, "a", 3, 30, want)

	run := func(txnID string) string {
		t.Helper()
		logs := &testenv.SyncBuffer{}
		r, err := outbox.NewRelay(store, seeds, outbox.ToTopic("txn.events"), outbox.TransactionalID(txnID), outbox.Instance(txnID),
			outbox.PollInterval(time.Millisecond, 20*time.Millisecond), outbox.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
		if err != nil {
			t.Fatal(err)
		}
		stop := runRelay(t, r)
		waitFor(t, time.Minute, "the relay caught up", func() bool { return r.Stats().Checkpoint.Events.Position == 30 })
		if err := stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		return logs.String()
	}
	const warning = "different transactional ID"
	if logs := run("relay-a"); strings.Contains(logs, warning) {
		t.Fatalf("the first relay warned:\n%s", logs)
	}
	if logs := run("relay-a"); strings.Contains(logs, warning) {
		t.Fatalf("a relay with the same ID warned:\n%s", logs)
	}
	if logs := run("relay-b"); !strings.Contains(logs, warning) || !strings.Contains(logs, "other_transactional_id=relay-a") {
		t.Fatalf("a relay with another ID did not warn:\n%s", logs)
	}
}
