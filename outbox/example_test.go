package outbox_test

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// A relay publishing a memory store to an in-process Kafka (kfake); the
// same code runs on stores/postgres and a real cluster.
func ExampleRelay() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cluster, _ := kfake.NewCluster(kfake.NumBrokers(1))
	defer cluster.Close()
	seeds := cluster.ListenAddrs()
	admin, _ := kgo.NewClient(kgo.SeedBrokers(seeds...))
	defer admin.Close()
	_, _ = kadm.NewClient(admin).CreateTopic(ctx, 3, 1, nil, "banking.events") // topics are created explicitly

	store := memory.New()
	for _, amount := range []string{"10", "20", "30"} {
		_, _ = store.Append(ctx, "acct-1", stores.Any, []orchestrix.Event{{
			Metadata: orchestrix.Metadata{Type: "banking.Deposited", Source: "/banking"},
			Data:     []byte(`{"amount":` + amount + `}`), ContentType: "application/json",
		}})
	}

	relay, err := outbox.NewRelay(store, seeds, outbox.ToTopic("banking.events"))
	if err != nil {
		fmt.Println(err)
		return
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(runCtx) }()
	for relay.Stats().Events < 3 {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	fmt.Println("run:", <-done)

	// Consumers read with read_committed.
	cl, _ := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics("banking.events"),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	defer cl.Close()
	var lines []string
	for len(lines) < 3 {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			e, _ := codec.RecordToEvent(r)
			lines = append(lines, fmt.Sprintf("key=%s v%d position=%d %s %s", r.Key, e.Version, e.Position, e.Type, e.Data))
		})
	}
	slices.Sort(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	// Output:
	// run: <nil>
	// key=acct-1 v1 position=1 banking.Deposited {"amount":10}
	// key=acct-1 v2 position=2 banking.Deposited {"amount":20}
	// key=acct-1 v3 position=3 banking.Deposited {"amount":30}
}
