package outbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Record size limits.
const (
	// DefaultTopicMaxBytes is the max.message.bytes the relay assumes for
	// a topic whose configuration it may not read (no DESCRIBE_CONFIGS
	// permission): franz-go's default batch limit, a little below Kafka's
	// default of 1,048,588.
	DefaultTopicMaxBytes = 1_000_012
	// RecordHeadroom is what the relay allows for an event's key and
	// headers besides its Data when it checks a topic against MaxEventSize:
	// a topic must take MaxEventSize + RecordHeadroom bytes.
	RecordHeadroom = 4096
	// recordOverhead bounds the bytes a record batch holding one record
	// takes beyond the record's key, value and headers: franz-go's batch
	// overhead of 65 bytes (Kafka counts 61), the record's length,
	// attributes, timestamp and offset deltas, key and value lengths and
	// header count, each varint at its widest.
	recordOverhead = 65 + 5 + 1 + 10 + 5 + 5 + 5 + 5
	// headerOverhead bounds the two varint lengths of one header.
	headerOverhead = 10
)

// recordSize is an upper bound of the bytes a record batch holding only
// rec takes, as franz-go and the broker count it against a topic's
// max.message.bytes (before compression; franz-go sends a batch
// uncompressed when compression would grow it).
func recordSize(rec *kgo.Record) int {
	n := recordOverhead + len(rec.Key) + len(rec.Value)
	for i := range rec.Headers {
		n += headerOverhead + len(rec.Headers[i].Key) + len(rec.Headers[i].Value)
	}
	return n
}

// LimitMismatchError reports a topic that cannot take the largest event
// the stores accept: the relay dead-letters such events instead of
// publishing them. The first term that reads such a limit logs it (at
// warning level) and hands it to OnError, once per topic and limit; the
// relay keeps running.
type LimitMismatchError struct {
	// Topic and TopicMaxBytes are the topic and its max.message.bytes.
	Topic         string
	TopicMaxBytes int
	// MaxEventSize is the relay's setting (the stores' limit on Data);
	// Need is MaxEventSize + RecordHeadroom.
	MaxEventSize, Need int
}

// Error names the topic, both limits and the two ways to make them agree.
func (e *LimitMismatchError) Error() string {
	return fmt.Sprintf("outbox: topic %s takes records of at most %d bytes (max.message.bytes), but the stores accept events of %d bytes of data, which need up to %d with key and headers: such events go to the dead-letter topic; raise the topic's max.message.bytes to at least %d or lower the stores' and the relay's max event size to at most %d",
		e.Topic, e.TopicMaxBytes, e.MaxEventSize, e.Need, e.Need, max(0, e.TopicMaxBytes-RecordHeadroom))
}

// limits holds the max.message.bytes of the topics a relay publishes to,
// as read at the start of the term (and when a topic is first met), or -1
// for a topic found missing. The committing goroutine reads it for every
// record it routes elsewhere than the events topic; franz-go reads it
// (ProducerBatchMaxBytesFn) when it first meets a partition.
type limits struct {
	mu     sync.Mutex
	max    map[string]int
	seenAt map[string]time.Time
}

// missingRecheck is how long a topic found missing stays missing before
// the relay asks the broker again.
const missingRecheck = 10 * time.Second

func (l *limits) reset() {
	l.mu.Lock()
	l.max, l.seenAt = map[string]int{}, map[string]time.Time{}
	l.mu.Unlock()
}

func (l *limits) set(topic string, n int) {
	l.mu.Lock()
	if l.max == nil {
		l.max, l.seenAt = map[string]int{}, map[string]time.Time{}
	}
	l.max[topic], l.seenAt[topic] = n, time.Now()
	l.mu.Unlock()
}

// get returns the topic's limit (-1: missing) and whether it is known and
// still fresh.
func (l *limits) get(topic string) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, ok := l.max[topic]
	if ok && n < 0 && time.Since(l.seenAt[topic]) > missingRecheck {
		return n, false
	}
	return n, ok
}

// batchMax is franz-go's per-topic batch limit: the topic's
// max.message.bytes when known, else DefaultTopicMaxBytes.
func (l *limits) batchMax(topic string) int32 {
	n, ok := l.get(topic)
	if !ok || n < 512 {
		return DefaultTopicMaxBytes
	}
	return int32(min(n, 1<<30))
}

// describeLimits reads the max.message.bytes of topics (which exist) and
// records them. A failed request fails (the term starts over: a guessed
// limit could dead-letter events the topic takes); a topic whose
// configuration the relay may not read (no DESCRIBE_CONFIGS permission)
// counts with DefaultTopicMaxBytes, logged.
func (r *Relay) describeLimits(ctx context.Context, adm *kadm.Client, topics ...string) error {
	rcs, err := adm.DescribeTopicConfigs(ctx, topics...)
	if err != nil && !notAllowed(err) {
		return fmt.Errorf("outbox: describe the configuration of %s: %w", strings.Join(topics, ", "), err)
	}
	if err != nil {
		r.log.Warn("may not read the topics' max.message.bytes, assuming the default", "topics", topics, "assumed", DefaultTopicMaxBytes, "err", err)
	}
	found := map[string]int{}
	for _, rc := range rcs {
		switch {
		case rc.Err == nil:
		case errors.Is(rc.Err, kerr.UnknownTopicOrPartition):
			return fmt.Errorf("%w: %s (create it: orchestrix topics create)", ErrTopicMissing, rc.Name)
		case notAllowed(rc.Err):
			r.log.Warn("may not read the topic's max.message.bytes, assuming the default", "topic", rc.Name, "assumed", DefaultTopicMaxBytes, "err", rc.Err)
			continue
		default:
			// A broker restarting, a timeout: start over rather than guess.
			return fmt.Errorf("outbox: describe the configuration of %s: %w", rc.Name, rc.Err)
		}
		for _, c := range rc.Configs {
			if c.Key != "max.message.bytes" || c.Value == nil {
				continue
			}
			if n, err := strconv.Atoi(*c.Value); err == nil && n > 0 {
				found[rc.Name] = n
			}
		}
	}
	for _, t := range topics {
		n, ok := found[t]
		if !ok {
			n = DefaultTopicMaxBytes
		}
		r.limits.set(t, n)
	}
	return nil
}

// notAllowed reports whether err is a refused authorisation.
func notAllowed(err error) bool {
	return errors.Is(err, kerr.TopicAuthorizationFailed) || errors.Is(err, kerr.ClusterAuthorizationFailed)
}

// checkLimits reports every events topic (the default and the routed
// ones) that cannot take an event of MaxEventSize bytes: logged and
// handed to OnError once per topic and limit.
func (r *Relay) checkLimits(topics []string) {
	need := r.cfg.maxEventSize + RecordHeadroom
	for _, t := range topics {
		n, ok := r.limits.get(t)
		if !ok || n < 0 || n >= need {
			continue
		}
		if prev, seen := r.mismatched.Swap(t, n); seen && prev == n {
			continue
		}
		err := &LimitMismatchError{Topic: t, TopicMaxBytes: n, MaxEventSize: r.cfg.maxEventSize, Need: need}
		r.log.Warn("limit mismatch", "err", err)
		if r.cfg.onError != nil {
			r.cfg.onError(err)
		}
	}
}

// topicLimit returns the max.message.bytes of a topic the relay meets
// while publishing (a RouteFunc topic, an outbox message's topic), or -1
// when the topic does not exist: asked once, and again a second later
// before it counts as missing, so that a broker that is catching up on
// metadata does not send a message to the dead-letter topic.
func (r *Relay) topicLimit(ctx context.Context, adm *kadm.Client, topic string) (int, error) {
	if n, ok := r.limits.get(topic); ok {
		return n, nil
	}
	for attempt := 0; attempt < 3; attempt++ {
		exists, err := topicExists(ctx, adm, topic)
		if err != nil {
			return 0, err
		}
		if exists {
			if err := r.describeLimits(ctx, adm, topic); err != nil && !errors.Is(err, ErrTopicMissing) {
				return 0, err
			}
			if n, ok := r.limits.get(topic); ok {
				return n, nil
			}
			continue // deleted in between: look again
		}
		if attempt > 0 {
			r.limits.set(topic, -1)
			return -1, nil
		}
		if !r.sleep(ctx, time.Second, nil, nil) {
			return 0, ctx.Err()
		}
	}
	return 0, fmt.Errorf("outbox: topic %s exists, but its configuration cannot be described", topic)
}

// topicExists asks the cluster's metadata whether topic exists.
func topicExists(ctx context.Context, adm *kadm.Client, topic string) (bool, error) {
	md, err := adm.Metadata(ctx, topic)
	if err != nil {
		return false, fmt.Errorf("outbox: metadata of %s: %w", topic, err)
	}
	d, ok := md.Topics[topic]
	switch {
	case !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition):
		return false, nil
	case d.Err != nil:
		return false, fmt.Errorf("outbox: metadata of %s: %w", topic, d.Err)
	}
	return true, nil
}

// destinations are the events topic and the routed topics, once each.
func (r *Relay) destinations() []string {
	out := []string{r.cfg.topic}
	for _, t := range r.cfg.routes {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}
