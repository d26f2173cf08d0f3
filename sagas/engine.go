package sagas

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/orchestrix/orchestrix"
)

// Status is where an instance stands.
type Status string

// Statuses. Completed, compensated and compensation_failed are terminal
// until an operator acts on a failed compensation (Runtime.Retry,
// Runtime.Resolve).
const (
	// StatusRunning: steps are being taken forward.
	StatusRunning Status = "running"
	// StatusCompensating: a step failed; completed steps are being undone
	// in reverse.
	StatusCompensating Status = "compensating"
	// StatusCompleted: every step succeeded.
	StatusCompleted Status = "completed"
	// StatusCompensated: a step failed and every completed step was undone.
	StatusCompensated Status = "compensated"
	// StatusCompensationFailed: a compensation still failed after its
	// tries. The instance waits for an operator (orchestrix sagas retry |
	// resolve); every other instance keeps flowing.
	StatusCompensationFailed Status = "compensation_failed"
)

// Terminal reports whether no input but an operator's changes s.
func (s Status) Terminal() bool {
	return s == StatusCompleted || s == StatusCompensated || s == StatusCompensationFailed
}

// Phase is which command of a step is in play.
type Phase string

// Phases.
const (
	PhaseAction       Phase = "action"
	PhaseCompensation Phase = "compensation"
)

// What an instance waits for.
const (
	waitOutcome = "outcome"
	waitRetry   = "retry"
)

// Instance is one saga instance as stored: state is data (JSON of the
// definition's S), never replayed code.
type Instance struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	// DefinitionVersion is the version of the definition the instance
	// started with; it keeps it to the end.
	DefinitionVersion int `json:"definitionVersion"`
	// Version counts the instance's transitions: the fence of its
	// updates.
	Version int64 `json:"version"`
	// Status is where the instance stands.
	Status Status `json:"status"`
	// Step is the step whose action (running) or compensation
	// (compensating, compensation_failed) is in play.
	Step int `json:"step"`
	// Attempt numbers the command of the step in play (part of its ID):
	// a try after a rejection is a new attempt, a try after a timeout
	// sends the same command again.
	Attempt int `json:"attempt"`
	// Tries counts the tries of the step in play.
	Tries int `json:"tries"`
	// Wait is what the instance waits for: "outcome" or "retry" (a
	// backoff timer); empty when terminal.
	Wait string `json:"wait,omitempty"`
	// State is the definition's state S as JSON.
	State json.RawMessage `json:"state"`
	// Reason says why the instance compensates or failed to.
	Reason string `json:"reason,omitempty"`
	// StartedAt and UpdatedAt are when the first and the last transition
	// were decided (the runtime's clock).
	StartedAt time.Time `json:"startedAt"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// Phase returns the phase of the step in play.
func (i *Instance) Phase() Phase {
	if i.Status == StatusCompensating || i.Status == StatusCompensationFailed {
		return PhaseCompensation
	}
	return PhaseAction
}

// InputKind says what an input is.
type InputKind string

// Input kinds (the inbox header HeaderKind).
const (
	KindStart   InputKind = "start"
	KindOutcome InputKind = "outcome"
	KindEvent   InputKind = "event"
	KindTimer   InputKind = "timer"
	KindRetry   InputKind = "retry"
	KindResolve InputKind = "resolve"
)

// Input is one message for an instance.
type Input struct {
	// SagaID is the instance the input is for (the inbox record's key).
	SagaID string
	// ID identifies the input for deduplication: an input ID is applied
	// once per instance.
	ID   string
	Kind InputKind
	// State is the initial state (KindStart), as JSON.
	State json.RawMessage
	// Outcome is a command's outcome (KindOutcome).
	Outcome orchestrix.Outcome
	// Event is a correlated domain event (KindEvent).
	Event orchestrix.Event
	// Timer is a fired timer (KindTimer).
	Timer TimerFired
	// Note is an operator's note (KindRetry, KindResolve).
	Note string
}

// TimerFired names the timer that fired. It is ignored unless the
// instance still waits for exactly it (same phase, step, try and kind).
type TimerFired struct {
	Phase Phase  `json:"phase"`
	Step  int    `json:"step"`
	Try   int    `json:"try"`
	Kind  string `json:"kind"` // "outcome" (a timeout) or "retry"
}

// ID returns the timer's input ID: a timer fires once per instance.
func (t TimerFired) ID() string {
	return "timer:" + string(t.Phase) + ":" + strconv.Itoa(t.Step) + ":" + strconv.Itoa(t.Try) + ":" + t.Kind
}

// Timer is a pending timer: an instance has at most one.
type Timer struct {
	Type   string     `json:"type"`
	SagaID string     `json:"sagaId"`
	Fired  TimerFired `json:"fired"`
	Due    time.Time  `json:"due"`
}

// Outgoing is a command a transition sends, with its topic. Its Payload
// is not encoded yet (the runtime does it).
type Outgoing struct {
	Topic   string
	Command orchestrix.Command
}

// Decision is what a transition decided.
type Decision struct {
	// Ignored: the input changes nothing (late, duplicate, stale timer,
	// terminal instance). Nothing else is set but Note.
	Ignored bool
	// Instance is the instance after the input (Version incremented).
	Instance Instance
	// Commands are sent, in order, if and only if the instance is saved.
	Commands []Outgoing
	// Timer replaces the instance's pending timer; nil deletes it,
	// unless KeepTimer.
	Timer *Timer
	// KeepTimer leaves the pending timer as it is (an event changed the
	// state, not what the instance waits for).
	KeepTimer bool
	// Note says what happened, for the history.
	Note string
}

// Errors of inputs that can never apply; the runtime dead-letters them.
var (
	// ErrUnknownSaga: an input other than a start for an instance that
	// does not exist.
	ErrUnknownSaga = errors.New("sagas: unknown saga instance")
	// ErrNotAllowed: an operator action the instance's status does not
	// allow (retry or resolve of an instance not in compensation_failed).
	ErrNotAllowed = errors.New("sagas: not allowed in the instance's status")
)

// CommandID returns the deterministic ID of the command of a saga's
// step: the same (type, saga, phase, step, attempt) always gives the
// same ID, so the aggregate processors' deduplication makes a re-sent
// command harmless.
func CommandID(typ, sagaID string, phase Phase, step, attempt int) string {
	key := typ + "\x00" + sagaID + "\x00" + string(phase) + "\x00" + strconv.Itoa(step) + "\x00" + strconv.Itoa(attempt)
	return uuid.NewSHA1(commandNS, []byte(key)).String()
}

var commandNS = uuid.MustParse("6f1c2b52-8a0e-4b8f-9a57-0d6c1b7f2a10")

// CorrelationPrefix starts every saga correlation ID.
const CorrelationPrefix = "saga:"

// Correlation returns the correlation ID a saga's commands carry, and
// their outcomes and events carry back: "saga:<type>:<id>".
func Correlation(typ, sagaID string) string { return CorrelationPrefix + typ + ":" + sagaID }

// ParseCorrelation splits a correlation ID made by Correlation; ok is
// false for any other.
func ParseCorrelation(c string) (typ, sagaID string, ok bool) {
	rest, ok := strings.CutPrefix(c, CorrelationPrefix)
	if !ok {
		return "", "", false
	}
	typ, sagaID, ok = strings.Cut(rest, ":")
	return typ, sagaID, ok && typ != "" && sagaID != ""
}

// Transition decides what input does to inst (nil: no such instance yet)
// at time now. It is pure: it reads nothing and writes nothing, so the
// runtime can run it inside its transaction and tests can run it alone.
// An error means the input can never apply (it matches orchestrix.ErrInvalid,
// orchestrix.ErrUnknownType, ErrUnknownSaga or ErrNotAllowed) or a step
// function failed.
func (d *Definition[S]) Transition(inst *Instance, in Input, now time.Time) (Decision, error) {
	now = now.UTC()
	if inst == nil {
		if in.Kind != KindStart {
			return Decision{}, fmt.Errorf("sagas: %s input %q: %w", in.Kind, in.ID, ErrUnknownSaga)
		}
		return d.start(in, now)
	}
	if inst.DefinitionVersion != d.version || inst.Type != d.typ {
		return Decision{}, fmt.Errorf("sagas: instance %s/%s has definition %d, not %s %d: %w",
			inst.Type, inst.ID, inst.DefinitionVersion, d.typ, d.version, orchestrix.ErrInvalid)
	}
	s, err := d.decode(inst.State)
	if err != nil {
		return Decision{}, err
	}
	t := &turn[S]{d: d, in: in, now: now, s: s, next: *inst}
	t.next.Version++
	t.next.UpdatedAt = now
	switch in.Kind {
	case KindStart:
		return ignored("already started"), nil
	case KindOutcome:
		err = t.outcome()
	case KindEvent:
		err = t.event()
	case KindTimer:
		err = t.timer()
	case KindRetry, KindResolve:
		err = t.operator()
	default:
		return Decision{}, fmt.Errorf("sagas: input %q of kind %q: %w", in.ID, in.Kind, orchestrix.ErrUnknownType)
	}
	if err != nil {
		return Decision{}, err
	}
	if t.ignore != "" {
		return ignored(t.ignore), nil
	}
	if t.next.State, err = json.Marshal(t.s); err != nil {
		return Decision{}, fmt.Errorf("sagas: encode %s state: %w", d.typ, err)
	}
	if t.next.Status.Terminal() {
		t.next.Wait = ""
	}
	return Decision{Instance: t.next, Commands: t.cmds, Timer: t.timerOut, KeepTimer: t.keep, Note: t.note}, nil
}

func ignored(why string) Decision { return Decision{Ignored: true, Note: why} }

func (d *Definition[S]) start(in Input, now time.Time) (Decision, error) {
	s, err := d.decode(in.State)
	if err != nil {
		return Decision{}, err
	}
	if err := orchestrix.CheckID("saga id", in.SagaID); err != nil {
		return Decision{}, fmt.Errorf("sagas: start: %w", err)
	}
	t := &turn[S]{d: d, in: in, now: now, s: s, next: Instance{Type: d.typ, ID: in.SagaID, DefinitionVersion: d.version, Version: 1,
		Status: StatusRunning, StartedAt: now, UpdatedAt: now}}
	if err := t.send(0, 1, 1); err != nil {
		return Decision{}, err
	}
	t.note = "started; " + t.note
	if t.next.State, err = json.Marshal(t.s); err != nil {
		return Decision{}, fmt.Errorf("sagas: encode %s state: %w", d.typ, err)
	}
	return Decision{Instance: t.next, Commands: t.cmds, Timer: t.timerOut, Note: t.note}, nil
}

// turn is one transition in the making.
type turn[S any] struct {
	d        *Definition[S]
	in       Input
	now      time.Time
	s        S
	next     Instance
	cmds     []Outgoing
	timerOut *Timer
	note     string
	ignore   string
	keep     bool
}

// send sends the command of the step in play's phase (step, attempt,
// try) and waits for its outcome.
func (t *turn[S]) send(step, attempt, try int) error {
	t.next.Step, t.next.Attempt, t.next.Tries, t.next.Wait = step, attempt, try, waitOutcome
	phase := t.next.Phase()
	st := t.d.steps[step]
	f, timeout := st.Action, st.Timeout
	if phase == PhaseCompensation {
		f, timeout = st.Compensation, t.d.compTO
	}
	c, err := f(t.s)
	if err != nil {
		return fmt.Errorf("sagas: %s %s of step %d (%s): %w", t.d.typ, phase, step, st.Name, err)
	}
	cmd := orchestrix.Command{
		Metadata: orchestrix.Metadata{
			ID:            CommandID(t.d.typ, t.next.ID, phase, step, attempt),
			Time:          t.now,
			CorrelationID: Correlation(t.d.typ, t.next.ID),
			CausationID:   t.in.ID,
		},
		AggregateID: c.AggregateID,
		Payload:     c.Payload,
	}
	t.cmds = append(t.cmds, Outgoing{Topic: c.Topic, Command: cmd})
	t.timerOut = nil
	if timeout > 0 {
		t.timerOut = &Timer{Type: t.d.typ, SagaID: t.next.ID, Due: t.now.Add(timeout),
			Fired: TimerFired{Phase: phase, Step: step, Try: try, Kind: waitOutcome}}
	}
	t.addNote("sent %s %d (%s) attempt %d try %d", phase, step, st.Name, attempt, try)
	return nil
}

func (t *turn[S]) addNote(format string, args ...any) {
	if t.note != "" {
		t.note += "; "
	}
	t.note += fmt.Sprintf(format, args...)
}

func (t *turn[S]) outcome() error {
	o := t.in.Outcome
	if t.next.Status.Terminal() || t.next.Wait != waitOutcome ||
		o.CommandID != CommandID(t.d.typ, t.next.ID, t.next.Phase(), t.next.Step, t.next.Attempt) {
		t.ignore = "outcome of command " + o.CommandID + " not awaited"
		return nil
	}
	st := t.d.steps[t.next.Step]
	switch o.Status {
	case orchestrix.OutcomeAccepted, orchestrix.OutcomeDuplicate:
		if t.next.Phase() == PhaseAction {
			if st.Done != nil {
				t.s = st.Done(t.s, o)
			}
			t.addNote("step %d (%s) done", t.next.Step, st.Name)
			if t.next.Step+1 == len(t.d.steps) {
				t.finish(StatusCompleted)
				return nil
			}
			return t.send(t.next.Step+1, 1, 1)
		}
		t.addNote("compensation %d (%s) done", t.next.Step, st.Name)
		return t.compensateFrom(t.next.Step - 1)
	case orchestrix.OutcomeRejected:
		return t.failed(fmt.Sprintf("rejected: %s %s", o.Code, o.Message), false)
	default:
		return fmt.Errorf("sagas: outcome of %s has status %q: %w", o.CommandID, o.Status, orchestrix.ErrInvalid)
	}
}

// finish ends the instance in status s.
func (t *turn[S]) finish(s Status) {
	t.next.Status, t.next.Wait, t.timerOut = s, "", nil
	t.addNote("%s", s)
}

// failed handles a failed try of the step in play: another try if its
// policy allows, else compensation (or compensation_failed). timeout says
// the try timed out: the command may still take effect.
func (t *turn[S]) failed(reason string, timeout bool) error {
	st := t.d.steps[t.next.Step]
	pol := st.Policy
	if t.next.Phase() == PhaseCompensation {
		pol = t.d.comp
	}
	t.addNote("%s %d (%s) try %d failed: %s", t.next.Phase(), t.next.Step, st.Name, t.next.Tries, reason)
	if pol.more(t.next.Tries) {
		if timeout {
			// The same command again: if the first copy took effect,
			// the aggregate answers it as a duplicate.
			return t.send(t.next.Step, t.next.Attempt, t.next.Tries+1)
		}
		t.next.Wait = waitRetry
		t.timerOut = &Timer{Type: t.d.typ, SagaID: t.next.ID, Due: t.now.Add(pol.wait(t.next.Tries)),
			Fired: TimerFired{Phase: t.next.Phase(), Step: t.next.Step, Try: t.next.Tries, Kind: waitRetry}}
		t.addNote("retry after %s", pol.wait(t.next.Tries))
		return nil
	}
	if t.next.Phase() == PhaseCompensation {
		t.next.Reason = fmt.Sprintf("compensation of step %d (%s) failed %d times: %s", t.next.Step, st.Name, t.next.Tries, reason)
		t.finish(StatusCompensationFailed)
		return nil
	}
	t.next.Reason = fmt.Sprintf("step %d (%s) failed %d times: %s", t.next.Step, st.Name, t.next.Tries, reason)
	t.next.Status = StatusCompensating
	from := t.next.Step - 1
	if timeout {
		from = t.next.Step // it may have happened: undo it too
	}
	return t.compensateFrom(from)
}

// compensateFrom sends the compensation of the highest step ≤ from that
// has one, or ends compensated.
func (t *turn[S]) compensateFrom(from int) error {
	for i := from; i >= 0; i-- {
		if t.d.steps[i].Compensation != nil {
			return t.send(i, 1, 1)
		}
	}
	t.finish(StatusCompensated)
	return nil
}

func (t *turn[S]) timer() error {
	f := t.in.Timer
	if t.next.Status.Terminal() || f.Kind != t.next.Wait || f.Phase != t.next.Phase() || f.Step != t.next.Step || f.Try != t.next.Tries {
		t.ignore = "timer " + f.ID() + " no longer awaited"
		return nil
	}
	if f.Kind == waitRetry {
		t.next.Wait = waitOutcome
		return t.send(t.next.Step, t.next.Attempt+1, t.next.Tries+1)
	}
	return t.failed("timed out", true)
}

func (t *turn[S]) event() error {
	e := t.in.Event
	f, ok := t.d.events[e.Type]
	if !ok {
		return fmt.Errorf("sagas: %s reacts to no event of type %q: %w", t.d.typ, e.Type, orchestrix.ErrUnknownType)
	}
	if t.next.Status.Terminal() {
		t.ignore = "event " + e.ID + " after the end"
		return nil
	}
	s, err := f(t.s, e)
	if err != nil {
		return fmt.Errorf("sagas: %s event %s (%s): %w", t.d.typ, e.ID, e.Type, err)
	}
	t.s = s
	t.keep = true
	t.addNote("event %s (%s)", e.Type, e.ID)
	return nil
}

func (t *turn[S]) operator() error {
	if t.next.Status != StatusCompensationFailed {
		return fmt.Errorf("sagas: %s of %s/%s in status %s: %w", t.in.Kind, t.d.typ, t.next.ID, t.next.Status, ErrNotAllowed)
	}
	t.next.Status = StatusCompensating
	if t.in.Kind == KindRetry {
		t.addNote("operator retry: %s", t.in.Note)
		return t.send(t.next.Step, t.next.Attempt+1, 1)
	}
	t.addNote("operator resolved compensation %d (%s) by hand: %s", t.next.Step, t.d.steps[t.next.Step].Name, t.in.Note)
	return t.compensateFrom(t.next.Step - 1)
}
