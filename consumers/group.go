package consumers

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/twmb/franz-go/pkg/kgo"
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

// WithFailurePolicy sets how handler errors are treated (default
// DefaultFailurePolicy()).
func WithFailurePolicy(p FailurePolicy) Option { return func(c *config) { c.policy = p } }

// WithLogger sets the logger (default: discard). It is also handed to
// franz-go.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithStats sets a callback called after each partition's share of a
// poll, for lag and throughput metrics. It must not block.
func WithStats(f func(Stats)) Option { return func(c *config) { c.onStats = f } }

// StartAtEnd makes a group without committed offsets start at the end of
// the partitions (default: the start).
func StartAtEnd() Option { return func(c *config) { c.startOffset = kgo.NewOffset().AtEnd() } }

// New returns a group named group reading topics from the seed brokers,
// after checking the whole configuration.
func New(seeds []string, group string, topics []string, h Handler, opts ...Option) (*Group, error) {
	cfg := config{keyConcurrency: 1, maxPoll: 1000, drainTimeout: 30 * time.Second, policy: DefaultFailurePolicy(), seeds: seeds, startOffset: kgo.NewOffset().AtStart()}
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
	if cfg.keyConcurrency < 1 || cfg.maxPoll < 1 || cfg.drainTimeout <= 0 {
		errs = append(errs, fmt.Errorf("key concurrency %d, max poll %d and drain timeout %s must be positive", cfg.keyConcurrency, cfg.maxPoll, cfg.drainTimeout))
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
	g := &Group{cfg: cfg, topics: topics, group: group, h: h, log: log.With("group", group)}
	kopts := []kgo.Opt{
		kgo.SeedBrokers(seeds...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topics...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(cfg.startOffset),
		kgo.WithLogger(kslog.New(log)),
		kgo.OnPartitionsRevoked(g.revoked),
		kgo.OnPartitionsLost(g.revoked),
	}
	cl, err := kgo.NewClient(append(kopts, cfg.clientOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("consumers: new client: %w", err)
	}
	g.cl = cl
	return g, nil
}

// Client returns the group's franz-go client (for producing dead letters
// or inspecting; do not poll it).
func (g *Group) Client() *kgo.Client { return g.cl }

func (g *Group) revoked(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	pa, ok := g.h.(PartitionAware)
	for topic, parts := range lost {
		g.log.Info("partitions revoked", "topic", topic, "partitions", parts)
		if ok {
			pa.PartitionsRevoked(topic, parts)
		}
	}
}

// Run consumes until ctx ends (then drains, commits and returns nil) or a
// record fails beyond the failure policy (then returns that error after
// committing everything before it). It closes the client when it returns.
func (g *Group) Run(ctx context.Context) error {
	defer g.cl.Close()
	for {
		fetches := g.cl.PollRecords(ctx, g.cfg.maxPoll)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			g.cl.AllowRebalance()
			g.log.Info("stopping: context done")
			return nil
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			g.log.Warn("fetch error", "topic", topic, "partition", p, "err", err)
		})
		err := g.process(ctx, fetches)
		g.cl.AllowRebalance()
		if err != nil {
			return err
		}
	}
}

// process handles one poll: every partition concurrently, then commits
// each partition's last record below its first failure.
func (g *Group) process(ctx context.Context, fetches kgo.Fetches) error {
	// Handlers get a context that survives ctx by DrainTimeout.
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(g.cfg.drainTimeout, cancel)
		context.AfterFunc(hctx, func() { t.Stop() })
	})
	defer stop()

	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		commit []*kgo.Record
		errs   []error
	)
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		if len(p.Records) == 0 {
			return
		}
		wg.Go(func() {
			start := time.Now()
			done, st, err := g.partition(hctx, p.Records)
			st.Topic, st.Partition, st.Duration = p.Topic, p.Partition, time.Since(start)
			st.Lag = p.HighWatermark - (p.Records[len(p.Records)-1].Offset + 1)
			if g.cfg.onStats != nil {
				g.cfg.onStats(st)
			}
			mu.Lock()
			defer mu.Unlock()
			if done != nil {
				commit = append(commit, done)
			}
			if err != nil {
				errs = append(errs, err)
			}
		})
	})
	wg.Wait()
	if len(commit) > 0 {
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer ccancel()
		if err := g.cl.CommitRecords(cctx, commit...); err != nil {
			errs = append(errs, fmt.Errorf("consumers: commit: %w", err))
		}
	}
	return errors.Join(errs...)
}

// partition processes one partition's records and returns the last record
// that may be committed (nil for none) and the error that stops the group.
func (g *Group) partition(ctx context.Context, recs []*kgo.Record) (*kgo.Record, Stats, error) {
	st := Stats{Records: len(recs)}
	results := make([]error, len(recs))
	if bh, ok := g.h.(BatchHandler); ok {
		if r := bh.HandleBatch(ctx, recs); r != nil {
			if len(r) != len(recs) {
				return nil, st, fmt.Errorf("consumers: batch handler returned %d results for %d records", len(r), len(recs))
			}
			copy(results, r)
		}
		// Failed records go through the policy in order, retried alone.
		for i, r := range recs {
			if results[i] != nil {
				st.Failed++
				dl, err := g.fail(ctx, r, results[i])
				if dl {
					st.DeadLettered++
				}
				results[i] = err
			}
		}
	} else {
		g.lanes(ctx, recs, results, &st)
	}
	// Commit up to the first record that still failed.
	var last *kgo.Record
	for i, r := range recs {
		if results[i] != nil {
			return last, st, results[i]
		}
		last = r
	}
	return last, st, nil
}

// lanes runs records through Handle, spread over key lanes.
func (g *Group) lanes(ctx context.Context, recs []*kgo.Record, results []error, st *Stats) {
	n := g.cfg.keyConcurrency
	var mu sync.Mutex
	run := func(lane int) {
		failedKeys := map[string]bool{}
		for i, r := range recs {
			if n > 1 && laneOf(r.Key, n) != lane {
				continue
			}
			if failedKeys[string(r.Key)] {
				results[i] = fmt.Errorf("offset %d: %w", r.Offset, ErrBlocked)
				continue
			}
			err := g.h.Handle(ctx, r)
			dl := false
			if err != nil {
				mu.Lock()
				st.Failed++
				mu.Unlock()
				dl, err = g.fail(ctx, r, err)
			}
			if dl {
				mu.Lock()
				st.DeadLettered++
				mu.Unlock()
			}
			if err != nil {
				results[i] = err
				failedKeys[string(r.Key)] = true
				if n == 1 {
					// Strict offset order: nothing after a failure.
					for j := i + 1; j < len(recs); j++ {
						results[j] = fmt.Errorf("offset %d: %w", recs[j].Offset, ErrBlocked)
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

// fail applies the failure policy to a record whose handling failed with
// err. It returns whether the record was dead-lettered, and the error that
// remains (nil when the record is settled: retried to success or
// dead-lettered).
func (g *Group) fail(ctx context.Context, r *kgo.Record, err error) (bool, error) {
	p := g.cfg.policy
	first := time.Now()
	attempts := 1
	if !errors.Is(err, ErrBlocked) {
		g.log.Warn("handler failed", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempt", attempts, "err", err)
	}
	for !IsPermanent(err) && attempts <= p.Retries {
		d := p.backoff(attempts)
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("consumers: %s/%d@%d: %w (retry interrupted: %w)", r.Topic, r.Partition, r.Offset, err, ctx.Err())
		case <-time.After(d):
		}
		attempts++
		if err = g.h.Handle(ctx, r); err == nil {
			return false, nil
		}
		g.log.Warn("handler failed", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempt", attempts, "err", err)
	}
	if !p.DeadLetter {
		return false, fmt.Errorf("consumers: %s/%d@%d failed after %d attempts: %w", r.Topic, r.Partition, r.Offset, attempts, err)
	}
	if dlErr := g.deadLetter(ctx, r, err, attempts, first, time.Now()); dlErr != nil {
		return false, fmt.Errorf("consumers: %s/%d@%d: %w; dead-lettering failed: %w", r.Topic, r.Partition, r.Offset, err, dlErr)
	}
	g.log.Error("record dead-lettered", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempts", attempts, "err", err)
	return true, nil
}

// FailurePolicy says what happens when a handler fails.
type FailurePolicy struct {
	// Retries is the number of in-place retries after the first attempt.
	Retries int
	// Backoff is the first retry's delay, doubled each retry up to
	// MaxBackoff, with ±20% jitter.
	Backoff, MaxBackoff time.Duration
	// DeadLetter sends a record that still fails to the dead-letter topic
	// and moves on; without it, Run stops with the error.
	DeadLetter bool
	// MaxErrorLength bounds the error message kept in the dead-letter
	// header (default 1024 bytes).
	MaxErrorLength int
	// jitter returns a factor in [0.8, 1.2); replaceable in tests.
	jitter func() float64
}

// DefaultFailurePolicy retries 3 times in place (100ms, 200ms, 400ms),
// then dead-letters.
func DefaultFailurePolicy() FailurePolicy {
	return FailurePolicy{Retries: 3, Backoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second, DeadLetter: true, MaxErrorLength: 1024}
}

func (p FailurePolicy) validate() error {
	if p.Retries < 0 || p.Backoff < 0 || p.MaxBackoff < p.Backoff || p.MaxErrorLength < 0 {
		return fmt.Errorf("failure policy %+v: retries and backoffs must be non-negative, max backoff ≥ backoff", p)
	}
	return nil
}

func (p FailurePolicy) backoff(attempt int) time.Duration {
	d := p.Backoff << (attempt - 1)
	if d > p.MaxBackoff || d <= 0 {
		d = p.MaxBackoff
	}
	j := 0.8 + 0.4*rand.Float64()
	if p.jitter != nil {
		j = p.jitter()
	}
	return time.Duration(float64(d) * j)
}

// permanent wraps an error that retrying cannot fix.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent marks err as not worth retrying: the record goes straight to
// the dead-letter topic.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// IsPermanent reports whether err was marked Permanent or is bad input
// (orchestrix.ErrInvalid, orchestrix.ErrUnknownType).
func IsPermanent(err error) bool {
	var p permanent
	return errors.As(err, &p) || errors.Is(err, orchestrix.ErrInvalid) || errors.Is(err, orchestrix.ErrUnknownType)
}
