package sagas

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestDefinitionVersions: deploying version 2 of a saga (an extra step)
// leaves an instance started on version 1 on version 1's steps to its
// end, starts new instances on version 2, and a runtime without version
// 1 dead-letters version 1's inputs (ErrUnknownVersion) instead of
// running them on the wrong steps.
func TestDefinitionVersions(t *testing.T) {
	ctx := t.Context()
	reg := codec.NewRegistry()
	for _, err := range []error{codec.RegisterJSON[debit](reg, "t.Debit"), codec.RegisterJSON[credit](reg, "t.Credit"),
		codec.RegisterJSON[notify](reg, "t.Notify")} {
		if err != nil {
			t.Fatal(err)
		}
	}
	step := func(name string, p any) Step[xfer] { return Step[xfer]{Name: name, Action: cmd("c", "a", p)} }
	v1, err := Define("transfer", 1, []Step[xfer]{step("debit", debit{}), step("credit", credit{})})
	if err != nil {
		t.Fatal(err)
	}
	v2, err := Define("transfer", 2, []Step[xfer]{step("debit", debit{}), step("credit", credit{}), step("notify", notify{})})
	if err != nil {
		t.Fatal(err)
	}
	store := NewMemoryStore()
	old, err := NewRuntime(store, reg, []Saga{v1})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Start(ctx, "s1", xfer{}); err != nil {
		t.Fatal(err)
	}
	both, err := NewRuntime(store, reg, []Saga{v2, v1})
	if err != nil {
		t.Fatal(err)
	}
	if err := both.Start(ctx, "s2", xfer{}); err != nil {
		t.Fatal(err)
	}
	reply := func(rt *Runtime, id string, step int) error {
		cid := CommandID("transfer", id, PhaseAction, step, 1)
		o, _ := json.Marshal(orchestrix.Outcome{CommandID: cid, CorrelationID: Correlation("transfer", id), Status: orchestrix.OutcomeAccepted})
		m := InboxMessage(rt.Inbox(), id, KindOutcome, "outcome:"+cid, o)
		return rt.Handle(ctx, &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: m.Headers})
	}
	for _, id := range []string{"s1", "s2"} {
		for s := range 2 {
			if err := reply(both, id, s); err != nil {
				t.Fatal(err)
			}
		}
	}
	s1, _ := store.Get(ctx, "transfer", "s1")
	s2, _ := store.Get(ctx, "transfer", "s2")
	if s1.DefinitionVersion != 1 || s1.Status != StatusCompleted || s2.DefinitionVersion != 2 || s2.Status != StatusRunning || s2.Step != 2 {
		t.Fatalf("s1 %+v\ns2 %+v", s1, s2)
	}
	if err := old.Start(ctx, "s3", xfer{}); err != nil {
		t.Fatal(err)
	}
	only2, err := NewRuntime(store, reg, []Saga{v2})
	if err != nil {
		t.Fatal(err)
	}
	if err := reply(only2, "s3", 0); !consumers.IsPermanent(err) || !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("a version 1 input on a runtime without version 1: %v", err)
	}
	if _, err := NewRuntime(store, reg, []Saga{v1, v1}); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Fatalf("a version given twice: %v", err)
	}
}
