package consumers

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
)

// FailurePolicy says what happens when a handler fails. Build one with
// DefaultFailurePolicy or RetryTopics and refine it with its methods; the
// zero value retries nothing and stops Run on the first failure.
type FailurePolicy struct {
	// Retries is the number of in-place retries after the first attempt.
	Retries int
	// Backoff is the first retry's delay, doubled each retry up to
	// MaxBackoff, with ±20% jitter.
	Backoff, MaxBackoff time.Duration
	// RetryDelays are the delays of the retry topics
	// "<topic>.<group>.retry.<n>", n = 1..len(RetryDelays). A record that
	// still fails after its in-place retries goes to the next level and is
	// handled again once its delay has passed, without blocking its
	// partition. Empty: no retry topics.
	RetryDelays []time.Duration
	// DeadLetter sends a record that still fails (after the last retry
	// level) to the dead-letter topic and moves on; without it, Run stops
	// with the error.
	DeadLetter bool
	// AttemptTimeout bounds each Handle call with a context deadline
	// (DefaultAttemptTimeout in DefaultFailurePolicy and RetryTopics; 0:
	// no deadline). A call that fails after its deadline fails with
	// ErrAttemptTimeout: a transient failure that is not retried in place
	// (it held up the whole poll for AttemptTimeout already) but goes to
	// the next retry level or the dead-letter topic (reason "timeout").
	// So a handler that blocks until its context ends holds up the
	// member's poll, and every partition, for at most AttemptTimeout per
	// record. A handler that ignores its context cannot be stopped (Go
	// cannot kill a goroutine): it holds up its partition and the member
	// until it returns, logged at error level once it is AttemptTimeout
	// past the deadline and every minute after. The call's context reports
	// the deadline (Deadline); once it passed, its Err is
	// context.DeadlineExceeded and its context.Cause ErrAttemptTimeout
	// (contexts derived from it end with context.Canceled, same cause).
	// A context must not be used after its call returned. A HandleBatch
	// call (one partition's share of a poll) gets the same deadline; the
	// records it failed, for its deadline too, are retried alone with
	// Handle (their errors are not ErrAttemptTimeout).
	AttemptTimeout time.Duration
	// Ordering says whether records of a key may overtake a record of the
	// same key that waits in the retry topics (default Unordered). See
	// the package documentation.
	Ordering Ordering
	// MaxErrorLength bounds the error message kept in the dead-letter
	// header (default 1024 bytes).
	MaxErrorLength int
	// jitter returns a factor in [0.8, 1.2); replaceable in tests.
	jitter func() float64
}

// Ordering is the per-key ordering mode of retry topics.
type Ordering int

const (
	// Unordered lets later records of a key be handled while an earlier
	// one waits in the retry topics.
	Unordered Ordering = iota
	// OrderedDeadLetterRest parks later records of a key behind a record
	// in the retry topics; if that record is dead-lettered, the records
	// parked behind it at that moment, and those parked behind them until
	// the key has no record left in the retry topics, are dead-lettered
	// too (reason "parked-behind-dead-letter"). The decision survives
	// restarts and rebalances (a marker record in the retry topics).
	OrderedDeadLetterRest
	// OrderedResume parks later records of a key behind a record in the
	// retry topics; if that record is dead-lettered, the parked records
	// are handled in order.
	OrderedResume
)

// String names the mode.
func (o Ordering) String() string {
	switch o {
	case Unordered:
		return "unordered"
	case OrderedDeadLetterRest:
		return "ordered-dead-letter-rest"
	case OrderedResume:
		return "ordered-resume"
	}
	return "ordering(" + strconv.Itoa(int(o)) + ")"
}

// DefaultAttemptTimeout is the deadline of each handler call in
// DefaultFailurePolicy and RetryTopics: long for one record's work, short
// of franz-go's default rebalance timeout (60s), which a hung poll
// would otherwise outlast (BlockRebalanceOnPoll).
const DefaultAttemptTimeout = 10 * time.Second

// DefaultFailurePolicy retries 3 times in place (100ms, 200ms, 400ms),
// then dead-letters. It uses no retry topics. Each handler call gets
// DefaultAttemptTimeout (10s); a call that times out is dead-lettered
// without in-place retries (see AttemptTimeout).
func DefaultFailurePolicy() FailurePolicy {
	return FailurePolicy{Retries: 3, Backoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second, DeadLetter: true, MaxErrorLength: 1024,
		AttemptTimeout: DefaultAttemptTimeout}
}

// RetryTopics returns a policy with non-blocking retry levels, one per
// delay: no in-place retry (an in-place retry holds up its whole poll; add
// them with InPlace), then retry level 1 (due after delays[0]), level 2,
// and so on. Each handler call gets DefaultAttemptTimeout (change it with
// WithAttemptTimeout). After the last level Run stops with the
// error unless ThenDLQ is called:
//
//	consumers.WithFailurePolicy(consumers.RetryTopics(time.Second, 10*time.Second).ThenDLQ())
//
// The topics must exist (see Topics); New does not create them.
func RetryTopics(delays ...time.Duration) FailurePolicy {
	return FailurePolicy{Backoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second, RetryDelays: delays, MaxErrorLength: 1024,
		AttemptTimeout: DefaultAttemptTimeout}
}

// ThenDLQ returns p that dead-letters records that still fail.
func (p FailurePolicy) ThenDLQ() FailurePolicy { p.DeadLetter = true; return p }

// InPlace returns p with n in-place retries starting at backoff.
func (p FailurePolicy) InPlace(n int, backoff, maxBackoff time.Duration) FailurePolicy {
	p.Retries, p.Backoff, p.MaxBackoff = n, backoff, maxBackoff
	return p
}

// WithAttemptTimeout returns p with a deadline d on each handler call (0:
// none). See FailurePolicy.AttemptTimeout.
func (p FailurePolicy) WithAttemptTimeout(d time.Duration) FailurePolicy {
	p.AttemptTimeout = d
	return p
}

// KeepKeyOrder returns p with the ordering mode o (OrderedDeadLetterRest or
// OrderedResume).
func (p FailurePolicy) KeepKeyOrder(o Ordering) FailurePolicy { p.Ordering = o; return p }

// Topics returns the topics the policy needs for topic consumed by group:
// the retry levels, then the dead-letter topic if DeadLetter is set. With
// an ordered mode the retry topics must have as many partitions as topic.
func (p FailurePolicy) Topics(topic, group string) []string {
	var out []string
	for n := range p.RetryDelays {
		out = append(out, RetryTopic(topic, group, n+1))
	}
	if p.DeadLetter {
		out = append(out, DeadLetterTopic(topic, group))
	}
	return out
}

// RetryTopic returns the name of retry level n (from 1) of a topic for a
// group: "<topic>.<group>.retry.<n>".
func RetryTopic(topic, group string, n int) string {
	return topic + "." + group + ".retry." + strconv.Itoa(n)
}

func (p FailurePolicy) ordered() bool { return p.Ordering != Unordered && len(p.RetryDelays) > 0 }

func (p FailurePolicy) validate() error {
	var errs []error
	if p.Retries < 0 || p.Backoff < 0 || p.MaxBackoff < p.Backoff || p.MaxErrorLength < 0 || p.AttemptTimeout < 0 {
		errs = append(errs, fmt.Errorf("failure policy: retries %d, backoff %s, max backoff %s, max error length %d and attempt timeout %s must be non-negative, max backoff ≥ backoff",
			p.Retries, p.Backoff, p.MaxBackoff, p.MaxErrorLength, p.AttemptTimeout))
	}
	for i, d := range p.RetryDelays {
		if d < 0 {
			errs = append(errs, fmt.Errorf("failure policy: retry delay %d is negative (%s)", i+1, d))
		}
	}
	if p.Ordering < Unordered || p.Ordering > OrderedResume {
		errs = append(errs, fmt.Errorf("failure policy: unknown ordering %d", p.Ordering))
	}
	return errors.Join(errs...)
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

// IsPermanent reports whether err was marked Permanent, is a handler's
// panic (PanicError) or is bad input (orchestrix.ErrInvalid,
// orchestrix.ErrUnknownType, which include the codec's poison and decode
// errors).
func IsPermanent(err error) bool {
	var p permanent
	var pe *PanicError
	return errors.As(err, &p) || errors.As(err, &pe) || errors.Is(err, orchestrix.ErrInvalid) || errors.Is(err, orchestrix.ErrUnknownType)
}

// ErrorClass names an error's class for the dead-letter header
// HeaderErrorClass: "permanent" for errors IsPermanent reports, "transient"
// otherwise. HeaderReason holds the finer ErrorReason.
func ErrorClass(err error) string {
	if IsPermanent(err) {
		return "permanent"
	}
	return "transient"
}

// ErrParkedBehindDeadLetter is the error a record parked behind a
// dead-lettered record of its key is dead-lettered with
// (OrderedDeadLetterRest).
var ErrParkedBehindDeadLetter = errors.New("consumers: an earlier record of the key was dead-lettered")

// Reasons found in the HeaderReason header of a dead letter, besides
// "poison:<codec reason>".
const (
	ReasonPermanent   = "permanent"                 // marked with Permanent
	ReasonInvalid     = "invalid"                   // orchestrix.ErrInvalid, e.g. a codec decode error
	ReasonUnknownType = "unknown-type"              // orchestrix.ErrUnknownType
	ReasonTimeout     = "timeout"                   // the attempt deadline passed (ErrAttemptTimeout)
	ReasonExhausted   = "retries-exhausted"         // a transient error outlived every retry
	ReasonParkedDead  = "parked-behind-dead-letter" // OrderedDeadLetterRest
	ReasonPanic       = "panic"                     // the handler panicked (PanicError)
)

// ErrorReason names why err dead-letters a record: "poison:<reason>" for a
// codec.PoisonError, else one of the Reason constants.
func ErrorReason(err error) string {
	var pe *codec.PoisonError
	var panicked *PanicError
	switch {
	case errors.Is(err, ErrParkedBehindDeadLetter):
		return ReasonParkedDead
	case errors.As(err, &panicked):
		return ReasonPanic
	case errors.As(err, &pe):
		return "poison:" + pe.Reason
	case errors.Is(err, orchestrix.ErrUnknownType):
		return ReasonUnknownType
	case errors.Is(err, orchestrix.ErrInvalid):
		return ReasonInvalid
	case IsPermanent(err):
		return ReasonPermanent
	case errors.Is(err, ErrAttemptTimeout) || errors.Is(err, context.DeadlineExceeded):
		return ReasonTimeout
	}
	return ReasonExhausted
}
