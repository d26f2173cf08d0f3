package esdb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrPreconditionFailed: write-events refused the write because a
	// precondition did not hold (v1: 409; v2: an error with the code
	// precondition-violated); nothing was written.
	ErrPreconditionFailed = errors.New("esdb: precondition failed")
	// ErrUnauthorized: the server answered 401 (missing or wrong API token).
	ErrUnauthorized = errors.New("esdb: unauthorized")
	// ErrNotFound: the server answered 404 (e.g. an unknown event type).
	ErrNotFound = errors.New("esdb: not found")
	// ErrMissingServerHeader: the answer lacks "Server: EventSourcingDB/…",
	// so it does not come from EventSourcingDB (a proxy, a wrong port).
	ErrMissingServerHeader = errors.New("esdb: answer lacks the Server: EventSourcingDB/<version> header")
	// ErrMalformedResponse: the answer is not what the API documents (a
	// malformed NDJSON line, an unknown line type, a bad event).
	ErrMalformedResponse = errors.New("esdb: malformed response")
	// ErrIntegrity: an event's hash or its link to the previous event's
	// hash does not verify.
	ErrIntegrity = errors.New("esdb: hash chain does not verify")
	// ErrStalled: an observation received nothing, not even a heartbeat,
	// for longer than its stall timeout.
	ErrStalled = errors.New("esdb: stream stalled (no heartbeat)")
)

// ServerError is an answer with a status other than 200. Body is the
// server's text, trimmed and bounded.
type ServerError struct {
	// Endpoint is the API endpoint, e.g. "write-events".
	Endpoint string
	Status   int
	Body     string
}

// Error names the endpoint, status and body.
func (e *ServerError) Error() string {
	return fmt.Sprintf("esdb: %s: %d %s: %s", e.Endpoint, e.Status, http.StatusText(e.Status), e.Body)
}

// Is maps statuses onto the sentinels: 401 is ErrUnauthorized, 404
// ErrNotFound, and a 409 of write-events whose text reports a failed
// precondition is ErrPreconditionFailed.
func (e *ServerError) Is(target error) bool {
	switch target {
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrPreconditionFailed:
		return e.Status == http.StatusConflict && e.Endpoint == "write-events" &&
			strings.Contains(strings.ToLower(e.Body), "precondition")
	}
	return false
}

// StreamError is an error line ({"type":"error"}) the server sent in a
// stream after it had answered 200: the stream failed late and is
// incomplete.
type StreamError struct {
	Endpoint string
	Message  string
}

// Error names the endpoint and the server's message.
func (e *StreamError) Error() string {
	return fmt.Sprintf("esdb: %s: server reported an error in the stream: %s", e.Endpoint, e.Message)
}

// IntegrityError reports an event whose hash chain does not verify. It
// matches ErrIntegrity.
type IntegrityError struct {
	EventID string
	Reason  string
}

// Error names the event and the reason.
func (e *IntegrityError) Error() string {
	return fmt.Sprintf("esdb: event %s: %s", e.EventID, e.Reason)
}

// Is makes errors.Is(err, ErrIntegrity) true.
func (e *IntegrityError) Is(target error) bool { return target == ErrIntegrity }

// IsRetryable reports whether err is transient, so the same request may
// succeed later: a network failure, a dropped or stalled stream (also a v2
// stream that ends before its end item), an error line without a code
// after a 200, a status of 429, 502, 503 or 504, or a v2 error whose code
// says the condition passes (indexes rebuilding, server shutting down,
// restore in progress). Invalid input,
// authentication, failed preconditions and malformed answers are not.
func IsRetryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var se *ServerError
	if errors.As(err, &se) {
		switch se.Status {
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.retryable()
	}
	var st *StreamError
	if errors.As(err, &st) {
		return true
	}
	if errors.Is(err, ErrStalled) || errors.Is(err, errStreamEnded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return true
	}
	return errors.Is(err, errTransport)
}

// errTransport marks failures of the connection (refused, reset,
// unexpected EOF) as opposed to bad answers.
var errTransport = errors.New("esdb: transport failure")

// errStreamEnded: an observation's stream ended, which it never does on
// its own.
var errStreamEnded = errors.New("esdb: observe-events stream ended unexpectedly")
