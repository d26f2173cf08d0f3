// Package testdomain is the core's own small domain for its tests, so that
// the runtimes' tests do not depend on the examples: a ledger that is
// opened under a name and then takes postings, a positive amount a credit,
// a negative one a debit, refused when the balance would go below zero.
//
// It has what those tests need of a domain: a command that fails
// validation (an Open without a name, a Post of zero), commands refused
// by the state (a Post before Open, a second Open, a debit past the
// balance: code "insufficient_funds"), and events that change a balance.
// Type names start with "ledger.". Registry and Aggregate are the wiring
// most tests repeat, failing the test on error.
//
// Only tests import it; TestOnlyTestsImport checks that.
package testdomain

import (
	"errors"
	"testing"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
)

// Ledger is the aggregate's state. A ledger is open once it has a name.
type Ledger struct {
	Name    string `json:"name,omitempty"`
	Balance int64  `json:"balance"`
}

// Open is the command that opens a ledger under a name.
type Open struct {
	Name string `json:"name"`
}

// Validate requires a name.
func (c Open) Validate() error {
	var v orchestrix.Validation
	v.Check(c.Name != "", "name", "required", "a ledger needs a name")
	return v.Err()
}

func (c Open) decide(l Ledger) (any, error) {
	if l.Name != "" {
		return nil, orchestrix.Reject("already_open", "the ledger is open already")
	}
	return Opened(c), nil
}

// Post is the command that posts Amount to an open ledger: a credit when
// positive, a debit when negative, refused with "insufficient_funds" when
// the balance would go below zero.
type Post struct {
	Amount int64 `json:"amount"`
}

// Validate refuses a posting of zero.
func (c Post) Validate() error {
	var v orchestrix.Validation
	v.Check(c.Amount != 0, "amount", "nonzero", "a posting of zero posts nothing")
	return v.Err()
}

func (c Post) decide(l Ledger) (any, error) {
	switch {
	case l.Name == "":
		return nil, orchestrix.Reject("not_open", "the ledger is not open")
	case l.Balance+c.Amount < 0:
		return nil, orchestrix.Reject("insufficient_funds", "the balance would go below zero")
	}
	return Posted(c), nil
}

// Opened is the event of an opened ledger.
type Opened struct {
	Name string `json:"name"`
}

func (e Opened) apply(l Ledger) Ledger { l.Name = e.Name; return l }

// Posted is the event of a posting; its Amount is added to the balance.
type Posted struct {
	Amount int64 `json:"amount"`
}

func (e Posted) apply(l Ledger) Ledger { l.Balance += e.Amount; return l }

// Decide is the ledger's decision function: each command decides for
// itself, with one event when accepted. A payload that is no ledger
// command is refused with "unknown_command".
func Decide(l Ledger, c orchestrix.Command) ([]any, error) {
	cmd, ok := c.Payload.(interface{ decide(Ledger) (any, error) })
	if !ok {
		return nil, orchestrix.Reject("unknown_command", "a ledger takes Open and Post")
	}
	e, err := cmd.decide(l)
	if err != nil {
		return nil, err
	}
	return []any{e}, nil
}

// Evolve is the ledger's evolve function; it ignores an event that is no
// ledger event.
func Evolve(l Ledger, e orchestrix.Event) Ledger {
	if ev, ok := e.Payload.(interface{ apply(Ledger) Ledger }); ok {
		return ev.apply(l)
	}
	return l
}

// Register adds the ledger's commands and events to reg, as JSON under
// their type names (TypeOpen and the others).
func Register(reg *codec.Registry) error {
	return errors.Join(
		codec.RegisterJSON[Open](reg, TypeOpen), codec.RegisterJSON[Opened](reg, TypeOpened),
		codec.RegisterJSON[Post](reg, TypePost), codec.RegisterJSON[Posted](reg, TypePosted))
}

// Type names of the ledger's commands and events, under which Register
// adds them.
const (
	TypeOpen   = "ledger.Open"
	TypePost   = "ledger.Post"
	TypeOpened = "ledger.Opened"
	TypePosted = "ledger.Posted"
)

// NewAggregate returns the ledger aggregate type, named "ledger".
func NewAggregate(opts ...aggregates.Option) (*aggregates.Aggregate[Ledger], error) {
	return aggregates.New("ledger", Decide, Evolve, opts...)
}

// Registry returns a new registry holding the ledger's types (Register);
// an error fails t.
func Registry(t testing.TB) *codec.Registry {
	t.Helper()
	reg := codec.NewRegistry()
	fatal(t, Register(reg))
	return reg
}

// Aggregate returns NewAggregate(opts...); an error fails t.
func Aggregate(t testing.TB, opts ...aggregates.Option) *aggregates.Aggregate[Ledger] {
	t.Helper()
	a, err := NewAggregate(opts...)
	fatal(t, err)
	return a
}

func fatal(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
