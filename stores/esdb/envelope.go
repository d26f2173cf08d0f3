package esdb

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strconv"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix"
)

// ErrForeignEvent marks an event under the store's subject prefix that the
// store did not write (no or an unknown envelope, or a version that is not
// its index in the subject).
var ErrForeignEvent = errors.New("esdb: event not written by this store")

// envelopeVersion is the version of the envelope layout.
const envelopeVersion = 1

// meta is the orchestrix metadata of a stored event: everything the
// CloudEvent ESDB stores has no place for, or assigns itself (ESDB picks
// its own id and time).
type meta struct {
	V             int               `json:"v"`
	Stream        string            `json:"stream"`
	Version       uint64            `json:"version"`
	ID            string            `json:"id"`
	Type          string            `json:"type"`
	Source        string            `json:"source,omitempty"`
	Subject       string            `json:"subject,omitempty"`
	Time          *time.Time        `json:"time,omitempty"`
	CorrelationID string            `json:"correlationId,omitempty"`
	CausationID   string            `json:"causationId,omitempty"`
	TraceParent   string            `json:"traceparent,omitempty"`
	Extensions    map[string]string `json:"extensions,omitempty"`
	CommandID     string            `json:"commandId,omitempty"`
	ContentType   string            `json:"contentType,omitempty"`
}

// envelope is the data of every event the store writes to a stream
// subject: the metadata, and the payload either as JSON (queryable with
// EventQL, validated by schemas) or as base64.
type envelope struct {
	Orchestrix    *meta           `json:"orchestrix"`
	Payload       json.RawMessage `json:"payload,omitempty"`
	PayloadBase64 *string         `json:"payloadBase64,omitempty"`
}

// isJSONType reports whether a media type is JSON (application/json or a
// +json suffix); an empty one counts as JSON.
func isJSONType(ct string) bool {
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// embedsAsJSON reports whether data can travel as JSON and come back byte
// for byte: the content type is JSON and data is already in the form the
// server writes (compact, with <, > and & escaped), so the server's
// re-encoding cannot change it.
func embedsAsJSON(contentType string, data []byte) bool {
	if !isJSONType(contentType) || !json.Valid(data) {
		return false
	}
	canon, err := json.Marshal(json.RawMessage(data))
	return err == nil && bytes.Equal(canon, data)
}

// payloadFields sets the payload of an envelope.
func payloadFields(contentType string, data []byte) (json.RawMessage, *string) {
	if embedsAsJSON(contentType, data) {
		return json.RawMessage(data), nil
	}
	b := base64.StdEncoding.EncodeToString(data)
	return nil, &b
}

// payloadBytes recovers a payload.
func payloadBytes(raw json.RawMessage, b64 *string) ([]byte, error) {
	if b64 != nil {
		d, err := base64.StdEncoding.DecodeString(*b64)
		if err != nil {
			return nil, fmt.Errorf("payloadBase64: %w", err)
		}
		return d, nil
	}
	if len(raw) == 0 {
		return nil, errors.New("envelope has no payload")
	}
	return append([]byte(nil), raw...), nil
}

// escapeSegment turns any string into one subject or event-type segment:
// ASCII letters, digits and "-" stay, every other byte becomes "_" and two
// upper-case hex digits ("_" itself is "_5F"). It is injective and
// reversible (unescapeSegment), and readable for common IDs.
func escapeSegment(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "_%02X", c)
		}
	}
	return b.String()
}

// unescapeSegment reverses escapeSegment.
func unescapeSegment(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '_' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("esdb: segment %q: truncated escape: %w", s, orchestrix.ErrInvalid)
		}
		h := s[i+1 : i+3]
		c, err := strconv.ParseUint(h, 16, 8)
		if err != nil || strings.ToUpper(h) != h {
			return "", fmt.Errorf("esdb: segment %q: bad escape %q: %w", s, h, orchestrix.ErrInvalid)
		}
		b.WriteByte(byte(c))
		i += 2
	}
	return b.String(), nil
}

// mapEventType returns the ESDB event type for an orchestrix type: the
// type itself when it already is a valid ESDB type (a reverse domain name
// such as "io.example.account-opened"), otherwise prefix + "." + the type
// with each dot-separated part escaped by escapeSegment (or the whole type
// escaped when it has empty parts). The orchestrix type is kept verbatim
// in the envelope, so the mapping only serves ESDB tooling (EventQL,
// schemas, read-event-types).
func mapEventType(prefix, t string) string {
	if ValidateEventType(t) == nil {
		return t
	}
	parts := strings.Split(t, ".")
	for i, p := range parts {
		if p == "" {
			return prefix + "." + escapeSegment(t)
		}
		parts[i] = escapeSegment(p)
	}
	return prefix + "." + strings.Join(parts, ".")
}
