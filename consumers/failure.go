package consumers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// ErrBlocked marks a record not processed because an earlier record of the
// same key failed in the same batch.
var ErrBlocked = errors.New("consumers: an earlier record of the same key failed")

// markerReady reports whether the dead-letter marker r at a retry level
// may be passed: the origin record it settles is committed in the origin
// partition, no stale copy of it is still ahead, and, for a marker this
// member wrote, the lower chain partitions are committed up to what was
// processed when it was written. Then no copy of the settled record can
// be replayed after the marker is committed past.
func (g *Group) markerReady(pos chainPos, r *kgo.Record, m meta) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	origin := tp{pos.origin, r.Partition}
	if g.committed[origin] <= m.offset {
		return false
	}
	s := g.states[origin]
	if s == nil {
		return true
	}
	key := string(r.Key)
	if s.staleLeft(key, m.offset) {
		return false
	}
	k := s.keys[key]
	if k == nil {
		return true
	}
	w := k.waits[m.offset]
	if w == nil {
		return true
	}
	for q, next := range w.lower {
		if g.committed[q] < next {
			return false
		}
	}
	if w.markers--; w.markers <= 0 {
		delete(k.waits, m.offset)
	}
	return true
}

// settle brings one record to a settled state: handled, forwarded to a
// retry level, parked, dropped (a replayed copy) or dead-lettered. first
// is the error of a first attempt already made (by a batch handler), nil
// to make it here. It returns the error that leaves the record unsettled
// (stopping the group).
func (g *Group) settle(ctx context.Context, pos chainPos, r *kgo.Record, first error, st *Stats) error {
	m := g.metaOf(pos, r)
	g.mu.Lock()
	delete(g.inplace[tp{r.Topic, r.Partition}], r.Offset)
	g.mu.Unlock()
	var s *chainState
	if g.cfg.policy.ordered() {
		s = g.stateOf(pos.origin, r.Partition)
	}
	key := string(r.Key)
	if s != nil {
		g.mu.Lock()
		var rt route
		switch {
		case pos.level > 0 && m.marker != "":
			rt = routeMarker
		case pos.level == 0:
			rt = s.routeOrigin(key, m.offset)
		default:
			rt = s.routeRetry(key, pos.level, r.Offset, m.offset)
		}
		if rt == routePark {
			k := s.keys[key]
			if pos.level == 0 && k.deadMax >= 0 {
				// Parked while its key is dead: dead too.
				k.deadMax = max(k.deadMax, m.offset)
			}
			m.deadKey = k.dead(m.offset)
		}
		g.mu.Unlock()
		switch rt {
		case routeMarker, routeDrop:
			return nil
		case routePark:
			return g.park(ctx, pos, r, m, s)
		case routeDead:
			m.parked = false
			return g.toDLQ(ctx, pos, r, m, s, Permanent(ErrParkedBehindDeadLetter), st, false)
		}
	}
	err := first
	if err == nil {
		if err = g.call(ctx, pos, r, m); err == nil {
			g.left(s, key, pos.level, m.offset)
			return nil
		}
	}
	st.Failed++
	return g.fail(ctx, pos, r, m, s, err, st)
}

// fail applies the failure policy to a record whose handling failed with
// err: in-place retries, then the next retry level or the dead-letter
// topic. It returns the error that remains (nil when the record is
// settled).
func (g *Group) fail(ctx context.Context, pos chainPos, r *kgo.Record, m meta, s *chainState, err error, st *Stats) error {
	p := g.cfg.policy
	now := time.Now()
	if m.first.IsZero() {
		m.first = now
	}
	m.attempts++
	m.last = now
	key := string(r.Key)
	// Enabled first: the arguments would cost allocations on every
	// failure even with the default discarding logger.
	if !errors.Is(err, ErrBlocked) && g.log.Enabled(ctx, slog.LevelWarn) {
		g.log.WarnContext(ctx, "handler failed", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempt", m.attempts, "err", err)
	}
	// A call that hit its deadline is not retried in place: it held up
	// the poll (and so every partition of the member) for AttemptTimeout
	// already.
	for tries := 0; !IsPermanent(err) && !errors.Is(err, ErrAttemptTimeout) && tries < p.Retries; tries++ {
		if s != nil && pos.level == 0 {
			g.mu.Lock()
			parked := s.inChain(key)
			g.mu.Unlock()
			if parked {
				// An earlier record of the key just entered the chain
				// (a batch's ErrBlocked): park behind it.
				break
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consumers: %s/%d@%d: %w (retry interrupted: %w)", r.Topic, r.Partition, r.Offset, err, ctx.Err())
		case <-time.After(p.backoff(tries + 1)):
		}
		m.attempts++
		if err = g.call(ctx, pos, r, m); err == nil {
			g.left(s, key, pos.level, m.offset)
			return nil
		}
		m.last = time.Now()
		if g.log.Enabled(ctx, slog.LevelWarn) {
			g.log.WarnContext(ctx, "handler failed", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempt", m.attempts, "err", err)
		}
	}
	if ctx.Err() != nil && !IsPermanent(err) {
		return fmt.Errorf("consumers: %s/%d@%d: %w (interrupted: %w)", r.Topic, r.Partition, r.Offset, err, ctx.Err())
	}
	if s != nil && pos.level == 0 {
		g.mu.Lock()
		parked := s.inChain(key)
		if parked {
			if k := s.keys[key]; k.deadMax >= 0 {
				k.deadMax = max(k.deadMax, m.offset)
				m.deadKey = true
			}
		}
		g.mu.Unlock()
		if parked {
			return g.park(ctx, pos, r, m, s)
		}
	}
	// The next rung of the ladder: every record gets all delayed retries,
	// whatever level it was released from parking at. It goes to the
	// level with that delay, or, released at a higher level, stays at its
	// level (at its end, due after the delay): records never move down, so
	// the key's later records, parked behind it, move once per failure.
	if rung := m.rung(pos.level); !IsPermanent(err) && rung < len(p.RetryDelays) {
		next := max(pos.level, rung+1)
		if s != nil && next == pos.level {
			// Released at a level above its rung: wait here, in place,
			// rather than behind its key's later records (which would
			// all have to be parked again behind it).
			m.retries = rung + 1
			m.due = time.Now().Add(p.RetryDelays[rung])
			g.mu.Lock()
			k := tp{r.Topic, r.Partition}
			if g.inplace[k] == nil {
				g.inplace[k] = map[int64]inPlace{}
			}
			g.inplace[k][r.Offset] = inPlace{m: m}
			g.mu.Unlock()
			g.log.Info("record retried in place", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "retries", m.retries, "attempts", m.attempts)
			return errHold{m.due}
		}
		m.parked, m.deadKey = false, false
		m.retries, m.hop = rung+1, m.hopAt(pos.level)
		m.due = time.Now().Add(p.RetryDelays[rung])
		if ferr := g.forward(ctx, r, m, err, next); ferr != nil {
			return fmt.Errorf("consumers: %s/%d@%d: %w; forwarding to retry level %d failed: %w", r.Topic, r.Partition, r.Offset, err, next, ferr)
		}
		if s != nil {
			g.mu.Lock()
			s.enter(key, m.offset, next)
			g.mu.Unlock()
		}
		g.log.Info("record sent to retry topic", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "level", next, "retries", m.retries, "attempts", m.attempts)
		return nil
	}
	return g.toDLQ(ctx, pos, r, m, s, err, st, true)
}

// toDLQ dead-letters r, or returns the error that stops the group when
// dead-lettering is off. In ordered modes, a record that failed — a head
// of the retry chain, or an origin record (poison, ErrInvalid, Permanent,
// a panic) — is dead-lettered durably before its key's later records may
// be handled: the dead letter and a marker in the retry partition (which
// survives a crash with the record's uncommitted copies and its origin
// offset, see loadStates; level 1 for an origin record) are acknowledged
// first. After a crash the marker drops the record's replay, so it is
// neither dead-lettered twice nor handled after its key's later records.
func (g *Group) toDLQ(ctx context.Context, pos chainPos, r *kgo.Record, m meta, s *chainState, err error, st *Stats, head bool) error {
	if !g.cfg.policy.DeadLetter {
		return fmt.Errorf("consumers: %s/%d@%d failed after %d attempts: %w", m.topic, m.partition, m.offset, m.attempts, err)
	}
	key := string(r.Key)
	if s == nil || (pos.level > 0 && !head) {
		if dlErr := g.forward(ctx, r, m, err, 0); dlErr != nil {
			return fmt.Errorf("consumers: %s/%d@%d: %w; dead-lettering failed: %w", m.topic, m.partition, m.offset, err, dlErr)
		}
		if s != nil && pos.level > 0 {
			g.mu.Lock()
			s.leave(key, m.offset)
			g.mu.Unlock()
		}
	} else {
		// A record failing at the origin (its key has nothing in the
		// chain, or it would have been parked) gets its marker at level 1.
		kind, deadThrough := markerSettled, int64(-1)
		levels := []int{max(pos.level, 1)}
		if g.cfg.policy.Ordering == OrderedDeadLetterRest {
			kind = markerDead
			g.mu.Lock()
			if k := s.keys[key]; k != nil {
				for _, o := range k.live {
					if o != m.offset {
						deadThrough = max(deadThrough, o)
						if l := k.level[o]; !slices.Contains(levels, l) {
							levels = append(levels, l)
						}
					}
				}
			}
			g.mu.Unlock()
		}
		g.mu.Lock()
		w := &markerWait{markers: len(levels), lower: map[tp]int64{}}
		for l := 0; l <= len(g.cfg.policy.RetryDelays); l++ {
			q := tp{pos.origin, r.Partition}
			if l > 0 {
				q.topic = RetryTopic(pos.origin, g.group, l)
			}
			w.lower[q] = g.processed[q]
		}
		if k := s.keys[key]; k != nil {
			if k.waits == nil {
				k.waits = map[int64]*markerWait{}
			}
			k.waits[m.offset] = w
		}
		g.mu.Unlock()
		// The dead letter first: a marker drops the record's copies, so
		// it must never exist without the dead letter.
		var markers []*kgo.Record
		for _, l := range levels {
			markers = append(markers, g.marker(r.Key, m, l, r.Partition, kind, deadThrough))
		}
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		dl := g.derived(r, m, DeadLetterTopic(m.topic, g.group), err, 0)
		perr := g.cl.ProduceSync(pctx, dl).FirstErr()
		if perr != nil && tooLarge(perr) {
			g.log.Warn("dead letter too large; dropping its value", "topic", m.topic, "partition", m.partition, "offset", m.offset, "size", len(dl.Value))
			perr = g.cl.ProduceSync(pctx, withoutValue(dl)).FirstErr()
		}
		if perr == nil {
			perr = g.cl.ProduceSync(pctx, markers...).FirstErr()
		}
		cancel()
		if perr != nil {
			return fmt.Errorf("consumers: %s/%d@%d: %w; dead-lettering failed: %w", m.topic, m.partition, m.offset, err, perr)
		}
		g.mu.Lock()
		s.leave(key, m.offset)
		if k := s.keys[key]; k != nil && deadThrough >= 0 && len(k.live) > 0 {
			k.deadMax = max(k.deadMax, deadThrough)
		}
		g.mu.Unlock()
	}
	st.DeadLettered++
	g.log.Error("record dead-lettered", "topic", m.topic, "partition", m.partition, "offset", m.offset, "attempts", m.attempts, "reason", ErrorReason(err), "err", err)
	return nil
}
