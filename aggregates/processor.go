package aggregates

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
// transaction (AppendMany): states come from a per-partition cache (kept
// while this member owns the partition, dropped on revoke; the version
// check still guards correctness) or are loaded before the transaction,
// then each aggregate's commands are decided in order against the
// evolving state. A version conflict drops the cache and falls back to
// handling the records one by one with fresh state.
//
// A command seen before (same ID) is answered with its first result and
// decided again never. An undecodable record fails permanently (the
// failure policy dead-letters it). A rejection is an outcome, not a
// failure. With WithOutcomes, every outcome is published (JSON, key =
// command ID) before the batch's offsets are committed.
type Processor[S any] struct {
	repo     *Repository[S]
	outcomes *kgo.Client
	topic    string
	log      *slog.Logger
	maxCache int

	mu    sync.Mutex
	cache map[int32]map[string]Root[S]
}

// ProcessorOption configures a Processor.
type ProcessorOption func(*processorConfig)

type processorConfig struct {
	outcomes *kgo.Client
	topic    string
	log      *slog.Logger
	maxCache int
}

// WithOutcomes publishes every command's Outcome to topic with client.
func WithOutcomes(client *kgo.Client, topic string) ProcessorOption {
	return func(c *processorConfig) { c.outcomes, c.topic = client, topic }
}

// WithProcessorLogger sets the logger (default: discard).
func WithProcessorLogger(l *slog.Logger) ProcessorOption {
	return func(c *processorConfig) { c.log = l }
}

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
	return &Processor[S]{repo: repo, outcomes: c.outcomes, topic: c.topic, log: c.log, maxCache: c.maxCache, cache: map[int32]map[string]Root[S]{}}, nil
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
	res, err := p.repo.Handle(ctx, cmd)
	out, err := outcome(cmd, res, err)
	if err != nil {
		return err
	}
	return p.publish(ctx, []orchestrix.Outcome{out})
}

// outcome maps a handling result to an Outcome, or returns the error when
// the command failed (neither accepted nor rejected).
func outcome(cmd orchestrix.Command, res Result, err error) (orchestrix.Outcome, error) {
	o := orchestrix.Outcome{CommandID: cmd.ID, AggregateID: cmd.AggregateID, At: time.Now().UTC(), FromVersion: res.FromVersion, ToVersion: res.ToVersion}
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

func (p *Processor[S]) publish(ctx context.Context, outs []orchestrix.Outcome) error {
	if p.outcomes == nil || len(outs) == 0 {
		return nil
	}
	recs := make([]*kgo.Record, len(outs))
	for i, o := range outs {
		b, err := json.Marshal(o)
		if err != nil {
			return err
		}
		recs[i] = &kgo.Record{Topic: p.topic, Key: []byte(o.CommandID), Value: b,
			Headers: []kgo.RecordHeader{{Key: "content-type", Value: []byte("application/json")}}}
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

// HandleBatch processes one partition's records in one store transaction.
func (p *Processor[S]) HandleBatch(ctx context.Context, recs []*kgo.Record) []error {
	errs := make([]error, len(recs))
	if len(recs) == 0 {
		return nil
	}
	part := recs[0].Partition
	var outs []orchestrix.Outcome
	// 1. Decode; group by aggregate, keeping order.
	byAgg := map[string][]pendingCmd{}
	var order []string
	for i, r := range recs {
		cmd, err := p.decode(r)
		if err != nil {
			errs[i] = err
			continue
		}
		if _, ok := byAgg[cmd.AggregateID]; !ok {
			order = append(order, cmd.AggregateID)
		}
		byAgg[cmd.AggregateID] = append(byAgg[cmd.AggregateID], pendingCmd{i, cmd})
	}
	// 2. Commands handled before are answered, not decided again.
	seen, err := p.findCommands(ctx, byAgg)
	if err != nil {
		return fill(errs, err)
	}
	// 3. Load every state before the transaction, decide in order.
	var reqs []stores.AppendRequest
	roots := map[string]Root[S]{}
	start := map[string]Root[S]{}
	newEvents := map[string][]orchestrix.Event{}
	for _, id := range order {
		root, ok := p.cached(part, id)
		if !ok {
			if root, err = p.repo.Load(ctx, id); err != nil {
				for _, pc := range byAgg[id] {
					errs[pc.idx] = err
				}
				continue
			}
		}
		start[id] = root
		blocked := false
		for _, pc := range byAgg[id] {
			if blocked {
				errs[pc.idx] = fmt.Errorf("command %s: %w", pc.cmd.ID, errBlocked)
				continue
			}
			if prev, ok := seen[pc.cmd.ID]; ok {
				outs = append(outs, orchestrix.Outcome{CommandID: pc.cmd.ID, AggregateID: id, Status: orchestrix.OutcomeDuplicate, FromVersion: prev.FromVersion, ToVersion: prev.ToVersion, At: time.Now().UTC()})
				continue
			}
			payloads, err := p.repo.agg.Decide(root.State, pc.cmd)
			if err == nil && len(payloads) > 0 {
				var evs []orchestrix.Event
				if evs, err = p.repo.NewEvents(pc.cmd, payloads); err == nil {
					reqs = append(reqs, stores.AppendRequest{StreamID: id, Expected: stores.Exact(root.Version), Events: evs})
					for j := range evs {
						evs[j].Version = root.Version + uint64(j) + 1
					}
					root.State = p.repo.agg.Evolve(root.State, evs...)
					res := Result{AggregateID: id, FromVersion: root.Version + 1, ToVersion: root.Version + uint64(len(evs))}
					root.Version = res.ToVersion
					newEvents[id] = append(newEvents[id], evs...)
					o, _ := outcome(pc.cmd, res, nil)
					outs = append(outs, o)
					continue
				}
			}
			if err == nil || errors.Is(err, orchestrix.ErrRejected) {
				o, _ := outcome(pc.cmd, Result{AggregateID: id}, err)
				outs = append(outs, o)
				continue
			}
			errs[pc.idx] = err
			blocked = true
		}
		roots[id] = root
	}
	// 4. One transaction for the whole batch.
	if len(reqs) > 0 {
		if _, err := p.repo.store.AppendMany(ctx, reqs); err != nil {
			for _, id := range order {
				p.forget(part, id)
			}
			if errors.Is(err, stores.ErrConflict) {
				p.log.Info("batch conflict; handling records one by one", "partition", part, "err", err)
				return p.oneByOne(ctx, recs, errs)
			}
			return fill(errs, err)
		}
	}
	for _, id := range order {
		if root, ok := roots[id]; ok {
			p.remember(part, root)
			if err := p.repo.MaybeSnapshot(ctx, start[id], newEvents[id]); err != nil {
				p.log.Warn("snapshot failed", "stream", id, "err", err)
			}
		}
	}
	if err := p.publish(ctx, outs); err != nil {
		return fill(errs, err)
	}
	return errs
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

func (p *Processor[S]) findCommands(ctx context.Context, byAgg map[string][]pendingCmd) (map[string]stores.AppendResult, error) {
	var ids []string
	for _, pcs := range byAgg {
		for _, pc := range pcs {
			if pc.cmd.ID != "" {
				ids = append(ids, pc.cmd.ID)
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
