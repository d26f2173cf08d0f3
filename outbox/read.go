package outbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kgo"
)

// batch is one read: events (encoded when produced, so encoding overlaps
// the next read), entries the source could not read (dead-lettered) and
// outbox messages.
type batch struct {
	entries []stores.Entry
	bad     []item
	msgs    []message
	cp      Checkpoint
	full    bool
	// ownEntries is set when entries is the relay's own slice (filled by
	// a BatchAppender), which recycle may clear and reuse.
	ownEntries bool
}

// n is how many entries of the log b holds, read or not.
func (b *batch) n() int { return len(b.entries) + len(b.bad) }

// add adds an entry of the log (or one the source could not read) and
// moves the events checkpoint past it.
func (b *batch) add(it item) {
	if it.bad != nil {
		b.bad = append(b.bad, it)
	} else {
		b.entries = append(b.entries, it.e)
	}
	b.cp.Events = it.e.Cursor
}

// item is an entry a source yielded, or one it could not read (bad is
// its Unreadable error, e what the source knows of the entry).
type item struct {
	e   stores.Entry
	bad error
}

// read reads batches from the source and the outbox table, starting after
// cp, and sends them to out until ctx ends or a read fails.
//
// While reads come back full (a backlog), read reads ahead, up to
// readAhead batches, so that reading overlaps publishing. Once caught up,
// it reads only on demand: after a partial batch it waits at least the
// minimum poll interval (the linger after a small batch) and then until
// the committer, done with its
// transaction, signals on demand that it waits for the next batch. A
// transaction then carries everything committed up to its start, and the
// database serves one read per transaction rather than one per poll
// interval (under load, transactions are spaced up to 40 ms apart): each
// read costs the database about 0.25 ms of CPU even when it finds
// nothing, 5% of a core at one read per 5 ms (pgbench, PostgreSQL 15).
func (r *Relay) read(ctx context.Context, cp Checkpoint, out chan<- *batch, demand <-chan struct{}) error {
	if obs, ok := r.src.(Observer); ok {
		return r.follow(ctx, obs, cp, out)
	}
	note, _ := r.src.(Notifier)
	lastWork := time.Now()
	onDemand := false
	wait := r.cfg.pollMin
	for {
		r.stampOne(beatRead)
		if onDemand {
			if !r.sleep(ctx, wait, nil, nil) {
				return ctx.Err()
			}
			select {
			case <-demand:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// A demand signalled while this reader was not waiting for one
		// (idle, reading ahead) is spent by this read: kept, it would
		// let the next partial batch be read while a transaction
		// commits, and every batch after it would be a transaction old.
		select {
		case <-demand:
		default:
		}
		var appended <-chan struct{}
		if note != nil {
			appended = note.Appended()
		}
		fetchStart := time.Now()
		b, err := r.fetch(ctx, cp)
		if err != nil {
			return err
		}
		fetchTime := time.Since(fetchStart)
		if b.n()+len(b.msgs) == 0 {
			r.recycle(b)
			r.st.caughtUp.Store(true)
			onDemand = false
			if !r.idle(ctx, r.idleWait(time.Since(lastWork)), r.wake, appended) {
				return ctx.Err()
			}
			continue
		}
		lastWork = time.Now()
		r.st.caughtUp.Store(!b.full)
		r.log.Debug("read", "events", len(b.entries), "messages", len(b.msgs), "full", b.full, "took", fetchTime, "checkpoint", b.cp.Events.String())
		select {
		case out <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
		cp = b.cp
		onDemand = !b.full
		wait = r.cfg.pollMin
		if b.n()+len(b.msgs) < LingerBelow {
			wait = max(wait, r.cfg.linger)
		}
	}
}

// idleWait is the wait after an empty read when a read last found work
// idle ago: a quarter of that, from the minimum poll interval to the
// maximum. A source written to steadily is read every minimum interval
// even when some reads come back empty (a slow transaction holding the
// log back); one that went quiet is read less and less often. (Doubling
// on every empty read backed off to 40-80 ms within a few empty reads at
// 1,000 events/s, the p99 of the time to publish.)
func (r *Relay) idleWait(idle time.Duration) time.Duration {
	return min(max(idle/4, r.cfg.pollMin), r.cfg.pollMax)
}

// follow is read for an Observer: a goroutine follows the source's stream
// from cp into a channel of one batch's size (so a relay that cannot keep
// up holds the stream back, and memory stays bounded), and batches are
// cut from what is ready — blocking only for the first entry, so an event
// is published as soon as it arrives. A batch grows while the previous
// ones wait to be committed. The outbox table, if drained too, is polled
// as in read.
func (r *Relay) follow(ctx context.Context, obs Observer, cp Checkpoint, out chan<- *batch) error {
	ctx, cancel := context.WithCancel(ctx)
	entries := make(chan item, r.cfg.batchSize)
	obsErr := make(chan error, 1)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Go(func() {
		last := cp.Events
	observe:
		for {
			for e, err := range obs.Observe(ctx, last) {
				it := item{e: e}
				var u Unreadable
				if err != nil && errors.As(err, &u) {
					// Dead-lettered; observe anew from after it.
					it = item{e: u.UnreadableEntry(), bad: err}
					err = nil
				}
				if err == nil && !after(it.e.Cursor, last) {
					err = fmt.Errorf("got %s next: the source repeated or reordered its log", it.e.Cursor)
				}
				if err != nil {
					obsErr <- fmt.Errorf("outbox: observe events after %s: %w", last, err)
					return
				}
				last = it.e.Cursor
				select {
				case entries <- it:
				case <-ctx.Done():
					obsErr <- ctx.Err()
					return
				}
				if it.bad != nil {
					continue observe
				}
			}
			break
		}
		if err := ctx.Err(); err != nil {
			obsErr <- err
			return
		}
		obsErr <- fmt.Errorf("outbox: observe events after %s: the stream ended", last)
	})
	r.log.Debug("observing", "checkpoint", cp.Events.String())

	interval := r.cfg.pollMin
	// idle bounds the wait for the first entry, so an idle reader beats.
	idle := time.NewTimer(HeartbeatInterval)
	defer idle.Stop()
	for {
		r.stampOne(beatRead)
		b := &batch{cp: cp}
		var (
			poll  *time.Timer
			pollC <-chan time.Time
			wake  <-chan struct{}
		)
		if r.outbox != nil {
			poll = time.NewTimer(interval)
			pollC, wake = poll.C, r.wake
		}
		r.st.caughtUp.Store(len(entries) == 0)
		// Block for the first entry (or, with an outbox table, its poll).
		var err error
		for waiting := true; waiting; {
			waiting = false
			idle.Reset(HeartbeatInterval)
			select {
			case <-idle.C:
				r.stampOne(beatRead)
				waiting = true
			case it := <-entries:
				b.add(it)
			case err = <-obsErr:
			case <-ctx.Done():
				err = ctx.Err()
			case <-pollC:
			case <-wake:
			}
		}
		if poll != nil {
			poll.Stop()
		}
		if err != nil {
			return err
		}
		take(entries, b, r.cfg.batchSize)
		if r.outbox != nil {
			if err := r.readOutbox(ctx, b, cp.Outbox); err != nil {
				return err
			}
			if len(b.msgs) == 0 && b.n() == 0 {
				interval = min(2*interval, r.cfg.pollMax)
				continue
			}
			interval = r.cfg.pollMin
		}
		// Hand the batch over; while the committer is busy, let it grow.
		for sent := false; !sent; {
			var more <-chan item
			if b.n() < r.cfg.batchSize {
				more = entries
			}
			select {
			case out <- b:
				sent = true
			case it := <-more:
				b.add(it)
				take(entries, b, r.cfg.batchSize)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		r.log.Debug("observed", "events", len(b.entries), "messages", len(b.msgs), "full", b.full, "checkpoint", b.cp.Events.String())
		cp = b.cp
	}
}

// take moves the entries that are ready into b, up to limit, with its
// events checkpoint, and sets its fullness.
func take(entries <-chan item, b *batch, limit int) {
	for b.n() < limit {
		select {
		case it := <-entries:
			b.add(it)
			continue
		default:
		}
		break
	}
	b.full = b.full || b.n() == limit
}

// after reports whether cursor a comes after b in log order.
func after(a, b stores.Cursor) bool {
	return a.Tx > b.Tx || (a.Tx == b.Tx && a.Position > b.Position)
}

// sleep waits d, or until wake or appended fires (nil: never); false
// when ctx ended.
func (r *Relay) sleep(ctx context.Context, d time.Duration, wake <-chan struct{}, appended <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-wake:
	case <-appended:
	}
	return true
}

// idle is sleep for the reader's idle wait, which may be longer than
// HeartbeatInterval (PollMax): it beats meanwhile.
func (r *Relay) idle(ctx context.Context, d time.Duration, wake <-chan struct{}, appended <-chan struct{}) bool {
	if d <= HeartbeatInterval {
		return r.sleep(ctx, d, wake, appended)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	beat := time.NewTicker(HeartbeatInterval)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-beat.C:
			r.stampOne(beatRead)
			continue
		case <-t.C:
		case <-wake:
		case <-appended:
		}
		return true
	}
}

// fetch reads one batch after cp.
func (r *Relay) fetch(ctx context.Context, cp Checkpoint) (*batch, error) {
	b := &batch{cp: cp}
	if ba, ok := r.src.(BatchAppender); ok {
		var dst []stores.Entry
		select {
		case dst = <-r.spare:
		default:
		}
		entries, err := ba.AppendLogBatch(ctx, dst, cp.Events, r.cfg.batchSize)
		b.entries, b.ownEntries = entries, true
		if err != nil {
			// A failed read may have filled entries past dst's length.
			b.entries = b.entries[:cap(b.entries)]
			r.recycle(b)
			return nil, fmt.Errorf("outbox: read events after %s: %w", cp.Events, err)
		}
	} else if br, ok := r.src.(BatchReader); ok {
		// The store's slice as it is: no copy of every entry.
		entries, err := br.ReadLogBatch(ctx, cp.Events, r.cfg.batchSize)
		if err != nil {
			return nil, fmt.Errorf("outbox: read events after %s: %w", cp.Events, err)
		}
		b.entries = entries
	} else {
		last := cp.Events
		for e, err := range r.src.ReadAll(ctx, cp.Events, r.cfg.batchSize) {
			var u Unreadable
			if err != nil && errors.As(err, &u) && after(u.UnreadableEntry().Cursor, last) {
				// Dead-lettered; the next read starts after it, at once.
				b.bad = append(b.bad, item{e: u.UnreadableEntry(), bad: err})
				b.full = true
				break
			}
			if err != nil {
				return nil, fmt.Errorf("outbox: read events after %s: %w", cp.Events, err)
			}
			b.entries = append(b.entries, e)
			last = e.Cursor
		}
	}
	if n := len(b.bad); n > 0 {
		b.cp.Events = b.bad[n-1].e.Cursor
	} else if n := len(b.entries); n > 0 {
		b.cp.Events = b.entries[n-1].Cursor
	}
	b.full = b.full || len(b.entries) == r.cfg.batchSize
	if r.outbox != nil {
		if err := r.readOutbox(ctx, b, cp.Outbox); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// recycle hands b's entry slice, now published (or empty), to the next
// read: the records keep what they need (header bytes copied, payloads in
// the store's own blocks). It is cleared first, so that it holds on to no
// payload. Only the relay's own slices are recycled, never a
// slice a source handed out. b itself is left alone: nothing reads its
// entries after this, but its reader may still look at its length.
func (r *Relay) recycle(b *batch) {
	if !b.ownEntries || cap(b.entries) == 0 {
		return
	}
	clear(b.entries)
	select {
	case r.spare <- b.entries[:0]:
	default:
	}
}

// readOutbox adds one batch of the outbox table's messages after cursor
// after to b, and moves b's outbox checkpoint and fullness on.
func (r *Relay) readOutbox(ctx context.Context, b *batch, after stores.Cursor) error {
	msgs, err := readMessages(ctx, r.outbox, after, r.cfg.batchSize)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if r.instHdr != nil {
			m.rec.Headers = append(m.rec.Headers, kgo.RecordHeader{Key: InstanceHeader, Value: r.instHdr})
		}
		b.msgs = append(b.msgs, m)
		b.cp.Outbox = m.cursor
	}
	b.full = b.full || len(msgs) == r.cfg.batchSize
	return nil
}

// readAhead is how many batches the reader reads ahead of the committer
// in a backlog.
const readAhead = 4
