package consumers_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

type Registered struct{ Email string }
type Unsubscribed struct{ Email string }

// A group of one consumer runs a Router: each CloudEvent of the topic
// reaches the typed function of its type, in partition order; a failing
// call is retried through the policy's retry topic and then dead-lettered.
// On kfake here: pass your brokers instead.
func ExampleRouter() {
	fake, _ := kfake.NewCluster(kfake.NumBrokers(1))
	defer fake.Close()
	seeds := fake.ListenAddrs()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	policy := consumers.RetryTopics(100 * time.Millisecond).ThenDLQ()
	cl, _ := kgo.NewClient(kgo.SeedBrokers(seeds...))
	defer cl.Close()
	specs := []topics.Spec{{Name: "users.events", Partitions: 1, ReplicationFactor: 1}}
	for _, t := range policy.Topics("users.events", "mailer") {
		specs = append(specs, topics.Spec{Name: t, Partitions: 1, ReplicationFactor: 1})
	}
	if _, err := topics.Ensure(ctx, kadm.NewClient(cl), specs...); err != nil {
		fmt.Println(err)
		return
	}

	reg := codec.NewRegistry()
	_ = codec.RegisterJSON[Registered](reg, "users.Registered")
	_ = codec.RegisterJSON[Unsubscribed](reg, "users.Unsubscribed")
	var mu sync.Mutex
	var seen []string
	done := make(chan struct{})
	router := consumers.NewRouter(reg)
	_ = consumers.On(router, func(_ context.Context, e orchestrix.Event, p Registered) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, "welcome "+p.Email)
		return nil
	})
	_ = consumers.On(router, func(_ context.Context, e orchestrix.Event, p Unsubscribed) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, "goodbye "+p.Email)
		close(done)
		return nil
	})
	group, _ := consumers.New(seeds, "mailer", []string{"users.events"}, router, consumers.WithFailurePolicy(policy))
	go func() { _ = group.Run(ctx) }()

	for i, p := range []any{Registered{"ada@example.com"}, Unsubscribed{"ada@example.com"}} {
		e := orchestrix.Event{Metadata: orchestrix.Metadata{ID: fmt.Sprint("e", i), Source: "/users", Time: time.Now()}, StreamID: "user-1", Version: uint64(i + 1), Payload: p}
		_ = reg.EncodeEvent(&e)
		rec, _ := codec.EventToRecord("users.events", e)
		if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
			fmt.Println(err)
			return
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	fmt.Println(seen)
	// Output:
	// [welcome ada@example.com goodbye ada@example.com]
}
