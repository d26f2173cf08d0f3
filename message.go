package orchestrix

import (
	"errors"
	"fmt"
	"time"
)

// Metadata is what every message carries besides its payload. The fields
// map onto CloudEvents 1.0 attributes and extensions:
// ID→id, Type→type, Source→source, Subject→subject, Time→time,
// CorrelationID→correlationid, CausationID→causationid,
// TraceParent→traceparent (W3C trace context).
type Metadata struct {
	// ID identifies the message; unique per Source. Commands use it for
	// deduplication.
	ID string
	// Type names the payload's type, e.g. "banking.Deposited".
	Type string
	// Source identifies the producing context, e.g. "/banking".
	Source string
	// Subject is the stream (aggregate) the message is about.
	Subject string
	// Time is when the message was created.
	Time time.Time
	// CorrelationID ties together every message of one business flow.
	CorrelationID string
	// CausationID is the ID of the message that caused this one.
	CausationID string
	// TraceParent is the W3C traceparent of the producing span, if any.
	TraceParent string
	// Extensions holds further CloudEvents extension attributes. Names are
	// lower-case alphanumerics as CloudEvents requires.
	Extensions map[string]string
}

// Event is a fact recorded in one stream. Version and Position are set by
// the store when the event is appended.
type Event struct {
	Metadata
	// StreamID is the stream (aggregate ID) the event belongs to.
	StreamID string
	// Version is the event's 1-based position within its stream.
	Version uint64
	// Position is the event's global sequence number in its store. It is
	// unique and increasing in assignment order; see the stores package
	// for the order in which a store's log is read.
	Position uint64
	// CommandID is the ID of the command whose handling produced the
	// event, if any. Stores use it to store a command's events once.
	CommandID string
	// ContentType is the media type of Data, e.g. "application/json".
	ContentType string
	// Data is the encoded payload.
	Data []byte
	// Payload is the decoded payload when a codec produced or decoded
	// the event; nil otherwise.
	Payload any
}

// Command asks one aggregate to do something.
type Command struct {
	Metadata
	// AggregateID is the aggregate (stream) the command is for. It is the
	// Kafka record key, so one aggregate's commands stay in order.
	AggregateID string
	// ContentType is the media type of Data.
	ContentType string
	// Data is the encoded payload.
	Data []byte
	// Payload is the decoded payload when a codec produced or decoded the
	// command; nil otherwise.
	Payload any
}

// Sentinel errors shared by every layer. Match them with errors.Is.
var (
	// ErrInvalid marks input that can never succeed, however often it is
	// retried (bad IDs, empty types, oversized payloads).
	ErrInvalid = errors.New("orchestrix: invalid input")
	// ErrUnknownType marks a message whose type no codec knows.
	ErrUnknownType = errors.New("orchestrix: unknown message type")
	// ErrRejected marks a command the aggregate refused (a business rule
	// or validation failed). It is an outcome, not a failure to retry.
	ErrRejected = errors.New("orchestrix: command rejected")
)

// MaxIDLength bounds stream IDs, message IDs and type names.
const MaxIDLength = 512

// CheckID reports whether id is usable as a stream ID, message ID or type
// name: non-empty, at most MaxIDLength bytes, no NUL or control bytes.
// The error wraps ErrInvalid and names what (e.g. "stream id").
func CheckID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%s is empty: %w", what, ErrInvalid)
	}
	if len(id) > MaxIDLength {
		return fmt.Errorf("%s is %d bytes, limit %d: %w", what, len(id), MaxIDLength, ErrInvalid)
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] == 0x7f {
			return fmt.Errorf("%s %q has a control byte at %d: %w", what, id, i, ErrInvalid)
		}
	}
	return nil
}
