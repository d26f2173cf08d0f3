package esdb_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestProcessorRedeliveredRejectionOnESDB: the aggregates processor on
// the ESDB store records a poll's refused withdrawal together with the
// deposit behind it; after a crash before the offsets were committed the
// poll is delivered again, to a new processor, and the withdrawal keeps
// its first answer (rejected) though the balance would now cover it — in
// the combined path, the one-by-one path and Repository.Handle. Before the
// store recorded rejections, the redelivered withdrawal went through.
func TestProcessorRedeliveredRejectionOnESDB(t *testing.T) {
	store, _ := newStore(t)
	reg := testdomain.Registry(t)
	repo, err := aggregates.NewRepository(testdomain.Aggregate(t), store, reg, "/test")
	if err != nil {
		t.Fatal(err)
	}
	newProcessor := func() *aggregates.Processor[testdomain.Ledger] {
		p, err := aggregates.NewProcessor(repo)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	command := func(id string, payload any) orchestrix.Command {
		return orchestrix.Command{Metadata: orchestrix.Metadata{ID: id, Source: "/test", Time: time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)}, AggregateID: "a", Payload: payload}
	}
	var poll []*kgo.Record
	for i, c := range []orchestrix.Command{
		command("open", testdomain.Open{Name: "ada"}),
		command("dep-50", testdomain.Post{Amount: 50}),
		command("wd-100", testdomain.Post{Amount: -100}),
		command("dep-100", testdomain.Post{Amount: 100}),
	} {
		if err := reg.EncodeCommand(&c); err != nil {
			t.Fatal(err)
		}
		r, err := codec.CommandToRecord("bank.commands", c)
		if err != nil {
			t.Fatal(err)
		}
		r.Offset = int64(i)
		poll = append(poll, r)
	}
	handle := func(p *aggregates.Processor[testdomain.Ledger]) {
		t.Helper()
		for i, err := range p.HandleBatch(context.Background(), poll) {
			if err != nil {
				t.Fatalf("record %d: %v", i, err)
			}
		}
	}
	handle(newProcessor())
	prev, ok, err := store.FindCommand(t.Context(), "wd-100")
	if err != nil || !ok || prev.Rejection == nil {
		t.Fatalf("rejected withdrawal recorded = %+v, %v, %v; want its rejection", prev, ok, err)
	}
	// Redelivery after a crash: a new processor, an empty cache.
	p2 := newProcessor()
	handle(p2)
	if err := p2.Handle(t.Context(), poll[2]); err != nil {
		t.Fatalf("one by one: %v", err)
	}
	root, err := repo.Load(t.Context(), "a")
	if err != nil || root.State.Balance != 150 || root.Version != 3 {
		t.Fatalf("account = version %d balance %d, %v; want version 3, balance 150 (the withdrawal stays refused)", root.Version, root.State.Balance, err)
	}
	_, err = repo.Handle(t.Context(), command("wd-100", testdomain.Post{Amount: -100}))
	var rej *orchestrix.Rejection
	if !errors.As(err, &rej) || rej.Code != "insufficient_funds" {
		t.Fatalf("Repository.Handle of the recorded rejection = %v, want its insufficient_funds rejection", err)
	}
}
