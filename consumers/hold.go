package consumers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// heldRecs are a paused retry partition's records, the first not yet due.
type heldRecs struct {
	recs []*kgo.Record
	due  time.Time
	hwm  int64
	// skip holds offsets among recs already settled (by other key lanes,
	// after an in-place retry held the partition).
	skip map[int64]bool
}

// inPlace is the history of a record retried in place (a record released
// from parking that failed, ordered modes): it waits at its position in
// its partition, which is held until due, instead of being produced
// behind its key's later records again.
type inPlace struct {
	m meta
}

// errHold is the result of a record retried in place; errHeldBehind of
// the records a lane did not process after it.
type errHold struct{ due time.Time }

func (e errHold) Error() string {
	return "consumers: retried in place until " + e.due.Format(time.RFC3339Nano)
}

var errHeldBehind = errors.New("consumers: behind a record retried in place")

func isHold(err error) bool {
	var h errHold
	return errors.As(err, &h) || errors.Is(err, errHeldBehind)
}

// nextDue returns when the first held record is due.
func (g *Group) nextDue() (time.Time, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var first time.Time
	for _, h := range g.held {
		if first.IsZero() || h.due.Before(first) {
			first = h.due
		}
	}
	return first, !first.IsZero()
}

// park forwards rc's record, unhandled, to the retry level where the
// oldest record of its key is, behind it.
func (g *Group) park(ctx context.Context, rc *rec) error {
	r, m := rc.r, rc.m
	g.mu.Lock()
	to := rc.s.headLevel(string(r.Key))
	g.mu.Unlock()
	m.retries, m.hop = m.rung(rc.pos.level), m.hopAt(rc.pos.level)
	m.parked, m.due = true, time.Now()
	if err := g.forward(ctx, r, m, nil, to); err != nil {
		return fmt.Errorf("consumers: %s/%d@%d: park: %w", r.Topic, r.Partition, r.Offset, err)
	}
	g.mu.Lock()
	rc.s.enter(string(r.Key), m.offset, to)
	g.mu.Unlock()
	return nil
}

// left records that the record of key at origin offset o left the chain.
func (g *Group) left(s *chainState, key string, level int, o int64) {
	if s == nil || level == 0 {
		return
	}
	g.mu.Lock()
	s.leave(key, o)
	g.mu.Unlock()
}
