package esdb

import (
	"fmt"
	"strconv"
	"time"

	"github.com/orchestrix/orchestrix"
)

// Precondition guards a write: write-events writes nothing and answers 409
// (ErrPreconditionFailed) unless every precondition holds. Build one with
// IsSubjectPristine, IsSubjectPopulated, IsSubjectOnEventID or
// IsEventQLQueryTrue.
type Precondition struct {
	typ       string
	subject   string
	eventID   string
	query     string
	recursive bool
}

// Recursive returns the precondition checking the subject together with
// all its nested subjects: IsSubjectPristine holds if none of them has an
// event, IsSubjectPopulated if any has one, IsSubjectOnEventID if the
// latest event among them has the ID. It needs the v2 API: on a server
// without it WriteEvents fails with ErrUnsupported before sending.
// IsEventQLQueryTrue has no recursive form; validation refuses it.
func (p Precondition) Recursive() Precondition {
	p.recursive = true
	return p
}

// IsSubjectPristine holds when the subject has no events.
func IsSubjectPristine(subject string) Precondition {
	return Precondition{typ: "isSubjectPristine", subject: subject}
}

// IsSubjectPopulated holds when the subject has at least one event.
func IsSubjectPopulated(subject string) Precondition {
	return Precondition{typ: "isSubjectPopulated", subject: subject}
}

// IsSubjectOnEventID holds when the subject's latest event has the ID.
func IsSubjectOnEventID(subject, eventID string) Precondition {
	return Precondition{typ: "isSubjectOnEventId", subject: subject, eventID: eventID}
}

// IsEventQLQueryTrue holds when the EventQL query returns true (a single
// boolean row, e.g. "FROM e IN events … PROJECT INTO COUNT() == 0").
func IsEventQLQueryTrue(query string) Precondition {
	return Precondition{typ: "isEventQlQueryTrue", query: query}
}

// String names the precondition.
func (p Precondition) String() string {
	r := ""
	if p.recursive {
		r = ", recursive"
	}
	switch p.typ {
	case "isSubjectOnEventId":
		return fmt.Sprintf("%s(%s, %s%s)", p.typ, p.subject, p.eventID, r)
	case "isEventQlQueryTrue":
		return fmt.Sprintf("%s(%q%s)", p.typ, p.query, r)
	}
	return fmt.Sprintf("%s(%s%s)", p.typ, p.subject, r)
}

func (p Precondition) validate() error {
	switch p.typ {
	case "isSubjectPristine", "isSubjectPopulated":
		return ValidateSubject(p.subject)
	case "isSubjectOnEventId":
		if err := ValidateSubject(p.subject); err != nil {
			return err
		}
		if _, err := strconv.ParseUint(p.eventID, 10, 63); err != nil {
			return fmt.Errorf("esdb: %s: event ID %q is not a non-negative integer: %w", p.typ, p.eventID, orchestrix.ErrInvalid)
		}
		return nil
	case "isEventQlQueryTrue":
		if p.query == "" {
			return fmt.Errorf("esdb: %s: query is empty: %w", p.typ, orchestrix.ErrInvalid)
		}
		if p.recursive {
			return fmt.Errorf("esdb: %s has no recursive form: %w", p.typ, orchestrix.ErrInvalid)
		}
		return nil
	}
	return fmt.Errorf("esdb: zero Precondition: build one with IsSubjectPristine and its siblings: %w", orchestrix.ErrInvalid)
}

func (p Precondition) wire() map[string]any {
	payload := map[string]any{}
	switch p.typ {
	case "isEventQlQueryTrue":
		payload["query"] = p.query
	case "isSubjectOnEventId":
		payload["subject"] = p.subject
		payload["eventId"] = p.eventID
	default:
		payload["subject"] = p.subject
	}
	if p.recursive {
		payload["options"] = map[string]bool{"recursive": true}
	}
	return map[string]any{"type": p.typ, "payload": payload}
}

// BoundType says whether a bound includes its event.
type BoundType string

// Bound types.
const (
	Inclusive BoundType = "inclusive"
	Exclusive BoundType = "exclusive"
)

// Bound limits a read to IDs from (lower) or up to (upper) an event ID.
type Bound struct {
	ID   uint64
	Type BoundType
}

func (b *Bound) wire(which string) (map[string]string, error) {
	if b == nil {
		return nil, nil
	}
	if b.Type != Inclusive && b.Type != Exclusive {
		return nil, fmt.Errorf("esdb: %s type %q is neither inclusive nor exclusive: %w", which, b.Type, orchestrix.ErrInvalid)
	}
	return map[string]string{"id": strconv.FormatUint(b.ID, 10), "type": string(b.Type)}, nil
}

// Order is the order of a read.
type Order string

// Orders.
const (
	Chronological     Order = "chronological"
	Antichronological Order = "antichronological"
)

// IfEventIsMissing says what FromLatestEvent does when no such event
// exists.
type IfEventIsMissing string

// What to do when the latest event is missing: ReadNothing and
// ReadEverything for reads; WaitForEvent and ReadEverything for
// observations.
const (
	ReadNothing    IfEventIsMissing = "read-nothing"
	ReadEverything IfEventIsMissing = "read-everything"
	WaitForEvent   IfEventIsMissing = "wait-for-event"
)

// FromLatestEvent starts a read at the latest event of a type in a
// subject (that event included).
type FromLatestEvent struct {
	Subject          string
	Type             string
	IfEventIsMissing IfEventIsMissing
}

func (f *FromLatestEvent) wire(allowed ...IfEventIsMissing) (map[string]string, error) {
	if f == nil {
		return nil, nil
	}
	if err := ValidateSubject(f.Subject); err != nil {
		return nil, fmt.Errorf("fromLatestEvent: %w", err)
	}
	if err := ValidateEventType(f.Type); err != nil {
		return nil, fmt.Errorf("fromLatestEvent: %w", err)
	}
	ok := false
	for _, a := range allowed {
		ok = ok || f.IfEventIsMissing == a
	}
	if !ok {
		return nil, fmt.Errorf("esdb: fromLatestEvent: ifEventIsMissing %q is not one of %v: %w", f.IfEventIsMissing, allowed, orchestrix.ErrInvalid)
	}
	return map[string]string{"subject": f.Subject, "type": f.Type, "ifEventIsMissing": string(f.IfEventIsMissing)}, nil
}

// ReadOptions are the options of ReadEvents. The zero value reads the
// subject alone, chronologically, from its first event.
type ReadOptions struct {
	// Recursive includes the events of every subject below the subject.
	Recursive bool
	// Order defaults to Chronological.
	Order Order
	// LowerBound and UpperBound limit the IDs read.
	LowerBound *Bound
	UpperBound *Bound
	// FromLatestEvent starts at the latest event of a type; it excludes
	// LowerBound.
	FromLatestEvent *FromLatestEvent
}

func (o ReadOptions) wire() (map[string]any, error) {
	m := map[string]any{"recursive": o.Recursive}
	switch o.Order {
	case "":
	case Chronological, Antichronological:
		m["order"] = string(o.Order)
	default:
		return nil, fmt.Errorf("esdb: order %q is neither chronological nor antichronological: %w", o.Order, orchestrix.ErrInvalid)
	}
	if o.LowerBound != nil && o.FromLatestEvent != nil {
		return nil, fmt.Errorf("esdb: lowerBound and fromLatestEvent exclude each other: %w", orchestrix.ErrInvalid)
	}
	lo, err := o.LowerBound.wire("lowerBound")
	if err != nil {
		return nil, err
	}
	if lo != nil {
		m["lowerBound"] = lo
	}
	hi, err := o.UpperBound.wire("upperBound")
	if err != nil {
		return nil, err
	}
	if hi != nil {
		m["upperBound"] = hi
	}
	fl, err := o.FromLatestEvent.wire(ReadNothing, ReadEverything)
	if err != nil {
		return nil, err
	}
	if fl != nil {
		m["fromLatestEvent"] = fl
	}
	return m, nil
}

// Defaults of ObserveOptions.
const (
	DefaultStallTimeout = 5 * time.Second
	DefaultMinBackoff   = 50 * time.Millisecond
	DefaultMaxBackoff   = 5 * time.Second
)

// ObserveOptions are the options of ObserveEvents.
type ObserveOptions struct {
	// Recursive includes the events of every subject below the subject.
	Recursive bool
	// LowerBound starts the observation; it excludes FromLatestEvent.
	LowerBound *Bound
	// FromLatestEvent starts at the latest event of a type (WaitForEvent
	// or ReadEverything when there is none).
	FromLatestEvent *FromLatestEvent
	// StallTimeout ends a connection that delivers nothing, not even a
	// heartbeat (the server sends one every second while idle), for this
	// long, and reconnects (default DefaultStallTimeout).
	StallTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before a reconnect, which
	// doubles after every failed attempt and resets once an attempt
	// delivers a line (defaults DefaultMinBackoff, DefaultMaxBackoff).
	MinBackoff, MaxBackoff time.Duration
	// MaxAttempts is the number of consecutive failed connection attempts
	// after which the observation gives up and yields the last error; 0
	// retries until the context ends.
	MaxAttempts int
	// OnReconnect, if set, is called with each transient error before the
	// observation reconnects, so none is lost silently.
	OnReconnect func(err error, attempt int)
}

func (o ObserveOptions) withDefaults() ObserveOptions {
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(DefaultMaxBackoff, o.MinBackoff)
	}
	return o
}

// EventType describes an event type: one with stored events or a
// registered schema (IsPhantom: a schema but no events yet).
type EventType struct {
	EventType string
	IsPhantom bool
	// Schema is the registered JSON Schema, nil if none.
	Schema []byte
}
