package codec

import (
	"errors"
	"fmt"

	"github.com/orchestrix/orchestrix"
)

// Sentinel errors of this package. Match them with errors.Is.
var (
	// ErrAlreadyRegistered marks a second registration of a type name, a Go
	// type or an upcaster.
	ErrAlreadyRegistered = errors.New("codec: already registered")
	// ErrUpcastLoop marks an upcaster chain that returns to a type it has
	// already passed through. It is found on decode, inside a *DecodeError.
	ErrUpcastLoop = errors.New("codec: upcaster loop")
	// ErrUnknownSchema marks Avro data whose writer schema (its dataschema)
	// the registry does not hold. It is found inside a *DecodeError.
	ErrUnknownSchema = errors.New("codec: unknown writer schema")
)

// PayloadTooLargeError reports a payload above the registry's limit (see
// WithMaxPayload). It matches orchestrix.ErrInvalid.
type PayloadTooLargeError struct {
	// Size is the payload's length in bytes.
	Size int
	// Limit is the registry's limit in bytes.
	Limit int
}

// Error states size and limit.
func (e *PayloadTooLargeError) Error() string {
	return fmt.Sprintf("codec: payload is %d bytes, limit %d", e.Size, e.Limit)
}

// Is makes errors.Is(err, orchestrix.ErrInvalid) true.
func (e *PayloadTooLargeError) Is(target error) bool { return target == orchestrix.ErrInvalid }

// DecodeError reports a payload that cannot be decoded into its registered
// type: malformed bytes, a content type other than the registered one, an
// unknown writer schema, a failing or looping upcaster, an oversized
// payload. It matches orchestrix.ErrInvalid and unwraps to the cause.
type DecodeError struct {
	// Type is the message type being decoded (after any upcasting).
	Type string
	// Err is the cause.
	Err error
}

// Error names the type and the cause.
func (e *DecodeError) Error() string { return fmt.Sprintf("codec: decode %s: %v", e.Type, e.Err) }

// Unwrap returns the cause.
func (e *DecodeError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, orchestrix.ErrInvalid) true.
func (e *DecodeError) Is(target error) bool { return target == orchestrix.ErrInvalid }

// Reasons a record is poison, as found in PoisonError.Reason. They are
// stable and short, fit for a dead-letter header or a metric label.
const (
	ReasonNilRecord       = "nil-record"         // the record is nil
	ReasonMissingHeader   = "missing-header"     // a required header is absent
	ReasonDuplicateHeader = "duplicate-header"   // a CloudEvents header occurs twice
	ReasonBadHeader       = "bad-header"         // a header name or value is malformed
	ReasonBadSpecVersion  = "bad-specversion"    // ce_specversion is not "1.0"
	ReasonBadTime         = "bad-time"           // ce_time is not RFC 3339
	ReasonBadNumber       = "bad-number"         // a numeric extension is not a decimal uint64
	ReasonBadID           = "bad-id"             // id, type or aggregate id fails orchestrix.CheckID
	ReasonKeyMismatch     = "key-mismatch"       // the record key differs from ce_aggregateid
	ReasonInvalidEvent    = "invalid-cloudevent" // the CloudEvents SDK rejects the attributes
)

// PoisonError reports a Kafka record that can never become a valid event
// or command, however often it is retried; consumers send it to the dead
// letter topic with Reason. It matches orchestrix.ErrInvalid.
type PoisonError struct {
	// Reason is one of the Reason constants.
	Reason string
	// Err describes the problem.
	Err error
}

// Error states the reason and the problem.
func (e *PoisonError) Error() string {
	return "codec: poison record: " + e.Reason + ": " + e.Err.Error()
}

// Unwrap returns the underlying problem.
func (e *PoisonError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, orchestrix.ErrInvalid) true.
func (e *PoisonError) Is(target error) bool { return target == orchestrix.ErrInvalid }

func poison(reason, format string, args ...any) *PoisonError {
	return &PoisonError{Reason: reason, Err: fmt.Errorf(format, args...)}
}
