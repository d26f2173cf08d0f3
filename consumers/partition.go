package consumers

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// partResult is what processing one partition's records gave.
type partResult struct {
	// done is the last record that may be committed (nil for none).
	done *kgo.Record
	// held are the records a retry partition must hold until they are
	// due (nil for none).
	held *heldRecs
	st   Stats
	// fl tracks the retry records and dead letters the processing
	// produced, which the commit waits for.
	fl *flight
	// err stops the group.
	err error
}

// partition processes one partition's records.
func (g *Group) partition(ctx context.Context, w work) partResult {
	res := partResult{st: Stats{Records: len(w.recs)}, fl: &flight{}}
	pos := g.chain[w.topic]
	recs := w.recs
	if pos.level > 0 {
		recs, res.held = g.dueRecords(pos, recs, w.skip)
		res.st.Records = len(recs)
	}
	if len(recs) == 0 {
		return res
	}
	results := make([]error, len(recs))
	ctx = context.WithValue(ctx, flightKey{}, res.fl)
	if bh, ok := g.h.(BatchHandler); ok && pos.level == 0 {
		sctx, retire := g.withSlot(ctx)
		res.err = g.batch(sctx, bh, pos, recs, results, &res.st)
		retire()
		if res.err != nil {
			return res
		}
	} else {
		g.lanes(ctx, pos, recs, results, w.skip, &res.st)
	}
	res.done, res.held, res.err = commitPoint(recs, results, res.held)
	return res
}

// dueRecords splits a retry partition's records at the first one to
// wait for: not yet due, or a dead-letter marker not yet ready. It
// returns the records to process now and the rest to hold (nil: none).
func (g *Group) dueRecords(pos chainPos, recs []*kgo.Record, skip map[int64]bool) ([]*kgo.Record, *heldRecs) {
	now := time.Now()
	for i, r := range recs {
		if skip[r.Offset] {
			continue
		}
		m := g.metaOf(pos, r)
		if m.marker != "" && g.cfg.policy.ordered() && !g.markerReady(pos, r, m) {
			// Not yet: older copies of its record may still be
			// uncommitted. Look again shortly.
			return recs[:i], &heldRecs{recs: recs[i:], due: now.Add(20 * time.Millisecond), skip: skip}
		}
		if !m.parked && m.marker == "" && m.due.After(now) {
			return recs[:i], &heldRecs{recs: recs[i:], due: m.due, skip: skip}
		}
	}
	return recs, nil
}

// commitPoint returns, for records processed with results, the last
// record that may be committed: up to the first record that still failed,
// or that is retried in place (the partition is then held from it on,
// with wait behind it; what other lanes settled after it is skipped when
// it resumes). It returns the records to hold (wait when nothing is
// retried in place) and the error that stops the group.
func commitPoint(recs []*kgo.Record, results []error, wait *heldRecs) (*kgo.Record, *heldRecs, error) {
	var last *kgo.Record
	for i, r := range recs {
		if results[i] == nil {
			last = r
			continue
		}
		if !isHold(results[i]) {
			return last, nil, results[i]
		}
		hold := &heldRecs{recs: recs[i:], skip: map[int64]bool{}}
		for j := i; j < len(recs); j++ {
			var h errHold
			switch {
			case results[j] == nil:
				hold.skip[recs[j].Offset] = true
			case errors.As(results[j], &h):
				if hold.due.IsZero() || h.due.Before(hold.due) {
					hold.due = h.due
				}
			case !isHold(results[j]):
				return last, nil, results[j]
			}
		}
		if wait != nil {
			hold.recs = append(hold.recs[:len(hold.recs):len(hold.recs)], wait.recs...)
			for o := range wait.skip {
				hold.skip[o] = true
			}
		}
		if hold.due.IsZero() {
			hold.due = time.Now()
		}
		return last, hold, nil
	}
	return last, wait, nil
}

// metaOf returns r's history: its headers, or what an in-place retry
// recorded for it.
func (g *Group) metaOf(pos chainPos, r *kgo.Record) meta {
	g.mu.Lock()
	ip, ok := g.inplace[tp{r.Topic, r.Partition}][r.Offset]
	g.mu.Unlock()
	if ok {
		return ip.m
	}
	return readMeta(r, pos.origin)
}

// batch runs origin records through a BatchHandler; in ordered modes the
// records of keys parked in the retry chain are forwarded first.
func (g *Group) batch(ctx context.Context, bh BatchHandler, pos chainPos, recs []*kgo.Record, results []error, st *Stats) error {
	idx := make([]int, 0, len(recs))
	if g.cfg.policy.ordered() {
		for i, r := range recs {
			if s := g.stateOf(pos.origin, r.Partition); s != nil {
				g.mu.Lock()
				parked := s.routeOrigin(string(r.Key), r.Offset) != routeHandle
				g.mu.Unlock()
				if parked {
					results[i] = g.settle(ctx, pos, r, nil, st)
					continue
				}
			}
			idx = append(idx, i)
		}
	} else {
		for i := range recs {
			idx = append(idx, i)
		}
	}
	sub := make([]*kgo.Record, len(idx))
	for j, i := range idx {
		sub[j] = recs[i]
	}
	if len(sub) == 0 {
		return nil
	}
	res, perr := g.callBatch(ctx, bh, sub)
	if perr != nil {
		// Which record panicked, and which were applied before, is
		// unknown: handle them again one at a time (Handle, at least once
		// as always), so that only the panicking record is dead-lettered.
		subRes := make([]error, len(sub))
		g.lanes(ctx, pos, sub, subRes, nil, st)
		for j, i := range idx {
			results[i] = subRes[j]
		}
		return nil
	}
	if res != nil && len(res) != len(sub) {
		return fmt.Errorf("consumers: batch handler returned %d results for %d records", len(res), len(sub))
	}
	// Failed records go through the policy in order, retried alone.
	for j, i := range idx {
		if res != nil && res[j] != nil {
			results[i] = g.settle(ctx, pos, recs[i], res[j], st)
		}
	}
	return nil
}

// lanes runs records through Handle, spread over key lanes.
func (g *Group) lanes(ctx context.Context, pos chainPos, recs []*kgo.Record, results []error, skip map[int64]bool, st *Stats) {
	n := g.cfg.keyConcurrency
	var mu sync.Mutex
	run := func(lane int) {
		ctx, retire := g.withSlot(ctx)
		defer retire()
		var ls Stats
		defer func() {
			mu.Lock()
			st.Failed += ls.Failed
			st.DeadLettered += ls.DeadLettered
			mu.Unlock()
		}()
		failedKeys := map[string]error{}
		for i, r := range recs {
			if n > 1 && laneOf(r.Key, n) != lane {
				continue
			}
			if skip[r.Offset] {
				continue
			}
			if err, ok := failedKeys[string(r.Key)]; ok {
				if isHold(err) {
					results[i] = errHeldBehind
				} else {
					results[i] = fmt.Errorf("offset %d: %w", r.Offset, ErrBlocked)
				}
				continue
			}
			if err := g.settle(ctx, pos, r, nil, &ls); err != nil {
				results[i] = err
				failedKeys[string(r.Key)] = err
				if n == 1 {
					// Strict offset order: nothing after a failure.
					for j := i + 1; j < len(recs); j++ {
						if isHold(err) {
							results[j] = errHeldBehind
						} else {
							results[j] = fmt.Errorf("offset %d: %w", recs[j].Offset, ErrBlocked)
						}
					}
					return
				}
			}
		}
	}
	if n == 1 {
		run(0)
		return
	}
	var wg sync.WaitGroup
	for lane := range n {
		wg.Go(func() { run(lane) })
	}
	wg.Wait()
}

func laneOf(key []byte, n int) int {
	h := fnv.New32a()
	h.Write(key)
	return int(h.Sum32() % uint32(n))
}

// call runs the handler once on r, under the attempt deadline (see
// callWithDeadline). A retry record is shown with its origin topic,
// partition, offset and timestamp.
func (g *Group) call(ctx context.Context, pos chainPos, r *kgo.Record, m meta) error {
	rec := r
	if pos.level > 0 {
		c := *r
		c.Topic, c.Partition, c.Offset, c.Timestamp = m.topic, m.partition, m.offset, m.ts
		rec = &c
	}
	if d := g.cfg.policy.AttemptTimeout; d > 0 {
		return g.callWithDeadline(ctx, rec, d)
	}
	return g.handle(ctx, rec)
}
