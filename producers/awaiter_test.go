package producers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// publishOutcomes produces an accepted outcome for each command ID, keyed
// by it, as the aggregate processor does.
func publishOutcomes(t *testing.T, cl *kgo.Client, topic string, ids []string) {
	t.Helper()
	recs := make([]*kgo.Record, len(ids))
	for i, id := range ids {
		v, err := json.Marshal(orchestrix.Outcome{CommandID: id, AggregateID: "a", Status: orchestrix.OutcomeAccepted, FromVersion: 1, ToVersion: 1})
		if err != nil {
			t.Fatal(err)
		}
		recs[i] = &kgo.Record{Topic: topic, Key: []byte(id), Value: v}
	}
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func startAwaiter(t *testing.T, seeds []string, topic string) *producers.Awaiter {
	t.Helper()
	aw, err := producers.NewAwaiter(seeds, topic)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- aw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("awaiter run: %v", err)
		}
	})
	return aw
}

// TestAwaiterNotifyBeyondKeep registers commands before their outcomes
// arrive behind more than DefaultKeep others: every registration gets its
// outcome (the demo lost those that fell out of the recent window when it
// waited only after sending everything).
func TestAwaiterNotifyBeyondKeep(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	// One partition: the late Waits below need the last outcomes sent to
	// be the last to arrive. With four, outcomes arrive in no fixed order
	// across partitions, and the one waited for had sometimes arrived
	// more than DefaultKeep outcomes before the end (1 in ~5 runs of the
	// suite failed on it).
	topic := testenv.Topic(t, seeds, 1, nil)
	aw := startAwaiter(t, seeds, topic)
	cl := testenv.Client(t, seeds)

	n := producers.DefaultKeep*2 + 500
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("cmd-%06d", i)
	}
	var mu sync.Mutex
	got := map[string]orchestrix.Outcome{}
	all := make(chan struct{})
	// Every tenth command is registered before it is sent.
	want := 0
	for i := 0; i < n; i += 10 {
		want++
		aw.Notify(ids[i], func(o orchestrix.Outcome) {
			mu.Lock()
			defer mu.Unlock()
			if _, dup := got[o.CommandID]; dup {
				t.Errorf("outcome of %s delivered twice", o.CommandID)
			}
			got[o.CommandID] = o
			if len(got) == want {
				close(all)
			}
		})
	}
	publishOutcomes(t, cl, topic, ids)
	publishOutcomes(t, cl, topic, ids[:10]) // a redelivery: the first one won
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("%d of %d registered outcomes arrived", len(got), want)
	}
	if p := aw.Pending(); p != 0 {
		t.Errorf("Pending() = %d after every outcome arrived, want 0", p)
	}
	// The last DefaultKeep outcomes are still there for a late Wait.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if o, err := aw.Wait(ctx, ids[n-1]); err != nil || o.CommandID != ids[n-1] {
		t.Fatalf("late Wait for a recent outcome = %+v, %v", o, err)
	}
	// A Notify after the outcome arrived is called at once.
	if _, err := aw.Wait(ctx, ids[n-2]); err != nil {
		t.Fatal(err)
	}
	called := false
	aw.Notify(ids[n-2], func(orchestrix.Outcome) { called = true })
	if !called {
		t.Error("Notify for a recent outcome did not call back at once")
	}
}

func TestAwaiterWaitAndForget(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	topic := testenv.Topic(t, seeds, 1, nil)
	aw := startAwaiter(t, seeds, topic)
	cl := testenv.Client(t, seeds)

	// A Wait that times out leaves no registration behind.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	_, err := aw.Wait(ctx, "never")
	cancel()
	if !errors.Is(err, producers.ErrNoOutcome) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait without outcome = %v, want ErrNoOutcome and DeadlineExceeded", err)
	}
	if p := aw.Pending(); p != 0 {
		t.Fatalf("Pending() = %d after a Wait timed out, want 0", p)
	}

	// Two waits on one command both return; a forgotten one is not called.
	aw.Notify("forgotten", func(orchestrix.Outcome) { t.Error("a forgotten registration was called") })
	aw.Forget("forgotten")
	results := make(chan error, 2)
	for range 2 {
		go func() {
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			o, err := aw.Wait(ctx, "c-1")
			if err == nil && o.Status != orchestrix.OutcomeAccepted {
				err = fmt.Errorf("status %q", o.Status)
			}
			results <- err
		}()
	}
	for aw.Pending() == 0 {
		time.Sleep(time.Millisecond)
	}
	publishOutcomes(t, cl, topic, []string{"forgotten", "c-1"})
	for range 2 {
		if err := <-results; err != nil {
			t.Fatalf("Wait: %v", err)
		}
	}
}

// TestAwaiterOutcomeDuringStartListing: an outcome appended to an empty
// partition while the awaiter lists where to start is delivered. With
// franz-go's AfterMilli reset the awaiter listed by time (nothing yet),
// then the end in a second request; an outcome appended between the two
// was skipped (the demo lost 19 to 95 of 2,000 outcomes so on a loaded
// machine). kfake holds the first end listing until the outcome is in.
func TestAwaiterOutcomeDuringStartListing(t *testing.T) {
	const topic = "outcomes"
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	seeds := fake.ListenAddrs()
	prod := testenv.Client(t, seeds, kgo.ProducerLinger(0))
	published := make(chan error, 1)
	var once sync.Once
	fake.ControlKey(int16(kmsg.ListOffsets), func(req kmsg.Request) (kmsg.Response, error, bool) {
		fake.KeepControl()
		for _, rt := range req.(*kmsg.ListOffsetsRequest).Topics {
			for _, rp := range rt.Partitions {
				if rp.Timestamp == -1 {
					once.Do(func() {
						fake.SleepControl(func() {
							v, _ := json.Marshal(orchestrix.Outcome{CommandID: "c1", AggregateID: "a", Status: orchestrix.OutcomeAccepted, FromVersion: 1, ToVersion: 1})
							published <- prod.ProduceSync(context.Background(), &kgo.Record{Topic: topic, Key: []byte("c1"), Value: v}).FirstErr()
						})
					})
				}
			}
		}
		return nil, nil, false
	})
	a, err := producers.NewAwaiter(seeds, topic)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan orchestrix.Outcome, 1)
	a.Notify("c1", func(o orchestrix.Outcome) { got <- o })
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case err := <-published:
		if err != nil {
			t.Fatalf("publish during the listing: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the awaiter never listed an end offset")
	}
	select {
	case o := <-got:
		if o.CommandID != "c1" {
			t.Fatalf("outcome %+v", o)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the outcome appended while the awaiter listed its start offsets was skipped")
	}
}
