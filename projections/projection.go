package projections

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"regexp"
	"strconv"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrFenced: another owner took the shard over; this owner's commit was
	// refused and rolled back.
	ErrFenced = errors.New("projections: fenced: another owner took the shard over")
	// ErrUnknownProjection: no such projection (or version) is registered.
	ErrUnknownProjection = errors.New("projections: unknown projection")
	// ErrLagging: a cut-over was refused because the version is behind by
	// more than the threshold.
	ErrLagging = errors.New("projections: version is lagging")
	// ErrPoison: an event failed its handler on every attempt.
	ErrPoison = errors.New("projections: poison event")
)

// PoisonError reports an event that failed its handler on every attempt.
// It matches ErrPoison.
type PoisonError struct {
	Projection string
	Version    int
	Shard      int
	Event      orchestrix.Event
	Attempts   int
	Err        error
}

// Error describes the event and the handler's last error.
func (e *PoisonError) Error() string {
	return fmt.Sprintf("projections: %s v%d shard %d: event %s (stream %s version %d, position %d) failed %d times: %v",
		e.Projection, e.Version, e.Shard, e.Event.Type, e.Event.StreamID, e.Event.Version, e.Event.Position, e.Attempts, e.Err)
}

// Unwrap returns the handler's error.
func (e *PoisonError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrPoison) true.
func (e *PoisonError) Is(target error) bool { return target == ErrPoison }

// Batch is what a Handler applies: consecutive events of one shard, in log
// order (so each stream's events in version order).
type Batch struct {
	Projection string
	Version    int
	Shard      int
	Events     []orchestrix.Event
	// Replaying is true when the batch replays history: the version is
	// not the active one (it builds beside it, blue/green, or was
	// retired), or its events are older (by Event.Time) than the
	// version's registration, as when a new projection catches up on the
	// existing log. A page straddling that time is split so that no batch
	// mixes the two. Handlers must not cause side effects (e-mails,
	// commands) while replaying.
	Replaying bool
}

// Table returns the name of a read-model table for this batch's version:
// base + "_v" + version, e.g. "balances_v2". Each version writes its own
// tables; views named after base point at the active version's.
func (b Batch) Table(base string) string { return VersionTable(base, b.Version) }

// VersionTable returns base + "_v" + version.
func VersionTable(base string, version int) string { return base + "_v" + strconv.Itoa(version) }

// Handler applies a batch inside the backend's transaction tx (a pgx.Tx for
// Postgres, a *MemTx for Memory). It must do all its writes through tx and
// return an error to roll the batch back. It may be called again with the
// same events after a failure or a crash (never after a commit).
type Handler[T any] func(ctx context.Context, tx T, b Batch) error

// Policy says what a shard does with a poison event.
type Policy int

const (
	// Stop stops the shard at the event: status "stopped" with the error,
	// retried every RetryStopped. The default.
	Stop Policy = iota
	// Park writes the event and its error to the dead-letter table and goes
	// on with the next event.
	Park
)

// String returns "stop" or "park".
func (p Policy) String() string {
	if p == Park {
		return "park"
	}
	return "stop"
}

// Defaults of the options of the same names.
const (
	// DefaultBatchSize is how many log entries one transaction covers.
	DefaultBatchSize = 1000
	// DefaultPollInterval is the wait between reads once caught up.
	DefaultPollInterval = 50 * time.Millisecond
	// DefaultAttempts is how often a failing event is tried.
	DefaultAttempts = 3
	// DefaultRetryStopped is how often a stopped shard tries again.
	DefaultRetryStopped = 30 * time.Second
	// DefaultLease is how long a paused owner keeps its shards, and the
	// batch transactions' idle timeout (TxIdleTimeout).
	DefaultLease = 10 * time.Second
	// DefaultVersionScan is how often Run looks for new versions.
	DefaultVersionScan = 2 * time.Second
)

type config struct {
	version      int
	shards       int
	batchSize    int
	poll         time.Duration
	policy       Policy
	attempts     int
	retryStopped time.Duration
	lease        time.Duration
	instance     string
	log          *slog.Logger
	scan         time.Duration
	setup        any // func(context.Context, T, int) error
	beforeCommit func(ctx context.Context, version, shard int) error
	onCommit     func(Commit)
}

// Commit describes a committed batch to an OnCommit hook.
type Commit struct {
	Projection string
	Version    int
	Shard      int
	// Events are the batch's events (empty for a checkpoint-only commit);
	// do not keep or modify them.
	Events []orchestrix.Event
	// Cursor is the checkpoint after the batch.
	Cursor string
	// Took is how long the transaction took, handler included.
	Took time.Duration
}

// Option configures a Runner.
type Option func(*config)

// Version sets the projection's version (default 1). A version other
// than the first registers as building (see the package doc).
func Version(v int) Option { return func(c *config) { c.version = v } }

// Shards sets the number of shards (default 1). Events are assigned by a
// hash of their stream ID. A version's shard count cannot change: build a
// new version instead.
func Shards(n int) Option { return func(c *config) { c.shards = n } }

// BatchSize sets how many log entries one transaction covers (default
// 1000; 500 to 2,000 is the useful range).
func BatchSize(n int) Option { return func(c *config) { c.batchSize = n } }

// PollInterval sets the wait between reads of the log when the shard has
// caught up (default 50ms).
func PollInterval(d time.Duration) Option { return func(c *config) { c.poll = d } }

// OnPoison sets the poison-event policy (default Stop).
func OnPoison(p Policy) Option { return func(c *config) { c.policy = p } }

// Attempts sets how often a failing event is tried before the policy
// applies (default 3).
func Attempts(n int) Option { return func(c *config) { c.attempts = n } }

// RetryStopped sets how often a stopped shard tries its event again
// (default 30s).
func RetryStopped(d time.Duration) Option { return func(c *config) { c.retryStopped = d } }

// Lease sets how long a paused owner keeps a shard before a standby takes
// over (default 10s, at least 1s).
func Lease(d time.Duration) Option { return func(c *config) { c.lease = d } }

// Instance names this process in the checkpoint's owner column and in
// database sessions.
func Instance(name string) Option { return func(c *config) { c.instance = name } }

// Setup sets a function that prepares a version's read-model tables
// (CREATE TABLE IF NOT EXISTS b.Table(...)): Run calls it once per version
// it starts, in one transaction of the backend (tx is the Runner's T) that
// also creates the Views of an active version. New reports a Setup whose
// T differs from the runner's.
func Setup[T any](fn func(ctx context.Context, tx T, version int) error) Option {
	return func(c *config) { c.setup = fn }
}

// OnCommit sets a hook called after each committed batch, on the shard's
// goroutine (keep it short): metrics (events applied, lag as now minus
// the last event's time, transaction time) and tests hang here.
func OnCommit(fn func(Commit)) Option { return func(c *config) { c.onCommit = fn } }

// VersionScan sets how often Run looks for versions registered while it
// runs (default 2s).
func VersionScan(d time.Duration) Option { return func(c *config) { c.scan = d } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// BeforeCommit sets a hook called inside each batch's transaction, after
// the handler and before the commit; an error rolls the batch back. Tests
// use it to pause an owner at the worst moment.
func BeforeCommit(fn func(ctx context.Context, version, shard int) error) Option {
	return func(c *config) { c.beforeCommit = fn }
}

var namePattern = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,62}$`)

// CheckName validates a projection name: lower-case letters, digits, '_',
// '.', '-', starting with a letter, at most 63 bytes. The error wraps
// orchestrix.ErrInvalid.
func CheckName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("projections: name %q must match %s: %w", name, namePattern, orchestrix.ErrInvalid)
	}
	return nil
}

func (c *config) validate(name string) error {
	var errs []error
	if err := CheckName(name); err != nil {
		errs = append(errs, err)
	}
	if c.version < 1 {
		errs = append(errs, fmt.Errorf("version %d must be at least 1", c.version))
	}
	if c.shards < 1 || c.shards > 1024 {
		errs = append(errs, fmt.Errorf("shards %d must be 1..1024", c.shards))
	}
	if c.batchSize < 1 || c.batchSize > 100_000 {
		errs = append(errs, fmt.Errorf("batch size %d must be 1..100000", c.batchSize))
	}
	if c.poll <= 0 {
		errs = append(errs, fmt.Errorf("poll interval %s must be positive", c.poll))
	}
	if c.attempts < 1 {
		errs = append(errs, fmt.Errorf("attempts %d must be at least 1", c.attempts))
	}
	if c.retryStopped <= 0 {
		errs = append(errs, fmt.Errorf("retry interval %s must be positive", c.retryStopped))
	}
	if c.scan <= 0 {
		errs = append(errs, fmt.Errorf("version scan %s must be positive", c.scan))
	}
	if c.lease < time.Second {
		errs = append(errs, fmt.Errorf("lease %s must be at least 1s", c.lease))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("projections: %s: %w: %w", name, orchestrix.ErrInvalid, err)
	}
	return nil
}

// ShardOf returns the shard of a stream among n shards (FNV-1a of the
// stream ID, modulo n).
func ShardOf(streamID string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(streamID))
	return int(h.Sum32() % uint32(n))
}

// key names one checkpoint row.
type key struct {
	projection string
	version    int
	shard      int
}

// progress is what a commit writes to the checkpoint row besides the
// owner fence.
type progress struct {
	cursor    string
	position  uint64
	eventTime time.Time
	applied   int
}

// claim is a checkpoint as a new owner found it.
type claim struct {
	epoch   int64
	cursor  string
	status  string    // the version's status
	created time.Time // the version's registration
}

// DeadLetter is a parked event.
type DeadLetter struct {
	ID         int64
	Projection string
	Version    int
	Shard      int
	Event      orchestrix.Event
	Error      string
	Attempts   int
	ParkedAt   time.Time
	// Status is "parked", "retry" (asked for by an operator), "retried" or
	// "skipped".
	Status string
}

// Backend keeps read models and their checkpoints: Postgres or Memory.
// Its methods are unexported: the runner relies on their exact
// transactional behaviour.
type Backend[T any] interface {
	register(ctx context.Context, k key, shards int, source string) error
	elector(role string, lease time.Duration, instance string, log *slog.Logger) (stores.Elector, error)
	claim(ctx context.Context, k key, owner string) (claim, error)
	// commit updates the checkpoint where the epoch is still epoch (else
	// ErrFenced), runs apply in the same transaction and commits; it
	// returns the version's status.
	// apply gets the version's status as the fence read it.
	commit(ctx context.Context, k key, epoch int64, p progress, apply func(ctx context.Context, tx T, status string) error) (string, error)
	// park commits p and the dead letter together.
	park(ctx context.Context, k key, epoch int64, p progress, dl DeadLetter) error
	// stop records a stopped shard's error; it reports skip when an
	// operator asked to skip the event the shard is stopped on (SkipStopped):
	// the runner parks it then.
	stop(ctx context.Context, k key, epoch int64, reason string) (skip bool, err error)
	// shardStatus returns the checkpoint's status ("running", "stopped",
	// "skip").
	shardStatus(ctx context.Context, k key) (string, error)
	// retries returns parked events an operator asked to retry.
	retries(ctx context.Context, k key) ([]DeadLetter, error)
	// resolve commits the outcome of a retried dead letter with apply.
	resolve(ctx context.Context, k key, epoch int64, id int64, apply func(context.Context, T) error) error
	ping(ctx context.Context) error
	// setup runs fn in one transaction holding the projection's
	// registration lock.
	setup(ctx context.Context, k key, fn func(context.Context, T) error) error
	// versions lists the projection's versions.
	versions(ctx context.Context, name string) ([]VersionInfo, error)
}

// VersionInfo describes one version of a projection.
type VersionInfo struct {
	Projection string
	Version    int
	// Status is "building", "active" or "retired".
	Status      string
	Shards      int
	Source      string
	CreatedAt   time.Time
	ActivatedAt time.Time // zero if never active
}
