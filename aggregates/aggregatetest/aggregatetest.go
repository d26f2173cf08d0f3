// Package aggregatetest is a given/when/then helper for aggregate tests:
// no store, no codec, just the aggregate's decide and evolve.
//
//	aggregatetest.For(t, accounts).
//		Given(Opened{Owner: "ada"}, Deposited{Amount: 10}).
//		When(Withdraw{Amount: 50}).
//		ThenRejected("insufficient_funds")
package aggregatetest

import (
	"errors"
	"reflect"
	"testing"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
)

// Scenario is one given/when/then case.
type Scenario[S any] struct {
	t      testing.TB
	agg    *aggregates.Aggregate[S]
	given  []any
	when   any
	events []any
	err    error
	ran    bool
}

// For starts a scenario for agg.
func For[S any](t testing.TB, agg *aggregates.Aggregate[S]) *Scenario[S] {
	return &Scenario[S]{t: t, agg: agg}
}

// Given sets the event payloads already in the stream.
func (s *Scenario[S]) Given(events ...any) *Scenario[S] { s.given = events; return s }

// When sets the command payload.
func (s *Scenario[S]) When(cmd any) *Scenario[S] { s.when = cmd; return s }

func (s *Scenario[S]) run() {
	if s.ran {
		return
	}
	s.ran = true
	var state S
	for i, p := range s.given {
		state = s.agg.Evolve(state, orchestrix.Event{StreamID: "test", Version: uint64(i + 1), Payload: p})
	}
	s.events, s.err = s.agg.Decide(state, orchestrix.Command{Metadata: orchestrix.Metadata{ID: "test-command"}, AggregateID: "test", Payload: s.when})
}

// Then asserts that the command produced exactly these event payloads.
func (s *Scenario[S]) Then(events ...any) {
	s.t.Helper()
	s.run()
	if s.err != nil {
		s.t.Fatalf("when %T: unexpected error: %v", s.when, s.err)
	}
	if len(events) == 0 && len(s.events) == 0 {
		return
	}
	if !reflect.DeepEqual(s.events, events) {
		s.t.Fatalf("when %T:\n got events %#v\nwant events %#v", s.when, s.events, events)
	}
}

// ThenRejected asserts a rejection. With a code, a *orchestrix.Rejection
// must carry it, or a *orchestrix.ValidationError must have a field error
// with it.
func (s *Scenario[S]) ThenRejected(code string) {
	s.t.Helper()
	s.run()
	if !errors.Is(s.err, orchestrix.ErrRejected) {
		s.t.Fatalf("when %T: got (%v, %v), want a rejection", s.when, s.events, s.err)
	}
	if code == "" {
		return
	}
	var r *orchestrix.Rejection
	if errors.As(s.err, &r) && r.Code == code {
		return
	}
	var v *orchestrix.ValidationError
	if errors.As(s.err, &v) {
		for _, f := range v.Fields {
			if f.Code == code {
				return
			}
		}
	}
	s.t.Fatalf("when %T: rejected with %v, want code %q", s.when, s.err, code)
}

// ThenError asserts that decide failed with an error matching target.
func (s *Scenario[S]) ThenError(target error) {
	s.t.Helper()
	s.run()
	if !errors.Is(s.err, target) {
		s.t.Fatalf("when %T: error %v, want %v", s.when, s.err, target)
	}
}
