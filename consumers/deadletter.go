package consumers

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix/internal/kafkaerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// HeaderPrefix starts every header the runtime adds to a retry record or a
// dead letter. Headers with this prefix are replaced, never duplicated,
// when a record moves on; all other headers travel unchanged.
const HeaderPrefix = "orchestrix.dlq."

// Header names of retry records and dead letters. Times are RFC 3339 with
// nanoseconds, UTC; numbers are decimal.
const (
	// HeaderTopic, HeaderPartition, HeaderOffset and HeaderTimestamp are
	// the origin record's coordinates and timestamp.
	HeaderTopic     = HeaderPrefix + "topic"
	HeaderPartition = HeaderPrefix + "partition"
	HeaderOffset    = HeaderPrefix + "offset"
	HeaderTimestamp = HeaderPrefix + "timestamp"
	// HeaderGroup is the consumer group whose handler failed.
	HeaderGroup = HeaderPrefix + "group"
	// HeaderAttempts counts handler calls over all levels.
	HeaderAttempts     = HeaderPrefix + "attempts"
	HeaderFirstFailure = HeaderPrefix + "first-failure"
	HeaderLastFailure  = HeaderPrefix + "last-failure"
	// HeaderErrorClass is ErrorClass of the last error, HeaderReason its
	// ErrorReason, HeaderError its message truncated to MaxErrorLength.
	HeaderErrorClass = HeaderPrefix + "error-class"
	HeaderReason     = HeaderPrefix + "reason"
	HeaderError      = HeaderPrefix + "error"
	// HeaderLevel is the retry level (1..) of a record in a retry topic.
	HeaderLevel = HeaderPrefix + "level"
	// HeaderDue is when a retry record may be handled.
	HeaderDue = HeaderPrefix + "due"
	// HeaderParked is "true" on a record that never failed but waits
	// behind an earlier record of its key (ordered modes).
	HeaderParked = HeaderPrefix + "parked"
	// HeaderRedrives counts how often a dead letter was redriven (set by
	// `orchestrix dlq redrive`, kept through retries and dead-lettering).
	HeaderRedrives = HeaderPrefix + "redrives"
	// HeaderRetries counts the delayed retries a record had (its rung on
	// the ladder of RetryDelays). It equals HeaderLevel except for records
	// that were parked (ordered modes), which climb levels unhandled.
	HeaderRetries = HeaderPrefix + "retries"
	// HeaderDeadKey is "true" on a record parked behind a dead-lettered
	// record of its key under OrderedDeadLetterRest: it is dead-lettered
	// unhandled when its turn comes.
	HeaderDeadKey = HeaderPrefix + "dead-key"
	// HeaderMarker marks a record of a retry topic that is not a record
	// but a note for the runtime (ordered modes), never handed to a
	// handler: "settled" says the record at HeaderOffset was
	// dead-lettered, "dead" also that the records of its key up to
	// HeaderDeadThrough are to be dead-lettered (OrderedDeadLetterRest).
	HeaderMarker = HeaderPrefix + "marker"
	// HeaderHop counts how often the record was produced into the retry
	// topics: of two copies of one record, the higher hop is the newer.
	HeaderHop         = HeaderPrefix + "hop"
	HeaderDeadThrough = HeaderPrefix + "dead-through"
	// HeaderStack is the stack of a handler's panic (reason "panic"),
	// truncated to MaxStackLength.
	HeaderStack = HeaderPrefix + "stack"
	// HeaderValueDropped is set on a dead letter whose value was left
	// out because the record with its dead-letter headers was larger
	// than the producer or the dead-letter topic takes: it holds the
	// value's size in bytes. The origin coordinates (HeaderTopic,
	// HeaderPartition, HeaderOffset) locate the full record while the
	// origin topic retains it.
	HeaderValueDropped = HeaderPrefix + "value-dropped"
)

// Marker kinds (HeaderMarker).
const (
	markerSettled = "settled"
	markerDead    = "dead"
)

// DeadLetterTopic returns the dead-letter topic of a topic for a group:
// "<topic>.<group>.dlq".
func DeadLetterTopic(topic, group string) string { return topic + "." + group + ".dlq" }

// meta is what the runtime knows about a record's history.
type meta struct {
	topic          string
	partition      int32
	offset         int64
	ts             time.Time
	attempts       int
	first, last    time.Time
	due            time.Time
	parked         bool
	redrives       int
	hasOriginTrail bool
	// retries is the record's rung on the retry ladder (-1: no header).
	retries     int
	hop         int
	deadKey     bool
	marker      string
	deadThrough int64
}

func headerTime(v string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}
	}
	return t
}

// readMeta reads r's history headers. A record without them (an origin
// record, or a malformed retry record) gets its own coordinates.
func readMeta(r *kgo.Record, originTopic string) meta {
	m := meta{topic: originTopic, partition: r.Partition, offset: r.Offset, ts: r.Timestamp, retries: -1, hop: -1, deadThrough: -1}
	for _, h := range r.Headers {
		if !strings.HasPrefix(h.Key, HeaderPrefix) {
			continue
		}
		v := string(h.Value)
		switch h.Key {
		case HeaderTopic:
			if v != "" {
				m.topic, m.hasOriginTrail = v, true
			}
		case HeaderPartition:
			if n, err := strconv.ParseInt(v, 10, 32); err == nil {
				m.partition = int32(n)
			}
		case HeaderOffset:
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				m.offset = n
			}
		case HeaderTimestamp:
			if t := headerTime(v); !t.IsZero() {
				m.ts = t
			}
		case HeaderAttempts:
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				m.attempts = n
			}
		case HeaderFirstFailure:
			m.first = headerTime(v)
		case HeaderLastFailure:
			m.last = headerTime(v)
		case HeaderDue:
			m.due = headerTime(v)
		case HeaderParked:
			m.parked = v == "true"
		case HeaderRedrives:
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				m.redrives = n
			}
		case HeaderRetries:
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				m.retries = n
			}
		case HeaderHop:
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				m.hop = n
			}
		case HeaderDeadKey:
			m.deadKey = v == "true"
		case HeaderMarker:
			m.marker = v
		case HeaderDeadThrough:
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				m.deadThrough = n
			}
		}
	}
	if originTopic == r.Topic {
		// An origin record: its own coordinates win over any trail a
		// redrive left behind.
		m.topic, m.partition, m.offset, m.ts = r.Topic, r.Partition, r.Offset, r.Timestamp
		m.retries, m.hop, m.parked, m.deadKey, m.marker = 0, 0, false, false, ""
	}
	return m
}

// rung returns how many delayed retries the record had: its header, or
// for records written without it, its level (0 for a parked record).
func (m meta) rung(level int) int {
	switch {
	case m.retries >= 0:
		return m.retries
	case m.parked:
		return 0
	}
	return level
}

// hopAt returns the record's hop count: its header, or its level for
// records written without it.
func (m meta) hopAt(level int) int {
	if m.hop >= 0 {
		return m.hop
	}
	return level
}

// derived builds the record r becomes in topic dest: the original key,
// value and headers (without HeaderPrefix ones) plus m as headers. The new
// headers' values share one buffer: a record takes this path on every
// failure, so it costs a few allocations, not one per header.
func (g *Group) derived(r *kgo.Record, m meta, dest string, cause error, level int) *kgo.Record {
	var msg, class, reason string
	var stack []byte
	if cause != nil {
		var pe *PanicError
		if errors.As(cause, &pe) {
			stack = pe.Stack
		}
		msg = cause.Error()
		if max := g.cfg.policy.MaxErrorLength; max > 0 && len(msg) > max {
			msg = truncate(msg, max) + "…"
		}
		class, reason = ErrorClass(cause), ErrorReason(cause)
	}
	const timeLen = len("2006-01-02T15:04:05.999999999Z")
	w := headerBuf{
		hs:  make([]kgo.RecordHeader, 0, len(r.Headers)+16),
		buf: make([]byte, 0, len(m.topic)+len(g.group)+len(msg)+len(class)+len(reason)+len(stack)+4*timeLen+80),
	}
	for _, h := range r.Headers {
		if !strings.HasPrefix(h.Key, HeaderPrefix) {
			w.hs = append(w.hs, h)
		}
	}
	w.str(HeaderTopic, m.topic)
	w.int(HeaderPartition, int64(m.partition))
	w.int(HeaderOffset, m.offset)
	w.time(HeaderTimestamp, m.ts)
	w.str(HeaderGroup, g.group)
	w.int(HeaderAttempts, int64(m.attempts))
	if !m.first.IsZero() {
		w.time(HeaderFirstFailure, m.first)
		w.time(HeaderLastFailure, m.last)
	}
	if cause != nil {
		w.str(HeaderErrorClass, class)
		w.str(HeaderReason, reason)
		w.str(HeaderError, msg)
	}
	if len(stack) > 0 {
		w.str(HeaderStack, string(stack))
	}
	if level > 0 {
		w.int(HeaderLevel, int64(level))
		w.time(HeaderDue, m.due)
	}
	if m.parked {
		w.str(HeaderParked, "true")
	}
	if m.redrives > 0 {
		w.int(HeaderRedrives, int64(m.redrives))
	}
	if level > 0 && m.retries >= 0 {
		w.int(HeaderRetries, int64(m.retries))
	}
	if level > 0 {
		w.int(HeaderHop, int64(max(m.hop, 0)+1))
	}
	if level > 0 && m.deadKey {
		w.str(HeaderDeadKey, "true")
	}
	return &kgo.Record{Topic: dest, Key: r.Key, Value: r.Value, Headers: w.hs, Partition: r.Partition}
}

// withoutValue returns the dead letter dl without its value, marked with
// HeaderValueDropped: a dead letter must never fail for its size, or the
// group would stop at the record for good.
func withoutValue(dl *kgo.Record) *kgo.Record {
	out := *dl
	out.Headers = append(slices.Clip(dl.Headers), kgo.RecordHeader{Key: HeaderValueDropped, Value: []byte(strconv.Itoa(len(dl.Value)))})
	out.Value = nil
	return &out
}

// tooLarge reports an error of a record larger than the producer or the
// topic takes.
func tooLarge(err error) bool {
	return kafkaerr.Is(err, kafkaerr.TooLarge)
}

// headerBuf appends headers whose values share one buffer. Values are
// sliced from the buffer with their capacity capped, so that a later
// append that outgrows it moves on to a new array and never writes into
// an earlier value.
type headerBuf struct {
	hs  []kgo.RecordHeader
	buf []byte
}

func (w *headerBuf) push(key string, start int) {
	w.hs = append(w.hs, kgo.RecordHeader{Key: key, Value: w.buf[start:len(w.buf):len(w.buf)]})
}

func (w *headerBuf) str(key, v string) {
	start := len(w.buf)
	w.buf = append(w.buf, v...)
	w.push(key, start)
}

func (w *headerBuf) int(key string, v int64) {
	start := len(w.buf)
	w.buf = strconv.AppendInt(w.buf, v, 10)
	w.push(key, start)
}

func (w *headerBuf) time(key string, t time.Time) {
	start := len(w.buf)
	w.buf = t.UTC().AppendFormat(w.buf, time.RFC3339Nano)
	w.push(key, start)
}

// marker builds a dead-letter marker for the record of key at origin
// offset m.offset, for retry level level of partition p.
func (g *Group) marker(key []byte, m meta, level int, p int32, kind string, deadThrough int64) *kgo.Record {
	headers := []kgo.RecordHeader{
		{Key: HeaderTopic, Value: []byte(m.topic)},
		{Key: HeaderPartition, Value: []byte(strconv.Itoa(int(m.partition)))},
		{Key: HeaderOffset, Value: []byte(strconv.FormatInt(m.offset, 10))},
		{Key: HeaderGroup, Value: []byte(g.group)},
		{Key: HeaderLevel, Value: []byte(strconv.Itoa(level))},
		{Key: HeaderMarker, Value: []byte(kind)},
	}
	if kind == markerDead {
		headers = append(headers, kgo.RecordHeader{Key: HeaderDeadThrough, Value: []byte(strconv.FormatInt(deadThrough, 10))})
	}
	return &kgo.Record{Topic: RetryTopic(m.topic, g.group, level), Partition: p, Key: key, Headers: headers}
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
