package sagas

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Saga is a definition a Runtime runs: a *Definition[S] for any S.
type Saga interface {
	Type() string
	Version() int
	EventTypes() []string
	StartTypes() []string
	StartFrom(e orchestrix.Event) (sagaID string, state json.RawMessage, ok bool, err error)
	Transition(inst *Instance, in Input, now time.Time) (Decision, error)
}

// Inbox record headers: what an input is and its ID.
const (
	HeaderKind  = "orchestrix-saga-kind"
	HeaderInput = "orchestrix-saga-input"
)

// InboxSuffix names a saga type's input topic: "<type>" + InboxSuffix.
const InboxSuffix = ".saga-inbox"

// InboxTopic returns the input topic of saga type typ, keyed by saga ID.
func InboxTopic(typ string) string { return typ + InboxSuffix }

// TimerRole returns the elector role of typ's timer poller.
func TimerRole(typ string) string { return "orchestrix.sagas.timers:" + typ }

// Defaults of a Runtime.
const (
	// DefaultTimerPoll is how often due timers are looked for.
	DefaultTimerPoll = 250 * time.Millisecond
	// DefaultTimerBatch is how many timers one poll fires at most.
	DefaultTimerBatch = 1000
	// DefaultSource is the CloudEvents source of a saga's commands.
	DefaultSource = "/orchestrix/sagas"
)

// InboxFailurePolicy is the failure policy for the consumer group that
// runs a Runtime on its inbox: inputs that can never apply go straight to
// the dead-letter topic (they fail with consumers.Permanent); anything
// else (the database away, a fenced write, an attempt cut by a pause) is
// retried in place twice, then after 1s, 10s and 1m on retry topics, and
// only then dead-lettered. Later inputs of the instance may overtake one
// waiting in the retry topics: transitions tolerate any order (a reply
// for a command no longer awaited is ignored). Create its topics with
// policy.Topics(inbox, group).
func InboxFailurePolicy() consumers.FailurePolicy {
	return consumers.RetryTopics(time.Second, 10*time.Second, time.Minute).InPlace(2, 100*time.Millisecond, time.Second).ThenDLQ()
}

// ErrUnknownVersion: an instance started with a definition version the
// runtime was not given. Deploy the old definition beside the new one.
var ErrUnknownVersion = errors.New("sagas: definition version not loaded")

// Runtime runs one saga type: its Handle applies the inputs of
// InboxTopic(type), one store transaction each (run it as the Handler of
// a consumers.Group on that topic), and RunTimers fires its due timers.
// It is safe for concurrent use.
type Runtime struct {
	store    Store
	reg      *codec.Registry
	typ      string
	defs     map[int]Saga
	latest   Saga
	inbox    string
	source   string
	log      *slog.Logger
	now      func() time.Time
	poll     time.Duration
	batch    int
	elector  stores.Elector
	onChange func(Transition)
	onTraced func(Transition, string)
	trace    func(context.Context) string
}

// RuntimeOption configures a Runtime.
type RuntimeOption func(*Runtime)

// WithLogger logs through l (default: nothing).
func WithLogger(l *slog.Logger) RuntimeOption { return func(r *Runtime) { r.log = l } }

// WithSource sets the CloudEvents source of the commands (DefaultSource).
func WithSource(s string) RuntimeOption { return func(r *Runtime) { r.source = s } }

// WithInboxTopic overrides InboxTopic(type).
func WithInboxTopic(t string) RuntimeOption { return func(r *Runtime) { r.inbox = t } }

// WithClock sets the clock (tests).
func WithClock(now func() time.Time) RuntimeOption { return func(r *Runtime) { r.now = now } }

// TimerPoll sets how often RunTimers looks for due timers and how many
// one look fires (DefaultTimerPoll, DefaultTimerBatch).
func TimerPoll(every time.Duration, batch int) RuntimeOption {
	return func(r *Runtime) { r.poll, r.batch = every, batch }
}

// WithElector makes RunTimers fire only while it leads (for PostgreSQL,
// postgres.NewElector with role TimerRole(type)). Without one, every
// RunTimers fires; PostgresStore's FireTimers skips timers another
// poller holds, so that is safe, only busier.
func WithElector(e stores.Elector) RuntimeOption { return func(r *Runtime) { r.elector = e } }

// OnTransition calls f after each committed transition (metrics, tests).
// It must not block.
func OnTransition(f func(Transition)) RuntimeOption { return func(r *Runtime) { r.onChange = f } }

// OnTransitionTraced calls f after each committed transition with the
// W3C traceparent of the input that caused it (its ce_traceparent header;
// for Start, Retry and Resolve, their context's: see WithTraceContext;
// "" for none):
// tracing adapters make a span per transition here (see tracing/otel).
// It must not block. The commands a transition writes carry the same
// traceparent, unless a step set one of its own.
func OnTransitionTraced(f func(tr Transition, traceParent string)) RuntimeOption {
	return func(r *Runtime) { r.onTraced = f }
}

// WithTraceContext gives Start, Retry and Resolve, which apply an input
// without a record, the trace context of their ctx: f returns the W3C
// traceparent of ctx's span ("" for none), and the commands the
// transition writes carry it. Tracing adapters provide f (tracing/otel's
// TraceParent), so the core does not import a tracing library.
func WithTraceContext(f func(ctx context.Context) string) RuntimeOption {
	return func(r *Runtime) { r.trace = f }
}

// NewRuntime returns a runtime for defs, versions of one saga type; new
// instances start with the highest version, running ones keep theirs.
// reg encodes the steps' command payloads.
func NewRuntime(store Store, reg *codec.Registry, defs []Saga, opts ...RuntimeOption) (*Runtime, error) {
	r := &Runtime{store: store, reg: reg, defs: map[int]Saga{}, source: DefaultSource, now: time.Now, poll: DefaultTimerPoll, batch: DefaultTimerBatch}
	for _, o := range opts {
		o(r)
	}
	var errs []error
	if store == nil || reg == nil {
		errs = append(errs, errors.New("nil store or registry"))
	}
	if len(defs) == 0 {
		errs = append(errs, errors.New("no definitions"))
	}
	for _, d := range defs {
		if d == nil {
			errs = append(errs, errors.New("nil definition"))
			continue
		}
		if r.typ == "" {
			r.typ = d.Type()
		}
		if d.Type() != r.typ {
			errs = append(errs, fmt.Errorf("definitions of two types, %s and %s", r.typ, d.Type()))
		}
		if _, dup := r.defs[d.Version()]; dup {
			errs = append(errs, fmt.Errorf("version %d given twice", d.Version()))
		}
		r.defs[d.Version()] = d
		if r.latest == nil || d.Version() > r.latest.Version() {
			r.latest = d
		}
	}
	if r.inbox == "" {
		r.inbox = InboxTopic(r.typ)
	}
	if r.poll <= 0 || r.batch <= 0 {
		errs = append(errs, fmt.Errorf("timer poll %s and batch %d must be positive", r.poll, r.batch))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("sagas: runtime: %w: %w", orchestrix.ErrInvalid, err)
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.log = r.log.With("saga_type", r.typ)
	return r, nil
}

// Type returns the saga type.
func (r *Runtime) Type() string { return r.typ }

// Inbox returns the input topic.
func (r *Runtime) Inbox() string { return r.inbox }

// Store returns the runtime's store.
func (r *Runtime) Store() Store { return r.store }

// Start starts instance sagaID with state (of the latest definition's S)
// in one store transaction. Starting an ID again changes nothing and
// returns nil: one instance per ID.
func (r *Runtime) Start(ctx context.Context, sagaID string, state any) error {
	b, err := json.Marshal(state)
	if err != nil {
		return fmt.Errorf("sagas: start %s/%s: %w: %w", r.typ, sagaID, orchestrix.ErrInvalid, err)
	}
	err = r.apply(ctx, Input{SagaID: sagaID, ID: startID(sagaID), Kind: KindStart, State: b}, "")
	if errors.Is(err, ErrDuplicateInput) {
		return nil
	}
	return err
}

func startID(sagaID string) string { return "start:" + sagaID }

// StartMessage returns the inbox record that starts sagaID with state,
// for a service that starts a saga atomically with its own write: put it
// in the outbox in the same transaction (outbox.Writer.Write). Like
// Start, a second start of an ID changes nothing.
func (r *Runtime) StartMessage(sagaID string, state any) (outbox.Message, error) {
	b, err := json.Marshal(state)
	if err != nil {
		return outbox.Message{}, fmt.Errorf("sagas: start %s/%s: %w: %w", r.typ, sagaID, orchestrix.ErrInvalid, err)
	}
	return InboxMessage(r.inbox, sagaID, KindStart, startID(sagaID), b), nil
}

// InboxMessage returns an inbox record of kind with input ID id.
func InboxMessage(topic, sagaID string, kind InputKind, id string, value []byte) outbox.Message {
	return outbox.Message{Topic: topic, Key: []byte(sagaID), Value: value, Headers: []kgo.RecordHeader{
		{Key: HeaderKind, Value: []byte(kind)}, {Key: HeaderInput, Value: []byte(id)}}}
}

// OperatorMessage returns the inbox record of an operator's retry or
// resolve of sagaID (what `orchestrix sagas retry|resolve` writes to the
// outbox); opID makes it unique.
func OperatorMessage(typ, sagaID string, kind InputKind, opID, note string) outbox.Message {
	b, _ := json.Marshal(struct {
		Note string `json:"note"`
	}{note})
	return InboxMessage(InboxTopic(typ), sagaID, kind, "op:"+opID, b)
}

// Retry applies an operator's retry to an instance in
// StatusCompensationFailed: its failed compensation is tried again (a new
// attempt). Other statuses fail with ErrNotAllowed.
func (r *Runtime) Retry(ctx context.Context, sagaID, opID, note string) error {
	return r.apply(ctx, Input{SagaID: sagaID, ID: "op:" + opID, Kind: KindRetry, Note: note}, "")
}

// Resolve applies an operator's resolution to an instance in
// StatusCompensationFailed: the operator undid the failed step by hand;
// compensation goes on with the steps before it.
func (r *Runtime) Resolve(ctx context.Context, sagaID, opID, note string) error {
	return r.apply(ctx, Input{SagaID: sagaID, ID: "op:" + opID, Kind: KindResolve, Note: note}, "")
}

// apply runs one input in one store transaction.
func (r *Runtime) apply(ctx context.Context, in Input, traceParent string) error {
	if traceParent == "" && r.trace != nil {
		traceParent = r.trace(ctx)
	}
	var tr Transition
	if err := r.store.Apply(ctx, r.typ, in.SagaID, in.ID, r.decide(in, traceParent, &tr)); err != nil {
		return err
	}
	r.committed(tr, traceParent)
	return nil
}

// decide returns the function that decides in against the stored
// instance; it fills tr with the transition it decided (Version 0: none).
// The commands carry traceParent (the input's trace context) unless they
// have one.
func (r *Runtime) decide(in Input, traceParent string, tr *Transition) func(cur *Instance) (*Change, error) {
	return func(cur *Instance) (*Change, error) {
		*tr = Transition{}
		def := r.latest
		if cur != nil {
			if def = r.defs[cur.DefinitionVersion]; def == nil {
				return nil, fmt.Errorf("sagas: %s/%s has definition version %d: %w: %w", r.typ, in.SagaID, cur.DefinitionVersion, ErrUnknownVersion, orchestrix.ErrInvalid)
			}
		}
		now := r.now().UTC()
		dec, err := def.Transition(cur, in, now)
		if err != nil {
			return nil, err
		}
		if dec.Ignored {
			r.log.Debug("input ignored", "saga_id", in.SagaID, "input", in.ID, "why", dec.Note)
			return nil, nil
		}
		msgs := make([]outbox.Message, 0, len(dec.Commands))
		for _, o := range dec.Commands {
			c := o.Command
			c.Source = r.source
			if c.TraceParent == "" {
				c.TraceParent = traceParent
			}
			if err := r.reg.EncodeCommand(&c); err != nil {
				return nil, fmt.Errorf("sagas: %s/%s: encode command: %w", r.typ, in.SagaID, err)
			}
			rec, err := codec.CommandToRecord(o.Topic, c)
			if err != nil {
				return nil, fmt.Errorf("sagas: %s/%s: %w", r.typ, in.SagaID, err)
			}
			msgs = append(msgs, outbox.Message{Topic: o.Topic, Key: rec.Key, Value: rec.Value, Headers: rec.Headers})
		}
		var from Status
		if cur != nil {
			from = cur.Status
		}
		*tr = Transition{Type: r.typ, SagaID: in.SagaID, Version: dec.Instance.Version, At: now, InputID: in.ID, InputKind: in.Kind,
			From: from, To: dec.Instance.Status, Step: dec.Instance.Step, Note: dec.Note}
		return &Change{Instance: dec.Instance, Messages: msgs, Timer: dec.Timer, KeepTimer: dec.KeepTimer, Transition: *tr}, nil
	}
}

// committed reports a committed transition.
func (r *Runtime) committed(tr Transition, traceParent string) {
	if tr.Version == 0 {
		return
	}
	r.log.Debug("transition", "saga_id", tr.SagaID, "input", tr.InputID, "from", tr.From, "to", tr.To, "note", tr.Note)
	if tr.To == StatusCompensationFailed {
		r.log.Error("compensation failed; an operator must retry or resolve", "saga_id", tr.SagaID, "note", tr.Note)
	}
	if r.onChange != nil {
		r.onChange(tr)
	}
	if r.onTraced != nil {
		r.onTraced(tr, traceParent)
	}
}

// classify maps an input's error to what the consumer group does with it.
func (r *Runtime) classify(rec *kgo.Record, err error) error {
	switch {
	case err == nil, errors.Is(err, ErrDuplicateInput):
		return nil
	case errors.Is(err, orchestrix.ErrInvalid), errors.Is(err, orchestrix.ErrUnknownType), errors.Is(err, ErrUnknownSaga),
		errors.Is(err, ErrNotAllowed):
		r.log.Warn("input dead-lettered", "saga_id", string(rec.Key), "partition", rec.Partition, "offset", rec.Offset, "err", err)
		return consumers.Permanent(err)
	}
	return err
}

// HandleBatch implements consumers.BatchHandler: it applies one
// partition's inputs of a poll in one store transaction (Store.ApplyBatch),
// in order, each instance's inputs seeing the ones before. An input that
// fails fails the later inputs of its instance (consumers.ErrBlocked);
// the group retries failed inputs one by one with Handle.
func (r *Runtime) HandleBatch(ctx context.Context, recs []*kgo.Record) []error {
	errs := make([]error, len(recs))
	items := make([]Item, 0, len(recs))
	idx := make([]int, 0, len(recs))
	trs := make([]Transition, len(recs))
	tps := make([]string, len(recs))
	failed := map[string]bool{}
	for i, rec := range recs {
		in, err := r.decode(rec)
		tps[i] = traceParentOf(rec)
		switch {
		case failed[string(rec.Key)]:
			errs[i] = consumers.ErrBlocked
		case err != nil:
			errs[i] = r.classify(rec, err)
			failed[string(rec.Key)] = true
		default:
			items = append(items, Item{SagaID: in.SagaID, InputID: in.ID, Decide: r.decide(in, tps[i], &trs[i])})
			idx = append(idx, i)
		}
	}
	if len(items) == 0 {
		return errs
	}
	res := r.store.ApplyBatch(ctx, r.typ, items)
	for k, i := range idx {
		errs[i] = r.classify(recs[i], res[k])
		if res[k] == nil {
			r.committed(trs[i], tps[i])
		}
	}
	return errs
}

// Handle implements consumers.Handler for the inbox topic: it applies
// one input. Run it with InboxFailurePolicy. Inputs that can never apply (malformed, of an unknown kind
// or event type, for an unknown instance, an operator action the status
// does not allow) fail with a consumers.Permanent error, so the group
// dead-letters them with the reason and goes on; a repeated input
// returns nil; anything else (the database is away, the fence) is
// transient.
func (r *Runtime) Handle(ctx context.Context, rec *kgo.Record) error {
	in, err := r.decode(rec)
	if err == nil {
		err = r.apply(ctx, in, traceParentOf(rec))
	}
	return r.classify(rec, err)
}

// traceParentOf returns rec's ce_traceparent header ("" without one).
func traceParentOf(rec *kgo.Record) string {
	for _, h := range rec.Headers {
		if h.Key == headerTraceParent {
			return string(h.Value)
		}
	}
	return ""
}

// headerTraceParent carries a record's W3C trace context (CloudEvents
// binary mode).
const headerTraceParent = codec.HeaderPrefix + "traceparent"

// decode reads an inbox record.
func (r *Runtime) decode(rec *kgo.Record) (Input, error) {
	in := Input{SagaID: string(rec.Key)}
	for _, h := range rec.Headers {
		switch h.Key {
		case HeaderKind:
			in.Kind = InputKind(h.Value)
		case HeaderInput:
			in.ID = string(h.Value)
		}
	}
	bad := func(format string, args ...any) (Input, error) {
		return Input{}, fmt.Errorf("sagas: inbox record %s/%d/%d: %s: %w", rec.Topic, rec.Partition, rec.Offset, fmt.Sprintf(format, args...), orchestrix.ErrInvalid)
	}
	if err := orchestrix.CheckID("saga id (key)", in.SagaID); err != nil {
		return bad("%v", err)
	}
	if err := orchestrix.CheckID("input id ("+HeaderInput+")", in.ID); err != nil {
		return bad("%v", err)
	}
	switch in.Kind {
	case KindStart:
		if !json.Valid(rec.Value) {
			return bad("start state is not JSON")
		}
		in.State = rec.Value
	case KindOutcome:
		if err := json.Unmarshal(rec.Value, &in.Outcome); err != nil {
			return bad("outcome: %v", err)
		}
		if typ, id, ok := ParseCorrelation(in.Outcome.CorrelationID); !ok || typ != r.typ || id != in.SagaID {
			return bad("outcome correlation %q does not name %s", in.Outcome.CorrelationID, Correlation(r.typ, in.SagaID))
		}
	case KindEvent:
		cp := *rec
		cp.Key = nil
		e, err := codec.RecordToEvent(&cp)
		if err != nil {
			return Input{}, err
		}
		if err := r.reg.DecodeEvent(&e); err != nil && !errors.Is(err, orchestrix.ErrUnknownType) {
			return Input{}, err
		}
		in.Event = e
	case KindTimer:
		if err := json.Unmarshal(rec.Value, &in.Timer); err != nil {
			return bad("timer: %v", err)
		}
	case KindRetry, KindResolve:
		var v struct {
			Note string `json:"note"`
		}
		if err := json.Unmarshal(rec.Value, &v); err != nil {
			return bad("%s: %v", in.Kind, err)
		}
		in.Note = v.Note
	default:
		return Input{}, fmt.Errorf("sagas: inbox record %s/%d/%d of kind %q: %w", rec.Topic, rec.Partition, rec.Offset, in.Kind, orchestrix.ErrUnknownType)
	}
	return in, nil
}

// startFrom returns the inbox record that starts an instance from e, if
// the latest definition starts one on e's type.
func (r *Runtime) startFrom(e orchestrix.Event) (outbox.Message, bool, error) {
	if err := r.reg.DecodeEvent(&e); err != nil && !errors.Is(err, orchestrix.ErrUnknownType) {
		return outbox.Message{}, false, err
	}
	id, state, ok, err := r.latest.StartFrom(e)
	if err != nil || !ok {
		return outbox.Message{}, false, err
	}
	return InboxMessage(r.inbox, id, KindStart, startID(id), state), true, nil
}

// timerMessage is the inbox record of a fired timer.
func (r *Runtime) timerMessage(t Timer) (outbox.Message, error) {
	b, err := json.Marshal(t.Fired)
	if err != nil {
		return outbox.Message{}, err
	}
	return InboxMessage(r.inbox, t.SagaID, KindTimer, t.Fired.ID(), b), nil
}

// FireTimers fires the timers due now once; it returns how many fired.
func (r *Runtime) FireTimers(ctx context.Context) (int, error) {
	return r.store.FireTimers(ctx, r.typ, r.now().UTC(), r.batch, r.timerMessage)
}

// RunTimers fires due timers every TimerPoll until ctx ends (then it
// returns nil): each fired timer becomes a TimerFired record for the
// inbox, written to the outbox in the transaction that deletes the timer,
// so it reaches the instance through the same ordered path as replies,
// exactly once, even when every process was down when it fell due. With
// an elector it fires only while it leads.
func (r *Runtime) RunTimers(ctx context.Context) error {
	for ctx.Err() == nil {
		lost := make(<-chan struct{})
		var term stores.Term
		if r.elector != nil {
			var err error
			if term, err = r.elector.Campaign(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				r.log.Warn("timer poller campaign", "err", err)
				sleep(ctx, time.Second)
				continue
			}
			lost = term.Lost()
			r.log.Info("timer poller leads")
		}
		r.fireLoop(ctx, lost)
		if term != nil {
			term.Release()
		}
	}
	return nil
}

func (r *Runtime) fireLoop(ctx context.Context, lost <-chan struct{}) {
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-lost:
			r.log.Warn("timer poller lost its lease")
			return
		case <-time.After(wait):
		}
		n, err := r.FireTimers(ctx)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				r.log.Warn("fire timers", "err", err)
			}
			wait = time.Second
		case n == r.batch:
			wait = 0
		default:
			wait = r.poll
			if n > 0 {
				r.log.Debug("timers fired", "n", n)
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
