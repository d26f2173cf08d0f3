// Package topics creates and checks the Kafka topics Orchestrix uses,
// explicitly with kadm: nothing relies on broker auto-creation.
//
// Names follow one convention: "<context>.commands", "<context>.events",
// "<context>.outcomes" for a bounded context, and "<topic>.<group>.dlq"
// for a consumer group's dead letters (consumers.DeadLetterTopic).
package topics

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Spec describes one topic.
type Spec struct {
	Name              string
	Partitions        int32
	ReplicationFactor int16
	// Configs are topic configs such as "retention.ms" or
	// "cleanup.policy".
	Configs map[string]string
}

// Commands returns the name of a context's command topic.
func Commands(context string) string { return context + ".commands" }

// Events returns the name of a context's event topic.
func Events(context string) string { return context + ".events" }

// Outcomes returns the name of a context's command-outcome topic.
func Outcomes(context string) string { return context + ".outcomes" }

// MaxMessageBytes is the max.message.bytes ForContext gives the commands
// and events topics: the stores' largest event (1 MiB,
// stores.DefaultMaxEventSize) plus 64 KiB for the CloudEvents headers and
// the record batch's framing. Kafka's default (1,048,588 bytes) is less
// than a 1 MiB event with its headers, so the relay would dead-letter
// events the store accepted.
const MaxMessageBytes = 1<<20 + 64<<10

// ForContext returns the specs of a bounded context's topics: commands,
// events (both with the given partitions and MaxMessageBytes) and
// outcomes (same partitions, retention one day: outcomes are only waited
// for briefly).
func ForContext(name string, partitions int32, replication int16) []Spec {
	big := strconv.Itoa(MaxMessageBytes)
	return []Spec{
		{Name: Commands(name), Partitions: partitions, ReplicationFactor: replication, Configs: map[string]string{"max.message.bytes": big}},
		{Name: Events(name), Partitions: partitions, ReplicationFactor: replication, Configs: map[string]string{"max.message.bytes": big}},
		{Name: Outcomes(name), Partitions: partitions, ReplicationFactor: replication, Configs: map[string]string{"retention.ms": "86400000"}},
	}
}

// Validate checks a spec: a legal Kafka topic name (at most 249 of
// [a-zA-Z0-9._-], not "." or ".."), positive partitions and replication.
func (s Spec) Validate() error {
	var errs []error
	if s.Name == "" || len(s.Name) > 249 || s.Name == "." || s.Name == ".." ||
		strings.IndexFunc(s.Name, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
		}) >= 0 {
		errs = append(errs, fmt.Errorf("topic name %q must be 1-249 of [a-zA-Z0-9._-]", s.Name))
	}
	if s.Partitions < 1 {
		errs = append(errs, fmt.Errorf("topic %q: partitions %d < 1", s.Name, s.Partitions))
	}
	if s.ReplicationFactor < 1 {
		errs = append(errs, fmt.Errorf("topic %q: replication factor %d < 1", s.Name, s.ReplicationFactor))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("topics: %w: %w", orchestrix.ErrInvalid, err)
	}
	return nil
}

// MismatchError reports an existing topic whose partition count differs
// from its spec.
type MismatchError struct {
	Topic      string
	Want, Have int32
}

// Error describes the mismatch.
func (e *MismatchError) Error() string {
	return fmt.Sprintf("topics: %s exists with %d partitions, spec wants %d", e.Topic, e.Have, e.Want)
}

// Ensure creates the topics that do not exist and checks that existing
// ones have the spec's partition count. It returns the names it created,
// once they are usable: the broker answers a create before every
// partition has a leader and before its metadata lists the topic, and a
// client (or a consumers.Group's start-up check) that looks at once would
// find the topic missing. Ensure waits for that, up to ctx's deadline or
// 30 seconds.
func Ensure(ctx context.Context, adm *kadm.Client, specs ...Spec) ([]string, error) {
	var errs []error
	for _, s := range specs {
		if err := s.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// One request per topic, all at once: they differ in partitions and
	// configs, which one CreateTopics request of kadm cannot carry, and
	// one after the other they took seconds for the 15 topics of an
	// example on a loaded broker.
	results := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, s := range specs {
		wg.Go(func() {
			cfg := map[string]*string{}
			for k, v := range s.Configs {
				cfg[k] = &v
			}
			resp, err := adm.CreateTopic(ctx, s.Partitions, s.ReplicationFactor, cfg, s.Name)
			if err == nil {
				err = resp.Err
			}
			results[i] = err
		})
	}
	wg.Wait()
	var created []string
	for i, s := range specs {
		switch err := results[i]; {
		case err == nil:
			created = append(created, s.Name)
		case errors.Is(err, kerr.TopicAlreadyExists):
			d, derr := Describe(ctx, adm, s.Name)
			if derr != nil {
				errs = append(errs, derr)
			} else if d[0].Partitions != s.Partitions {
				errs = append(errs, &MismatchError{Topic: s.Name, Want: s.Partitions, Have: d[0].Partitions})
			}
		default:
			errs = append(errs, fmt.Errorf("topics: create %s: %w", s.Name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return created, err
	}
	return created, waitUsable(ctx, adm, created)
}

// waitUsable waits until names are listed with a leader for every
// partition.
func waitUsable(ctx context.Context, adm *kadm.Client, names []string) error {
	if len(names) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		td, err := adm.ListTopics(ctx, names...)
		pending := ""
		if err == nil {
			for _, n := range names {
				if d, ok := td[n]; !ok || d.Err != nil || len(d.Partitions) == 0 || !allLed(d.Partitions) {
					pending = n
					break
				}
			}
			if pending == "" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("%w: %s not listed with leaders yet", ErrNotFound, pending)
			}
			return fmt.Errorf("topics: created %s, waiting for them to be usable: %w (%w)", strings.Join(names, ", "), err, ctx.Err())
		case <-time.After(wait):
		}
	}
}

func allLed(ps kadm.PartitionDetails) bool {
	for _, p := range ps {
		if p.Err != nil || p.Leader < 0 {
			return false
		}
	}
	return true
}

// Description is what Describe reports of a topic.
type Description struct {
	Name              string
	Partitions        int32
	ReplicationFactor int16
	// Configs holds the topic's non-default configs.
	Configs map[string]string
	// EndOffsets is each partition's high watermark.
	EndOffsets map[int32]int64
}

// The Kafka conditions every package reports with one sentinel (consumers,
// producers, outbox and projections wrap these; kafkaconn.ErrUnreachable
// is the one for brokers that do not answer).
var (
	// ErrNotFound reports a topic that does not exist.
	ErrNotFound = errors.New("topics: topic not found")
	// ErrTooLarge reports a record larger than its topic (or the
	// producer) takes.
	ErrTooLarge = errors.New("topics: record too large for its topic")
)

// Describe reports the topics' partitions, configs and end offsets.
func Describe(ctx context.Context, adm *kadm.Client, names ...string) ([]Description, error) {
	md, err := adm.Metadata(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("topics: metadata: %w", err)
	}
	ends, err := adm.ListEndOffsets(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("topics: end offsets: %w", err)
	}
	cfgs, err := adm.DescribeTopicConfigs(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("topics: configs: %w", err)
	}
	out := make([]Description, 0, len(names))
	for _, n := range names {
		t, ok := md.Topics[n]
		if !ok || errors.Is(t.Err, kerr.UnknownTopicOrPartition) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, n)
		}
		if t.Err != nil {
			return nil, fmt.Errorf("topics: %s: %w", n, t.Err)
		}
		d := Description{Name: n, Partitions: int32(len(t.Partitions)), Configs: map[string]string{}, EndOffsets: map[int32]int64{}}
		for _, p := range t.Partitions {
			d.ReplicationFactor = int16(len(p.Replicas))
		}
		ends.Each(func(o kadm.ListedOffset) {
			if o.Topic == n {
				d.EndOffsets[o.Partition] = o.Offset
			}
		})
		for _, rc := range cfgs {
			if rc.Name != n {
				continue
			}
			for _, c := range rc.Configs {
				if c.Value != nil && c.Source == kmsg.ConfigSourceDynamicTopicConfig {
					d.Configs[c.Key] = *c.Value
				}
			}
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b Description) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
