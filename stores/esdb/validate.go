package esdb

import (
	"fmt"
	"regexp"

	"github.com/orchestrix/orchestrix"
)

// MaxNameLength bounds subjects and event types checked by ValidateSubject
// and ValidateEventType.
const MaxNameLength = 4096

var (
	// A subject is "/" or an absolute path whose segments are
	// [0-9A-Za-z_-]+, optionally with a trailing slash: the rule the
	// official Go client enforced before sending.
	subjectRE = regexp.MustCompile(`^/([0-9A-Za-z_-]+/)*([0-9A-Za-z_-]+/?)?$`)
	// An event type is a reverse domain name of at least three segments of
	// [0-9A-Za-z_-]+, the first at least two characters long, e.g.
	// "io.example.account-opened".
	eventTypeRE = regexp.MustCompile(`^[0-9A-Za-z_-]{2,}\.([0-9A-Za-z_-]+\.)+[0-9A-Za-z_-]+$`)
	// traceparentRE is a W3C trace context of version 00.
	traceparentRE = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)
)

// ValidateSubject reports whether s is a subject EventSourcingDB accepts:
// it starts with "/" and continues with slash-separated segments of
// letters, digits, "_" and "-" (e.g. "/", "/books/42"). The error wraps
// orchestrix.ErrInvalid.
func ValidateSubject(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("esdb: subject is empty, it must start with \"/\": %w", orchestrix.ErrInvalid)
	case len(s) > MaxNameLength:
		return fmt.Errorf("esdb: subject is %d bytes, limit %d: %w", len(s), MaxNameLength, orchestrix.ErrInvalid)
	case s[0] != '/':
		return fmt.Errorf("esdb: subject %q does not start with \"/\": %w", s, orchestrix.ErrInvalid)
	case !subjectRE.MatchString(s):
		return fmt.Errorf("esdb: subject %q is malformed: segments are non-empty and hold only letters, digits, \"_\" and \"-\": %w", s, orchestrix.ErrInvalid)
	}
	return nil
}

// ValidateEventType reports whether t is an event type EventSourcingDB
// accepts: a reverse domain name of at least three dot-separated segments
// of letters, digits, "_" and "-", the first at least two characters long
// (e.g. "io.example.account-opened"). The error wraps orchestrix.ErrInvalid.
func ValidateEventType(t string) error {
	switch {
	case t == "":
		return fmt.Errorf("esdb: event type is empty: %w", orchestrix.ErrInvalid)
	case len(t) > MaxNameLength:
		return fmt.Errorf("esdb: event type is %d bytes, limit %d: %w", len(t), MaxNameLength, orchestrix.ErrInvalid)
	case !eventTypeRE.MatchString(t):
		return fmt.Errorf("esdb: event type %q is not a reverse domain name such as \"io.example.account-opened\": %w", t, orchestrix.ErrInvalid)
	}
	return nil
}

// ValidateTraceParent reports whether tp is a W3C traceparent of version
// 00, the only form EventSourcingDB stores. The error wraps
// orchestrix.ErrInvalid.
func ValidateTraceParent(tp string) error {
	if !traceparentRE.MatchString(tp) {
		return fmt.Errorf("esdb: traceparent %q is not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>): %w", tp, orchestrix.ErrInvalid)
	}
	return nil
}
