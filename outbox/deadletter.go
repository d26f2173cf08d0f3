package outbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Unreadable is implemented by an error a Source yields for one entry of
// its log that it cannot read as an event: stores/esdb's
// *ForeignEventError, an event under the store's prefix that it did not
// write. The relay writes a dead letter for the entry (reason
// ReasonUnreadable) in the transaction whose checkpoint passes it, and
// reads on after it. Any other error a source yields ends the term, and
// the next term reads from the checkpoint again.
type Unreadable interface {
	error
	// UnreadableEntry returns what is known of the entry: at least its
	// Cursor (the log resumes after it), which must come after the
	// entries yielded before; StreamID, Type, ID, Position and Data, when
	// set, go into the dead letter.
	UnreadableEntry() stores.Entry
}

// DeadLetterHeaderPrefix starts the headers of the relay's dead letters:
// the same prefix as the consumers' dead letters (consumers.HeaderPrefix).
const DeadLetterHeaderPrefix = "orchestrix.dlq."

// Headers of a dead letter in the relay's dead-letter topic. The record's
// key is the event's stream ID (an outbox message's own key); its value
// is the event's data or the message's value, or empty when it was too
// large (HeaderSize tells how large). An outbox message keeps its own
// headers besides these. Numbers are decimal.
const (
	// HeaderReason is why the record was not published: one of the
	// Reason constants.
	HeaderReason = DeadLetterHeaderPrefix + "reason"
	// HeaderError is the error, truncated to MaxErrorLength bytes.
	HeaderError = DeadLetterHeaderPrefix + "error"
	// HeaderOrigin is "event" (the store's log) or "outbox" (the outbox
	// table).
	HeaderOrigin = DeadLetterHeaderPrefix + "origin"
	// HeaderTopic is the topic the record was to be published to (empty
	// for an event the codec or the source could not map).
	HeaderTopic = DeadLetterHeaderPrefix + "topic"
	// HeaderPosition is the event's position in the store (an outbox
	// message's position in the outbox table); HeaderCursor the
	// "tx/position" cursor just after it, where the relay read on.
	HeaderPosition = DeadLetterHeaderPrefix + "position"
	HeaderCursor   = DeadLetterHeaderPrefix + "cursor"
	// HeaderStream, HeaderVersion, HeaderType and HeaderID describe the
	// event (absent for an outbox message). For an entry the source
	// could not read, HeaderStream is what the source knows of its place
	// (an EventSourcingDB subject) and HeaderID the source's own ID.
	HeaderStream  = DeadLetterHeaderPrefix + "stream"
	HeaderVersion = DeadLetterHeaderPrefix + "version"
	HeaderType    = DeadLetterHeaderPrefix + "type"
	HeaderID      = DeadLetterHeaderPrefix + "id"
	// HeaderSize is the size in bytes of the record that was not
	// published, as counted against max.message.bytes (ReasonTooLarge,
	// ReasonTopicMissing), else of the event's data.
	HeaderSize = DeadLetterHeaderPrefix + "size"
)

// Reasons (HeaderReason).
const (
	// ReasonTooLarge: the record is larger than its topic's
	// max.message.bytes.
	ReasonTooLarge = "too-large"
	// ReasonTopicMissing: the record's topic (an outbox message's, or one
	// RouteFunc chose) does not exist.
	ReasonTopicMissing = "topic-missing"
	// ReasonInvalid: codec.EventToRecord refused the event (and no
	// OnInvalid was given).
	ReasonInvalid = "invalid"
	// ReasonUnreadable: the source could not read the entry as an event
	// (see Unreadable).
	ReasonUnreadable = "unreadable"
)

// MaxErrorLength bounds HeaderError.
const MaxErrorLength = 1024

// Origins (HeaderOrigin).
const (
	originEvent  = "event"
	originOutbox = "outbox"
)

// deadLetter is one record the relay does not publish where it belongs.
type deadLetter struct {
	origin string
	reason string
	err    error
	topic  string
	// entry is the event (origin event); cursor the place after it.
	entry  stores.Entry
	cursor stores.Cursor
	// rec is the record as encoded, when there is one.
	rec  *kgo.Record
	size int
}

// record builds the dead letter's record for the dead-letter topic, with
// the value and (for an outbox message) the original headers only when
// the whole fits in limit bytes.
func (r *Relay) deadLetterRecord(d *deadLetter, limit int) *kgo.Record {
	msg := ""
	if d.err != nil {
		msg = d.err.Error()
		if len(msg) > MaxErrorLength {
			msg = msg[:MaxErrorLength]
		}
	}
	out := &kgo.Record{Topic: r.cfg.dlqTopic}
	hs := make([]kgo.RecordHeader, 0, 16)
	add := func(k, v string) {
		if v != "" {
			hs = append(hs, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
	}
	add(HeaderReason, d.reason)
	add(HeaderError, msg)
	add(HeaderOrigin, d.origin)
	add(HeaderTopic, d.topic)
	add(HeaderCursor, d.cursor.String())
	add(HeaderSize, strconv.Itoa(d.size))
	if r.instHdr != nil {
		hs = append(hs, kgo.RecordHeader{Key: InstanceHeader, Value: r.instHdr})
	}
	var value []byte
	var own []kgo.RecordHeader
	if d.origin == originEvent {
		e := d.entry
		add(HeaderPosition, strconv.FormatUint(e.Position, 10))
		add(HeaderStream, e.StreamID)
		if e.Version != 0 {
			add(HeaderVersion, strconv.FormatUint(e.Version, 10))
		}
		add(HeaderType, e.Type)
		add(HeaderID, e.ID)
		if e.StreamID != "" {
			out.Key = []byte(e.StreamID)
		}
		value = e.Data
	} else {
		add(HeaderPosition, strconv.FormatUint(d.cursor.Position, 10))
		out.Key, value = d.rec.Key, d.rec.Value
		for _, h := range d.rec.Headers {
			if h.Key != InstanceHeader {
				own = append(own, h)
			}
		}
	}
	out.Headers = hs
	if d.reason != ReasonTooLarge {
		out.Value = value
		out.Headers = append(hs, own...)
		if recordSize(out) > limit {
			out.Value, out.Headers = nil, hs
		}
	}
	return out
}

// ensureDeadLetterTopic creates the dead-letter topic unless it exists
// (one partition, kept for ever) and returns its max.message.bytes.
func (r *Relay) ensureDeadLetterTopic(ctx context.Context, adm *kadm.Client) (int, error) {
	if n, ok := r.limits.get(r.cfg.dlqTopic); ok && n > 0 {
		return n, nil
	}
	// Created by an operator (a relay may lack the permission to create
	// topics), or by an earlier term.
	if exists, err := topicExists(ctx, adm, r.cfg.dlqTopic); err != nil {
		return 0, err
	} else if exists {
		if err := r.describeLimits(ctx, adm, r.cfg.dlqTopic); err == nil {
			n, _ := r.limits.get(r.cfg.dlqTopic)
			return n, nil
		}
	}
	forever := "-1"
	resp, err := adm.CreateTopic(ctx, 1, r.cfg.checkpointRF, map[string]*string{"retention.ms": &forever}, r.cfg.dlqTopic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return 0, fmt.Errorf("outbox: create dead-letter topic %s: %w", r.cfg.dlqTopic, err)
	}
	if err == nil {
		r.log.Info("created the dead-letter topic", "dlq_topic", r.cfg.dlqTopic)
	}
	// A topic just created may take a moment to show in every broker's
	// metadata.
	for attempt := 0; ; attempt++ {
		err := r.describeLimits(ctx, adm, r.cfg.dlqTopic)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrTopicMissing) || attempt == 20 {
			return 0, fmt.Errorf("outbox: dead-letter topic %s: %w", r.cfg.dlqTopic, err)
		}
		if !r.sleep(ctx, 100*time.Millisecond, nil, nil) {
			return 0, ctx.Err()
		}
	}
	n, _ := r.limits.get(r.cfg.dlqTopic)
	return n, nil
}

// produceDeadLetter logs d and produces its dead letter in the
// transaction in flight.
func (r *Relay) produceDeadLetter(ctx context.Context, adm *kadm.Client, cl *kgo.Client, d *deadLetter, promise func(*kgo.Record, error)) error {
	limit, err := r.ensureDeadLetterTopic(ctx, adm)
	if err != nil {
		return err
	}
	rec := r.deadLetterRecord(d, limit)
	args := []any{"reason", d.reason, "origin", d.origin, "dlq_topic", r.cfg.dlqTopic, "size", d.size}
	if d.topic != "" {
		args = append(args, "to_topic", d.topic)
	}
	if d.origin == originEvent {
		args = append(args, "stream", d.entry.StreamID, "version", d.entry.Version, "position", d.entry.Position, "event_type", d.entry.Type, "event_id", d.entry.ID)
	} else {
		args = append(args, "outbox_position", d.cursor.Position, "key", string(d.rec.Key))
	}
	args = append(args, "err", d.err)
	r.log.Error("dead-lettering a record Kafka will not take", args...)
	cl.Produce(ctx, rec, promise)
	return nil
}
