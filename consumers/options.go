package consumers

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/twmb/franz-go/pkg/kgo"
)

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

// defaultConfig is the configuration before options.
func defaultConfig(seeds []string) config {
	return config{keyConcurrency: 1, maxPoll: 1000, drainTimeout: 30 * time.Second, policy: DefaultFailurePolicy(), seeds: seeds,
		startOffset: kgo.NewOffset().AtStart(), connectTimeout: 15 * time.Second, linger: DefaultPollLinger}
}

// validate checks the whole configuration of a group and reports every
// problem at once, matching orchestrix.ErrInvalid.
func (c *config) validate(group string, topics []string, h Handler) error {
	var errs []error
	if len(c.seeds) == 0 {
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
	if c.linger < 0 || c.linger > time.Second {
		errs = append(errs, fmt.Errorf("poll linger %s must be 0 to 1s", c.linger))
	}
	if c.keyConcurrency < 1 || c.maxPoll < 1 || c.drainTimeout <= 0 || c.connectTimeout <= 0 {
		errs = append(errs, fmt.Errorf("key concurrency %d, max poll %d, drain timeout %s and connect timeout %s must be positive",
			c.keyConcurrency, c.maxPoll, c.drainTimeout, c.connectTimeout))
	}
	if err := c.policy.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("consumers: %w: %w", orchestrix.ErrInvalid, err)
	}
	return nil
}
