package sagas

import (
	"context"
	"errors"
	"time"

	"github.com/orchestrix/orchestrix/outbox"
)

// Store keeps saga instances, their inbox, timers and history, and
// writes a transition's commands to an outbox, all in one atomic unit
// per input. PostgresStore and MemoryStore implement it and pass the same
// conformance tests.
type Store interface {
	// Apply records inputID for the instance (typ, sagaID) and applies
	// what fn decides, atomically. fn gets the instance as stored (nil if
	// none) and returns the change (nil: the input changes nothing, but
	// is recorded). If inputID was applied before, Apply returns
	// ErrDuplicateInput without calling fn. If the instance changed
	// since it was read (its version is not Change.Instance.Version-1),
	// Apply writes nothing and returns ErrFenced. If fn fails, nothing
	// is written and its error is returned.
	Apply(ctx context.Context, typ, sagaID, inputID string, fn func(cur *Instance) (*Change, error)) error
	// ApplyBatch applies items in order, each as Apply would, and returns
	// one error per item. An item sees the changes of the items before
	// it. An item whose Decide fails writes nothing (not its inbox row)
	// and fails the later items of its instance with consumers.ErrBlocked.
	// PostgresStore commits all of them in one transaction: if that
	// fails (or a fence does), every item fails with the error.
	ApplyBatch(ctx context.Context, typ string, items []Item) []error
	// FireTimers removes up to limit timers of typ due at now and writes
	// msg of each to the outbox, atomically; it returns how many fired.
	FireTimers(ctx context.Context, typ string, now time.Time, limit int, msg func(Timer) (outbox.Message, error)) (int, error)
	// Get returns an instance, or an error matching ErrNotFound.
	Get(ctx context.Context, typ, sagaID string) (Instance, error)
	// List returns the instances that match f, the oldest update first.
	List(ctx context.Context, f Filter) ([]Instance, error)
	// History returns an instance's transitions in order.
	History(ctx context.Context, typ, sagaID string) ([]Transition, error)
	// Timers returns pending timers (of typ, or all when empty), the
	// earliest first, at most limit.
	Timers(ctx context.Context, typ string, limit int) ([]Timer, error)
	// PruneInbox deletes the inbox rows of up to limit instances of typ
	// that ended (completed or compensated) and have not changed since
	// endedBefore, and returns how many instances and rows it pruned. An
	// instance is pruned once; see Runtime.PruneInbox.
	PruneInbox(ctx context.Context, typ string, endedBefore time.Time, limit int) (instances, rows int, err error)
}

// Item is one input of an ApplyBatch.
type Item struct {
	SagaID, InputID string
	// Decide is Apply's fn.
	Decide func(cur *Instance) (*Change, error)
}

// Change is what Apply writes.
type Change struct {
	// Instance replaces the stored one; Version 1 creates it.
	Instance Instance
	// Messages go to the outbox, in order.
	Messages []outbox.Message
	// Timer replaces the instance's timer; nil deletes it unless
	// KeepTimer.
	Timer *Timer
	// KeepTimer leaves the instance's timer as it is.
	KeepTimer bool
	// Transition is appended to the history.
	Transition Transition
}

// Transition is one entry of an instance's history: at version Version,
// input InputID of kind InputKind moved the instance from status From to
// To, at step Step; Note says what was decided (commands sent, tries
// failed, timers set, an operator's note).
type Transition struct {
	Type      string    `json:"type"`
	SagaID    string    `json:"sagaId"`
	Version   int64     `json:"version"`
	At        time.Time `json:"at"`
	InputID   string    `json:"inputId"`
	InputKind InputKind `json:"inputKind"`
	From      Status    `json:"from"`
	To        Status    `json:"to"`
	Step      int       `json:"step"`
	Note      string    `json:"note"`
}

// Filter selects instances for List. Zero fields select all.
type Filter struct {
	Type   string
	Status Status
	// UpdatedBefore selects instances not updated since.
	UpdatedBefore time.Time
	// Limit bounds the result (0: 100).
	Limit int
}

// Store errors.
var (
	// ErrDuplicateInput: the input was applied to the instance before.
	ErrDuplicateInput = errors.New("sagas: input already applied")
	// ErrFenced: the instance changed since it was read (another member
	// handled an input of it); nothing was written.
	ErrFenced = errors.New("sagas: instance version changed")
	// ErrNotFound: no such instance.
	ErrNotFound = errors.New("sagas: instance not found")
)
