// Package aggregates runs event-sourced aggregates: a user writes the
// state type and two pure functions,
//
//	func decide(s Account, c orchestrix.Command) ([]any, error) // events, or a rejection
//	func evolve(s Account, e orchestrix.Event) Account         // folds one event
//
// and a [Repository] loads the state (latest snapshot plus the events after
// it), calls decide and appends the resulting events with the version it
// loaded, so a concurrent writer makes the append fail instead of being
// overwritten. [Repository.Handle] retries such a conflict on fresh state (bounded).
//
// decide returns payload values; the repository encodes them with a
// [codec.Registry] and fills the metadata (subject, correlation and causation
// from the command, the command ID for deduplication). evolve receives
// events whose Payload is decoded, so it switches on e.Payload.(type).
//
// Commands are validated before the state is loaded: a payload with a
// Validate() error method is checked, and an error that matches
// [orchestrix.ErrRejected] (a *[orchestrix.ValidationError] with field errors,
// or a *[orchestrix.Rejection] from decide) is an outcome, never retried.
//
// [New] defines an aggregate type (options such as [SnapshotEvery] and
// [ConflictRetries]); [NewRepository] handles its commands one at a time;
// [NewProcessor] returns the handler of a consumers.Group reading a topic of
// commands: [Processor.HandleBatch] handles a partition's records of one
// poll in one store transaction.
package aggregates

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/stores"
)

// DecideFunc turns a command into event payloads, or refuses it.
type DecideFunc[S any] func(state S, cmd orchestrix.Command) ([]any, error)

// EvolveFunc folds one event into the state. It must not fail: events are
// facts. It receives events with a decoded Payload.
type EvolveFunc[S any] func(state S, e orchestrix.Event) S

// Aggregate is an aggregate type: its name, behaviour and policies. It is
// immutable and safe for concurrent use.
type Aggregate[S any] struct {
	name          string
	decide        DecideFunc[S]
	evolve        EvolveFunc[S]
	snapshotEvery uint64
	snapshotRev   int
	maxRetries    int
}

// Option configures an Aggregate.
type Option func(*options)

type options struct {
	snapshotEvery uint64
	snapshotRev   int
	maxRetries    int
}

// SnapshotEvery saves a snapshot each time the version passes a multiple
// of n (default 0: never). The state must round-trip through encoding/json.
func SnapshotEvery(n uint64) Option { return func(o *options) { o.snapshotEvery = n } }

// SnapshotRevision names the state's shape (default 1). Raise it when the
// state type changes incompatibly: snapshots of other revisions are
// ignored and the state is rebuilt from events.
func SnapshotRevision(rev int) Option { return func(o *options) { o.snapshotRev = rev } }

// ConflictRetries bounds how often Handle reloads and decides again after
// a version conflict (default 3).
func ConflictRetries(n int) Option { return func(o *options) { o.maxRetries = n } }

// New returns an aggregate type named name (used in snapshot types and
// error messages).
func New[S any](name string, decide DecideFunc[S], evolve EvolveFunc[S], opts ...Option) (*Aggregate[S], error) {
	o := options{snapshotRev: 1, maxRetries: 3}
	for _, opt := range opts {
		opt(&o)
	}
	var errs []error
	if err := orchestrix.CheckID("aggregate name", name); err != nil {
		errs = append(errs, err)
	}
	if decide == nil || evolve == nil {
		errs = append(errs, fmt.Errorf("aggregate %q: decide and evolve are required: %w", name, orchestrix.ErrInvalid))
	}
	if o.maxRetries < 0 {
		errs = append(errs, fmt.Errorf("aggregate %q: conflict retries %d < 0: %w", name, o.maxRetries, orchestrix.ErrInvalid))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Aggregate[S]{name: name, decide: decide, evolve: evolve, snapshotEvery: o.snapshotEvery, snapshotRev: o.snapshotRev, maxRetries: o.maxRetries}, nil
}

// Name returns the aggregate type's name.
func (a *Aggregate[S]) Name() string { return a.name }

// Decide calls the decide function after validating the command payload.
func (a *Aggregate[S]) Decide(state S, cmd orchestrix.Command) ([]any, error) {
	if err := Validate(cmd); err != nil {
		return nil, err
	}
	return a.decide(state, cmd)
}

// Evolve folds events into state.
func (a *Aggregate[S]) Evolve(state S, events ...orchestrix.Event) S {
	for _, e := range events {
		state = a.evolve(state, e)
	}
	return state
}

// Validator is implemented by command payloads that can check themselves.
type Validator interface {
	Validate() error
}

// Validate runs the payload's Validate method, if any. A non-nil result
// that is not already a rejection is wrapped as one.
func Validate(cmd orchestrix.Command) error {
	v, ok := cmd.Payload.(Validator)
	if !ok {
		return nil
	}
	err := v.Validate()
	if err == nil || errors.Is(err, orchestrix.ErrRejected) {
		return err
	}
	return &orchestrix.ValidationError{Fields: []orchestrix.FieldError{{Path: "", Code: "invalid", Message: err.Error()}}}
}

// Root is an aggregate instance as loaded: its state and the version the
// state reflects (0 for a new aggregate).
type Root[S any] struct {
	ID      string
	Version uint64
	State   S
}

// Result is the outcome of a handled command.
type Result struct {
	AggregateID string
	// FromVersion and ToVersion are the versions written (ToVersion is
	// the aggregate's version when no events were produced).
	FromVersion, ToVersion uint64
	// Events are the appended events (nil for a duplicate).
	Events []orchestrix.Event
	// Duplicate reports that the command had been handled before.
	Duplicate bool
}

// Store is what a [Repository] needs of an event store: streams to read
// and append to, the commands already handled, and snapshots. Every
// [stores.EventStore] is one; the global log ([stores.LogReader]) is
// the relay's and the projections' concern, not the repository's. The
// repository also uses [stores.MultiStreamReader] and the processor
// [stores.RejectionRecorder] when the store has them.
type Store interface {
	stores.StreamAppender
	stores.StreamReader
	stores.CommandFinder
	stores.SnapshotStore
}

// Repository loads and saves one aggregate type in a store.
type Repository[S any] struct {
	agg    *Aggregate[S]
	store  Store
	codec  *codec.Registry
	source string
	now    func() time.Time
}

// NewRepository returns a repository. source is the CloudEvents source of
// the events it writes (e.g. "/banking").
func NewRepository[S any](agg *Aggregate[S], store Store, reg *codec.Registry, source string) (*Repository[S], error) {
	var errs []error
	if agg == nil || store == nil || reg == nil {
		errs = append(errs, fmt.Errorf("aggregates: repository needs an aggregate, a store and a codec registry: %w", orchestrix.ErrInvalid))
	}
	if err := orchestrix.CheckID("source", source); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Repository[S]{agg: agg, store: store, codec: reg, source: source, now: time.Now}, nil
}

// Aggregate returns the repository's aggregate type.
func (r *Repository[S]) Aggregate() *Aggregate[S] { return r.agg }

func (r *Repository[S]) snapshotType() string {
	return fmt.Sprintf("%s.snapshot.v%d", r.agg.name, r.agg.snapshotRev)
}

// Load returns the aggregate's current state: its latest snapshot (when
// the revision matches) plus every event after it. Events whose type the
// registry does not know fail the load with an error naming the event.
func (r *Repository[S]) Load(ctx context.Context, id string) (Root[S], error) {
	root := Root[S]{ID: id}
	if err := orchestrix.CheckID("aggregate id", id); err != nil {
		return root, err
	}
	if r.agg.snapshotEvery > 0 {
		snap, ok, err := r.store.LoadSnapshot(ctx, id)
		if err != nil {
			return root, fmt.Errorf("load %s %q: %w", r.agg.name, id, err)
		}
		if ok && snap.Type == r.snapshotType() {
			if err := json.Unmarshal(snap.Data, &root.State); err != nil {
				return root, fmt.Errorf("load %s %q: snapshot at version %d: %w", r.agg.name, id, snap.Version, err)
			}
			root.Version = snap.Version
		}
	}
	return r.Fold(ctx, root)
}

// LoadMany loads several aggregates, like Load for each, in a few round
// trips when the store is a stores.MultiStreamReader (one for the
// snapshots, one per page of events), and one by one otherwise. An
// aggregate that could not be loaded has its error in the second map and
// no root in the first.
func (r *Repository[S]) LoadMany(ctx context.Context, ids []string) (map[string]Root[S], map[string]error) {
	roots := make(map[string]Root[S], len(ids))
	errs := map[string]error{}
	mr, ok := r.store.(stores.MultiStreamReader)
	if !ok || len(ids) < 2 {
		for _, id := range ids {
			if root, err := r.Load(ctx, id); err != nil {
				errs[id] = err
			} else {
				roots[id] = root
			}
		}
		return roots, errs
	}
	fail := func(err error) (map[string]Root[S], map[string]error) {
		for _, id := range ids {
			if _, ok := errs[id]; !ok {
				errs[id] = err
			}
		}
		return map[string]Root[S]{}, errs
	}
	var snaps map[string]stores.Snapshot
	if r.agg.snapshotEvery > 0 {
		var err error
		if snaps, err = mr.LoadSnapshots(ctx, ids); err != nil {
			return fail(fmt.Errorf("load %d %s aggregates: %w", len(ids), r.agg.name, err))
		}
	}
	reads := make([]stores.StreamRead, 0, len(ids))
	named := make(map[string]bool, len(ids))
	for _, id := range ids {
		if named[id] {
			continue
		}
		named[id] = true
		if err := orchestrix.CheckID("aggregate id", id); err != nil {
			errs[id] = err
			continue
		}
		root := Root[S]{ID: id}
		if snap, ok := snaps[id]; ok && snap.Type == r.snapshotType() {
			if err := json.Unmarshal(snap.Data, &root.State); err != nil {
				errs[id] = fmt.Errorf("load %s %q: snapshot at version %d: %w", r.agg.name, id, snap.Version, err)
				continue
			}
			root.Version = snap.Version
		}
		roots[id] = root
		reads = append(reads, stores.StreamRead{StreamID: id, After: root.Version})
	}
	for e, err := range mr.ReadStreams(ctx, reads) {
		if err != nil {
			return fail(fmt.Errorf("load %d %s aggregates: %w", len(reads), r.agg.name, err))
		}
		root, ok := roots[e.StreamID]
		if !ok {
			continue // failed to decode before
		}
		if err := r.codec.DecodeEvent(&e); err != nil {
			errs[e.StreamID] = fmt.Errorf("load %s %q: event %d (%s): %w", r.agg.name, e.StreamID, e.Version, e.Type, err)
			delete(roots, e.StreamID)
			continue
		}
		root.State = r.agg.evolve(root.State, e)
		root.Version = e.Version
		roots[e.StreamID] = root
	}
	return roots, errs
}

// Fold brings root up to date with the events after its version.
func (r *Repository[S]) Fold(ctx context.Context, root Root[S]) (Root[S], error) {
	for e, err := range r.store.ReadStream(ctx, root.ID, root.Version) {
		if err != nil {
			return root, fmt.Errorf("load %s %q: %w", r.agg.name, root.ID, err)
		}
		if err := r.codec.DecodeEvent(&e); err != nil {
			return root, fmt.Errorf("load %s %q: event %d (%s): %w", r.agg.name, root.ID, e.Version, e.Type, err)
		}
		root.State = r.agg.evolve(root.State, e)
		root.Version = e.Version
	}
	return root, nil
}

// NewEvents encodes payloads as events caused by cmd, ready to append to
// the aggregate cmd addresses.
func (r *Repository[S]) NewEvents(cmd orchestrix.Command, payloads []any) ([]orchestrix.Event, error) {
	now := r.now().UTC()
	events := make([]orchestrix.Event, len(payloads))
	for i, p := range payloads {
		corr := cmd.CorrelationID
		if corr == "" {
			corr = cmd.ID
		}
		e := orchestrix.Event{
			Metadata: orchestrix.Metadata{
				Source: r.source, Subject: cmd.AggregateID, Time: now,
				CorrelationID: corr, CausationID: cmd.ID, TraceParent: cmd.TraceParent,
			},
			StreamID:  cmd.AggregateID,
			CommandID: cmd.ID,
			Payload:   p,
		}
		if err := r.codec.EncodeEvent(&e); err != nil {
			return nil, fmt.Errorf("%s %q: encode event %d (%T): %w", r.agg.name, cmd.AggregateID, i, p, err)
		}
		events[i] = e
	}
	return events, nil
}

// Handle runs one command: validate, load, decide, append with the loaded
// version. A version conflict reloads and decides again, at most
// ConflictRetries times. A command handled before returns the first
// result with Duplicate set (and is not decided again). A rejection
// returns an error matching orchestrix.ErrRejected and writes nothing.
func (r *Repository[S]) Handle(ctx context.Context, cmd orchestrix.Command) (Result, error) {
	if err := orchestrix.CheckID("aggregate id", cmd.AggregateID); err != nil {
		return Result{}, err
	}
	if err := Validate(cmd); err != nil {
		return Result{AggregateID: cmd.AggregateID}, err
	}
	if cmd.ID != "" {
		if prev, ok, err := r.store.FindCommand(ctx, cmd.ID); err != nil {
			return Result{}, err
		} else if ok && prev.Rejection != nil {
			return Result{AggregateID: cmd.AggregateID, Duplicate: true}, recordedRejection(prev.Rejection)
		} else if ok {
			return Result{AggregateID: prev.StreamID, FromVersion: prev.FromVersion, ToVersion: prev.ToVersion, Duplicate: true}, nil
		}
	}
	for attempt := 0; ; attempt++ {
		root, err := r.Load(ctx, cmd.AggregateID)
		if err != nil {
			return Result{}, err
		}
		res, err := r.Apply(ctx, root, cmd)
		if errors.Is(err, stores.ErrConflict) && attempt < r.agg.maxRetries {
			continue
		}
		return res, err
	}
}

// Apply decides cmd against root and appends the events with root's
// version as the expectation, saving a snapshot when the policy says so.
func (r *Repository[S]) Apply(ctx context.Context, root Root[S], cmd orchestrix.Command) (Result, error) {
	payloads, err := r.agg.decide(root.State, cmd)
	if err != nil {
		return Result{AggregateID: root.ID, ToVersion: root.Version}, err
	}
	if len(payloads) == 0 {
		return Result{AggregateID: root.ID, FromVersion: root.Version, ToVersion: root.Version}, nil
	}
	events, err := r.NewEvents(cmd, payloads)
	if err != nil {
		return Result{}, err
	}
	ar, err := r.store.Append(ctx, root.ID, stores.Exact(root.Version), events)
	if err != nil {
		return Result{}, fmt.Errorf("%s %q: %w", r.agg.name, root.ID, err)
	}
	res := Result{AggregateID: root.ID, FromVersion: ar.FromVersion, ToVersion: ar.ToVersion, Duplicate: ar.Duplicate}
	if ar.Duplicate {
		return res, nil
	}
	for i := range events {
		events[i].Version = ar.FromVersion + uint64(i)
	}
	res.Events = events
	if err := r.MaybeSnapshot(ctx, root, events); err != nil {
		return res, err
	}
	return res, nil
}

// MaybeSnapshot saves a snapshot of root evolved by the newly appended
// events when they cross a multiple of the snapshot interval.
func (r *Repository[S]) MaybeSnapshot(ctx context.Context, root Root[S], appended []orchestrix.Event) error {
	n := r.agg.snapshotEvery
	if n == 0 || len(appended) == 0 {
		return nil
	}
	to := appended[len(appended)-1].Version
	if to/n == root.Version/n {
		return nil
	}
	state := r.agg.Evolve(root.State, appended...)
	data, err := json.Marshal(state)
	if err != nil {
		return fmt.Errorf("%s %q: encode snapshot: %w", r.agg.name, root.ID, err)
	}
	return r.store.SaveSnapshot(ctx, stores.Snapshot{StreamID: root.ID, Version: to, Type: r.snapshotType(), ContentType: "application/json", Data: data})
}

// recordedRejection rebuilds the error of a rejection recorded by a
// Processor (the JSON Outcome kept by stores.RejectionRecorder).
func recordedRejection(reason []byte) error {
	var o orchestrix.Outcome
	if err := json.Unmarshal(reason, &o); err != nil {
		return &orchestrix.Rejection{Code: "rejected", Message: string(reason)}
	}
	if len(o.Fields) > 0 {
		return &orchestrix.ValidationError{Fields: o.Fields}
	}
	return &orchestrix.Rejection{Code: o.Code, Message: o.Message}
}
