package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"
)

// Relay publishes a store's committed events, and the outbox table's
// messages, to Kafka: see the package documentation for what it
// guarantees. Create it with NewRelay and call Run; its methods are safe
// for concurrent use.
type Relay struct {
	cfg      config
	src      Source
	seeds    []string
	log      *slog.Logger
	election stores.Elector
	outbox   OutboxReader
	head     func(context.Context) (uint64, error)
	instHdr  []byte
	wake     chan struct{}
	// spare holds entry slices of batches already published, for the
	// next reads of a BatchAppender source to fill.
	spare   chan []stores.Entry
	running atomic.Bool
	// beats are when the reader (beatRead) and the committer (beatCommit)
	// last went round, in Unix nanoseconds (see Heartbeat).
	beats [2]atomic.Int64
	// checked is set once a term found every configured topic: after
	// that, a topic that looks missing (a restarting broker) is retried.
	checked atomic.Bool
	// limits are the max.message.bytes of the topics published to.
	limits limits
	// mismatched holds the topics checkLimits reported, with the limit
	// it reported.
	mismatched sync.Map

	st relayStats
}

// NewRelay returns a relay publishing src's events to the brokers at
// seeds, after checking the whole configuration; every problem is
// reported at once, matching orchestrix.ErrInvalid. ToTopic is required.
//
// When src is a stores.Leaser (a stores/postgres Store), the relay runs
// leader election with its elector; when it has a PostgreSQL pool, the
// relay drains that schema's outbox table; unless NoLeaderElection or
// NoOutboxTable say otherwise.
func NewRelay(src Source, seeds []string, opts ...Option) (*Relay, error) {
	cfg := newConfig(src, opts)
	var errs []error
	if src == nil {
		errs = append(errs, errors.New("nil source"))
	}
	if len(seeds) == 0 {
		errs = append(errs, errors.New("no seed brokers"))
	}
	if err := cfg.validate(errs...); err != nil {
		return nil, err
	}
	pg, isPG := src.(Pooled)

	log := cfg.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("topic", cfg.topic)
	if cfg.instance != "" {
		log = log.With("instance", cfg.instance)
	}
	r := &Relay{cfg: cfg, src: src, seeds: seeds, log: log, wake: make(chan struct{}, 1),
		spare: make(chan []stores.Entry, readAhead+2)}
	if cfg.instance != "" {
		r.instHdr = []byte(cfg.instance)
	}
	r.stamp()
	if !cfg.noElection {
		r.election = cfg.elector
		if le, ok := src.(stores.Leaser); ok && r.election == nil {
			e, err := le.Elector(stores.ElectorConfig{Role: "orchestrix.relay:" + cfg.txnID, Lease: cfg.lease, Instance: cfg.instance, Logger: log})
			if err != nil {
				return nil, fmt.Errorf("outbox: leader election: %w", err)
			}
			r.election = e
		}
	}
	switch {
	case cfg.noOutbox:
	case cfg.outboxReader != nil:
		r.outbox = cfg.outboxReader
	case cfg.outboxPool != nil:
		r.outbox = postgres.NewOutboxTable(cfg.outboxPool, cfg.outboxSchema)
	}
	if isPG {
		q := `SELECT coalesce(max(position), 0) FROM ` + pgx.Identifier{pg.Schema(), "events"}.Sanitize()
		r.head = func(ctx context.Context) (uint64, error) {
			var n int64
			err := pg.Pool().QueryRow(ctx, q).Scan(&n)
			return uint64(n), err
		}
	}
	return r, nil
}

// HeartbeatInterval bounds a relay's idle waits: a relay with nothing to
// publish, or waiting as a standby for leadership, still beats this
// often.
const HeartbeatInterval = time.Second

// Heartbeat returns when the relay's loops last went round: the older of
// the reader's (a read returned, an idle wait ended) and the committer's
// (a transaction committed, an idle wait ended). A relay that is idle, a
// standby, or waiting out a broker or database outage (its calls fail and
// are retried with backoff) beats at least every HeartbeatInterval plus
// the backoff; one stuck in a call that never returns — a read, a
// transaction — stops beating. It makes the relay a service.Heartbeater,
// so /livez sees a stuck loop, not an outage. Before Run it is the time
// of NewRelay.
func (r *Relay) Heartbeat() time.Time {
	return time.Unix(0, min(r.beats[beatRead].Load(), r.beats[beatCommit].Load()))
}

// Indexes of Relay.beats.
const (
	beatRead = iota
	beatCommit
)

// stamp records a heartbeat of both loops now.
func (r *Relay) stamp() {
	now := time.Now().UnixNano()
	r.beats[beatRead].Store(now)
	r.beats[beatCommit].Store(now)
}

// stampOne records a heartbeat of one loop now.
func (r *Relay) stampOne(loop int) { r.beats[loop].Store(time.Now().UnixNano()) }

// campaign waits for leadership, beating while it waits: a standby is
// idle, not stuck.
func (r *Relay) campaign(ctx context.Context) (stores.Term, error) {
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(HeartbeatInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				r.stamp()
			}
		}
	}()
	return r.election.Campaign(ctx)
}

// Wake makes an idle relay read its source now instead of at its next
// poll (a busy one reads every PollInterval minimum anyway). Call it after
// committing an append, never inside the transaction; it never blocks.
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run publishes until ctx ends, then finishes the transaction in flight
// and returns nil. Errors the relay can recover from (a broker or database
// restart, a lost leadership, being fenced) are logged, handed to OnError
// and retried with backoff; Run returns the others: a missing topic, an
// event that cannot be published, a schema that is not migrated, a
// refused authorisation. Run must not be called twice at once.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("outbox: Run is already running")
	}
	defer r.running.Store(false)
	r.st.start(time.Now())

	statsDone := make(chan struct{})
	statsCtx, stopStats := context.WithCancel(ctx)
	go func() { defer close(statsDone); r.reportStats(statsCtx) }()
	defer func() { stopStats(); <-statsDone }()

	backoff := 100 * time.Millisecond
	for {
		r.stamp()
		if ctx.Err() != nil {
			return nil
		}
		var term stores.Term = always{}
		if r.election != nil {
			t, err := r.campaign(ctx)
			if err != nil {
				return nil // only ctx ends a campaign
			}
			term = t
		}
		r.stamp()
		r.log.Info("leading")
		r.st.leader.Store(true)
		published, err := r.lead(ctx, term)
		r.st.leader.Store(false)
		r.st.recovered.Store(false)
		term.Release()
		if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			r.log.Info("stopped")
			return nil
		}
		if err == nil {
			continue
		}
		if isPermanent(err) && !(r.checked.Load() && errors.Is(err, ErrTopicMissing)) {
			r.log.Error("stopping", "err", err)
			return err
		}
		r.st.errors.Add(1)
		if published {
			backoff = 100 * time.Millisecond
		}
		level := slog.LevelWarn
		if errors.Is(err, ErrFenced) || errors.Is(err, ErrLostLeadership) {
			level = slog.LevelInfo
		}
		r.log.Log(ctx, level, "stepping down, will start over", "err", err, "retry_in", backoff)
		if r.cfg.onError != nil {
			r.cfg.onError(err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// lead is one term as leader: a new transactional producer (whose
// initialisation fences every earlier instance), the committed checkpoint,
// then read–publish–commit until ctx ends, the term is lost or something
// fails. Any failure ends the term and its producer: the next term starts
// from the committed checkpoint with a fresh client.
func (r *Relay) lead(ctx context.Context, term stores.Term) (published bool, err error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if lost := term.Lost(); lost != nil {
		go func() {
			select {
			case <-lost:
				cancel(ErrLostLeadership)
			case <-sctx.Done():
			}
		}()
	}
	fail := func(err error) (bool, error) {
		if cause := context.Cause(sctx); cause != nil && errors.Is(cause, ErrLostLeadership) {
			return published, fmt.Errorf("%w: %w", ErrLostLeadership, err)
		}
		return published, classify(err)
	}

	opts := append([]kgo.Opt{
		kgo.SeedBrokers(r.seeds...),
		kgo.TransactionalID(r.cfg.txnID),
		kgo.TransactionTimeout(r.cfg.txnTimeout),
		kgo.MaxBufferedRecords((readAhead+1)*r.cfg.batchSize + 16),
		// Kafka answers CONCURRENT_TRANSACTIONS while it completes the
		// previous commit; retry sooner than franz-go's 20ms default.
		kgo.ConcurrentTransactionsBackoff(2 * time.Millisecond),
		kgo.WithLogger(kslog.New(r.log)),
	}, r.cfg.clientOpts...)
	// Batches as large as each topic takes (read below, before anything
	// is produced): franz-go's default of 1,000,012 bytes refuses
	// records that Kafka's default max.message.bytes (1,048,588) takes.
	opts = append(opts, kgo.ProducerBatchMaxBytesFn(r.limits.batchMax))
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return false, fmt.Errorf("outbox: %w: new client: %w", orchestrix.ErrInvalid, err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)

	r.stamp()
	if err := r.ensureTopics(sctx, adm); err != nil {
		return fail(err)
	}
	r.checked.Store(true)
	// Every term reads the limits afresh: a topic's max.message.bytes
	// may have changed, a missing topic may have been created.
	r.limits.reset()
	dest := r.destinations()
	// (Not the checkpoint topic's, maybe just created: its records are
	// tiny, and franz-go's default batch limit is below Kafka's.)
	if err := r.describeLimits(sctx, adm, dest...); err != nil {
		return fail(err)
	}
	r.checkLimits(dest)
	r.stamp()
	eventsMax, _ := r.limits.get(r.cfg.topic)
	pt := &termState{adm: adm, eventsMax: eventsMax}
	if err := r.checkOutboxTable(sctx); err != nil {
		return fail(err)
	}
	// Initialising the producer ID fences every earlier instance with this
	// transactional ID and makes the broker abort its open transaction.
	r.stamp()
	id, epoch, err := cl.ProducerID(sctx)
	if err != nil {
		return fail(fmt.Errorf("outbox: init producer %q: %w", r.cfg.txnID, err))
	}
	r.stamp()
	cp, err := r.recoverCheckpoint(sctx, cl, adm)
	if err != nil {
		return fail(err)
	}
	r.st.setCheckpoint(cp)
	r.log.Info("publishing", "transactional_id", r.cfg.txnID, "producer_id", id, "epoch", epoch,
		"checkpoint", cp.Events.String(), "outbox_checkpoint", cp.Outbox.String())

	batches := make(chan *batch, readAhead)
	// demand tells the reader the committer is about to wait for a batch
	// (see read).
	demand := make(chan struct{}, 1)
	readErr := make(chan error, 1)
	var ended time.Time       // when the last transaction was committed
	settling := true          // until describing the transaction fails
	var spacing time.Duration // the least time from ended to the next transaction
	var wg sync.WaitGroup
	r.stamp()
	wg.Go(func() { readErr <- r.read(sctx, cp, batches, demand) })
	defer func() { cancel(nil); wg.Wait() }()
	// idle bounds the wait for a batch, so an idle committer beats.
	idle := time.NewTimer(HeartbeatInterval)
	defer idle.Stop()
	for {
		r.stampOne(beatCommit)
		// Space transactions by the size of the last one (see
		// txnSpacing), then, unless a batch is already queued, ask for
		// the next one: it is read now, not while this one waited, so
		// it carries what was committed meanwhile.
		if wait := time.Until(ended.Add(spacing)); wait > 0 {
			r.sleep(sctx, wait, nil, nil) // a cancelled sctx is seen below
		}
		if len(batches) == 0 {
			select {
			case demand <- struct{}{}:
			default:
			}
		}
		idle.Reset(HeartbeatInterval)
		select {
		case <-idle.C:
		case <-sctx.Done():
			if errors.Is(context.Cause(sctx), ErrLostLeadership) {
				return published, ErrLostLeadership
			}
			return published, nil
		case err := <-readErr:
			if ctx.Err() != nil {
				return published, nil
			}
			return fail(err)
		case b := <-batches:
			if sctx.Err() != nil {
				continue // the select above ends the term
			}
			if settling {
				settling = r.settle(sctx, adm, ended)
			}
			n, backlog, err := r.commit(sctx, cl, pt, b, batches)
			if err != nil {
				return fail(err)
			}
			ended = time.Now()
			spacing = 0
			if !backlog {
				spacing = min(time.Duration(n)*txnSpacing, maxTxnSpacing)
			}
			published = true
		}
	}
}

func (r *Relay) checkOutboxTable(ctx context.Context) error {
	if r.outbox == nil {
		return nil
	}
	if err := r.outbox.CheckOutbox(ctx); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}
