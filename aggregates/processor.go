package aggregates

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Processor turns command records into stored events: decode, validate,
// load, decide, append with the loaded version. It is a consumers.Handler
// and consumers.BatchHandler, and consumers.PartitionAware.
//
// HandleBatch handles a partition's records of one poll in one store
// transaction (AppendMany), shared with the other partitions of the poll
// that are handled at the same time: states come from a per-partition cache (kept
// while this member owns the partition, dropped on revoke; the version
// check still guards correctness) or are loaded before the transaction,
// then each aggregate's commands are decided in order against the
// evolving state. A version conflict drops the cache and falls back to
// handling the records one by one with fresh state.
//
// A command seen before (same ID) is answered with its first result and
// decided again never. With a store that records rejections
// (stores.RejectionRecorder: memory, postgres, esdb) that holds for rejected
// commands too: the rejection is recorded in the transaction of the poll,
// so a command redelivered after a crash is answered with its first
// rejection, not decided again against a state that later commands of
// the same poll have changed (a refused withdrawal must not go through on
// redelivery because a deposit behind it was stored). Other stores
// decide a redelivered rejected command again. An undecodable record fails permanently (the
// failure policy dead-letters it). A rejection is an outcome, not a
// failure. With WithOutcomes, every outcome is published (JSON, key =
// command ID) before the batch's offsets are committed.
type Processor[S any] struct {
	repo     *Repository[S]
	outcomes *kgo.Client
	topic    string
	log      *slog.Logger
	maxCache int
	onAppend func(Append)

	mu    sync.Mutex
	cache map[int32]map[string]Root[S]

	comb    sync.Mutex // guards queue and running
	queue   []*job[S]
	running bool
}

// ProcessorOption configures a Processor.
type ProcessorOption func(*processorConfig)

type processorConfig struct {
	outcomes *kgo.Client
	topic    string
	log      *slog.Logger
	maxCache int
	onAppend func(Append)
}

// WithOutcomes publishes every command's Outcome to topic with client.
// The processor waits for the outcomes' acknowledgement before the
// offsets are committed, so give it a client that does not linger
// (kgo.ProducerLinger(0)); a lingering client adds its linger to every
// poll.
func WithOutcomes(client *kgo.Client, topic string) ProcessorOption {
	return func(c *processorConfig) { c.outcomes, c.topic = client, topic }
}

// WithProcessorLogger sets the logger (default: discard).
func WithProcessorLogger(l *slog.Logger) ProcessorOption {
	return func(c *processorConfig) { c.log = l }
}

// Append describes one store write of a Processor to an OnAppend hook:
// the transaction of a poll's round (HandleBatch), or a record handled
// alone (Handle).
type Append struct {
	// Requests are the appends of the write, one per aggregate and
	// command, their events with versions and the TraceParent of the
	// command that caused them (see Repository.NewEvents). Valid only
	// during the call: do not keep or modify them.
	Requests []stores.AppendRequest
	// Rejected counts the rejections recorded in the same transaction.
	Rejected int
	// Took is how long the write took; for a record handled alone, its
	// load, decide and append together.
	Took time.Duration
	// Err is the write's error; nil: it committed.
	Err error
}

// OnAppend calls f after every store write of the processor, committed or
// not, from the handling goroutine: keep it short (tracing adapters make
// an append span here; see tracing/otel). A write that stores nothing
// (every command of the round a duplicate, rejected without a recorder, or
// deciding no events) is not reported.
func OnAppend(f func(Append)) ProcessorOption { return func(c *processorConfig) { c.onAppend = f } }

// CacheSize bounds the cached aggregates per partition (default 10000; 0
// disables the cache).
func CacheSize(n int) ProcessorOption { return func(c *processorConfig) { c.maxCache = n } }

// NewProcessor returns a processor for repo's aggregate.
func NewProcessor[S any](repo *Repository[S], opts ...ProcessorOption) (*Processor[S], error) {
	c := processorConfig{maxCache: 10000}
	for _, o := range opts {
		o(&c)
	}
	if repo == nil {
		return nil, fmt.Errorf("aggregates: processor needs a repository: %w", orchestrix.ErrInvalid)
	}
	if c.outcomes != nil && c.topic == "" {
		return nil, fmt.Errorf("aggregates: outcomes need a topic: %w", orchestrix.ErrInvalid)
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return &Processor[S]{repo: repo, outcomes: c.outcomes, topic: c.topic, log: c.log, maxCache: c.maxCache, onAppend: c.onAppend, cache: map[int32]map[string]Root[S]{}}, nil
}

// PartitionsRevoked drops the cached states of the partitions.
func (p *Processor[S]) PartitionsRevoked(_ string, partitions []int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, part := range partitions {
		delete(p.cache, part)
	}
}

func (p *Processor[S]) cached(part int32, id string) (Root[S], bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.cache[part][id]
	return r, ok
}

func (p *Processor[S]) remember(part int32, r Root[S]) {
	if p.maxCache == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.cache[part]
	if m == nil || len(m) >= p.maxCache {
		m = map[string]Root[S]{} // simple bound: start over
		p.cache[part] = m
	}
	m[r.ID] = r
}

func (p *Processor[S]) forget(part int32, id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.cache[part], id)
}

// decode turns a record into a command with a decoded, validated payload.
// Errors are permanent (bad input).
func (p *Processor[S]) decode(r *kgo.Record) (orchestrix.Command, error) {
	cmd, err := codec.RecordToCommand(r)
	if err != nil {
		return cmd, err
	}
	if err := p.repo.codec.DecodeCommand(&cmd); err != nil {
		return cmd, fmt.Errorf("command %s (%s): %w", cmd.ID, cmd.Type, err)
	}
	return cmd, nil
}

// Handle processes one record with fresh state.
func (p *Processor[S]) Handle(ctx context.Context, r *kgo.Record) error {
	cmd, err := p.decode(r)
	if err != nil {
		return err
	}
	p.forget(r.Partition, cmd.AggregateID)
	if cmd.ID != "" {
		prev, ok, err := p.repo.store.FindCommand(ctx, cmd.ID)
		if err != nil {
			return err
		}
		if ok {
			return p.publish(ctx, []orchestrix.Outcome{answered(cmd, prev)}, traceOf(cmd))
		}
	}
	start := time.Now()
	res, err := p.repo.Handle(ctx, cmd)
	if p.onAppend != nil && (len(res.Events) > 0 || err != nil && !errors.Is(err, orchestrix.ErrRejected)) {
		var reqs []stores.AppendRequest
		if len(res.Events) > 0 {
			reqs = []stores.AppendRequest{{StreamID: cmd.AggregateID, Events: res.Events}}
		}
		p.onAppend(Append{Requests: reqs, Took: time.Since(start), Err: err})
	}
	out, err := outcome(cmd, res, err)
	if err != nil {
		return err
	}
	if rc, ok := p.rejection(out); ok {
		// A conflict means another member decided it meanwhile: the
		// failure policy retries, and the retry finds that decision.
		if _, err := p.store(ctx, nil, []stores.RejectedCommand{rc}); err != nil {
			return err
		}
	}
	return p.publish(ctx, []orchestrix.Outcome{out}, traceOf(cmd))
}

// traceOf maps cmd's ID to its TraceParent for publish (nil without one).
func traceOf(cmd orchestrix.Command) map[string]string {
	if cmd.TraceParent == "" {
		return nil
	}
	return map[string]string{cmd.ID: cmd.TraceParent}
}

// store appends reqs and records rejected, in one transaction when the
// store records rejections (stores.RejectionRecorder); otherwise
// rejections are not recorded.
func (p *Processor[S]) store(ctx context.Context, reqs []stores.AppendRequest, rejected []stores.RejectedCommand) ([]stores.AppendResult, error) {
	if rr, ok := p.repo.store.(stores.RejectionRecorder); ok && len(rejected) > 0 {
		return rr.AppendDecisions(ctx, reqs, rejected)
	}
	if len(reqs) == 0 {
		return nil, nil
	}
	return p.repo.store.AppendMany(ctx, reqs)
}

// rejection returns what records a rejected outcome in the store.
func (p *Processor[S]) rejection(o orchestrix.Outcome) (stores.RejectedCommand, bool) {
	if o.Status != orchestrix.OutcomeRejected || o.CommandID == "" {
		return stores.RejectedCommand{}, false
	}
	if _, ok := p.repo.store.(stores.RejectionRecorder); !ok {
		return stores.RejectedCommand{}, false
	}
	b, err := json.Marshal(o)
	if err != nil {
		return stores.RejectedCommand{}, false
	}
	return stores.RejectedCommand{CommandID: o.CommandID, StreamID: o.AggregateID, Reason: b}, true
}

// answered is the outcome of a command decided before: its recorded
// rejection, or a duplicate with the first append's versions.
func answered(cmd orchestrix.Command, prev stores.AppendResult) orchestrix.Outcome {
	if prev.Rejection != nil {
		var o orchestrix.Outcome
		if err := json.Unmarshal(prev.Rejection, &o); err == nil && o.Status == orchestrix.OutcomeRejected {
			o.CommandID, o.CommandType, o.CorrelationID = cmd.ID, cmd.Type, cmd.CorrelationID
			return o
		}
		return orchestrix.Outcome{CommandID: cmd.ID, AggregateID: cmd.AggregateID, CommandType: cmd.Type, CorrelationID: cmd.CorrelationID,
			Status: orchestrix.OutcomeRejected, Code: "rejected", Message: string(prev.Rejection), At: time.Now().UTC()}
	}
	return orchestrix.Outcome{CommandID: cmd.ID, AggregateID: cmd.AggregateID, CommandType: cmd.Type, CorrelationID: cmd.CorrelationID,
		Status: orchestrix.OutcomeDuplicate, FromVersion: prev.FromVersion, ToVersion: prev.ToVersion, At: time.Now().UTC()}
}

// outcome maps a handling result to an Outcome, or returns the error when
// the command failed (neither accepted nor rejected).
func outcome(cmd orchestrix.Command, res Result, err error) (orchestrix.Outcome, error) {
	o := orchestrix.Outcome{CommandID: cmd.ID, AggregateID: cmd.AggregateID, CommandType: cmd.Type, CorrelationID: cmd.CorrelationID,
		At: time.Now().UTC(), FromVersion: res.FromVersion, ToVersion: res.ToVersion}
	switch {
	case err == nil && res.Duplicate:
		o.Status = orchestrix.OutcomeDuplicate
	case err == nil:
		o.Status = orchestrix.OutcomeAccepted
	case errors.Is(err, orchestrix.ErrRejected):
		o.Status, o.FromVersion, o.ToVersion = orchestrix.OutcomeRejected, 0, 0
		var rej *orchestrix.Rejection
		var val *orchestrix.ValidationError
		switch {
		case errors.As(err, &rej):
			o.Code, o.Message = rej.Code, rej.Message
		case errors.As(err, &val):
			o.Code, o.Message, o.Fields = "validation", val.Error(), val.Fields
		default:
			o.Code, o.Message = "rejected", err.Error()
		}
	default:
		return o, err
	}
	return o, nil
}

// publish produces outs; traces maps a command ID to the TraceParent of
// its command, which its outcome carries in the ce_traceparent header
// (a saga waiting for the outcome continues that trace).
func (p *Processor[S]) publish(ctx context.Context, outs []orchestrix.Outcome, traces map[string]string) error {
	if p.outcomes == nil || len(outs) == 0 {
		return nil
	}
	recs := make([]*kgo.Record, len(outs))
	for i, o := range outs {
		b, err := json.Marshal(o)
		if err != nil {
			return err
		}
		hs := []kgo.RecordHeader{{Key: "content-type", Value: []byte("application/json")}}
		if tp := traces[o.CommandID]; tp != "" {
			hs = append(hs, kgo.RecordHeader{Key: codec.HeaderPrefix + "traceparent", Value: []byte(tp)})
		}
		recs[i] = &kgo.Record{Topic: p.topic, Key: []byte(o.CommandID), Value: b, Headers: hs}
	}
	if err := p.outcomes.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("aggregates: publish %d outcomes: %w", len(outs), err)
	}
	return nil
}

type pendingCmd struct {
	idx int
	cmd orchestrix.Command
}

// job is one partition's records of a poll on their way through a
// combined round.
type job[S any] struct {
	ctx   context.Context
	recs  []*kgo.Record
	part  int32
	errs  []error
	byAgg map[string][]pendingCmd
	order []string
	done  chan struct{}

	// Filled by decide.
	roots     map[string]Root[S]
	start     map[string]Root[S]
	newEvents map[string][]orchestrix.Event
	// stale names the aggregates whose decided state is not what the
	// store holds (it skipped one of their appends as a duplicate): they
	// are neither cached nor snapshotted.
	stale map[string]bool
}

// decisions is what a round decided, across its jobs: the append requests
// and recorded rejections for one transaction, and one outcome per
// command, in order.
type decisions[S any] struct {
	seen     map[string]stores.AppendResult // decided before the round (store)
	first    map[string]int                 // command ID -> index in outs of its first decision in the round
	copies   []copyOf                       // later copies of a command decided in the round
	outs     []orchestrix.Outcome
	reqs     []stores.AppendRequest
	appended []appended // one per request
	rejected []stores.RejectedCommand
	// The aggregates not cached, loaded together before deciding.
	loaded   map[string]Root[S]
	loadErrs map[string]error
}

// copyOf is a later copy of a command in the same round: it is answered
// with the first copy's outcome once the store has said what it did.
type copyOf struct{ out, first int }

// appended ties an append request to the outcome and aggregate it serves.
type appended struct {
	out    int
	job    int
	stream string
}

// again answers a later copy of a command with the first copy's outcome: a
// duplicate with its versions when it appended events, the same outcome
// otherwise (a recorded rejection, an accepted no-op).
func again(cmdID string, first orchestrix.Outcome) orchestrix.Outcome {
	o := first
	o.CommandID = cmdID
	if o.Status == orchestrix.OutcomeAccepted && o.ToVersion > 0 {
		o.Status = orchestrix.OutcomeDuplicate
	}
	return o
}

// HandleBatch processes one partition's records. Concurrent calls (the
// partitions of one poll) are combined: while one round runs, the calls
// that arrive queue up, and the next round serves all of them with one
// command lookup, one store transaction and one outcome produce. A
// conflict in a combined transaction falls back to each partition's
// records one by one. Rounds run under the context of the call that
// runs them (the first to arrive): when it ends first (the consumers
// runtime gives each partition's call its own attempt deadline), the
// round's records fail and the failure policy handles them again. If decide, evolve or a codec panics in a
// combined round, the call whose records were in that round panics with
// the same value and the round's other records fail with a transient
// error (to be handled again alone); later calls are combined as before.
func (p *Processor[S]) HandleBatch(ctx context.Context, recs []*kgo.Record) []error {
	if len(recs) == 0 {
		return nil
	}
	j := &job[S]{ctx: ctx, recs: recs, part: recs[0].Partition, errs: make([]error, len(recs)), byAgg: map[string][]pendingCmd{}, done: make(chan struct{})}
	// Decode; group by aggregate, keeping order.
	for i, r := range recs {
		cmd, err := p.decode(r)
		if err != nil {
			j.errs[i] = err
			continue
		}
		if _, ok := j.byAgg[cmd.AggregateID]; !ok {
			j.order = append(j.order, cmd.AggregateID)
		}
		j.byAgg[cmd.AggregateID] = append(j.byAgg[cmd.AggregateID], pendingCmd{i, cmd})
	}
	if len(j.order) == 0 {
		return j.errs
	}
	p.comb.Lock()
	p.queue = append(p.queue, j)
	if p.running {
		p.comb.Unlock()
		<-j.done
		return j.errs
	}
	p.running = true
	var panicked any
	for len(p.queue) > 0 {
		jobs := p.queue
		p.queue = nil
		p.comb.Unlock()
		if v := p.safeRound(ctx, jobs); v != nil && slices.Contains(jobs, j) {
			panicked = v
		}
		for _, x := range jobs {
			close(x.done)
		}
		p.comb.Lock()
	}
	p.running = false
	p.comb.Unlock()
	if panicked != nil {
		// The caller's own records were in the round that panicked: the
		// panic is its to see (the consumers runtime recovers it and
		// handles the records one at a time).
		panic(panicked)
	}
	return j.errs
}

// errRoundPanicked fails the records of a combined round in which decide,
// evolve or a codec panicked: a transient error, so that the failure policy
// handles them again alone (Handle), where only the panicking record fails.
var errRoundPanicked = errors.New("aggregates: a combined round panicked; handle the records again alone")

// safeRound runs a round and returns what it panicked with (nil: it did
// not). After a panic every job's unset results are errRoundPanicked, and
// the combiner stays usable: the callers waiting for the round are
// released and the next call runs rounds again.
func (p *Processor[S]) safeRound(ctx context.Context, jobs []*job[S]) (panicked any) {
	defer func() {
		if v := recover(); v != nil {
			for _, j := range jobs {
				fill(j.errs, fmt.Errorf("%w: %v", errRoundPanicked, v))
			}
			p.log.Error("combined round panicked", "partitions", len(jobs), "panic", fmt.Sprint(v))
			panicked = v
		}
	}()
	p.round(ctx, jobs)
	return nil
}

// round handles jobs together: one lookup of the commands seen before,
// decisions per partition (each command ID once), one transaction, one
// produce of the outcomes.
func (p *Processor[S]) round(ctx context.Context, jobs []*job[S]) {
	// 1. Commands handled before are answered, not decided again.
	seen, err := p.findCommands(ctx, jobs)
	if err != nil {
		for _, j := range jobs {
			fill(j.errs, err)
		}
		return
	}
	// 2. Load every state before the transaction, decide in order.
	d := &decisions[S]{seen: seen, first: map[string]int{}}
	d.loaded, d.loadErrs = p.loadCold(ctx, jobs)
	for i, j := range jobs {
		p.decide(i, j, d)
	}
	// 3. One transaction for every partition.
	if len(d.reqs) > 0 || len(d.rejected) > 0 {
		start := time.Now()
		results, err := p.store(ctx, d.reqs, d.rejected)
		p.appended(d, time.Since(start), err)
		if err != nil {
			for _, j := range jobs {
				for _, id := range j.order {
					p.forget(j.part, id)
				}
			}
			if !errors.Is(err, stores.ErrConflict) {
				for _, j := range jobs {
					fill(j.errs, err)
				}
				return
			}
			p.log.Info("batch conflict; handling records one by one", "partitions", len(jobs), "err", err)
			for _, j := range jobs {
				p.oneByOne(j.ctx, j.recs, j.errs)
			}
			return
		}
		p.reconcile(jobs, d, results)
	}
	for _, c := range d.copies {
		d.outs[c.out] = again(d.outs[c.out].CommandID, d.outs[c.first])
	}
	for _, j := range jobs {
		for _, id := range j.order {
			if root, ok := j.roots[id]; ok && !j.stale[id] {
				p.remember(j.part, root)
			}
		}
	}
	var tps map[string]string
	if p.outcomes != nil {
		tps = traces(jobs)
	}
	if err := p.publish(ctx, d.outs, tps); err != nil {
		for _, j := range jobs {
			fill(j.errs, err)
		}
	}
	// Snapshots are an optimisation: taken after the outcomes are out, so
	// their round trips do not delay any sender.
	for _, j := range jobs {
		for _, id := range j.order {
			if _, ok := j.roots[id]; ok && !j.stale[id] {
				if err := p.repo.MaybeSnapshot(ctx, j.start[id], j.newEvents[id]); err != nil {
					p.log.Warn("snapshot failed", "stream", id, "err", err)
				}
			}
		}
	}
}

// appended reports a round's write to the OnAppend hook.
func (p *Processor[S]) appended(d *decisions[S], took time.Duration, err error) {
	if p.onAppend != nil {
		p.onAppend(Append{Requests: d.reqs, Rejected: len(d.rejected), Took: took, Err: err})
	}
}

// traces maps the command IDs of jobs to their TraceParents for publish
// (nil when none carries one).
func traces[S any](jobs []*job[S]) map[string]string {
	var m map[string]string
	for _, j := range jobs {
		for _, pcs := range j.byAgg {
			for _, pc := range pcs {
				if pc.cmd.TraceParent != "" && pc.cmd.ID != "" {
					if m == nil {
						m = map[string]string{}
					}
					m[pc.cmd.ID] = pc.cmd.TraceParent
				}
			}
		}
	}
	return m
}

// loadCold loads the aggregates of jobs that are not cached, together
// (Repository.LoadMany): a poll of a thousand cold aggregates costs a few
// round trips, not two thousand.
func (p *Processor[S]) loadCold(ctx context.Context, jobs []*job[S]) (map[string]Root[S], map[string]error) {
	var cold []string
	for _, j := range jobs {
		for _, id := range j.order {
			if _, ok := p.cached(j.part, id); !ok {
				cold = append(cold, id)
			}
		}
	}
	if len(cold) == 0 {
		return nil, nil
	}
	return p.repo.LoadMany(ctx, cold)
}

// reconcile makes the outcomes say what the store did. A request the
// store skipped as a duplicate (another member decided the command after
// the round looked it up) is answered as that duplicate, with the store's
// versions, and its aggregate's decided state is marked stale: never
// cached, never snapshotted.
func (p *Processor[S]) reconcile(jobs []*job[S], d *decisions[S], results []stores.AppendResult) {
	for i, a := range d.appended {
		if i >= len(results) {
			break
		}
		res := results[i]
		o := d.outs[a.out]
		if !res.Duplicate && res.FromVersion == o.FromVersion && res.ToVersion == o.ToVersion {
			continue
		}
		j := jobs[a.job]
		if j.stale == nil {
			j.stale = map[string]bool{}
		}
		j.stale[a.stream] = true
		p.forget(j.part, a.stream)
		o.FromVersion, o.ToVersion = res.FromVersion, res.ToVersion
		if res.Duplicate {
			o.Status = orchestrix.OutcomeDuplicate
		}
		d.outs[a.out] = o
		p.log.Warn("store answered a decided command differently", "stream", a.stream, "command", o.CommandID, "duplicate", res.Duplicate, "from_version", res.FromVersion, "to_version", res.ToVersion)
	}
}

// decide takes the state of each of j's aggregates from the cache or from
// d.loaded and decides its commands in order against the evolving state, adding append requests, rejections and outcomes to d. A command
// ID decided before (d.seen) or earlier in the round (d.first) is
// answered, not decided again.
func (p *Processor[S]) decide(ji int, j *job[S], d *decisions[S]) {
	j.roots, j.start, j.newEvents = map[string]Root[S]{}, map[string]Root[S]{}, map[string][]orchestrix.Event{}
	for _, id := range j.order {
		root, ok := p.cached(j.part, id)
		if !ok {
			if root, ok = d.loaded[id]; !ok {
				err := d.loadErrs[id]
				if err == nil {
					err = fmt.Errorf("aggregates: %q was not loaded", id)
				}
				for _, pc := range j.byAgg[id] {
					j.errs[pc.idx] = err
				}
				continue
			}
		}
		j.start[id] = root
		blocked := false
		for _, pc := range j.byAgg[id] {
			if blocked {
				j.errs[pc.idx] = fmt.Errorf("command %s: %w", pc.cmd.ID, errBlocked)
				continue
			}
			if prev, ok := d.seen[pc.cmd.ID]; ok {
				d.outs = append(d.outs, answered(pc.cmd, prev))
				continue
			}
			if first, ok := d.first[pc.cmd.ID]; ok && pc.cmd.ID != "" {
				d.copies = append(d.copies, copyOf{out: len(d.outs), first: first})
				d.outs = append(d.outs, orchestrix.Outcome{CommandID: pc.cmd.ID})
				continue
			}
			payloads, err := p.repo.agg.Decide(root.State, pc.cmd)
			if err == nil && len(payloads) > 0 {
				var evs []orchestrix.Event
				if evs, err = p.repo.NewEvents(pc.cmd, payloads); err == nil {
					d.reqs = append(d.reqs, stores.AppendRequest{StreamID: id, Expected: stores.Exact(root.Version), Events: evs})
					d.appended = append(d.appended, appended{out: len(d.outs), job: ji, stream: id})
					for k := range evs {
						evs[k].Version = root.Version + uint64(k) + 1
					}
					root.State = p.repo.agg.Evolve(root.State, evs...)
					res := Result{AggregateID: id, FromVersion: root.Version + 1, ToVersion: root.Version + uint64(len(evs))}
					root.Version = res.ToVersion
					j.newEvents[id] = append(j.newEvents[id], evs...)
					o, _ := outcome(pc.cmd, res, nil)
					p.decided(d, pc.cmd.ID, o)
					continue
				}
			}
			if err == nil || errors.Is(err, orchestrix.ErrRejected) {
				o, _ := outcome(pc.cmd, Result{AggregateID: id}, err)
				p.decided(d, pc.cmd.ID, o)
				if rc, ok := p.rejection(o); ok {
					d.rejected = append(d.rejected, rc)
				}
				continue
			}
			j.errs[pc.idx] = err
			blocked = true
		}
		j.roots[id] = root
	}
}

// decided adds a command's outcome to d, as the first decision of its ID.
func (p *Processor[S]) decided(d *decisions[S], cmdID string, o orchestrix.Outcome) {
	if cmdID != "" {
		d.first[cmdID] = len(d.outs)
	}
	d.outs = append(d.outs, o)
}

var errBlocked = errors.New("aggregates: an earlier command of the same aggregate failed")

func (p *Processor[S]) oneByOne(ctx context.Context, recs []*kgo.Record, errs []error) []error {
	failed := map[string]bool{}
	for i, r := range recs {
		if errs[i] != nil && !errors.Is(errs[i], errBlocked) {
			continue // decode errors stay
		}
		if failed[string(r.Key)] {
			errs[i] = errBlocked
			continue
		}
		errs[i] = p.Handle(ctx, r)
		if errs[i] != nil {
			failed[string(r.Key)] = true
		}
	}
	return errs
}

// CommandFinder is an optional store interface: FindCommands looks up many
// command IDs in one round trip.
type CommandFinder interface {
	FindCommands(ctx context.Context, ids []string) (map[string]stores.AppendResult, error)
}

func (p *Processor[S]) findCommands(ctx context.Context, jobs []*job[S]) (map[string]stores.AppendResult, error) {
	var ids []string
	for _, j := range jobs {
		for _, pcs := range j.byAgg {
			for _, pc := range pcs {
				if pc.cmd.ID != "" {
					ids = append(ids, pc.cmd.ID)
				}
			}
		}
	}
	if f, ok := p.repo.store.(CommandFinder); ok {
		return f.FindCommands(ctx, ids)
	}
	out := map[string]stores.AppendResult{}
	for _, id := range ids {
		r, ok, err := p.repo.store.FindCommand(ctx, id)
		if err != nil {
			return nil, err
		}
		if ok {
			out[id] = r
		}
	}
	return out, nil
}

func fill(errs []error, err error) []error {
	for i := range errs {
		if errs[i] == nil {
			errs[i] = err
		}
	}
	return errs
}
