package consumers

import (
	"context"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// HeaderPrefix starts every header the runtime adds to a dead letter.
const HeaderPrefix = "orchestrix.dlq."

// Dead-letter header names.
const (
	HeaderTopic        = HeaderPrefix + "topic"
	HeaderPartition    = HeaderPrefix + "partition"
	HeaderOffset       = HeaderPrefix + "offset"
	HeaderTimestamp    = HeaderPrefix + "timestamp"
	HeaderGroup        = HeaderPrefix + "group"
	HeaderAttempts     = HeaderPrefix + "attempts"
	HeaderFirstFailure = HeaderPrefix + "first-failure"
	HeaderLastFailure  = HeaderPrefix + "last-failure"
	HeaderErrorClass   = HeaderPrefix + "error-class"
	HeaderError        = HeaderPrefix + "error"
)

// DeadLetterTopic returns the dead-letter topic of a topic for a group:
// "<topic>.<group>.dlq".
func DeadLetterTopic(topic, group string) string { return topic + "." + group + ".dlq" }

// ErrorClass names an error's class for the dead-letter header:
// "permanent" for errors IsPermanent reports, "transient" otherwise.
func ErrorClass(err error) string {
	if IsPermanent(err) {
		return "permanent"
	}
	return "transient"
}

func (g *Group) deadLetter(ctx context.Context, r *kgo.Record, cause error, attempts int, first, last time.Time) error {
	msg := cause.Error()
	if max := g.cfg.policy.MaxErrorLength; max > 0 && len(msg) > max {
		msg = msg[:max] + "…"
	}
	headers := make([]kgo.RecordHeader, 0, len(r.Headers)+10)
	headers = append(headers, r.Headers...)
	add := func(k, v string) { headers = append(headers, kgo.RecordHeader{Key: k, Value: []byte(v)}) }
	add(HeaderTopic, r.Topic)
	add(HeaderPartition, strconv.Itoa(int(r.Partition)))
	add(HeaderOffset, strconv.FormatInt(r.Offset, 10))
	add(HeaderTimestamp, r.Timestamp.UTC().Format(time.RFC3339Nano))
	add(HeaderGroup, g.group)
	add(HeaderAttempts, strconv.Itoa(attempts))
	add(HeaderFirstFailure, first.UTC().Format(time.RFC3339Nano))
	add(HeaderLastFailure, last.UTC().Format(time.RFC3339Nano))
	add(HeaderErrorClass, ErrorClass(cause))
	add(HeaderError, msg)
	dl := &kgo.Record{Topic: DeadLetterTopic(r.Topic, g.group), Key: r.Key, Value: r.Value, Headers: headers}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return g.cl.ProduceSync(pctx, dl).FirstErr()
}
