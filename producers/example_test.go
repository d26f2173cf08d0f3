package producers_test

import (
	"context"
	"fmt"
	"time"

	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

type Deposit struct{ Amount int64 }

// A Sender puts a command on its topic as a CloudEvent in Kafka binary
// mode, keyed by the aggregate ID so that one aggregate's commands stay
// in order. On kfake here: pass your brokers instead.
func ExampleSender() {
	fake, _ := kfake.NewCluster(kfake.NumBrokers(1))
	defer fake.Close()
	seeds := fake.ListenAddrs()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cl, _ := producers.NewClient(seeds) // idempotent, acks=all
	defer cl.Close()
	if _, err := topics.Ensure(ctx, kadm.NewClient(cl), topics.Spec{Name: "banking.commands", Partitions: 3, ReplicationFactor: 1}); err != nil {
		fmt.Println(err)
		return
	}
	reg := codec.NewRegistry()
	_ = codec.RegisterJSON[Deposit](reg, "banking.Deposit")
	sender, _ := producers.NewSender(cl, reg, "banking.commands", "/teller")
	cmd, _ := sender.Command("acct-1", Deposit{Amount: 10})
	if err := sender.Send(ctx, cmd); err != nil {
		fmt.Println(err)
		return
	}

	reader, _ := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics("banking.commands"))
	defer reader.Close()
	r := reader.PollRecords(ctx, 1).Records()[0]
	got, _ := codec.RecordToCommand(r)
	_ = reg.DecodeCommand(&got)
	fmt.Printf("key %s, type %s, source %s, payload %+v, same ID %v\n", r.Key, got.Type, got.Source, got.Payload, got.ID == cmd.ID)
	// Output:
	// key acct-1, type banking.Deposit, source /teller, payload {Amount:10}, same ID true
}
