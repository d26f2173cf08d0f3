package sagas

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/orchestrix/orchestrix"
)

// Command is what a step sends: a command to one aggregate's command
// topic. The runtime gives it a deterministic ID (see CommandID), the
// saga's correlation ID and the input that caused it as causation, and
// encodes Payload with its codec.Registry.
type Command struct {
	// Topic is the aggregate's command topic, e.g. "banking.commands".
	Topic string
	// AggregateID is the aggregate the command is for (the record key).
	AggregateID string
	// Payload is the command's data, a type registered in the runtime's
	// registry.
	Payload any
}

// Policy says what a failed step (or compensation) does. A failure is a
// rejected outcome or a timeout. Build one with Retry or Pivot; the zero
// value fails at the first failure.
type Policy struct {
	// Tries is how many tries a step gets in all (the first included).
	// 0 and 1 mean one try.
	Tries int
	// Backoff is the wait before a try that follows a rejection, doubled
	// each further try up to MaxBackoff. A try that follows a timeout is
	// sent at once (the same command again: see CommandID).
	Backoff, MaxBackoff time.Duration
	// Forever retries without end and never compensates (a pivot step).
	Forever bool
}

// Retry returns a policy of up to tries tries, waiting backoff (doubled
// each time, capped at 32×backoff) before a try that follows a
// rejection. A step that still fails is compensated.
func Retry(backoff time.Duration, tries int) Policy {
	return Policy{Tries: tries, Backoff: backoff, MaxBackoff: 32 * backoff}
}

// Pivot returns the policy of a pivot step: retried forward forever,
// waiting backoff (doubled, capped at maxBackoff) after each rejection,
// never compensated. Once a pivot step is sent the saga can only go
// forward, so every later step must be a pivot too (Define checks).
func Pivot(backoff, maxBackoff time.Duration) Policy {
	return Policy{Backoff: backoff, MaxBackoff: maxBackoff, Forever: true}
}

// wait returns the wait before try n+1 after n tries.
func (p Policy) wait(n int) time.Duration {
	d := p.Backoff
	for i := 1; i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	if p.MaxBackoff > 0 && d > p.MaxBackoff {
		d = p.MaxBackoff
	}
	return d
}

// more reports whether a step that failed its nth try gets another.
func (p Policy) more(n int) bool { return p.Forever || n < p.Tries }

// Step is one step of a saga over state S.
type Step[S any] struct {
	// Name names the step in the history and the CLI.
	Name string
	// Action returns the step's command. It must be a pure function of
	// the state: the command of a try that follows a timeout is computed
	// again and must be the same.
	Action func(S) (Command, error)
	// Compensation returns the command that undoes the step; nil when
	// there is nothing to undo. It must be harmless when the action never
	// took effect (a timed-out action may or may not have happened: see
	// the package documentation) and is sent after the action's command
	// on the same aggregate, so the aggregate sees them in that order.
	Compensation func(S) (Command, error)
	// Timeout is how long the step waits for its command's outcome before
	// the try counts as failed (0: no timeout).
	Timeout time.Duration
	// Policy is what a failed try does (zero value: compensate at once).
	Policy Policy
	// Done, if set, folds the accepted outcome into the state.
	Done func(S, orchestrix.Outcome) S
}

// Definition is one version of a saga type: its steps, how compensations
// are retried, and how correlated events change its state. It is
// immutable and safe for concurrent use. Build it with Define.
type Definition[S any] struct {
	typ     string
	version int
	steps   []Step[S]
	comp    Policy
	compTO  time.Duration
	events  map[string]func(S, orchestrix.Event) (S, error)
	starts  map[string]func(orchestrix.Event) (string, S, bool)
}

// Option configures a Definition.
type Option[S any] func(*Definition[S])

// CompensationPolicy sets how each compensation is retried (default
// Retry(time.Second, 5)) and how long it waits for its outcome (default
// 30s). A compensation that still fails leaves the instance in
// StatusCompensationFailed. Forever is not allowed.
func CompensationPolicy[S any](p Policy, timeout time.Duration) Option[S] {
	return func(d *Definition[S]) { d.comp, d.compTO = p, timeout }
}

// OnEvent folds a correlated domain event of eventType (an event whose
// CorrelationID names the instance, forwarded by a Forwarder) into the
// state. An error rejects the event (it is dead-lettered).
func OnEvent[S any](eventType string, f func(S, orchestrix.Event) (S, error)) Option[S] {
	return func(d *Definition[S]) {
		if d.events == nil {
			d.events = map[string]func(S, orchestrix.Event) (S, error){}
		}
		d.events[eventType] = f
	}
}

// StartOn starts an instance when a domain event of eventType is
// forwarded (a Forwarder reading the events topic): f returns the saga ID
// and the initial state, or ok false to start nothing. The start's input
// ID is "start:<saga ID>", so an event delivered twice, or a saga also
// started with Runtime.Start, starts one instance. The event's payload is
// decoded with the runtime's registry when its type is registered.
func StartOn[S any](eventType string, f func(e orchestrix.Event) (sagaID string, s S, ok bool)) Option[S] {
	return func(d *Definition[S]) {
		if d.starts == nil {
			d.starts = map[string]func(orchestrix.Event) (string, S, bool){}
		}
		d.starts[eventType] = f
	}
}

// StartFrom maps an event to the start of an instance (see StartOn): ok
// is false when eventType starts nothing or f declined.
func (d *Definition[S]) StartFrom(e orchestrix.Event) (sagaID string, state json.RawMessage, ok bool, err error) {
	f := d.starts[e.Type]
	if f == nil {
		return "", nil, false, nil
	}
	id, s, ok := f(e)
	if !ok {
		return "", nil, false, nil
	}
	if err := orchestrix.CheckID("saga id", id); err != nil {
		return "", nil, false, fmt.Errorf("sagas: %s start from event %s: %w", d.typ, e.ID, err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return "", nil, false, fmt.Errorf("sagas: %s start from event %s: %w: %w", d.typ, e.ID, orchestrix.ErrInvalid, err)
	}
	return id, b, true, nil
}

// StartTypes returns the event types that start an instance.
func (d *Definition[S]) StartTypes() []string {
	out := make([]string, 0, len(d.starts))
	for et := range d.starts {
		out = append(out, et)
	}
	return out
}

// typeName is what a saga type may be named: it is part of topic names
// and of correlation IDs ("saga:<type>:<id>").
var typeName = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,100}$`)

// Define returns version (≥ 1) of saga type typ with steps, after
// checking all of it. Running instances keep the version they started
// with: give a runtime every version that still has running instances.
func Define[S any](typ string, version int, steps []Step[S], opts ...Option[S]) (*Definition[S], error) {
	d := &Definition[S]{typ: typ, version: version, steps: steps, comp: Retry(time.Second, 5), compTO: 30 * time.Second}
	for _, o := range opts {
		o(d)
	}
	var errs []error
	if !typeName.MatchString(typ) {
		errs = append(errs, fmt.Errorf("type %q must match %s", typ, typeName))
	}
	if version < 1 {
		errs = append(errs, fmt.Errorf("version %d must be at least 1", version))
	}
	if len(steps) == 0 {
		errs = append(errs, errors.New("no steps"))
	}
	pivot := false
	for i, s := range steps {
		if s.Name == "" {
			errs = append(errs, fmt.Errorf("step %d has no name", i))
		}
		if s.Action == nil {
			errs = append(errs, fmt.Errorf("step %d (%s) has no action", i, s.Name))
		}
		if s.Timeout < 0 || s.Policy.Backoff < 0 || s.Policy.Tries < 0 {
			errs = append(errs, fmt.Errorf("step %d (%s): negative timeout, backoff or tries", i, s.Name))
		}
		if pivot && !s.Policy.Forever {
			errs = append(errs, fmt.Errorf("step %d (%s) follows a pivot step and must be a pivot too", i, s.Name))
		}
		pivot = pivot || s.Policy.Forever
		if s.Policy.Forever && s.Compensation != nil {
			errs = append(errs, fmt.Errorf("step %d (%s) is a pivot and cannot have a compensation", i, s.Name))
		}
	}
	if d.comp.Forever || d.compTO < 0 || d.comp.Backoff < 0 {
		errs = append(errs, errors.New("compensation policy: Forever is not allowed, timeout and backoff must not be negative"))
	}
	for et, f := range d.events {
		if et == "" || f == nil {
			errs = append(errs, fmt.Errorf("OnEvent(%q): empty type or nil function", et))
		}
	}
	for et, f := range d.starts {
		if et == "" || f == nil {
			errs = append(errs, fmt.Errorf("StartOn(%q): empty type or nil function", et))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("sagas: define %s: %w: %w", typ, orchestrix.ErrInvalid, err)
	}
	return d, nil
}

// Type returns the saga type.
func (d *Definition[S]) Type() string { return d.typ }

// Version returns the definition version.
func (d *Definition[S]) Version() int { return d.version }

// Steps returns the step names in order.
func (d *Definition[S]) Steps() []string {
	out := make([]string, len(d.steps))
	for i, s := range d.steps {
		out[i] = s.Name
	}
	return out
}

// EventTypes returns the event types the definition reacts to.
func (d *Definition[S]) EventTypes() []string {
	out := make([]string, 0, len(d.events))
	for et := range d.events {
		out = append(out, et)
	}
	return out
}

// decode decodes a state.
func (d *Definition[S]) decode(b []byte) (S, error) {
	var s S
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("sagas: decode %s state: %w: %w", d.typ, orchestrix.ErrInvalid, err)
	}
	return s, nil
}
