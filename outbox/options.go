package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Defaults of a Relay's options.
const (
	// DefaultBatchSize is how many events (and, separately, outbox
	// messages) one read returns at most. It matters only during a
	// backlog, when reads come back full: the reader is then the
	// relay's bottleneck, and reads of 5,000 drained a 1M backlog at
	// 360-390k events/s against 320-340k for reads of 2,000 (10,000: no
	// faster, twice the memory).
	DefaultBatchSize = 5000
	// DefaultPollMin is the least wait after a read that found work but
	// not a full batch (the next read also waits for the transaction in
	// flight to commit); a full batch is followed by the next read at
	// once.
	DefaultPollMin = 5 * time.Millisecond
	// DefaultPollMax caps the wait between reads of an idle source: the
	// wait after an empty read is a quarter of the time since a read last
	// found work, from DefaultPollMin up to this.
	DefaultPollMax = 100 * time.Millisecond
	// DefaultLinger is the wait after a small batch (fewer than
	// LingerBelow events and messages) before the next read: at a
	// moderate rate it gathers several polls' worth of events into one
	// Kafka transaction, whose fixed cost (AddPartitionsToTxn, EndTxn,
	// the checkpoint record, the broker's transaction markers) dominates
	// the relay's and the broker's CPU there. It adds at most this much
	// to the time to publish. At 1,000 commands/s through the pipeline
	// (bench/pipeline, idle machine) the CPU per command is 0.43-0.44x of
	// no lingers with 20 ms, against 0.50-0.55x with 10 ms, at a p99 of
	// 25-30 ms. Sagas, where every step waits for the relay, set no
	// linger (sagas.RelayOptions). See Linger.
	DefaultLinger = 20 * time.Millisecond
	// LingerBelow is the batch size under which the relay lingers.
	LingerBelow = 64
	// DefaultLease is how long a paused or disconnected leader keeps
	// leadership before a standby can take over (see LeaderElection).
	DefaultLease = 10 * time.Second
	// DefaultStatsInterval is how often Stats are logged and reported.
	DefaultStatsInterval = 10 * time.Second
	// DefaultTransactionTimeout bounds one Kafka transaction: the broker
	// aborts it after this, and the relay gives up waiting for it.
	DefaultTransactionTimeout = 60 * time.Second
	// DefaultSource is the CloudEvents source given to events stored
	// without one (the stores accept an empty source; CloudEvents does not).
	DefaultSource = "/orchestrix"
	// CheckpointSuffix names the checkpoint topic: "<events topic>" +
	// CheckpointSuffix.
	CheckpointSuffix = ".relay-checkpoint"
	// InstanceHeader is the header naming the relay instance that
	// published a record (set with Instance; absent when the instance is
	// empty). Consumers ignore it; it tells operators who published what.
	InstanceHeader = "orchestrix-relay"
	// TransactionalIDHeader is the header of a relay's session records in
	// its checkpoint topic naming its transactional ID: a relay that finds
	// another ID there warns, since relays with different transactional
	// IDs hold different leader locks and would both publish.
	TransactionalIDHeader = "orchestrix-relay-transactional-id"
	// DeadLetterSuffix names the relay's dead-letter topic: "<events
	// topic>" + DeadLetterSuffix (see DeadLetterTopic).
	DeadLetterSuffix = ".relay-dlq"
)

// DefaultTransactionalID returns the transactional ID a relay publishing
// to topic uses unless TransactionalID is given: "orchestrix-relay." +
// topic. It must be the same for every instance of one relay (that is
// what fences a replaced instance) and differ between relays.
func DefaultTransactionalID(topic string) string { return "orchestrix-relay." + topic }

type config struct {
	topic           string
	routes          map[string]string
	routeFunc       func(orchestrix.Event) string
	txnID           string
	instance        string
	checkpointTopic string
	checkpointRF    int16
	dlqTopic        string
	maxEventSize    int
	batchSize       int
	pollMin         time.Duration
	pollMax         time.Duration
	linger          time.Duration
	lease           time.Duration
	statsInterval   time.Duration
	txnTimeout      time.Duration
	defaultSource   string
	logger          *slog.Logger
	clientOpts      []kgo.Opt
	onStats         func(Stats)
	onCommit        func(Commit)
	onError         func(error)
	onInvalid       func(context.Context, stores.Entry, error) error

	elector      stores.Elector
	noElection   bool
	outboxPool   *pgxpool.Pool
	outboxSchema string
	noOutbox     bool
	outboxReader OutboxReader
}

// Option configures a Relay.
type Option func(*config)

// ToTopic sets the topic events are published to unless a route says
// otherwise; by convention "<context>.events" (topics.Events). Required.
func ToTopic(topic string) Option { return func(c *config) { c.topic = topic } }

// Route publishes events of eventType to topic instead of the default
// topic. Routes are looked up before RouteFunc.
func Route(eventType, topic string) Option {
	return func(c *config) {
		if c.routes == nil {
			c.routes = map[string]string{}
		}
		c.routes[eventType] = topic
	}
}

// RouteFunc chooses an event's topic; an empty result means the default
// topic. It is called from one goroutine and must not block. Topics it
// returns are not checked at start (Route and ToTopic topics are), so a
// missing one shows up as failing transactions.
func RouteFunc(f func(orchestrix.Event) string) Option {
	return func(c *config) { c.routeFunc = f }
}

// TransactionalID sets the Kafka transactional ID (default
// DefaultTransactionalID of the topic). Every instance of one relay must
// use the same ID: a new leader's producer initialisation fences the
// previous one with it.
func TransactionalID(id string) Option { return func(c *config) { c.txnID = id } }

// Instance names this relay instance in logs, in the InstanceHeader of
// every record it publishes, and in the checkpoint topic's session
// records (default: none, no header).
func Instance(name string) Option { return func(c *config) { c.instance = name } }

// CheckpointTopic overrides the checkpoint topic's name (default
// "<topic>" + CheckpointSuffix). The relay creates it if it is missing:
// one partition, cleanup.policy=compact.
func CheckpointTopic(name string) Option { return func(c *config) { c.checkpointTopic = name } }

// DeadLetterTopic overrides the name of the relay's dead-letter topic
// (default "<topic>" + DeadLetterSuffix). An event or outbox message
// Kafka will not take (larger than its topic's max.message.bytes, a
// topic that does not exist, an event the codec refuses, an entry the
// source cannot read) is written there instead, in the transaction
// whose checkpoint passes it, and the relay goes on. The relay creates
// the topic when it first needs it: one partition, retention.ms=-1,
// replication as CheckpointReplication. See DeadLetter for its records.
func DeadLetterTopic(name string) Option { return func(c *config) { c.dlqTopic = name } }

// MaxEventSize tells the relay the largest event Data the stores that
// append to its source accept: their WithMaxEventSize, default
// stores.DefaultMaxEventSize. It is one setting, to be given to the stores
// and the relay alike. At the start of every term the relay reads the
// max.message.bytes of its events topic and routed topics, sizes its
// producer's batches to them, and reports a topic that cannot take an
// event of n bytes with its key and headers (see LimitMismatchError).
// Records that do not fit anyway go to the dead-letter topic. When the
// source reports its own limit (a MaxEventSize() int method), that is the
// default.
func MaxEventSize(n int) Option { return func(c *config) { c.maxEventSize = n } }

// CheckpointReplication sets the replication factor the checkpoint topic
// is created with (default -1: the broker's default.replication.factor).
func CheckpointReplication(n int16) Option { return func(c *config) { c.checkpointRF = n } }

// BatchSize sets how many events, and how many outbox messages, one read
// returns at most (default DefaultBatchSize, at most 20000). A Kafka
// transaction carries one read, or up to 16 during a backlog; memory is
// bounded by about ten batches, whatever the backlog.
func BatchSize(n int) Option { return func(c *config) { c.batchSize = n } }

// PollInterval sets the adaptive poll: after a partial batch at least min
// and until the transaction in flight committed; after an
// empty read, a quarter of the time since a read last found work, from min
// up to max (defaults DefaultPollMin, DefaultPollMax).
// Wake, and a source's Appended channel, cut the waits after empty reads
// short.
func PollInterval(min, max time.Duration) Option {
	return func(c *config) { c.pollMin, c.pollMax = min, max }
}

// Linger sets the wait after a batch of fewer than LingerBelow events and
// messages before the next read (default DefaultLinger; 0 or less than
// the poll interval's minimum: read again after the minimum). Larger
// batches are followed by the minimum poll interval as before, so a relay
// under load is not slowed.
func Linger(d time.Duration) Option { return func(c *config) { c.linger = d } }

// LeaderElection makes the relay publish only while it holds a term of
// e; the others wait as standbys and take over when the leader's term
// ends. By default a source that is a stores.Leaser (a stores/postgres
// Store: a session advisory lock, see postgres.Elector) gives the relay
// its elector for the role "orchestrix.relay:<transactional ID>", with the
// Lease and Instance options; see NoLeaderElection.
func LeaderElection(e stores.Elector) Option { return func(c *config) { c.elector = e } }

// NoLeaderElection turns leader election off: the relay publishes as soon
// as it runs. Two such relays with one transactional ID keep fencing each
// other; nothing is duplicated, but little is published either.
func NoLeaderElection() Option { return func(c *config) { c.noElection = true } }

// Lease sets how long a leader that stopped answering (paused, hung,
// partitioned) keeps leadership: its lock connection sets PostgreSQL's
// idle_session_timeout to d and pings every d/3, so the server ends a
// silent leader's session after d and a standby takes over within about
// a second more (default DefaultLease, at least 1s).
func Lease(d time.Duration) Option { return func(c *config) { c.lease = d } }

// OutboxTable drains the outbox table of schema (see Writer) besides the
// events, in the same transactions. By default the relay drains the
// outbox table of a source that has a pool and a schema (a
// stores/postgres Store); see NoOutboxTable.
func OutboxTable(pool *pgxpool.Pool, schema string) Option {
	return func(c *config) { c.outboxPool, c.outboxSchema = pool, schema }
}

// DrainOutbox drains rd besides the events, in the same transactions,
// instead of the outbox table OutboxTable or a Pooled source would give.
func DrainOutbox(rd OutboxReader) Option { return func(c *config) { c.outboxReader = rd } }

// NoOutboxTable turns draining the outbox table off.
func NoOutboxTable() Option { return func(c *config) { c.noOutbox = true } }

// WithClientOpts adds franz-go options (TLS, SASL, timeouts) to every
// client the relay creates. Options that change transactions, isolation
// or partitioning break the relay's guarantees; do not pass them.
func WithClientOpts(opts ...kgo.Opt) Option {
	return func(c *config) { c.clientOpts = append(c.clientOpts, opts...) }
}

// WithLogger sets the logger (default: discard). franz-go gets it too, at
// warnings and above.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// ReportStats logs the relay's counters and lag at info level every
// interval (default DefaultStatsInterval; it must be positive) and, when f
// is not nil, calls f with them, from the reporting goroutine: f must not
// block.
func ReportStats(interval time.Duration, f func(Stats)) Option {
	return func(c *config) { c.statsInterval, c.onStats = interval, f }
}

// WithStats is ReportStats, with the default interval when interval ≤ 0.
//
// Deprecated: use ReportStats.
func WithStats(interval time.Duration, f func(Stats)) Option {
	return func(c *config) {
		if interval > 0 {
			c.statsInterval = interval
		}
		c.onStats = f
	}
}

// StatsInterval sets how often stats are logged.
//
// Deprecated: use ReportStats(d, nil).
func StatsInterval(d time.Duration) Option { return func(c *config) { c.statsInterval = d } }

// OnCommit calls f after every committed Kafka transaction, from the
// publishing goroutine: keep it short.
func OnCommit(f func(Commit)) Option { return func(c *config) { c.onCommit = f } }

// OnError calls f with every error the relay recovers from by itself (a
// broker or database that went away, a lost leadership); Run returns
// only the errors it cannot recover from. f must not block.
func OnError(f func(error)) Option { return func(c *config) { c.onError = f } }

// OnInvalid decides what happens to an event that cannot be mapped to a
// CloudEvents record (see codec.EventToRecord): return nil to skip it (the
// checkpoint passes it, it is never published: record it somewhere
// first), or an error to stop the relay with it. Without OnInvalid the
// event goes to the dead-letter topic (reason ReasonInvalid, its data as
// the value) and the relay goes on.
func OnInvalid(f func(ctx context.Context, e stores.Entry, err error) error) Option {
	return func(c *config) { c.onInvalid = f }
}

// WithDefaultSource sets the CloudEvents source given to events stored
// without one (default DefaultSource).
func WithDefaultSource(source string) Option { return func(c *config) { c.defaultSource = source } }

// TransactionTimeout bounds one Kafka transaction (default
// DefaultTransactionTimeout): the broker aborts a transaction left open
// longer, and the relay stops waiting for one and starts over.
func TransactionTimeout(d time.Duration) Option { return func(c *config) { c.txnTimeout = d } }

// newConfig applies opts to the defaults and fills in what follows from
// them and from src's optional capabilities.
func newConfig(src Source, opts []Option) config {
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
	if sz, ok := src.(Sizer); ok && cfg.maxEventSize == 0 {
		cfg.maxEventSize = sz.MaxEventSize()
	}
	if cfg.maxEventSize == 0 {
		cfg.maxEventSize = stores.DefaultMaxEventSize
	}
	if pg, ok := src.(Pooled); ok && !cfg.noOutbox && cfg.outboxPool == nil && cfg.outboxReader == nil {
		cfg.outboxPool, cfg.outboxSchema = pg.Pool(), pg.Schema()
	}

	return cfg
}

// validate checks the whole configuration and reports every problem at
// once (with errs, the caller's own), matching orchestrix.ErrInvalid.
func (cfg *config) validate(errs ...error) error {
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
		return fmt.Errorf("outbox: %w: %w", orchestrix.ErrInvalid, err)
	}
	return nil
}

// CheckOptions reports every problem with opts, as NewRelay would, without
// a source or brokers: for a command that checks its flags before it
// connects anywhere.
func CheckOptions(opts ...Option) error {
	cfg := newConfig(nil, opts)
	return cfg.validate()
}
