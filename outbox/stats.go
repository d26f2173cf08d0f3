package outbox

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Stats are a relay's counters and lag (see ReportStats and Relay.Stats).
type Stats struct {
	// Leader reports whether this instance is publishing.
	Leader bool
	// Events and Messages count the events and outbox messages this
	// instance published (committed) since Run started; Transactions the
	// Kafka transactions that carried them; Skipped the invalid events
	// OnInvalid chose to skip; Errors the failures it recovered from.
	Events, Messages, Transactions, Skipped, Errors uint64
	// DeadLettered counts the events and outbox messages this instance
	// wrote to the dead-letter topic instead of publishing them (too
	// large, topic missing, refused by the codec, unreadable), committed
	// with the checkpoint that passes them. Each is also logged at error
	// level ("dead-lettering a record Kafka will not take").
	DeadLettered uint64
	// EventsPerSecond is the rate of published events over the last
	// interval.
	EventsPerSecond float64
	// Checkpoint is the last committed checkpoint.
	Checkpoint Checkpoint
	// LagEvents is how many events the relay is behind: the newest
	// committed position minus the highest position published, so
	// approximate (positions of rolled-back appends count). -1 when the
	// source cannot tell (only stores/postgres can).
	LagEvents int64
	// LagSeconds is how far behind the relay is in time: 0 when its last
	// read found no more than it published, else the age of the newest
	// event it published (by the event's time).
	LagSeconds float64
	// Interval is the time the rates cover.
	Interval time.Duration
}

// relayStats are the counters behind Stats.
type relayStats struct {
	leader, caughtUp atomic.Bool
	// recovered is set once a term has recovered its checkpoint: until
	// then a leader's lag is unknown (-1), not the whole store.
	recovered               atomic.Bool
	skipped, errors, maxPos atomic.Uint64
	lastEventNanos          atomic.Int64

	// mu guards the rest: the counters move with the checkpoint, so that
	// no Stats shows a transaction's checkpoint without its events.
	mu                     sync.Mutex
	events, messages, txns uint64
	dead                   uint64
	checkpoint             Checkpoint
	lastAt                 time.Time
	lastEvents             uint64
}

func (s *relayStats) start(now time.Time) {
	s.mu.Lock()
	s.lastAt, s.lastEvents = now, s.events
	s.mu.Unlock()
}

func (s *relayStats) setCheckpoint(cp Checkpoint) {
	s.mu.Lock()
	s.checkpoint = cp
	s.mu.Unlock()
	defer s.recovered.Store(true)
	// Everything up to a recovered checkpoint is published: a relay
	// taking over reports its lag from there, not from position 0 (its
	// first report showed the whole store as lag until it committed).
	for {
		cur := s.maxPos.Load()
		if cp.Events.Position <= cur || s.maxPos.CompareAndSwap(cur, cp.Events.Position) {
			return
		}
	}
}

func (s *relayStats) committed(b *published, _ time.Duration) {
	s.mu.Lock()
	s.events += uint64(b.events)
	s.messages += uint64(b.msgs)
	s.dead += uint64(b.dead)
	s.txns++
	s.checkpoint = b.cp
	s.mu.Unlock()
	for {
		cur := s.maxPos.Load()
		if b.maxPosition <= cur || s.maxPos.CompareAndSwap(cur, b.maxPosition) {
			break
		}
	}
	if !b.lastEventTime.IsZero() {
		s.lastEventNanos.Store(b.lastEventTime.UnixNano())
	}
}

// Topic returns the relay's events topic.
func (r *Relay) Topic() string { return r.cfg.topic }

// Instance returns the relay's instance name ("" when none was given).
func (r *Relay) Instance() string { return r.cfg.instance }

// Stats returns the relay's counters now; the lag needs a database query
// and is only filled in by the periodic report (LagEvents is -1 here).
func (r *Relay) Stats() Stats {
	st := r.snapshot(time.Now(), false)
	st.LagEvents = -1
	return st
}

// snapshot reads the counters; advance moves the rate window on.
func (r *Relay) snapshot(now time.Time, advance bool) Stats {
	s := &r.st
	st := Stats{
		Leader:    s.leader.Load(),
		Skipped:   s.skipped.Load(),
		Errors:    s.errors.Load(),
		LagEvents: -1,
	}
	s.mu.Lock()
	st.Events, st.Messages, st.Transactions, st.DeadLettered = s.events, s.messages, s.txns, s.dead
	st.Checkpoint = s.checkpoint
	st.Interval = now.Sub(s.lastAt)
	if st.Interval > 0 {
		st.EventsPerSecond = float64(st.Events-s.lastEvents) / st.Interval.Seconds()
	}
	if advance {
		s.lastAt, s.lastEvents = now, st.Events
	}
	s.mu.Unlock()
	return st
}

// reportStats logs and reports Stats every interval until ctx ends.
func (r *Relay) reportStats(ctx context.Context) {
	t := time.NewTicker(r.cfg.statsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			st := r.snapshot(now, true)
			if r.head != nil && st.Leader && r.st.recovered.Load() {
				qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				head, err := r.head(qctx)
				cancel()
				if err == nil {
					st.LagEvents = max(0, int64(head)-int64(r.st.maxPos.Load()))
				}
			}
			caughtUp := r.st.caughtUp.Load() && st.LagEvents <= 0
			if last := r.st.lastEventNanos.Load(); !caughtUp && last != 0 && st.Leader {
				st.LagSeconds = max(0, now.Sub(time.Unix(0, last)).Seconds())
			}
			r.log.Info("relay stats", "leader", st.Leader, "events", st.Events, "messages", st.Messages,
				"transactions", st.Transactions, "dead_lettered", st.DeadLettered, "events_per_second", int64(st.EventsPerSecond),
				"lag_events", st.LagEvents, "lag_seconds", st.LagSeconds,
				"checkpoint", st.Checkpoint.Events.String())
			if r.cfg.onStats != nil {
				r.cfg.onStats(st)
			}
		}
	}
}
