package consumers

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/plugin/kslog"
)

// Handler processes one record. Its effect must be durable when it returns
// nil. It is called concurrently for different partitions (and keys, with
// KeyConcurrency), never concurrently for one key.
type Handler interface {
	Handle(ctx context.Context, r *kgo.Record) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, r *kgo.Record) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, r *kgo.Record) error { return f(ctx, r) }

// BatchHandler is an optional interface of a Handler: it processes one
// partition's records of a poll, in order, and returns one error per record
// (nil for success; a nil slice means all succeeded). Records whose error
// is non-nil go through the failure policy one by one, retried with Handle.
// A batch handler must not apply a record of a key after a failed record of
// the same key: it fails the later ones too (see ErrBlocked).
type BatchHandler interface {
	Handler
	HandleBatch(ctx context.Context, recs []*kgo.Record) []error
}

// PartitionAware is an optional interface of a Handler, told when the
// group takes partitions away so it can drop state cached for them.
type PartitionAware interface {
	PartitionsRevoked(topic string, partitions []int32)
}

// ErrUnreachable is returned by Run when no seed broker answers within
// ConnectTimeout at start (wrapped with the seeds and the last error).
// Later outages do not stop Run: see the package documentation.
var ErrUnreachable = errors.New("consumers: brokers unreachable")

// ErrAttemptTimeout marks a handler call that failed after its deadline
// (FailurePolicy.AttemptTimeout) passed. It is transient but not retried
// in place: the record goes to the next retry level, or to the dead-letter
// topic with reason "timeout".
var ErrAttemptTimeout = errors.New("consumers: handler call exceeded its attempt timeout")

// ErrBlocked marks a record not processed because an earlier record of the
// same key failed in the same batch.
var ErrBlocked = errors.New("consumers: an earlier record of the same key failed")

// Stats describes one partition's share of a processed poll.
type Stats struct {
	Topic     string
	Partition int32
	// Records processed, of which Failed went to the failure policy and
	// DeadLettered ended in the dead-letter topic.
	Records, Failed, DeadLettered int
	// Duration of the partition's processing.
	Duration time.Duration
	// Lag is the partition's high watermark minus the next offset to
	// consume, as known from the last fetch.
	Lag int64
}

// Group is a consumer-group runtime. Create it with New and call Run.
type Group struct {
	cfg    config
	topics []string
	group  string
	h      Handler
	cl     *kgo.Client
	log    *slog.Logger
	// chain places every consumed topic: origin topics and their retry
	// levels.
	chain map[string]chainPos

	mu sync.Mutex
	// states holds the parking state per origin partition (ordered modes).
	states map[tp]*chainState
	// held keeps, per paused retry partition, the fetched records from
	// the first one not yet due on. The partition is paused (franz-go
	// then keeps its fetch position right after them) until they are
	// handled.
	held map[tp]*heldRecs
	// pending queues, per partition, progress to commit once the retry
	// records and dead letters its processing produced are acked.
	pending map[tp][]pendingCommit
	// retryCommit holds, per partition, progress whose commit failed (the
	// broker unreachable): committed with the next commit.
	retryCommit map[tp]*kgo.Record
	// inflight counts asynchronous commits not yet answered.
	inflight sync.WaitGroup
	// down is when the brokers became unreachable (zero: reachable);
	// downLogged when that was last logged.
	down, downLogged time.Time
	// inplace holds the history of records retried in place, by partition
	// and offset.
	inplace map[tp]map[int64]inPlace
	// processed and committed are, per partition, the offset after the
	// last record processed by a completed poll and the committed offset
	// (ordered modes: dead-letter markers wait for them).
	processed, committed map[tp]int64
	// slots are the attempt-deadline slots of the lanes now processing;
	// watching says the watchdog runs (see deadline.go).
	slotMu   sync.Mutex
	slots    map[*callSlot]struct{}
	watching bool
	wake     chan struct{}
}

type config struct {
	seeds          []string
	clientOpts     []kgo.Opt
	keyConcurrency int
	maxPoll        int
	drainTimeout   time.Duration
	policy         FailurePolicy
	logger         *slog.Logger
	onStats        func(Stats)
	startOffset    kgo.Offset
	connectTimeout time.Duration
	onConn         func(up bool, err error)
	linger         time.Duration
}

// Option configures a Group.
type Option func(*config)

// WithClientOpts adds franz-go options (TLS, SASL, timeouts) to the
// group's client.
func WithClientOpts(opts ...kgo.Opt) Option {
	return func(c *config) { c.clientOpts = append(c.clientOpts, opts...) }
}

// KeyConcurrency processes up to n keys of one partition at once (default
// 1: strictly in offset order). Each key keeps its order.
func KeyConcurrency(n int) Option { return func(c *config) { c.keyConcurrency = n } }

// MaxPollRecords bounds the records handled per poll (default 1000).
func MaxPollRecords(n int) Option { return func(c *config) { c.maxPoll = n } }

// DrainTimeout bounds how long the batch in flight may take to finish
// after Run's context ends (default 30s).
func DrainTimeout(d time.Duration) Option { return func(c *config) { c.drainTimeout = d } }

// DefaultPollLinger is the wait after a poll of fewer than
// PollLingerBelow records before the next poll. At a moderate rate a poll
// returns a record or two per partition, and each poll costs a round of
// the handler's fixed work (the aggregate processor: a store transaction,
// an outcome produce, an offset commit); waiting a few milliseconds lets
// more records arrive first. It adds at most this much latency.
const DefaultPollLinger = 5 * time.Millisecond

// PollLingerBelow is the poll size under which the group lingers.
const PollLingerBelow = 64

// PollLinger sets the wait after a small poll (default DefaultPollLinger;
// 0 turns it off: poll again at once).
func PollLinger(d time.Duration) Option { return func(c *config) { c.linger = d } }

// WithFailurePolicy sets how handler errors are treated (default
// DefaultFailurePolicy()).
func WithFailurePolicy(p FailurePolicy) Option { return func(c *config) { c.policy = p } }

// WithLogger sets the logger (default: discard). It is also handed to
// franz-go.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithStats sets a callback called after each partition's share of a
// poll, for lag and throughput metrics. It must not block.
func WithStats(f func(Stats)) Option { return func(c *config) { c.onStats = f } }

// ConnectTimeout bounds how long Run waits at start for a seed broker to
// answer before it returns ErrUnreachable (default 15s).
func ConnectTimeout(d time.Duration) Option { return func(c *config) { c.connectTimeout = d } }

// OnConnectivity sets a callback called when the group loses contact with
// the brokers (up false, with the error seen) and when it regains it (up
// true), e.g. for a readiness probe. It must not block.
func OnConnectivity(f func(up bool, err error)) Option { return func(c *config) { c.onConn = f } }

// StartAtEnd makes a group without committed offsets start at the end of
// the partitions (default: the start).
func StartAtEnd() Option { return func(c *config) { c.startOffset = kgo.NewOffset().AtEnd() } }

// New returns a group named group reading topics from the seed brokers,
// after checking the whole configuration.
func New(seeds []string, group string, topics []string, h Handler, opts ...Option) (*Group, error) {
	cfg := config{keyConcurrency: 1, maxPoll: 1000, drainTimeout: 30 * time.Second, policy: DefaultFailurePolicy(), seeds: seeds,
		startOffset: kgo.NewOffset().AtStart(), connectTimeout: 15 * time.Second, linger: DefaultPollLinger}
	for _, o := range opts {
		o(&cfg)
	}
	var errs []error
	if len(seeds) == 0 {
		errs = append(errs, errors.New("no seed brokers"))
	}
	if err := orchestrix.CheckID("group", group); err != nil {
		errs = append(errs, err)
	}
	if len(topics) == 0 {
		errs = append(errs, errors.New("no topics"))
	}
	if h == nil {
		errs = append(errs, errors.New("nil handler"))
	}
	if cfg.linger < 0 || cfg.linger > time.Second {
		errs = append(errs, fmt.Errorf("poll linger %s must be 0 to 1s", cfg.linger))
	}
	if cfg.keyConcurrency < 1 || cfg.maxPoll < 1 || cfg.drainTimeout <= 0 || cfg.connectTimeout <= 0 {
		errs = append(errs, fmt.Errorf("key concurrency %d, max poll %d, drain timeout %s and connect timeout %s must be positive",
			cfg.keyConcurrency, cfg.maxPoll, cfg.drainTimeout, cfg.connectTimeout))
	}
	if err := cfg.policy.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("consumers: %w: %w", orchestrix.ErrInvalid, err)
	}
	log := cfg.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Group{cfg: cfg, topics: topics, group: group, h: h, log: log.With("group", group),
		chain: map[string]chainPos{}, states: map[tp]*chainState{}, held: map[tp]*heldRecs{}, pending: map[tp][]pendingCommit{},
		processed: map[tp]int64{}, committed: map[tp]int64{}, retryCommit: map[tp]*kgo.Record{}, inplace: map[tp]map[int64]inPlace{}}
	consume := append([]string(nil), topics...)
	for _, t := range topics {
		g.chain[t] = chainPos{origin: t}
		for l := 1; l <= len(cfg.policy.RetryDelays); l++ {
			rt := RetryTopic(t, group, l)
			g.chain[rt] = chainPos{origin: t, level: l}
			consume = append(consume, rt)
		}
	}
	kopts := []kgo.Opt{
		kgo.SeedBrokers(seeds...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(consume...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(cfg.startOffset),
		kgo.WithLogger(kslog.New(log)),
		kgo.OnPartitionsRevoked(g.revoked),
		kgo.OnPartitionsLost(g.revoked),
		// The client produces only retry records, dead letters and
		// markers. A partition's commit waits for their acks, but commits
		// are asynchronous, and a retry waits a second or more anyway:
		// lingering gathers them into fewer, larger batches. Without it,
		// 1% of failing calls at 650k records/s sent a produce request
		// per few records, and the broker's work cost the group 10-25%
		// of its throughput (BenchmarkGoodput, 2us handler: 1%/0% goodput
		// 0.82-0.91 with no linger, 0.89-0.90 with 5ms, 0.98-1.02 with
		// 20ms). WithClientOpts can set another.
		kgo.ProducerLinger(20 * time.Millisecond),
		kgo.RecordPartitioner(chainPartitioner{
			manual: func(t string) bool { pos, ok := g.chain[t]; return ok && pos.level > 0 && cfg.policy.ordered() },
			def:    kgo.StickyKeyPartitioner(nil),
		}),
	}
	if len(cfg.policy.RetryDelays) > 0 {
		// Resuming a paused retry partition waits for the fetch in
		// flight: keep fetches short so due records start promptly.
		kopts = append(kopts, kgo.FetchMaxWait(500*time.Millisecond))
	}
	if cfg.policy.ordered() {
		// Range assignment gives partition p of a topic and of its retry
		// topics (equal partition counts) to the same member, so one
		// member owns a key's whole retry chain.
		kopts = append(kopts, kgo.Balancers(kgo.RangeBalancer()))
	}
	cl, err := kgo.NewClient(append(kopts, cfg.clientOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("consumers: new client: %w", err)
	}
	g.cl = cl
	return g, nil
}

// Client returns the group's franz-go client (for producing dead letters
// or inspecting; do not poll it). Its producer lingers 20ms (see New)
// unless WithClientOpts says otherwise.
func (g *Group) Client() *kgo.Client { return g.cl }

func (g *Group) revoked(ctx context.Context, cl *kgo.Client, lost map[string][]int32) {
	// Commit what was processed before the partitions go (retry records
	// and dead letters acked first).
	if err := g.commitReady(ctx, cl, true); err != nil {
		g.log.Error("commit before revoke", "err", err)
	}
	pa, ok := g.h.(PartitionAware)
	g.mu.Lock()
	resume := map[string][]int32{}
	for topic, parts := range lost {
		pos := g.chain[topic]
		for _, p := range parts {
			delete(g.states, tp{pos.origin, p})
			delete(g.processed, tp{topic, p})
			delete(g.committed, tp{topic, p})
			delete(g.retryCommit, tp{topic, p})
			delete(g.inplace, tp{topic, p})
			if _, w := g.held[tp{topic, p}]; w {
				// Dropped: the next owner fetches them again from the
				// committed offset.
				delete(g.held, tp{topic, p})
				resume[topic] = append(resume[topic], p)
			}
		}
	}
	g.mu.Unlock()
	if len(resume) > 0 {
		cl.ResumeFetchPartitions(resume)
	}
	for topic, parts := range lost {
		g.log.Info("partitions revoked", "topic", topic, "partitions", parts)
		if ok && g.chain[topic].level == 0 {
			g.partitionsRevoked(pa, topic, parts)
		}
	}
}

// Run consumes until ctx ends (then drains, commits and returns nil) or a
// record fails beyond the failure policy (then returns that error after
// committing everything before it). It first waits up to ConnectTimeout
// for a seed broker to answer and returns an error matching
// ErrUnreachable if none does. Losing the brokers later does not stop it
// (see the package documentation). It closes the client when it returns.
func (g *Group) Run(ctx context.Context) error {
	defer g.cl.Close()
	if err := g.connect(ctx); err != nil || ctx.Err() != nil {
		return err
	}
	if err := g.checkTopics(ctx); err != nil {
		return err
	}
	for {
		pctx, cancel := ctx, context.CancelFunc(func() {})
		due, ok := g.nextDue()
		if g.hasPending() && (!ok || time.Until(due) > 10*time.Millisecond) {
			// Come back soon to commit progress waiting for acks.
			due, ok = time.Now().Add(10*time.Millisecond), true
		}
		if g.isDown() && (!ok || time.Until(due) > time.Second) {
			// Check every second whether the brokers are back.
			due, ok = time.Now().Add(time.Second), true
		}
		if ok {
			// Wake up when the first held retry record is due.
			pctx, cancel = context.WithDeadline(ctx, due)
		}
		fetches := g.cl.PollRecords(pctx, g.cfg.maxPoll)
		cancel()
		if fetches.IsClientClosed() || ctx.Err() != nil {
			err := g.commitReady(ctx, g.cl, true)
			g.cl.AllowRebalance()
			g.log.Info("stopping: context done")
			return err
		}
		var connErr error
		fetches.EachError(func(topic string, p int32, err error) {
			switch {
			case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
			case isConnError(err):
				connErr = err
			default:
				g.log.Warn("fetch error", "topic", topic, "partition", p, "err", err)
			}
		})
		if connErr != nil {
			g.brokersDown(connErr)
		} else if g.isDown() {
			g.probe(ctx)
		}
		err := g.process(ctx, fetches)
		g.cl.AllowRebalance()
		if err != nil {
			return err
		}
		if n := fetches.NumRecords(); n > 0 && n < PollLingerBelow && g.cfg.linger > 0 {
			// A small poll: let more records arrive before the next one.
			select {
			case <-ctx.Done():
			case <-time.After(g.cfg.linger):
			}
		}
	}
}

// connect waits up to ConnectTimeout for a seed broker to answer.
func (g *Group) connect(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, g.cfg.connectTimeout)
	defer cancel()
	var err error
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		if err = g.cl.Ping(cctx); err == nil {
			return nil
		}
		g.log.Warn("brokers unreachable at start, retrying", "seeds", g.cfg.seeds, "err", err)
		select {
		case <-cctx.Done():
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%w: none of the seed brokers %v answered within %s: %w", ErrUnreachable, g.cfg.seeds, g.cfg.connectTimeout, err)
		case <-time.After(wait):
		}
	}
}

// isConnError reports whether err says a broker could not be reached.
func isConnError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

func (g *Group) isDown() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.down.IsZero()
}

// brokersDown notes that the brokers could not be reached: logged as an
// error when the outage starts and every 30s while it lasts.
func (g *Group) brokersDown(err error) {
	g.mu.Lock()
	now := time.Now()
	first := g.down.IsZero()
	if first {
		g.down = now
	}
	logIt := first || now.Sub(g.downLogged) >= 30*time.Second
	if logIt {
		g.downLogged = now
	}
	since := g.down
	g.mu.Unlock()
	if logIt {
		g.log.Error("brokers unreachable: retrying; processing and commits resume when they are back",
			"seeds", g.cfg.seeds, "down for", now.Sub(since).Round(time.Millisecond), "err", err)
	}
	if first && g.cfg.onConn != nil {
		g.callback("OnConnectivity", func() { g.cfg.onConn(false, err) })
	}
}

// probe checks, during an outage, whether a broker answers again.
func (g *Group) probe(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := g.cl.Ping(pctx); err != nil {
		if ctx.Err() == nil {
			g.brokersDown(err)
		}
		return
	}
	g.mu.Lock()
	since := g.down
	g.down = time.Time{}
	g.mu.Unlock()
	g.log.Info("brokers reachable again", "seeds", g.cfg.seeds, "down for", time.Since(since).Round(time.Millisecond))
	if g.cfg.onConn != nil {
		g.callback("OnConnectivity", func() { g.cfg.onConn(true, nil) })
	}
}

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

// work is one partition's records to process in a poll.
type work struct {
	topic     string
	partition int32
	recs      []*kgo.Record
	hwm       int64
	skip      map[int64]bool
}

// process handles one poll's records and the held retry records now due:
// every partition concurrently, then commits each partition's last record
// below its first failure or first record not yet due, and pauses retry
// partitions until their next record is due.
func (g *Group) process(ctx context.Context, fetches kgo.Fetches) error {
	// Handlers get a context that survives ctx by DrainTimeout.
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(g.cfg.drainTimeout, cancel)
		context.AfterFunc(hctx, func() { t.Stop() })
	})
	defer stop()

	var parts []work
	var need []tp
	seen := map[tp]bool{}
	add := func(w work) {
		parts = append(parts, w)
		if g.cfg.policy.ordered() {
			k := tp{g.chain[w.topic].origin, w.partition}
			if g.states[k] == nil && !seen[k] {
				seen[k] = true
				need = append(need, k)
			}
		}
	}
	g.mu.Lock()
	now := time.Now()
	due := map[tp]*heldRecs{}
	for k, h := range g.held {
		if !h.due.After(now) {
			delete(g.held, k)
			due[k] = h
		}
	}
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		if len(p.Records) == 0 {
			return
		}
		k := tp{p.Topic, p.Partition}
		h := g.held[k]
		if h == nil {
			h = due[k]
		}
		if h != nil {
			// Fetched before the pause took effect: they queue behind
			// the held records.
			if last := h.recs[len(h.recs)-1].Offset; p.Records[0].Offset > last {
				h.recs = append(h.recs, p.Records...)
			}
			h.hwm = max(h.hwm, p.HighWatermark)
			return
		}
		add(work{p.Topic, p.Partition, p.Records, p.HighWatermark, nil})
	})
	for k, h := range due {
		add(work{k.topic, k.partition, h.recs, h.hwm, h.skip})
	}
	g.mu.Unlock()
	if err := g.loadStates(hctx, need); err != nil {
		// Nothing was processed or committed: stopping loses nothing.
		return err
	}

	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		commit []*kgo.Record
		errs   []error
		pause  = map[string][]int32{}
		resume = map[string][]int32{}
	)
	for _, p := range parts {
		wg.Go(func() {
			start := time.Now()
			done, held, st, fl, err := g.partition(hctx, p.topic, p.partition, p.recs, p.skip)
			if err != nil {
				// The group stops: let what can be committed land.
				_ = fl.wait()
			}
			done = g.enqueueCommit(tp{p.topic, p.partition}, done, fl)
			st.Topic, st.Partition, st.Duration = p.topic, p.partition, time.Since(start)
			st.Lag = p.hwm - (p.recs[len(p.recs)-1].Offset + 1)
			if g.cfg.onStats != nil {
				g.callback("WithStats", func() { g.cfg.onStats(st) })
			}
			mu.Lock()
			defer mu.Unlock()
			if last := p.recs[len(p.recs)-1]; err == nil {
				next := last.Offset + 1
				if held != nil {
					next = held.recs[0].Offset
				}
				g.mu.Lock()
				g.processed[tp{p.topic, p.partition}] = max(g.processed[tp{p.topic, p.partition}], next)
				if s := g.states[tp{p.topic, p.partition}]; s != nil && g.chain[p.topic].level == 0 {
					s.originNext = max(s.originNext, next)
					s.sweep(s.originNext)
				}
				g.mu.Unlock()
			}
			if done != nil {
				commit = append(commit, done)
			}
			if held != nil {
				held.hwm = p.hwm
				g.mu.Lock()
				g.held[tp{p.topic, p.partition}] = held
				g.mu.Unlock()
				pause[p.topic] = append(pause[p.topic], p.partition)
			} else if g.chain[p.topic].level > 0 {
				resume[p.topic] = append(resume[p.topic], p.partition)
			}
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if len(pause) > 0 {
		g.cl.PauseFetchPartitions(pause)
	}
	if len(resume) > 0 {
		g.cl.ResumeFetchPartitions(resume)
	}
	ready, err := g.readyCommits(len(errs) > 0)
	if err != nil {
		errs = append(errs, err)
	}
	commit = append(commit, ready...)
	if err := g.commit(ctx, commit, len(errs) > 0); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

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

// partition processes one partition's records and returns the last record
// that may be committed (nil for none), the records a retry partition
// must hold until they are due, and the error that stops the group.
func (g *Group) partition(ctx context.Context, topic string, part int32, recs []*kgo.Record, skip map[int64]bool) (*kgo.Record, *heldRecs, Stats, *flight, error) {
	st := Stats{Records: len(recs)}
	pos := g.chain[topic]
	var wait *heldRecs
	if pos.level > 0 {
		now := time.Now()
		for i, r := range recs {
			if skip[r.Offset] {
				continue
			}
			m := g.metaOf(pos, r)
			if m.marker != "" && g.cfg.policy.ordered() && !g.markerReady(pos, r, m) {
				// Not yet: older copies of its record may still be
				// uncommitted. Look again shortly.
				wait = &heldRecs{recs: recs[i:], due: now.Add(20 * time.Millisecond), skip: skip}
				recs = recs[:i]
				break
			}
			if !m.parked && m.marker == "" && m.due.After(now) {
				wait = &heldRecs{recs: recs[i:], due: m.due, skip: skip}
				recs = recs[:i]
				break
			}
		}
		st.Records = len(recs)
	}
	fl := &flight{}
	if len(recs) == 0 {
		return nil, wait, st, fl, nil
	}
	results := make([]error, len(recs))
	ctx = context.WithValue(ctx, flightKey{}, fl)
	if bh, ok := g.h.(BatchHandler); ok && pos.level == 0 {
		sctx, retire := g.withSlot(ctx)
		err := g.batch(sctx, bh, pos, recs, results, &st)
		retire()
		if err != nil {
			return nil, wait, st, fl, err
		}
	} else {
		g.lanes(ctx, pos, recs, results, skip, &st)
	}
	// Commit up to the first record that still failed, or that is
	// retried in place (the partition is then held from it on; what other
	// lanes settled after it is skipped when it resumes).
	var last *kgo.Record
	for i, r := range recs {
		if results[i] == nil {
			last = r
			continue
		}
		if !isHold(results[i]) {
			return last, nil, st, fl, results[i]
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
				return last, nil, st, fl, results[j]
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
		return last, hold, st, fl, nil
	}
	return last, wait, st, fl, nil
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

// park forwards r, unhandled, to the retry level where the oldest record
// of its key is, behind it.
func (g *Group) park(ctx context.Context, pos chainPos, r *kgo.Record, m meta, s *chainState) error {
	g.mu.Lock()
	to := s.headLevel(string(r.Key))
	g.mu.Unlock()
	m.retries, m.hop = m.rung(pos.level), m.hopAt(pos.level)
	m.parked, m.due = true, time.Now()
	if err := g.forward(ctx, r, m, nil, to); err != nil {
		return fmt.Errorf("consumers: %s/%d@%d: park: %w", r.Topic, r.Partition, r.Offset, err)
	}
	g.mu.Lock()
	s.enter(string(r.Key), m.offset, to)
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
		perr := g.cl.ProduceSync(pctx, g.derived(r, m, DeadLetterTopic(m.topic, g.group), err, 0)).FirstErr()
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
