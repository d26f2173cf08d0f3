package esdb

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix"
)

// ZeroHash is the predecessor hash of the first event (ID "0").
var ZeroHash = strings.Repeat("0", 64)

// hashV2Prefix starts hashes of version 2; version-1 hashes have no prefix.
const hashV2Prefix = "esdb:hash:v2:"

// EventCandidate is an event to write. The server adds the ID, time,
// hashes and content type.
type EventCandidate struct {
	// Source identifies the producer (a URI reference), e.g.
	// "https://library.example.com". Required.
	Source string
	// Subject is the event stream, e.g. "/books/42". See ValidateSubject.
	Subject string
	// Type is a reverse domain name, e.g. "io.example.book-acquired". See
	// ValidateEventType.
	Type string
	// Data is the payload, a JSON object.
	Data json.RawMessage
	// TraceParent and TraceState carry W3C trace context; optional.
	TraceParent string
	TraceState  string
}

// Validate checks what the server would reject, before sending. The error
// wraps orchestrix.ErrInvalid.
func (c EventCandidate) Validate() error {
	if c.Source == "" {
		return fmt.Errorf("esdb: event source is empty: %w", orchestrix.ErrInvalid)
	}
	if err := ValidateSubject(c.Subject); err != nil {
		return err
	}
	if err := ValidateEventType(c.Type); err != nil {
		return err
	}
	d := bytes.TrimSpace(c.Data)
	if len(d) == 0 || d[0] != '{' || !json.Valid(d) {
		return fmt.Errorf("esdb: data of a %s event must be a JSON object: %w", c.Type, orchestrix.ErrInvalid)
	}
	if c.TraceParent != "" {
		if err := ValidateTraceParent(c.TraceParent); err != nil {
			return err
		}
	}
	return nil
}

// Event is a stored event: a CloudEvent with EventSourcingDB's hash chain.
type Event struct {
	SpecVersion string
	// ID is the event's position in the store: "0", "1", … in write order,
	// unique across all subjects.
	ID string
	// Time is when the server wrote the event; RawTime is it as sent,
	// which the hash covers.
	Time    time.Time
	RawTime string
	Source  string
	Subject string
	Type    string
	// DataContentType is always "application/json".
	DataContentType string
	// Data is the payload exactly as the server sent it.
	Data json.RawMessage
	// Hash is the event's hash; PredecessorHash the hash of the event
	// before it (ZeroHash for the first).
	Hash            string
	PredecessorHash string
	// TraceParent, TraceState and Signature are empty when absent.
	TraceParent string
	TraceState  string
	Signature   string
}

// Position returns the ID as a number.
func (e Event) Position() (uint64, error) { return parseID(e.ID) }

type wireEvent struct {
	SpecVersion     *string         `json:"specversion"`
	ID              *string         `json:"id"`
	Time            *string         `json:"time"`
	Source          *string         `json:"source"`
	Subject         *string         `json:"subject"`
	Type            *string         `json:"type"`
	DataContentType *string         `json:"datacontenttype"`
	Data            json.RawMessage `json:"data"`
	Hash            *string         `json:"hash"`
	PredecessorHash *string         `json:"predecessorhash"`
	TraceParent     *string         `json:"traceparent"`
	TraceState      *string         `json:"tracestate"`
	Signature       *string         `json:"signature"`
}

func parseID(id string) (uint64, error) {
	if id == "" || strings.TrimLeft(id, "0123456789") != "" {
		return 0, fmt.Errorf("esdb: event ID %q is not a non-negative integer: %w", id, ErrMalformedResponse)
	}
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("esdb: event ID %q: %w: %w", id, ErrMalformedResponse, err)
	}
	return n, nil
}

// parseEvent decodes one event as the server sends it.
func parseEvent(raw []byte) (Event, uint64, error) {
	var w wireEvent
	if err := json.Unmarshal(raw, &w); err != nil {
		return Event{}, 0, fmt.Errorf("esdb: event: %w: %w", ErrMalformedResponse, err)
	}
	var missing []string
	req := func(name string, p *string) string {
		if p == nil {
			missing = append(missing, name)
			return ""
		}
		return *p
	}
	opt := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	e := Event{
		SpecVersion:     req("specversion", w.SpecVersion),
		ID:              req("id", w.ID),
		RawTime:         req("time", w.Time),
		Source:          req("source", w.Source),
		Subject:         req("subject", w.Subject),
		Type:            req("type", w.Type),
		DataContentType: req("datacontenttype", w.DataContentType),
		Data:            w.Data,
		Hash:            req("hash", w.Hash),
		PredecessorHash: req("predecessorhash", w.PredecessorHash),
		TraceParent:     opt(w.TraceParent),
		TraceState:      opt(w.TraceState),
		Signature:       opt(w.Signature),
	}
	if len(bytes.TrimSpace(w.Data)) == 0 {
		missing = append(missing, "data")
	}
	if len(missing) > 0 {
		return Event{}, 0, fmt.Errorf("esdb: event lacks %s: %w", strings.Join(missing, ", "), ErrMalformedResponse)
	}
	id, err := parseID(e.ID)
	if err != nil {
		return Event{}, 0, err
	}
	t, err := time.Parse(time.RFC3339Nano, e.RawTime)
	if err != nil {
		return Event{}, 0, fmt.Errorf("esdb: event %s: time %q: %w: %w", e.ID, e.RawTime, ErrMalformedResponse, err)
	}
	e.Time = t
	return e, id, nil
}

// ComputeHash returns the hash the server should have given the event, in
// the version its Hash field uses: version 1 (no prefix) hashes the hex
// SHA-256 of "specversion|id|predecessorhash|time|source|subject|type|
// datacontenttype" followed by the hex SHA-256 of the data as sent;
// version 2 ("esdb:hash:v2:" prefix) hashes the prefix and those fields plus
// traceparent and tracestate ("-" when absent) one per line, then the data.
func (e Event) ComputeHash() (string, error) {
	if rest, ok := strings.CutPrefix(e.Hash, "esdb:hash:"); ok {
		if !strings.HasPrefix(rest, "v2:") {
			v, _, _ := strings.Cut(rest, ":")
			return "", &IntegrityError{EventID: e.ID, Reason: fmt.Sprintf("unsupported hash version %q", v)}
		}
		dash := func(s string) string {
			if s == "" {
				return "-"
			}
			return s
		}
		content := strings.Join([]string{hashV2Prefix, e.SpecVersion, e.ID, e.PredecessorHash, e.RawTime,
			e.Source, e.Subject, e.Type, e.DataContentType, dash(e.TraceParent), dash(e.TraceState)}, "\n")
		h := sha256.New()
		h.Write([]byte(content))
		h.Write([]byte("\n"))
		h.Write(e.Data)
		return hashV2Prefix + hex.EncodeToString(h.Sum(nil)), nil
	}
	meta := strings.Join([]string{e.SpecVersion, e.ID, e.PredecessorHash, e.RawTime, e.Source, e.Subject, e.Type, e.DataContentType}, "|")
	m := sha256.Sum256([]byte(meta))
	d := sha256.Sum256(e.Data)
	f := sha256.Sum256([]byte(hex.EncodeToString(m[:]) + hex.EncodeToString(d[:])))
	return hex.EncodeToString(f[:]), nil
}

// VerifyHash checks the event's own hash. The error is an
// *IntegrityError.
func (e Event) VerifyHash() error {
	want, err := e.ComputeHash()
	if err != nil {
		return err
	}
	if want != e.Hash {
		return &IntegrityError{EventID: e.ID, Reason: fmt.Sprintf("hash %s does not match its content (computed %s)", e.Hash, want)}
	}
	return nil
}

// chain verifies a sequence of events read in order: each event's own hash,
// the zero predecessor of event 0, and the link between events whose IDs
// are adjacent (reading one subject skips other subjects' events, whose
// links cannot be checked without them).
type chain struct {
	has      bool
	prevID   uint64
	prevHash string
	prevPred string
}

func (c *chain) check(e Event, id uint64) error {
	if err := e.VerifyHash(); err != nil {
		return err
	}
	if id == 0 && e.PredecessorHash != ZeroHash {
		return &IntegrityError{EventID: e.ID, Reason: "the first event's predecessor hash is not zero"}
	}
	if c.has {
		switch {
		case id == c.prevID:
			return &IntegrityError{EventID: e.ID, Reason: "event repeated in the stream"}
		case id == c.prevID+1 && e.PredecessorHash != c.prevHash:
			return &IntegrityError{EventID: e.ID, Reason: fmt.Sprintf("predecessor hash %s is not the hash %s of event %d", e.PredecessorHash, c.prevHash, c.prevID)}
		case id+1 == c.prevID && c.prevPred != e.Hash:
			return &IntegrityError{EventID: strconv.FormatUint(c.prevID, 10), Reason: fmt.Sprintf("predecessor hash %s is not the hash %s of event %d", c.prevPred, e.Hash, id)}
		}
	}
	c.has, c.prevID, c.prevHash, c.prevPred = true, id, e.Hash, e.PredecessorHash
	return nil
}
