package sagas_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// A money transfer on the embedded broker and the memory stores: the
// processor of a ledger aggregate (Post credits an amount, or debits it
// when negative, and is refused when the balance would go below zero)
// answers the saga's commands, the forwarder brings the outcomes back to
// the saga's inbox, the runtime takes the next step.
// With stores/postgres, sagas.NewPostgresStore and the outbox relay in
// place of MemoryStore.Publish, nothing else changes.
func ExampleRuntime() {
	fake, _ := kfake.NewCluster(kfake.NumBrokers(1))
	defer fake.Close()
	seeds := fake.ListenAddrs()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	reg := codec.NewRegistry()
	_ = testdomain.Register(reg)
	cl, _ := producers.NewClient(seeds, kgo.ProducerLinger(0))
	defer cl.Close()
	_, err := topics.Ensure(ctx, kadm.NewClient(cl), append(topics.ForContext("bank", 2, 1),
		topics.Spec{Name: sagas.InboxTopic("transfer"), Partitions: 2, ReplicationFactor: 1},
		topics.Spec{Name: consumers.DeadLetterTopic("bank.commands", "bank-aggregates"), Partitions: 1, ReplicationFactor: 1},
		topics.Spec{Name: consumers.DeadLetterTopic(sagas.InboxTopic("transfer"), "transfer-sagas"), Partitions: 1, ReplicationFactor: 1},
		topics.Spec{Name: consumers.DeadLetterTopic("bank.outcomes", "bank-forwarder"), Partitions: 1, ReplicationFactor: 1})...)
	if err != nil {
		fmt.Println(err)
		return
	}

	// The participant: the ledger aggregate.
	accounts, _ := testdomain.NewAggregate()
	events := memory.New()
	repo, _ := aggregates.NewRepository(accounts, events, reg, "/bank")
	processor, _ := aggregates.NewProcessor(repo, aggregates.WithOutcomes(cl, "bank.outcomes"))
	bank, _ := consumers.New(seeds, "bank-aggregates", []string{"bank.commands"}, processor)

	// The saga.
	type Transfer struct {
		From, To string
		Amount   int64
	}
	on := func(agg string, p any) sagas.Command {
		return sagas.Command{Topic: "bank.commands", AggregateID: agg, Payload: p}
	}
	transfer, err := sagas.Define("transfer", 1, []sagas.Step[Transfer]{
		{Name: "debit",
			Action:       func(s Transfer) (sagas.Command, error) { return on(s.From, testdomain.Post{Amount: -s.Amount}), nil },
			Compensation: func(s Transfer) (sagas.Command, error) { return on(s.From, testdomain.Post{Amount: s.Amount}), nil }},
		{Name: "credit",
			Action: func(s Transfer) (sagas.Command, error) { return on(s.To, testdomain.Post{Amount: s.Amount}), nil },
			Policy: sagas.Retry(100*time.Millisecond, 2)},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	store := sagas.NewMemoryStore()
	rt, _ := sagas.NewRuntime(store, reg, []sagas.Saga{transfer})
	fwd, _ := sagas.NewForwarder(cl, "bank.outcomes", "", rt)
	forwarder, _ := consumers.New(seeds, "bank-forwarder", fwd.Topics(), fwd)
	inbox, _ := consumers.New(seeds, "transfer-sagas", []string{rt.Inbox()}, rt)
	for _, run := range []func(context.Context) error{bank.Run, forwarder.Run, inbox.Run, rt.RunTimers,
		func(ctx context.Context) error { return store.Publish(ctx, cl) }} {
		go func() { _ = run(ctx) }()
	}

	sender, _ := producers.NewSender(cl, reg, "bank.commands", "/example")
	for _, p := range []struct {
		id string
		c  any
	}{{"alice", testdomain.Open{Name: "alice"}}, {"alice", testdomain.Post{Amount: 100}}, {"bob", testdomain.Open{Name: "bob"}}} {
		c, _ := sender.Command(p.id, p.c)
		_ = sender.Send(ctx, c)
	}
	// The saga's commands to alice and bob follow these on the same keys.
	_ = rt.Start(ctx, "t-1", Transfer{From: "alice", To: "bob", Amount: 30})    // completes
	_ = rt.Start(ctx, "t-2", Transfer{From: "alice", To: "carol", Amount: 20})  // carol has no account: debit undone
	_ = rt.Start(ctx, "t-3", Transfer{From: "alice", To: "bob", Amount: 1_000}) // too much: nothing to undo
	for _, id := range []string{"t-1", "t-2", "t-3"} {
		for {
			i, err := store.Get(ctx, "transfer", id)
			if err == nil && i.Status.Terminal() {
				fmt.Println(strings.TrimSpace(fmt.Sprint(id, " ", i.Status, " ", i.Reason)))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, id := range []string{"alice", "bob"} {
		root, _ := repo.Load(ctx, id)
		fmt.Println(id, root.State.Balance)
	}
	// Output:
	// t-1 completed
	// t-2 compensated step 1 (credit) failed 2 times: rejected: not_open the ledger is not open
	// t-3 compensated step 0 (debit) failed 1 times: rejected: insufficient_funds the balance would go below zero
	// alice 70
	// bob 30
}
