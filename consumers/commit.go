package consumers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// commit commits recs and the progress whose commit failed before. A
// failure is not fatal unless final (the group stops): the progress is
// kept and committed with the next commit (at-least-once: a crash before
// that replays it).
//
// Unless final, the commit is sent asynchronously and the next poll starts
// at once: a poll's records are durable before its offsets are committed
// either way, so not waiting for the OffsetCommit round trip only shortens
// the cycle (franz-go keeps commits in order, and the synchronous commits
// at a rebalance and at shutdown wait for the ones in flight).
func (g *Group) commit(ctx context.Context, recs []*kgo.Record, final bool) error {
	if final {
		// A failed asynchronous commit hands its progress back to this one.
		g.inflight.Wait()
	}
	g.mu.Lock()
	for _, r := range g.retryCommit {
		recs = append(recs, r)
	}
	clear(g.retryCommit)
	g.mu.Unlock()
	if len(recs) == 0 {
		return nil
	}
	if !final {
		offsets := map[string]map[int32]kgo.EpochOffset{}
		for _, r := range recs {
			m := offsets[r.Topic]
			if m == nil {
				m = map[int32]kgo.EpochOffset{}
				offsets[r.Topic] = m
			}
			if old, ok := m[r.Partition]; !ok || old.Offset < r.Offset+1 {
				m[r.Partition] = kgo.EpochOffset{Epoch: r.LeaderEpoch, Offset: r.Offset + 1}
			}
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		g.inflight.Add(1)
		g.cl.CommitOffsets(cctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
			defer g.inflight.Done()
			defer cancel()
			if err == nil && resp != nil {
				for _, t := range resp.Topics {
					for _, p := range t.Partitions {
						if perr := kerr.ErrorForCode(p.ErrorCode); perr != nil && err == nil {
							err = fmt.Errorf("%s[%d]: %w", t.Topic, p.Partition, perr)
						}
					}
				}
			}
			g.committedOrKept(recs, err)
		})
		return nil
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := g.cl.CommitRecords(cctx, recs...)
	if err != nil {
		return fmt.Errorf("consumers: commit: %w", err)
	}
	g.noteCommitted(recs)
	return nil
}

// committedOrKept notes recs committed, or keeps them to be committed with
// the next commit when err says the commit failed.
func (g *Group) committedOrKept(recs []*kgo.Record, err error) {
	if err == nil {
		g.noteCommitted(recs)
		return
	}
	g.mu.Lock()
	for _, r := range recs {
		k := tp{r.Topic, r.Partition}
		if old := g.retryCommit[k]; old == nil || old.Offset < r.Offset {
			g.retryCommit[k] = r
		}
	}
	g.mu.Unlock()
	if isConnError(err) || errors.Is(err, context.DeadlineExceeded) {
		g.brokersDown(err)
	} else {
		g.log.Warn("commit failed, retrying with the next commit", "err", err)
	}
}

// noteCommitted records the offsets committed for recs.
func (g *Group) noteCommitted(recs []*kgo.Record) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, r := range recs {
		k := tp{r.Topic, r.Partition}
		g.committed[k] = max(g.committed[k], r.Offset+1)
	}
}

// pendingCommit is a partition's progress that may be committed once the
// records its processing produced are acked.
type pendingCommit struct {
	rec *kgo.Record // nil: nothing to commit, only the flight to wait for
	fl  *flight
}

// enqueueCommit returns rec if it can be committed now, or queues it
// behind the flights of its partition.
func (g *Group) enqueueCommit(k tp, rec *kgo.Record, fl *flight) *kgo.Record {
	g.mu.Lock()
	defer g.mu.Unlock()
	if fl.landed() && len(g.pending[k]) == 0 {
		return rec
	}
	g.pending[k] = append(g.pending[k], pendingCommit{rec, fl})
	return nil
}

// readyCommits returns the queued progress whose flights landed (all of
// it when block is set, waiting for the acks), per partition in order and
// never past a record that failed to be produced.
func (g *Group) readyCommits(block bool) ([]*kgo.Record, error) {
	g.mu.Lock()
	snap := make(map[tp][]pendingCommit, len(g.pending))
	for k, q := range g.pending {
		snap[k] = q
	}
	g.mu.Unlock()
	var (
		out  []*kgo.Record
		errs []error
	)
	for k, q := range snap {
		n := 0
		var last *kgo.Record
		for _, pc := range q {
			if !pc.fl.landed() && (!block || !pc.fl.waitFor(g.cfg.drainTimeout)) {
				if block {
					g.log.Warn("retry records or dead letters not acknowledged in time: progress left uncommitted",
						"topic", k.topic, "partition", k.partition)
				}
				break
			}
			if err := pc.fl.wait(); err != nil {
				errs = append(errs, err)
				break
			}
			n++
			if pc.rec != nil {
				last = pc.rec
			}
		}
		g.mu.Lock()
		if rest := g.pending[k][n:]; len(rest) > 0 {
			g.pending[k] = rest
		} else {
			delete(g.pending, k)
		}
		g.mu.Unlock()
		if last != nil {
			out = append(out, last)
		}
	}
	return out, errors.Join(errs...)
}

func (g *Group) hasPending() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.pending) > 0
}

// commitReady commits the queued progress whose flights landed (with
// block, before a rebalance or at shutdown, it waits up to DrainTimeout
// for the others).
func (g *Group) commitReady(ctx context.Context, _ *kgo.Client, block bool) error {
	recs, err := g.readyCommits(block)
	return errors.Join(err, g.commit(ctx, recs, block))
}
