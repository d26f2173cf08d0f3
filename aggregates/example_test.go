package aggregates_test

import (
	"context"
	"fmt"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Counter must never pass 10: the smallest aggregate.
type Counter struct{ N int }

type Increment struct{ By int }
type Incremented struct{ By int }

func decideCounter(c Counter, cmd orchestrix.Command) ([]any, error) {
	inc := cmd.Payload.(Increment)
	if c.N+inc.By > 10 {
		return nil, orchestrix.Reject("over_limit", fmt.Sprintf("%d + %d is over 10", c.N, inc.By))
	}
	return []any{Incremented(inc)}, nil
}

func evolveCounter(c Counter, e orchestrix.Event) Counter {
	if inc, ok := e.Payload.(Incremented); ok {
		c.N += inc.By
	}
	return c
}

// A repository handles one command at a time: load, decide, append with
// the loaded version.
func ExampleRepository_Handle() {
	reg := codec.NewRegistry()
	_ = codec.RegisterJSON[Increment](reg, "counter.Increment")
	_ = codec.RegisterJSON[Incremented](reg, "counter.Incremented")
	counters, _ := aggregates.New("counter", decideCounter, evolveCounter)
	repo, _ := aggregates.NewRepository(counters, memory.New(), reg, "/counters")

	ctx := context.Background()
	for i, by := range []int{4, 5, 3} {
		cmd := orchestrix.Command{Metadata: orchestrix.Metadata{ID: fmt.Sprintf("cmd-%d", i), Source: "/example"}, AggregateID: "c-1", Payload: Increment{By: by}}
		res, err := repo.Handle(ctx, cmd)
		fmt.Printf("+%d: version %d, err %v\n", by, res.ToVersion, err)
	}
	root, _ := repo.Load(ctx, "c-1")
	fmt.Println("counter", root.State.N, "at version", root.Version)
	// Output:
	// +4: version 1, err <nil>
	// +5: version 2, err <nil>
	// +3: version 2, err rejected: over_limit: 9 + 3 is over 10
	// counter 9 at version 2
}

// The whole pipeline on the embedded broker: a sender puts commands on
// the commands topic (key = aggregate ID), a consumer group runs the
// processor, which stores the events and publishes each command's
// outcome; an awaiter reads them back. Replace kfake by your brokers and
// memory.New by stores/postgres, and nothing else changes.
func ExampleProcessor() {
	fake, _ := kfake.NewCluster(kfake.NumBrokers(1))
	defer fake.Close()
	seeds := fake.ListenAddrs()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	reg := codec.NewRegistry()
	_ = codec.RegisterJSON[Increment](reg, "counter.Increment")
	_ = codec.RegisterJSON[Incremented](reg, "counter.Incremented")
	counters, _ := aggregates.New("counter", decideCounter, evolveCounter)
	store := memory.New()
	repo, _ := aggregates.NewRepository(counters, store, reg, "/counters")

	cl, _ := producers.NewClient(seeds)
	defer cl.Close()
	if _, err := topics.Ensure(ctx, kadm.NewClient(cl), append(topics.ForContext("counters", 3, 1),
		topics.Spec{Name: consumers.DeadLetterTopic("counters.commands", "counters-aggregates"), Partitions: 1, ReplicationFactor: 1})...); err != nil {
		fmt.Println(err)
		return
	}
	outcomes, _ := producers.NewClient(seeds, kgo.ProducerLinger(0))
	defer outcomes.Close()
	processor, _ := aggregates.NewProcessor(repo, aggregates.WithOutcomes(outcomes, "counters.outcomes"))
	group, _ := consumers.New(seeds, "counters-aggregates", []string{"counters.commands"}, processor)
	awaiter, _ := producers.NewAwaiter(seeds, "counters.outcomes")
	go func() { _ = group.Run(ctx) }()
	go func() { _ = awaiter.Run(ctx) }()

	sender, _ := producers.NewSender(cl, reg, "counters.commands", "/example")
	var lines []string
	for _, by := range []int{4, 5, 3} {
		cmd, _ := sender.Command("c-1", Increment{By: by})
		done := make(chan orchestrix.Outcome, 1)
		awaiter.Notify(cmd.ID, func(o orchestrix.Outcome) { done <- o })
		if err := sender.Send(ctx, cmd); err != nil {
			fmt.Println(err)
			return
		}
		o := <-done
		lines = append(lines, fmt.Sprintf("+%d: %s %s", by, o.Status, o.Code))
	}
	fmt.Println(lines)
	root, _ := repo.Load(ctx, "c-1")
	fmt.Println("counter", root.State.N, "at version", root.Version)
	// Output:
	// [+4: accepted  +5: accepted  +3: rejected over_limit]
	// counter 9 at version 2
}
