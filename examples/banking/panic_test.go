package banking_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/topics"
)

// TestDecidePanicIntegration runs the aggregate processor on the real
// broker with a decide that panics on one command (acct-0007's deposit
// 2): the process lives on, every other command of every account lands
// (acct-0007's later deposits too), and the command is in the dead-letter
// topic with reason "panic". The processor is a BatchHandler that combines
// the partitions of a poll, so the panic escapes a combined round.
func TestDecidePanicIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	bc := testenv.Name("bank")
	setupTopics(t, seeds, bc, 4)
	const bad, badAmount = "acct-0007", 2
	decide := func(a banking.Account, c orchestrix.Command) ([]any, error) {
		if d, ok := c.Payload.(banking.Deposit); ok && c.AggregateID == bad && d.Amount == badAmount {
			panic(fmt.Sprintf("decide: deposit %d of %s", d.Amount, c.AggregateID))
		}
		return banking.Decide(a, c)
	}
	reg := codec.NewRegistry()
	if err := banking.Register(reg); err != nil {
		t.Fatal(err)
	}
	agg, err := aggregates.New("account", decide, banking.Evolve)
	if err != nil {
		t.Fatal(err)
	}
	store := memory.New()
	repo, err := aggregates.NewRepository(agg, store, reg, "/"+bc)
	if err != nil {
		t.Fatal(err)
	}
	proc, err := aggregates.NewProcessor(repo)
	if err != nil {
		t.Fatal(err)
	}
	g, err := consumers.New(seeds, bc+"-aggregates", []string{topics.Commands(bc)}, proc, consumers.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()

	cl := testenv.Client(t, seeds)
	sender, err := producers.NewSender(cl, reg, topics.Commands(bc), "/test")
	if err != nil {
		t.Fatal(err)
	}
	const aggs, total = 20, 200 // 10 commands per account: open, deposits 1..9
	for _, round := range workload(t, sender, aggs, total) {
		send(t, sender, cl, round)
	}
	waitFor(t, 60*time.Second, func() bool { return countAll(t, store) >= total-1 })
	dl := readDeadLetters(t, seeds, consumers.DeadLetterTopic(topics.Commands(bc), bc+"-aggregates"), 1)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("processor: %v", err)
	}
	if n := countAll(t, store); n != total-1 {
		t.Errorf("%d events, want %d", n, total-1)
	}
	var amounts []int64
	for e, err := range store.ReadStream(t.Context(), bad, 0) {
		if err != nil {
			t.Fatal(err)
		}
		if err := reg.DecodeEvent(&e); err != nil {
			t.Fatal(err)
		}
		if d, ok := e.Payload.(banking.Deposited); ok {
			amounts = append(amounts, d.Amount)
		}
	}
	if fmt.Sprint(amounts) != "[1 3 4 5 6 7 8 9]" {
		t.Errorf("%s deposits %v, want all but %d", bad, amounts, badAmount)
	}
	if len(dl) != 1 || string(dl[0].Key) != bad {
		t.Fatalf("dead letters %d, want %s's deposit", len(dl), bad)
	}
	h := map[string]string{}
	for _, x := range dl[0].Headers {
		h[x.Key] = string(x.Value)
	}
	if h[consumers.HeaderReason] != consumers.ReasonPanic || !strings.Contains(h[consumers.HeaderError], "decide: deposit 2 of acct-0007") ||
		!strings.Contains(h[consumers.HeaderStack], "panic_test.go") {
		t.Errorf("dead letter: reason %q, error %q, stack:\n%s", h[consumers.HeaderReason], h[consumers.HeaderError], h[consumers.HeaderStack])
	}
}
