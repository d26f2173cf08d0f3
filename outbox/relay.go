package outbox

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Source is the log a relay publishes: any stores.EventStore fits. ReadAll
// must be gap-safe and keep each stream's order (the stores contract).
type Source interface {
	ReadAll(ctx context.Context, after stores.Cursor, limit int) iter.Seq2[stores.Entry, error]
}

// Observer is a Source that pushes: Observe yields every entry after the
// cursor in log order, then each new one as it is committed, until ctx
// ends or an error that retrying cannot fix (which it yields last). It
// must resume by itself from the last entry yielded after a dropped
// connection, repeating and losing nothing. stores/esdb.Store is one (it
// follows EventSourcingDB's observe-events stream).
//
// A relay whose source is an Observer follows that stream instead of
// polling ReadAll: an event is published as soon as it arrives, and each
// term (after a start, a takeover, being fenced or any error) observes
// anew from the checkpoint it recovered from Kafka.
type Observer interface {
	Observe(ctx context.Context, after stores.Cursor) iter.Seq2[stores.Entry, error]
}

// Optional capabilities of a Source, found by type assertion.
type (
	// pooled is a PostgreSQL-backed source (stores/postgres.Store): its
	// schema's outbox table is drained. (Leader election comes from
	// stores.Leaser.)
	pooled interface {
		Pool() *pgxpool.Pool
		Schema() string
	}
	// notifier closes the returned channel at the next append
	// (stores/memory.Store), so the relay need not wait for its poll.
	notifier interface {
		Appended() <-chan struct{}
	}
	// batchReader reads one batch of the log in one query
	// (stores/postgres.Store); preferred to ReadAll.
	batchReader interface {
		ReadLogBatch(ctx context.Context, after stores.Cursor, limit int) ([]stores.Entry, error)
	}
	// batchAppender is a batchReader that appends to a slice it is
	// given (see postgres.Store.AppendLogBatch), so the relay reuses the
	// slices of the batches it published.
	batchAppender interface {
		AppendLogBatch(ctx context.Context, dst []stores.Entry, after stores.Cursor, limit int) ([]stores.Entry, error)
	}
	// sizer reports the limit on event Data its store enforces on
	// appends (stores/esdb.Store): the default of MaxEventSize.
	sizer interface {
		MaxEventSize() int
	}
)

// Errors a caller can match with errors.Is.
var (
	// ErrTopicMissing: a topic the relay publishes to does not exist.
	// Topics are created explicitly (orchestrix topics create), never by
	// the relay, except its own checkpoint topic.
	ErrTopicMissing = errors.New("outbox: topic does not exist")
	// ErrFenced: another relay instance with the same transactional ID
	// initialised its producer, so this one may no longer publish.
	ErrFenced = errors.New("outbox: fenced by a newer relay instance")
	// ErrTooLarge: a record is larger than its topic's max.message.bytes
	// (the reason given in its dead letter).
	ErrTooLarge = errors.New("outbox: record too large for its topic")
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
	outbox   *table
	head     func(context.Context) (uint64, error)
	instHdr  []byte
	wake     chan struct{}
	// spare holds entry slices of batches already published, for the
	// next reads of a batchAppender source to fill.
	spare   chan []stores.Entry
	running atomic.Bool
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
	cfg := config{
		batchSize:     DefaultBatchSize,
		pollMin:       DefaultPollMin,
		pollMax:       DefaultPollMax,
		linger:        DefaultLinger,
		lease:         DefaultLease,
		statsInterval: DefaultStatsInterval,
		txnTimeout:    DefaultTransactionTimeout,
		defaultSource: DefaultSource,
		checkpointRF:  -1,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.txnID == "" && cfg.topic != "" {
		cfg.txnID = DefaultTransactionalID(cfg.topic)
	}
	if cfg.checkpointTopic == "" && cfg.topic != "" && checkTopic(cfg.topic) == nil {
		cfg.checkpointTopic = cfg.topic + CheckpointSuffix
	}
	if cfg.dlqTopic == "" && cfg.topic != "" && checkTopic(cfg.topic) == nil {
		cfg.dlqTopic = cfg.topic + DeadLetterSuffix
	}
	if sz, ok := src.(sizer); ok && cfg.maxEventSize == 0 {
		cfg.maxEventSize = sz.MaxEventSize()
	}
	if cfg.maxEventSize == 0 {
		cfg.maxEventSize = stores.DefaultMaxEventSize
	}
	pg, isPG := src.(pooled)
	if !cfg.noOutbox && cfg.outboxPool == nil && isPG {
		cfg.outboxPool, cfg.outboxSchema = pg.Pool(), pg.Schema()
	}

	var errs []error
	if src == nil {
		errs = append(errs, errors.New("nil source"))
	}
	if len(seeds) == 0 {
		errs = append(errs, errors.New("no seed brokers"))
	}
	if cfg.topic == "" {
		errs = append(errs, errors.New("no topic (use ToTopic, by convention \"<context>.events\")"))
	} else if err := checkTopic(cfg.topic); err != nil {
		errs = append(errs, err)
	}
	for typ, t := range cfg.routes {
		if err := orchestrix.CheckID("routed event type", typ); err != nil {
			errs = append(errs, err)
		}
		if err := checkTopic(t); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", typ, err))
		}
	}
	if cfg.checkpointTopic != "" {
		if err := checkTopic(cfg.checkpointTopic); err != nil {
			errs = append(errs, fmt.Errorf("checkpoint topic: %w", err))
		}
	}
	if cfg.dlqTopic != "" {
		if err := checkTopic(cfg.dlqTopic); err != nil {
			errs = append(errs, fmt.Errorf("dead-letter topic: %w", err))
		}
		if cfg.dlqTopic == cfg.topic || cfg.dlqTopic == cfg.checkpointTopic {
			errs = append(errs, fmt.Errorf("dead-letter topic %s must differ from the events and checkpoint topics", cfg.dlqTopic))
		}
	}
	if cfg.maxEventSize < 1 || cfg.maxEventSize > 1<<30 {
		errs = append(errs, fmt.Errorf("max event size %d must be 1 to 2^30 bytes", cfg.maxEventSize))
	}
	if cfg.topic != "" {
		if err := orchestrix.CheckID("transactional id", cfg.txnID); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.batchSize < 1 || cfg.batchSize > 20000 {
		errs = append(errs, fmt.Errorf("batch size %d must be 1-20000", cfg.batchSize))
	}
	if cfg.linger > time.Second {
		errs = append(errs, fmt.Errorf("linger %s must be at most 1s", cfg.linger))
	}
	if cfg.pollMin <= 0 || cfg.pollMax < cfg.pollMin {
		errs = append(errs, fmt.Errorf("poll interval min %s, max %s: need 0 < min ≤ max", cfg.pollMin, cfg.pollMax))
	}
	if cfg.lease < time.Second {
		errs = append(errs, fmt.Errorf("lease %s must be at least 1s", cfg.lease))
	}
	if cfg.statsInterval <= 0 {
		errs = append(errs, fmt.Errorf("stats interval %s must be positive", cfg.statsInterval))
	}
	if cfg.txnTimeout < time.Second {
		errs = append(errs, fmt.Errorf("transaction timeout %s must be at least 1s", cfg.txnTimeout))
	}
	if err := orchestrix.CheckID("default source", cfg.defaultSource); err != nil {
		errs = append(errs, err)
	}
	if cfg.outboxPool != nil && !schemaName.MatchString(cfg.outboxSchema) {
		errs = append(errs, fmt.Errorf("outbox schema name %q must match %s", cfg.outboxSchema, schemaName))
	}
	if len(cfg.instance) > 200 {
		errs = append(errs, fmt.Errorf("instance name is %d bytes, limit 200", len(cfg.instance)))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("outbox: %w: %w", orchestrix.ErrInvalid, err)
	}

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
	if cfg.outboxPool != nil && !cfg.noOutbox {
		r.outbox = newTable(cfg.outboxPool, cfg.outboxSchema)
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
		if ctx.Err() != nil {
			return nil
		}
		var term stores.Term = always{}
		if r.election != nil {
			t, err := r.election.Campaign(ctx)
			if err != nil {
				return nil // only ctx ends a campaign
			}
			term = t
		}
		r.log.Info("leading")
		r.st.leader.Store(true)
		published, err := r.lead(ctx, term)
		r.st.leader.Store(false)
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
		kgo.WithLogger(kgoLogger{r.log}),
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
	eventsMax, _ := r.limits.get(r.cfg.topic)
	pt := &termState{adm: adm, eventsMax: eventsMax}
	if err := r.checkOutboxTable(sctx); err != nil {
		return fail(err)
	}
	// Initialising the producer ID fences every earlier instance with this
	// transactional ID and makes the broker abort its open transaction.
	id, epoch, err := cl.ProducerID(sctx)
	if err != nil {
		return fail(fmt.Errorf("outbox: init producer %q: %w", r.cfg.txnID, err))
	}
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
	wg.Go(func() { readErr <- r.read(sctx, cp, batches, demand) })
	defer func() { cancel(nil); wg.Wait() }()
	for {
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
		select {
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
	var ok bool
	if err := r.outbox.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgx.Identifier{r.cfg.outboxSchema, "outbox"}.Sanitize()).Scan(&ok); err != nil {
		return fmt.Errorf("outbox: check outbox table: %w", err)
	}
	if !ok {
		return fmt.Errorf("outbox: schema %q has no outbox table (run `orchestrix migrate`): %w", r.cfg.outboxSchema, stores.ErrNotMigrated)
	}
	return nil
}

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
	// a batchAppender), which recycle may clear and reuse.
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
	note, _ := r.src.(notifier)
	lastWork := time.Now()
	onDemand := false
	wait := r.cfg.pollMin
	for {
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
			if !r.sleep(ctx, r.idleWait(time.Since(lastWork)), r.wake, appended) {
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
	for {
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
		select {
		case it := <-entries:
			b.add(it)
		case err = <-obsErr:
		case <-ctx.Done():
			err = ctx.Err()
		case <-pollC:
		case <-wake:
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

// fetch reads one batch after cp.
func (r *Relay) fetch(ctx context.Context, cp Checkpoint) (*batch, error) {
	b := &batch{cp: cp}
	if ba, ok := r.src.(batchAppender); ok {
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
	} else if br, ok := r.src.(batchReader); ok {
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
	msgs, err := r.outbox.readBatch(ctx, after, r.cfg.batchSize)
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

// readAhead is how many batches the reader reads ahead of the committer
// in a backlog.
const readAhead = 4

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
	var (
		mu   sync.Mutex
		perr error
	)
	promise := func(rec *kgo.Record, err error) {
		if err == nil {
			return
		}
		mu.Lock()
		if perr == nil {
			perr = fmt.Errorf("outbox: publish to %s (key %q): %w", rec.Topic, rec.Key, err)
		}
		mu.Unlock()
	}
	// The records are kept for OnCommit only: without it, franz-go lets
	// go of each as soon as it is acknowledged, and a large transaction
	// holds no more than the client's buffer.
	keep := r.cfg.onCommit != nil
	all := &published{}
	if keep {
		all.recs = make([]*kgo.Record, 0, len(first.entries)+len(first.msgs)+len(more)*r.cfg.batchSize)
	}
	full := false
	dead := func(d *deadLetter) error {
		if err := r.produceDeadLetter(tctx, pt.adm, cl, d, promise); err != nil {
			return err
		}
		all.dead++
		return nil
	}
	add := func(b *batch) error {
		for _, e := range b.entries {
			rec, d, err := r.encode(tctx, pt, e)
			if err != nil {
				return err
			}
			all.maxPosition = max(all.maxPosition, e.Position)
			if d != nil {
				if err := dead(d); err != nil {
					return err
				}
				continue
			}
			if rec == nil {
				continue
			}
			cl.Produce(tctx, rec, promise)
			if keep {
				all.recs = append(all.recs, rec)
			}
			all.events++
			all.lastEventTime = e.Time
		}
		r.recycle(b)
		for _, it := range b.bad {
			d := &deadLetter{origin: originEvent, reason: ReasonUnreadable, err: it.bad, entry: it.e, cursor: it.e.Cursor, size: len(it.e.Data)}
			if err := dead(d); err != nil {
				return err
			}
			all.maxPosition = max(all.maxPosition, it.e.Position)
		}
		for _, m := range b.msgs {
			limit, err := r.topicLimit(tctx, pt.adm, m.rec.Topic)
			if err != nil {
				return err
			}
			if d := refuse(m.rec, limit); d != nil {
				d.origin, d.cursor = originOutbox, m.cursor
				if err := dead(d); err != nil {
					return err
				}
				continue
			}
			cl.Produce(tctx, m.rec, promise)
			if keep {
				all.recs = append(all.recs, m.rec)
			}
			all.msgs++
		}
		all.cp, full = b.cp, b.full
		return nil
	}
	// More batches join the transaction: those already read (queued
	// while the previous transaction committed, however small), and,
	// when reads come back full (a backlog), each next one that comes
	// within txnLinger; in all, at most txnBatches full batches.
	err = add(first)
	t := time.NewTimer(txnLinger)
	t.Stop()
	limit := txnBatches * r.cfg.batchSize
gather:
	for err == nil && all.events+all.msgs < limit {
		if !full {
			select {
			case b := <-more:
				err = add(b)
				continue
			default:
				break gather
			}
		}
		t.Reset(txnLinger)
		select {
		case b := <-more:
			err = add(b)
		case <-t.C:
			break gather
		case <-ctx.Done():
			break gather
		}
	}
	t.Stop()
	if err != nil {
		r.abort(cl)
		return 0, false, err
	}
	cl.Produce(tctx, &kgo.Record{Topic: r.cfg.checkpointTopic, Key: []byte(keyEvents), Value: []byte(all.cp.Events.String())}, promise)
	if r.outbox != nil {
		cl.Produce(tctx, &kgo.Record{Topic: r.cfg.checkpointTopic, Key: []byte(keyOutbox), Value: []byte(all.cp.Outbox.String())}, promise)
	}
	gathered := time.Now()
	if err := cl.Flush(tctx); err != nil {
		r.abort(cl)
		return 0, false, fmt.Errorf("outbox: flush transaction: %w", err)
	}
	flushed := time.Now()
	mu.Lock()
	err = perr
	mu.Unlock()
	if err != nil {
		r.abort(cl)
		return 0, false, err
	}
	if err := cl.EndTransaction(tctx, kgo.TryCommit); err != nil {
		r.abort(cl)
		return 0, false, fmt.Errorf("outbox: commit transaction: %w", err)
	}
	d := time.Since(start)
	r.log.Debug("committed", "events", all.events, "messages", all.msgs, "dead_letters", all.dead, "duration", d, "gather", gathered.Sub(start), "flush", flushed.Sub(gathered), "end", time.Since(flushed), "checkpoint", all.cp.Events.String())
	r.st.committed(all, d)
	if r.cfg.onCommit != nil {
		r.cfg.onCommit(Commit{Records: all.recs, Events: all.events, Messages: all.msgs, DeadLetters: all.dead, Checkpoint: all.cp, Duration: d})
	}
	return all.events + all.msgs, full, nil
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

// permanentError marks an error the relay cannot recover from by itself.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

func permanent(err error) error { return permanentError{err} }

// isPermanent reports whether Run should return err rather than retry.
func isPermanent(err error) bool {
	var p permanentError
	switch {
	case errors.As(err, &p),
		errors.Is(err, orchestrix.ErrInvalid),
		errors.Is(err, ErrTopicMissing),
		errors.Is(err, stores.ErrNotMigrated),
		errors.Is(err, stores.ErrSchemaTooNew),
		errors.Is(err, kerr.TopicAuthorizationFailed),
		errors.Is(err, kerr.TransactionalIDAuthorizationFailed),
		errors.Is(err, kerr.ClusterAuthorizationFailed):
		// Not kerr.MessageTooLarge: every term reads the topics'
		// max.message.bytes afresh and dead-letters a record that is
		// larger, so the next term gets past it.
		return true
	}
	return false
}

// classify marks fencing errors with ErrFenced.
func classify(err error) error {
	if errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) || errors.Is(err, kerr.TransactionalIDNotFound) {
		return fmt.Errorf("%w: %w", ErrFenced, err)
	}
	return err
}

// kgoLogger hands franz-go's warnings and errors to slog.
type kgoLogger struct{ l *slog.Logger }

func (k kgoLogger) Level() kgo.LogLevel {
	if k.l.Enabled(context.Background(), slog.LevelWarn) {
		return kgo.LogLevelWarn
	}
	return kgo.LogLevelNone
}

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	l := slog.LevelWarn
	if level == kgo.LogLevelError {
		l = slog.LevelError
	}
	k.l.Log(context.Background(), l, "kafka: "+msg, keyvals...)
}
