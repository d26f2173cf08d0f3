package sagas

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// TestFenceIntegration: two members that both read version 1 of an
// instance (the one that lost its partition has not noticed) write their
// transitions at once: exactly one commits, the other gets ErrFenced and
// writes nothing — not its inbox row, so the input can be handled again.
func TestFenceIntegration(t *testing.T) {
	b := postgresBackend(t)
	ctx := t.Context()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := b.store.Apply(ctx, "t", "s1", "start", func(*Instance) (*Change, error) {
		return &Change{Instance: inst("s1", 1, StatusRunning, at), Transition: Transition{At: at}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	var read sync.WaitGroup
	read.Add(2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for k, input := range []string{"in-a", "in-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = b.store.Apply(ctx, "t", "s1", input, func(cur *Instance) (*Change, error) {
				read.Done()
				read.Wait() // both have read version 1
				next := *cur
				next.Version++
				next.Reason = input
				return &Change{Instance: next, Transition: Transition{At: at, InputID: input}}, nil
			})
		}()
	}
	wg.Wait()
	fenced := 0
	for _, err := range errs {
		switch {
		case errors.Is(err, ErrFenced):
			fenced++
		case err != nil:
			t.Fatal(err)
		}
	}
	got, err := b.store.Get(ctx, "t", "s1")
	if err != nil || fenced != 1 || got.Version != 2 {
		t.Fatalf("fenced %d, instance %+v, %v", fenced, got, err)
	}
	loser := "in-a"
	if got.Reason == "in-a" {
		loser = "in-b"
	}
	// The loser's input was not recorded: handled again, it applies to
	// version 2.
	if err := b.store.Apply(ctx, "t", "s1", loser, func(cur *Instance) (*Change, error) {
		if cur.Version != 2 {
			t.Errorf("the loser sees version %d", cur.Version)
		}
		return nil, nil
	}); err != nil {
		t.Fatalf("the fenced input again: %v", err)
	}
}

// TestBatchFenceIntegration: a batch and a single input that both read
// version 1 of an instance commit at once: one wins; if the batch loses,
// every input of it fails with ErrFenced and none is recorded.
func TestBatchFenceIntegration(t *testing.T) {
	b := postgresBackend(t)
	ctx := t.Context()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := b.store.Apply(ctx, "t", "s1", "start", func(*Instance) (*Change, error) {
		return &Change{Instance: inst("s1", 1, StatusRunning, at), Transition: Transition{At: at}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	var read sync.WaitGroup
	read.Add(2)
	bump := func(input string, wait bool) func(*Instance) (*Change, error) {
		return func(cur *Instance) (*Change, error) {
			if wait {
				read.Done()
				read.Wait()
			}
			next := *cur
			next.Version++
			next.Reason = input
			return &Change{Instance: next, Transition: Transition{At: at, InputID: input}}, nil
		}
	}
	var single error
	var batch []error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		single = b.store.Apply(ctx, "t", "s1", "one", bump("one", true))
	}()
	go func() {
		defer wg.Done()
		batch = b.store.ApplyBatch(ctx, "t", []Item{{SagaID: "s1", InputID: "b1", Decide: bump("b1", true)}, {SagaID: "s1", InputID: "b2", Decide: bump("b2", false)}})
	}()
	wg.Wait()
	got, err := b.store.Get(ctx, "t", "s1")
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case single == nil && errors.Is(batch[0], ErrFenced) && errors.Is(batch[1], ErrFenced):
		if got.Version != 2 || got.Reason != "one" {
			t.Fatalf("the single input won, the instance is %+v", got)
		}
		for _, in := range []string{"b1", "b2"} { // not recorded
			if err := b.store.Apply(ctx, "t", "s1", in, func(*Instance) (*Change, error) { return nil, nil }); err != nil {
				t.Fatalf("%s again: %v", in, err)
			}
		}
	case errors.Is(single, ErrFenced) && batch[0] == nil && batch[1] == nil:
		if got.Version != 3 || got.Reason != "b2" {
			t.Fatalf("the batch won, the instance is %+v", got)
		}
	default:
		t.Fatalf("single %v, batch %v", single, batch)
	}
}
