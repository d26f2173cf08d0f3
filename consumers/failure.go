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

// rec is one record being settled, with what the failure path needs of
// it: its place in the chain, its history (which failing changes), its
// origin partition's chain state (ordered modes; nil otherwise) and the
// stats of the partition it counts in.
type rec struct {
	pos chainPos
	r   *kgo.Record
	m   meta
	s   *chainState
	st  *Stats
}

// settle brings one record to a settled state: handled, forwarded to a
// retry level, parked, dropped (a replayed copy) or dead-lettered. first
// is the error of a first attempt already made (by a batch handler), nil
// to make it here. It returns the error that leaves the record unsettled
// (stopping the group).
func (g *Group) settle(ctx context.Context, pos chainPos, r *kgo.Record, first error, st *Stats) error {
	rc := rec{pos: pos, r: r, m: g.metaOf(pos, r), st: st}
	g.mu.Lock()
	delete(g.inplace[tp{r.Topic, r.Partition}], r.Offset)
	g.mu.Unlock()
	if g.cfg.policy.ordered() {
		rc.s = g.stateOf(pos.origin, r.Partition)
	}
	if rc.s != nil {
		switch g.route(&rc) {
		case routeMarker, routeDrop:
			return nil
		case routePark:
			return g.park(ctx, &rc)
		case routeDead:
			rc.m.parked = false
			return g.toDLQ(ctx, &rc, Permanent(ErrParkedBehindDeadLetter), false)
		}
	}
	err := first
	if err == nil {
		if err = g.call(ctx, pos, r, rc.m); err == nil {
			g.left(rc.s, string(r.Key), pos.level, rc.m.offset)
			return nil
		}
	}
	st.Failed++
	return g.fail(ctx, &rc, err)
}

// route says what the ordered retry chain makes of rc: handle it, park
// it behind its key, drop it or dead-letter it (see chainState).
func (g *Group) route(rc *rec) route {
	g.mu.Lock()
	defer g.mu.Unlock()
	key, s := string(rc.r.Key), rc.s
	var rt route
	switch {
	case rc.pos.level > 0 && rc.m.marker != "":
		rt = routeMarker
	case rc.pos.level == 0:
		rt = s.routeOrigin(key, rc.m.offset)
	default:
		rt = s.routeRetry(key, rc.pos.level, rc.r.Offset, rc.m.offset)
	}
	if rt == routePark {
		k := s.keys[key]
		if rc.pos.level == 0 && k.deadMax >= 0 {
			// Parked while its key is dead: dead too.
			k.deadMax = max(k.deadMax, rc.m.offset)
		}
		rc.m.deadKey = k.dead(rc.m.offset)
	}
	return rt
}

// fail applies the failure policy to a record whose handling failed with
// err: in-place retries, then the next retry level or the dead-letter
// topic. It returns the error that remains (nil when the record is
// settled).
func (g *Group) fail(ctx context.Context, rc *rec, err error) error {
	now := time.Now()
	if rc.m.first.IsZero() {
		rc.m.first = now
	}
	rc.m.attempts++
	rc.m.last = now
	if !errors.Is(err, ErrBlocked) {
		g.warnFailed(ctx, rc, err)
	}
	err, done := g.retryInPlace(ctx, rc, err)
	if done {
		return err
	}
	if ctx.Err() != nil && !IsPermanent(err) {
		return fmt.Errorf("consumers: %s/%d@%d: %w (interrupted: %w)", rc.r.Topic, rc.r.Partition, rc.r.Offset, err, ctx.Err())
	}
	if g.parkAfterFailure(rc) {
		return g.park(ctx, rc)
	}
	if rung := rc.m.rung(rc.pos.level); !IsPermanent(err) && rung < len(g.cfg.policy.RetryDelays) {
		return g.nextRung(ctx, rc, err, rung)
	}
	return g.toDLQ(ctx, rc, err, true)
}

// warnFailed logs a failed attempt. Enabled first: the arguments would
// cost allocations on every failure even with the default discarding
// logger.
func (g *Group) warnFailed(ctx context.Context, rc *rec, err error) {
	if g.log.Enabled(ctx, slog.LevelWarn) {
		g.log.WarnContext(ctx, "handler failed", "topic", rc.r.Topic, "partition", rc.r.Partition, "offset", rc.r.Offset, "attempt", rc.m.attempts, "err", err)
	}
}

// retryInPlace retries rc with backoff, up to the policy's Retries. It
// returns the last error and whether the record is done with (handled:
// nil; or interrupted by ctx: the error that stops the group). A call that
// hit its deadline is not retried in place: it held up the poll (and so
// every partition of the member) for AttemptTimeout already.
func (g *Group) retryInPlace(ctx context.Context, rc *rec, err error) (error, bool) {
	p, key := g.cfg.policy, string(rc.r.Key)
	for tries := 0; !IsPermanent(err) && !errors.Is(err, ErrAttemptTimeout) && tries < p.Retries; tries++ {
		if rc.s != nil && rc.pos.level == 0 {
			g.mu.Lock()
			parked := rc.s.inChain(key)
			g.mu.Unlock()
			if parked {
				// An earlier record of the key just entered the chain
				// (a batch's ErrBlocked): park behind it.
				break
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consumers: %s/%d@%d: %w (retry interrupted: %w)", rc.r.Topic, rc.r.Partition, rc.r.Offset, err, ctx.Err()), true
		case <-time.After(p.backoff(tries + 1)):
		}
		rc.m.attempts++
		if err = g.call(ctx, rc.pos, rc.r, rc.m); err == nil {
			g.left(rc.s, key, rc.pos.level, rc.m.offset)
			return nil, true
		}
		rc.m.last = time.Now()
		g.warnFailed(ctx, rc, err)
	}
	return err, false
}

// parkAfterFailure reports whether an origin record that failed must be
// parked behind its key, which entered the retry chain meanwhile (dead
// too if its key is).
func (g *Group) parkAfterFailure(rc *rec) bool {
	if rc.s == nil || rc.pos.level != 0 {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	parked := rc.s.inChain(string(rc.r.Key))
	if parked {
		if k := rc.s.keys[string(rc.r.Key)]; k.deadMax >= 0 {
			k.deadMax = max(k.deadMax, rc.m.offset)
			rc.m.deadKey = true
		}
	}
	return parked
}

// nextRung sends rc up the ladder of delayed retries: every record gets
// all of them, whatever level it was released from parking at. It goes to
// the level with that delay, or, released at a higher level, stays at its
// level (at its end, due after the delay): records never move down, so
// the key's later records, parked behind it, move once per failure.
func (g *Group) nextRung(ctx context.Context, rc *rec, err error, rung int) error {
	r, delay := rc.r, g.cfg.policy.RetryDelays[rung]
	next := max(rc.pos.level, rung+1)
	if rc.s != nil && next == rc.pos.level {
		// Released at a level above its rung: wait here, in place,
		// rather than behind its key's later records (which would all
		// have to be parked again behind it).
		rc.m.retries = rung + 1
		rc.m.due = time.Now().Add(delay)
		g.mu.Lock()
		k := tp{r.Topic, r.Partition}
		if g.inplace[k] == nil {
			g.inplace[k] = map[int64]inPlace{}
		}
		g.inplace[k][r.Offset] = inPlace{m: rc.m}
		g.mu.Unlock()
		g.log.Info("record retried in place", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "retries", rc.m.retries, "attempts", rc.m.attempts)
		return errHold{rc.m.due}
	}
	rc.m.parked, rc.m.deadKey = false, false
	rc.m.retries, rc.m.hop = rung+1, rc.m.hopAt(rc.pos.level)
	rc.m.due = time.Now().Add(delay)
	if ferr := g.forward(ctx, r, rc.m, err, next); ferr != nil {
		return fmt.Errorf("consumers: %s/%d@%d: %w; forwarding to retry level %d failed: %w", r.Topic, r.Partition, r.Offset, err, next, ferr)
	}
	if rc.s != nil {
		g.mu.Lock()
		rc.s.enter(string(r.Key), rc.m.offset, next)
		g.mu.Unlock()
	}
	g.log.Info("record sent to retry topic", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "level", next, "retries", rc.m.retries, "attempts", rc.m.attempts)
	return nil
}

// toDLQ dead-letters rc, or returns the error that stops the group when
// dead-lettering is off. In ordered modes, a record that failed — a head
// of the retry chain, or an origin record (poison, ErrInvalid, Permanent,
// a panic) — is dead-lettered durably before its key's later records may
// be handled (see deadLetterOrdered).
func (g *Group) toDLQ(ctx context.Context, rc *rec, err error, head bool) error {
	m := &rc.m
	if !g.cfg.policy.DeadLetter {
		return fmt.Errorf("consumers: %s/%d@%d failed after %d attempts: %w", m.topic, m.partition, m.offset, m.attempts, err)
	}
	if rc.s == nil || (rc.pos.level > 0 && !head) {
		if dlErr := g.forward(ctx, rc.r, *m, err, 0); dlErr != nil {
			return fmt.Errorf("consumers: %s/%d@%d: %w; dead-lettering failed: %w", m.topic, m.partition, m.offset, err, dlErr)
		}
		if rc.s != nil && rc.pos.level > 0 {
			g.mu.Lock()
			rc.s.leave(string(rc.r.Key), m.offset)
			g.mu.Unlock()
		}
	} else if dlErr := g.deadLetterOrdered(ctx, rc, err); dlErr != nil {
		return fmt.Errorf("consumers: %s/%d@%d: %w; dead-lettering failed: %w", m.topic, m.partition, m.offset, err, dlErr)
	}
	rc.st.DeadLettered++
	g.log.Error("record dead-lettered", "topic", m.topic, "partition", m.partition, "offset", m.offset, "attempts", m.attempts, "reason", ErrorReason(err), "err", err)
	return nil
}

// deadLetterOrdered dead-letters a failed record of an ordered mode: the
// dead letter and a marker in the retry partition (which survives a crash
// with the record's uncommitted copies and its origin offset, see
// loadStates; level 1 for an origin record, whose key has nothing in the
// chain or it would have been parked) are acknowledged first. After a
// crash the marker drops the record's replay, so it is neither
// dead-lettered twice nor handled after its key's later records.
func (g *Group) deadLetterOrdered(ctx context.Context, rc *rec, err error) error {
	r, m, s, key := rc.r, rc.m, rc.s, string(rc.r.Key)
	kind, deadThrough := markerSettled, int64(-1)
	levels := []int{max(rc.pos.level, 1)}
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
	g.awaitMarkers(rc, len(levels))
	// The dead letter first: a marker drops the record's copies, so it
	// must never exist without the dead letter.
	var markers []*kgo.Record
	for _, l := range levels {
		markers = append(markers, g.marker(r.Key, m, l, r.Partition, kind, deadThrough))
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	dl := g.derived(r, m, DeadLetterTopic(m.topic, g.group), err, 0)
	perr := g.cl.ProduceSync(pctx, dl).FirstErr()
	if perr != nil && tooLarge(perr) {
		g.log.Warn("dead letter too large; dropping its value", "topic", m.topic, "partition", m.partition, "offset", m.offset, "size", len(dl.Value))
		perr = g.cl.ProduceSync(pctx, withoutValue(dl)).FirstErr()
	}
	if perr == nil {
		perr = g.cl.ProduceSync(pctx, markers...).FirstErr()
	}
	if perr != nil {
		return perr
	}
	g.mu.Lock()
	s.leave(key, m.offset)
	if k := s.keys[key]; k != nil && deadThrough >= 0 && len(k.live) > 0 {
		k.deadMax = max(k.deadMax, deadThrough)
	}
	g.mu.Unlock()
	return nil
}

// awaitMarkers records that markers markers of rc's record are about to
// be written, with how far each chain partition was processed: a marker
// is passed only once they are committed that far (see markerReady).
func (g *Group) awaitMarkers(rc *rec, markers int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	w := &markerWait{markers: markers, lower: map[tp]int64{}}
	for l := 0; l <= len(g.cfg.policy.RetryDelays); l++ {
		q := tp{rc.pos.origin, rc.r.Partition}
		if l > 0 {
			q.topic = RetryTopic(rc.pos.origin, g.group, l)
		}
		w.lower[q] = g.processed[q]
	}
	if k := rc.s.keys[string(rc.r.Key)]; k != nil {
		if k.waits == nil {
			k.waits = map[int64]*markerWait{}
		}
		k.waits[rc.m.offset] = w
	}
}
