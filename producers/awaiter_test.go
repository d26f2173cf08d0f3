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
	"github.com/twmb/franz-go/pkg/kgo"
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
