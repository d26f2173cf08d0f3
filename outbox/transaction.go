package outbox

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// termState is what one term's transactions need besides the producer.
type termState struct {
	adm *kadm.Client
	// eventsMax is the events topic's max.message.bytes.
	eventsMax int
}

// published is what one transaction published.
type published struct {
	recs          []*kgo.Record
	events, msgs  int
	dead          int
	cp            Checkpoint
	maxPosition   uint64
	lastEventTime time.Time
}

// encode maps an entry to its record, or to a dead letter when Kafka
// will not take the record: the codec refuses the event (unless OnInvalid
// decides), its topic does not exist, it is larger than its topic takes.
// Neither when OnInvalid skipped it.
func (r *Relay) encode(ctx context.Context, pt *termState, e stores.Entry) (*kgo.Record, *deadLetter, error) {
	if e.Source == "" {
		e.Source = r.cfg.defaultSource
	}
	topic := r.route(e.Event)
	rec, err := codec.EventToRecord(topic, e.Event)
	if err != nil {
		if r.cfg.onInvalid == nil {
			return nil, &deadLetter{origin: originEvent, reason: ReasonInvalid, err: err, topic: topic, entry: e, cursor: e.Cursor, size: len(e.Data)}, nil
		}
		if herr := r.cfg.onInvalid(ctx, e, err); herr != nil {
			return nil, nil, permanent(herr)
		}
		r.log.Warn("skipped an event that cannot be published", "stream", e.StreamID, "version", e.Version, "position", e.Position, "err", err)
		r.st.skipped.Add(1)
		return nil, nil, nil
	}
	if r.instHdr != nil {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: InstanceHeader, Value: r.instHdr})
	}
	limit := pt.eventsMax
	if topic != r.cfg.topic {
		if limit, err = r.topicLimit(ctx, pt.adm, topic); err != nil {
			return nil, nil, err
		}
	}
	if d := refuse(rec, limit); d != nil {
		d.origin, d.entry, d.cursor = originEvent, e, e.Cursor
		return nil, d, nil
	}
	return rec, nil, nil
}

// refuse returns the dead letter of a record its topic will not take:
// limit is the topic's max.message.bytes, -1 for a missing topic.
func refuse(rec *kgo.Record, limit int) *deadLetter {
	if limit < 0 {
		return &deadLetter{reason: ReasonTopicMissing, topic: rec.Topic, rec: rec, size: recordSize(rec),
			err: fmt.Errorf("%w: %s", ErrTopicMissing, rec.Topic)}
	}
	if size := recordSize(rec); size > limit {
		return &deadLetter{reason: ReasonTooLarge, topic: rec.Topic, rec: rec, size: size,
			err: fmt.Errorf("outbox: a record of %d bytes, topic %s takes at most %d (max.message.bytes): %w", size, rec.Topic, limit, ErrTooLarge)}
	}
	return nil
}

func (r *Relay) route(e orchestrix.Event) string {
	if t, ok := r.cfg.routes[e.Type]; ok {
		return t
	}
	if r.cfg.routeFunc != nil {
		if t := r.cfg.routeFunc(e); t != "" {
			return t
		}
	}
	return r.cfg.topic
}

// Commit describes one committed Kafka transaction (see OnCommit).
type Commit struct {
	// Records are the published records with their partitions and
	// offsets, events first, then outbox messages; the checkpoint records
	// are not included. They are valid only during the callback.
	Records []*kgo.Record
	// Events and Messages count the records by origin; DeadLetters the
	// records written to the dead-letter topic instead (not in Records).
	Events, Messages, DeadLetters int
	// Checkpoint is the checkpoint committed with them.
	Checkpoint Checkpoint
	// Duration is from the transaction's start to its acknowledged
	// commit.
	Duration time.Duration
}

// txnBatches is how many batches one transaction carries at most when
// the reads come back full (a backlog): producing the next batch while it
// is read amortises the transaction's commit (a round trip to the
// coordinator and markers in every partition, during which nothing is
// produced) over more records. Records are produced as they are added,
// so a large transaction costs no memory beyond the client's buffer of
// readAhead+1 batches (unless OnCommit keeps them).
const txnBatches = 16

// txnLinger is how long a transaction waits for each next batch of a
// backlog before it commits what it has.
const txnLinger = 20 * time.Millisecond

// settleWindow is how long after a commit the next transaction first
// makes sure the broker completed it (see settle). Brokers usually
// complete a commit within a few milliseconds.
const settleWindow = 50 * time.Millisecond

// settle waits, for at most settleWindow after ended, until the broker has
// completed the transaction committed at ended. A commit is acknowledged
// once it is prepared; the broker then writes its markers. A produce
// request to a partition that joins the next transaction meanwhile is
// parked by the broker and retried after add.partitions.to.txn.retry.backoff.ms
// (20 ms by default, Kafka 3.8+ with transaction verification): measured
// here, one transaction in seven waited that long. Asking the coordinator
// costs a round trip of well under a millisecond. Best effort: an error
// (an old broker, a missing DESCRIBE permission) just lets the next
// transaction start, and settle reports false: the term stops asking.
func (r *Relay) settle(ctx context.Context, adm *kadm.Client, ended time.Time) bool {
	if ended.IsZero() {
		return true
	}
	deadline := ended.Add(settleWindow)
	for time.Now().Before(deadline) {
		ds, err := adm.DescribeTransactions(ctx, r.cfg.txnID)
		if err != nil {
			r.log.Debug("describe transaction failed, no longer waiting for commits to complete", "err", err)
			return ctx.Err() != nil
		}
		d, err := ds.On(r.cfg.txnID, nil)
		if err != nil || !strings.HasPrefix(d.State, "Prepare") {
			return true
		}
		if !r.sleep(ctx, time.Millisecond, nil, nil) {
			return true
		}
	}
	return true
}

// txn is one Kafka transaction being filled.
type txn struct {
	cl *kgo.Client
	pt *termState
	// keep says the records are kept for OnCommit. Without it, franz-go
	// lets go of each as soon as it is acknowledged, and a large
	// transaction holds no more than the client's buffer.
	keep bool
	all  published
	// full is whether the last batch added was full (a backlog).
	full bool
	// promise is the produce callback: it keeps the first failure.
	promise func(*kgo.Record, error)
	mu      sync.Mutex
	perr    error
}

func newTxn(cl *kgo.Client, pt *termState, keep bool) *txn {
	x := &txn{cl: cl, pt: pt, keep: keep}
	x.promise = func(rec *kgo.Record, err error) {
		if err == nil {
			return
		}
		x.mu.Lock()
		if x.perr == nil {
			x.perr = fmt.Errorf("outbox: publish to %s (key %q): %w", rec.Topic, rec.Key, err)
		}
		x.mu.Unlock()
	}
	return x
}

// produce adds rec to the transaction.
func (x *txn) produce(ctx context.Context, rec *kgo.Record) {
	x.cl.Produce(ctx, rec, x.promise)
	if x.keep {
		x.all.recs = append(x.all.recs, rec)
	}
}

// err returns the first produce failure.
func (x *txn) err() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.perr
}

// commit publishes first, and the batches that follow it at once when
// reads come back full, in one Kafka transaction together with the
// checkpoint of the last. Any error leaves the transaction for the next
// producer initialisation to abort: the caller discards this client.
func (r *Relay) commit(ctx context.Context, cl *kgo.Client, pt *termState, first *batch, more <-chan *batch) (events int, backlog bool, err error) {
	// The transaction in flight is finished even when ctx ends (shutdown
	// drains it); it is bounded by the transaction timeout.
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.txnTimeout)
	defer cancel()
	start := time.Now()
	if err := cl.BeginTransaction(); err != nil {
		return 0, false, fmt.Errorf("outbox: begin transaction: %w", err)
	}
	x := newTxn(cl, pt, r.cfg.onCommit != nil)
	if x.keep {
		x.all.recs = make([]*kgo.Record, 0, len(first.entries)+len(first.msgs)+len(more)*r.cfg.batchSize)
	}
	err = r.add(tctx, x, first)
	if err == nil {
		err = r.gather(ctx, tctx, x, more)
	}
	var d time.Duration
	if err == nil {
		d, err = r.end(tctx, x, start)
	}
	if err != nil {
		r.abort(cl)
		return 0, false, err
	}
	all := &x.all
	r.st.committed(all, d)
	if r.cfg.onCommit != nil {
		r.cfg.onCommit(Commit{Records: all.recs, Events: all.events, Messages: all.msgs, DeadLetters: all.dead, Checkpoint: all.cp, Duration: d})
	}
	return all.events + all.msgs, x.full, nil
}

// gather adds more batches to the transaction: those already read
// (queued while the previous transaction committed, however small), and,
// when reads come back full (a backlog), each next one that comes within
// txnLinger; in all, at most txnBatches full batches. It stops waiting
// when ctx ends; the batches are produced under tctx.
func (r *Relay) gather(ctx, tctx context.Context, x *txn, more <-chan *batch) error {
	t := time.NewTimer(txnLinger)
	defer t.Stop()
	t.Stop()
	limit := txnBatches * r.cfg.batchSize
	for x.all.events+x.all.msgs < limit {
		if !x.full {
			select {
			case b := <-more:
				if err := r.add(tctx, x, b); err != nil {
					return err
				}
				continue
			default:
				return nil
			}
		}
		t.Reset(txnLinger)
		select {
		case b := <-more:
			if err := r.add(tctx, x, b); err != nil {
				return err
			}
		case <-t.C:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// end produces the checkpoint records, flushes and commits the
// transaction, and returns how long it took from start.
func (r *Relay) end(ctx context.Context, x *txn, start time.Time) (time.Duration, error) {
	all, cl := &x.all, x.cl
	cl.Produce(ctx, &kgo.Record{Topic: r.cfg.checkpointTopic, Key: []byte(keyEvents), Value: []byte(all.cp.Events.String())}, x.promise)
	if r.outbox != nil {
		cl.Produce(ctx, &kgo.Record{Topic: r.cfg.checkpointTopic, Key: []byte(keyOutbox), Value: []byte(all.cp.Outbox.String())}, x.promise)
	}
	gathered := time.Now()
	if err := cl.Flush(ctx); err != nil {
		return 0, fmt.Errorf("outbox: flush transaction: %w", err)
	}
	flushed := time.Now()
	if err := x.err(); err != nil {
		return 0, err
	}
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return 0, fmt.Errorf("outbox: commit transaction: %w", err)
	}
	d := time.Since(start)
	r.log.Debug("committed", "events", all.events, "messages", all.msgs, "dead_letters", all.dead, "duration", d, "gather", gathered.Sub(start), "flush", flushed.Sub(gathered), "end", time.Since(flushed), "checkpoint", all.cp.Events.String())
	return d, nil
}

// add adds a batch to the transaction: its events, the entries the
// source could not read (dead-lettered) and its outbox messages, and
// moves the transaction's checkpoint past it.
func (r *Relay) add(ctx context.Context, x *txn, b *batch) error {
	all := &x.all
	for _, e := range b.entries {
		rec, d, err := r.encode(ctx, x.pt, e)
		if err != nil {
			return err
		}
		all.maxPosition = max(all.maxPosition, e.Position)
		if d != nil {
			if err := r.dead(ctx, x, d); err != nil {
				return err
			}
			continue
		}
		if rec == nil {
			continue
		}
		x.produce(ctx, rec)
		all.events++
		all.lastEventTime = e.Time
	}
	r.recycle(b)
	for _, it := range b.bad {
		d := &deadLetter{origin: originEvent, reason: ReasonUnreadable, err: it.bad, entry: it.e, cursor: it.e.Cursor, size: len(it.e.Data)}
		if err := r.dead(ctx, x, d); err != nil {
			return err
		}
		all.maxPosition = max(all.maxPosition, it.e.Position)
	}
	for _, m := range b.msgs {
		limit, err := r.topicLimit(ctx, x.pt.adm, m.rec.Topic)
		if err != nil {
			return err
		}
		if d := refuse(m.rec, limit); d != nil {
			d.origin, d.cursor = originOutbox, m.cursor
			if err := r.dead(ctx, x, d); err != nil {
				return err
			}
			continue
		}
		x.produce(ctx, m.rec)
		all.msgs++
	}
	all.cp, x.full = b.cp, b.full
	return nil
}

// dead writes d to the dead-letter topic in the transaction.
func (r *Relay) dead(ctx context.Context, x *txn, d *deadLetter) error {
	if err := r.produceDeadLetter(ctx, x.pt.adm, x.cl, d, x.promise); err != nil {
		return err
	}
	x.all.dead++
	return nil
}

// abort ends a failed transaction, best effort: the client is discarded
// next, and the next producer initialisation aborts whatever is left.
func (r *Relay) abort(cl *kgo.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cl.AbortBufferedRecords(ctx); err != nil {
		r.log.Debug("abort buffered records", "err", err)
		return
	}
	if err := cl.EndTransaction(ctx, kgo.TryAbort); err != nil {
		r.log.Debug("abort transaction", "err", err)
	}
}

// txnSpacing and maxTxnSpacing space transactions under load: after a
// transaction of n records (caught up, not draining a backlog), the next
// starts no sooner than n×txnSpacing, at most maxTxnSpacing, after its
// commit. Every transaction costs the broker a fixed amount of work
// (a produce request, the commit, its markers in every partition, the
// transaction log); at 25,000 events/s transactions of ~300 events took a
// third of a core of the broker from the writers on a 2-core machine.
// Spaced, transactions grow with the load: ~0.5 ms of spacing at 1,000
// events/s (latency unchanged), ~3 ms at 5,000/s, the cap above ~20,000/s.
const (
	txnSpacing    = 50 * time.Microsecond
	maxTxnSpacing = 40 * time.Millisecond
)
