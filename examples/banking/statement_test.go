package banking_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
)

func event(typ, data string) orchestrix.Event {
	return orchestrix.Event{Metadata: orchestrix.Metadata{Type: typ, Source: "/test", Time: time.Now(), CorrelationID: "saga:x:1"},
		Data: []byte(data), ContentType: "application/json"}
}

// TestStatementMemory: the statement projection on the memory backend
// equals the fold of each account's stream, with running balances.
func TestStatementMemory(t *testing.T) {
	store := memory.New()
	for i, acc := range []string{"a", "b"} {
		evs := []orchestrix.Event{event(banking.TypeAccountOpened, `{"owner":"x"}`)}
		for n := range 5 {
			evs = append(evs, event(banking.TypeDeposited, fmt.Sprintf(`{"amount":%d}`, 10*(n+i+1))),
				event(banking.TypeWithdrawn, fmt.Sprintf(`{"amount":%d}`, n+1)))
		}
		for _, e := range evs { // one append each: the shards see them in several batches
			if _, err := store.Append(t.Context(), acc, stores.Any, []orchestrix.Event{e}); err != nil {
				t.Fatal(err)
			}
		}
	}
	back := projections.NewMemory(banking.StatementTable)
	r, err := projections.New(banking.StatementProjection, back, projections.FromStore(store), banking.ApplyStatementMemory,
		projections.Shards(2), projections.BatchSize(3), projections.PollInterval(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.Run(t.Context()) }()
	if err := r.WaitForNonStale(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, acc := range []string{"a", "b"} {
		want, err := banking.StreamStatement(t.Context(), store, acc)
		if err != nil {
			t.Fatal(err)
		}
		got := banking.MemoryStatement(back, acc)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: statement\n%+v\nwant\n%+v", acc, got, want)
		}
		if len(got) != 11 || got[0].Kind != "opened" || got[10].Ref != "saga:x:1" {
			t.Fatalf("%s: %+v", acc, got)
		}
	}
	if last := banking.MemoryStatement(back, "a"); last[10].Balance != 10+20+30+40+50-15 {
		t.Fatalf("a ends at %d", last[10].Balance)
	}
}

// TestStatementLineOf: bad data is an error naming the event; other
// event types make no line.
func TestStatementLineOf(t *testing.T) {
	e := event(banking.TypeDeposited, `{"amount":"ten"}`)
	e.StreamID, e.Version = "a", 3
	if _, _, err := banking.StatementLineOf(e, 0); err == nil {
		t.Fatal("no error for a bad amount")
	}
	if _, ok, err := banking.StatementLineOf(event("other.Type", `{}`), 0); ok || err != nil {
		t.Fatalf("ok %v, err %v for another type", ok, err)
	}
}

// TestTransferResult names each end of a transfer.
func TestTransferResult(t *testing.T) {
	for _, tc := range []struct {
		status sagas.Status
		t      banking.Transfer
		want   string
	}{
		{sagas.StatusCompleted, banking.Transfer{Debited: true}, banking.ResultCompleted},
		{sagas.StatusCompensated, banking.Transfer{Debited: true}, banking.ResultRefunded},
		{sagas.StatusCompensated, banking.Transfer{}, banking.ResultDeclined},
		{sagas.StatusCompensationFailed, banking.Transfer{Debited: true}, banking.ResultCompensationFailed},
		{sagas.StatusRunning, banking.Transfer{}, banking.ResultRunning},
		{sagas.StatusCompensating, banking.Transfer{Debited: true}, banking.ResultRunning},
	} {
		if got := banking.TransferResult(tc.status, tc.t); got != tc.want {
			t.Errorf("%s %+v: %s, want %s", tc.status, tc.t, got, tc.want)
		}
	}
	if err := (banking.Transfer{From: "a", To: "a", Amount: 0}).Validate(); !errors.Is(err, orchestrix.ErrRejected) || !strings.Contains(err.Error(), "distinct") || !strings.Contains(err.Error(), "positive") {
		t.Errorf("a transfer to itself of 0: %v", err)
	}
	if err := (banking.Transfer{From: "a", To: "b", Amount: 5}).Validate(); err != nil {
		t.Errorf("a valid transfer: %v", err)
	}
	if _, err := banking.NewTransferSaga(banking.TransferSagaType("bank"), "bank.commands"); err != nil {
		t.Fatal(err)
	}
}
