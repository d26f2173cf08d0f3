// Package esdbtest is an in-process double of EventSourcingDB's HTTP API,
// the v2 API under /api/v2 (EventSourcingDB since 1.3) and the v1 API
// under /api/v1, for tests that must not depend on the real server, which
// ships only as a Docker image.
//
// NewServer starts it on 127.0.0.1 like httptest.NewServer:
//
//	srv := esdbtest.NewServer("secret")
//	defer srv.Close()
//	client, _ := esdb.NewClient(srv.URL, "secret")
//
// # What it implements
//
// Every endpoint of both APIs: ping (no auth), verify-api-token (v2:
// system/verify-token), write-events with the four preconditions
// (isSubjectPristine, isSubjectPopulated, isSubjectOnEventId,
// isEventQlQueryTrue; with the v2 API the three on a subject take
// options.recursive, which checks the nested subjects too), read-events
// (recursive, order, lowerBound, upperBound, fromLatestEvent),
// observe-events (heartbeat lines every HeartbeatInterval while idle),
// run-eventql-query, register-event-schema, read-subjects,
// read-event-types and read-event-type. Events are CloudEvents with
// sequential string IDs from "0", server time with nine fractional digits,
// and a SHA-256 hash chain (predecessorhash of event 0 is 64 zeros):
// version-2 hashes ("esdb:hash:v2:…"), or version 1 on a double made
// WithV1Only. Every answer carries "Server: EventSourcingDB/<version>".
//
// The v1 API answers with JSON documents and NDJSON lines {"type",
// "payload"}; errors are statuses with a text: 400 for bad requests, 409
// "state conflict: precondition failed" for a failed precondition (nothing
// is written), 404 for an unknown event type.
//
// The v2 API, as the official Python client 2.2 speaks it: reads use the
// HTTP method QUERY (MethodQuery), everything else POST, the ping GET;
// every answer is one envelope or NDJSON envelopes {"type", "data"} —
// event, row ({"value": …}), subject, eventType ({type, hasEvents,
// schema}), heartbeat —, and a finite stream ends with {"type":"end"}. A
// request body with unknown fields or that is not JSON answers 400 with a
// text; every other error is a 200 whose body is an error envelope
// {"type":"error","data":{"code","description","details"}}, the code being
// ErrorCodeBase + e.g. "precondition-violated". WithV1Only makes the
// double a server from before the v2 API: its paths answer 404.
//
// A missing or wrong token answers 401 in both APIs.
//
// Validation follows the rules the official clients enforced: a subject is
// "/" or slash-separated segments of [0-9A-Za-z_-]; an event type is a
// reverse domain name of at least three dot-separated segments of
// [0-9A-Za-z_-], the first at least two characters long; data is a JSON
// object; traceparent is W3C version 00. Schemas (register-event-schema)
// support the JSON Schema keywords type, properties, required,
// additionalProperties (false), items and enum; others are accepted and
// ignored.
//
// The EventQL subset it runs is described at RunEventQL.
//
// # Faults
//
// InjectFault makes the next matching request misbehave: drop the
// connection after N stream items, send an error line after N items (also
// after a 200, as the real server does when a stream fails late), send a
// malformed or unknown line, stall without heartbeats, omit the Server
// header, or answer with a chosen status. The double never panics on bad
// input.
package esdbtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultVersion is the version the double reports in its Server header:
// a server with the v2 API, which EventSourcingDB has since 1.3.
const DefaultVersion = "1.3.0-esdbtest"

// V1OnlyVersion is the version a double made WithV1Only reports: a server
// from before the v2 API.
const V1OnlyVersion = "1.2.0-esdbtest"

// DefaultHeartbeatInterval is how often observe-events sends a heartbeat
// line while no event arrives, like the real server.
const DefaultHeartbeatInterval = time.Second

// ZeroHash is the predecessor hash of the first event.
var ZeroHash = strings.Repeat("0", 64)

// TimeFormat is the layout of the time attribute of the events the double
// writes: UTC with exactly nine fractional digits, as the real server
// writes it (the official Python client relies on the fraction).
const TimeFormat = "2006-01-02T15:04:05.000000000Z07:00"

var (
	subjectRE     = regexp.MustCompile(`^/([0-9A-Za-z_-]+/)*([0-9A-Za-z_-]+/?)?$`)
	eventTypeRE   = regexp.MustCompile(`^[0-9A-Za-z_-]{2,}\.([0-9A-Za-z_-]+\.)+[0-9A-Za-z_-]+$`)
	traceparentRE = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)
)

// FaultKind says how an injected fault misbehaves.
type FaultKind int

// The kinds of faults.
const (
	// FaultDropConnection aborts the response after Fault.After stream
	// items: the connection closes without the end of the chunked body,
	// which a client sees as an unexpected EOF.
	FaultDropConnection FaultKind = iota + 1
	// FaultErrorLine sends {"type":"error","payload":{"error":Message}}
	// after Fault.After items and ends the stream. A finite stream with
	// fewer items gets the line at its end.
	FaultErrorLine
	// FaultMalformedLine sends a line that is not JSON after Fault.After
	// items and ends the stream.
	FaultMalformedLine
	// FaultUnknownLine sends a line of an undocumented type after
	// Fault.After items and ends the stream.
	FaultUnknownLine
	// FaultStall stops sending anything (heartbeats included) after
	// Fault.After items and holds the connection until the client leaves.
	FaultStall
	// FaultOmitServerHeader answers normally but without the Server header.
	FaultOmitServerHeader
	// FaultStatus answers Fault.Status with Fault.Body instead of handling
	// the request.
	FaultStatus
)

// Fault describes one injected misbehaviour.
type Fault struct {
	// Endpoint is the endpoint it applies to, e.g. "observe-events"; empty
	// matches every endpoint.
	Endpoint string
	Kind     FaultKind
	// After is the number of stream items (events, rows, subjects, event
	// types; not heartbeats) sent before the fault strikes.
	After int
	// Status and Body are used by FaultStatus (Status defaults to 500).
	Status int
	Body   string
	// Message is the error of FaultErrorLine (default "injected fault").
	Message string
	// Times is how many requests it applies to (default 1).
	Times int
}

type storedEvent struct {
	id      uint64
	subject string
	typ     string
	hash    string
	line    []byte         // the event's JSON, as sent
	fields  map[string]any // decoded for EventQL
}

// Server is the running double. It is safe for concurrent use.
type Server struct {
	// URL is the base URL, e.g. "http://127.0.0.1:41234".
	URL string

	token     string
	version   string
	heartbeat time.Duration
	now       func() time.Time
	srv       *httptest.Server

	mu       sync.Mutex
	events   []storedEvent
	schemas  map[string]*schemaEntry
	changed  chan struct{} // closed and replaced on every write
	faults   []*Fault
	requests map[string]int
	v1Only   bool
}

type schemaEntry struct {
	raw    json.RawMessage
	parsed *schema
}

// Option configures a Server.
type Option func(*Server)

// WithHeartbeatInterval sets how often observe-events sends heartbeats
// while idle (default DefaultHeartbeatInterval).
func WithHeartbeatInterval(d time.Duration) Option { return func(s *Server) { s.heartbeat = d } }

// WithVersion sets the version reported in the Server header.
func WithVersion(v string) Option { return func(s *Server) { s.version = v } }

// WithV1Only makes the double a server from before the v2 API (as
// EventSourcingDB 1.2): paths of the v2 API answer 404, it writes hashes of
// version 1, and it reports V1OnlyVersion unless WithVersion says
// otherwise.
func WithV1Only() Option { return func(s *Server) { s.v1Only = true } }

// WithClock sets the clock that stamps events (default time.Now).
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// NewServer starts a double on 127.0.0.1 that accepts token as its API
// token. Close it when done.
func NewServer(token string, opts ...Option) *Server {
	s := &Server{
		token:     token,
		version:   DefaultVersion,
		heartbeat: DefaultHeartbeatInterval,
		now:       time.Now,
		schemas:   map[string]*schemaEntry{},
		changed:   make(chan struct{}),
		requests:  map[string]int{},
	}
	for _, o := range opts {
		o(s)
	}
	if s.v1Only && s.version == DefaultVersion {
		s.version = V1OnlyVersion
	}
	if s.heartbeat <= 0 {
		s.heartbeat = DefaultHeartbeatInterval
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	return s
}

// Close shuts the double down, ending open streams.
func (s *Server) Close() {
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// CloseClientConnections drops every open connection, as a network failure
// or a server restart would; the stored events stay.
func (s *Server) CloseClientConnections() { s.srv.CloseClientConnections() }

// InjectFault queues a fault for the next request(s) to its endpoint.
func (s *Server) InjectFault(f Fault) {
	if f.Times <= 0 {
		f.Times = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// Requests returns how many requests reached the endpoint (e.g.
// "observe-events").
func (s *Server) Requests(endpoint string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[endpoint]
}

// EventCount returns the number of stored events.
func (s *Server) EventCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

func (s *Server) takeFault(endpoint string) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests[endpoint]++
	for i, f := range s.faults {
		if f.Endpoint != "" && f.Endpoint != endpoint {
			continue
		}
		f.Times--
		if f.Times <= 0 {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
		}
		c := *f
		return &c
	}
	return nil
}

func (s *Server) header(w http.ResponseWriter, f *Fault) {
	if f != nil && f.Kind == FaultOmitServerHeader {
		return
	}
	w.Header().Set("Server", "EventSourcingDB/"+s.version)
}

func (s *Server) authorized(r *http.Request) bool {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	return ok && strings.EqualFold(scheme, "Bearer") && tok == s.token
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func (s *Server) apiEvent(typ, subject string) map[string]any {
	return map[string]any{
		"specversion":     "1.0",
		"id":              "0",
		"time":            s.now().UTC().Format(TimeFormat),
		"source":          "https://www.eventsourcingdb.io",
		"subject":         subject,
		"type":            typ,
		"datacontenttype": "application/json",
		"data":            map[string]any{},
	}
}

func (s *Server) ping(c *call) {
	if c.v2 {
		c.single("event", s.apiEvent("io.eventsourcingdb.api.ping-received", "/api/v2/system/ping"))
		return
	}
	c.single("event", s.apiEvent("io.eventsourcingdb.api.ping-received", "/api/v1/ping"))
}

func (s *Server) verifyToken(c *call) {
	if c.v2 {
		c.single("event", s.apiEvent("io.eventsourcingdb.api.token-verified", "/api/v2/system/verify-token"))
		return
	}
	c.single("event", s.apiEvent("io.eventsourcingdb.api.api-token-verified", "/api/v1/verify-api-token"))
}

// ---- write-events ----

type candidate struct {
	Source      string          `json:"source"`
	Subject     string          `json:"subject"`
	Type        string          `json:"type"`
	Data        json.RawMessage `json:"data"`
	TraceParent *string         `json:"traceparent"`
	TraceState  *string         `json:"tracestate"`
}

type precondition struct {
	Type    string `json:"type"`
	Payload struct {
		Subject string `json:"subject"`
		EventID string `json:"eventId"`
		Query   string `json:"query"`
		// Options (v2 API only) make a precondition on a subject check
		// its nested subjects too.
		Options *struct {
			Recursive bool `json:"recursive"`
		} `json:"options"`
	} `json:"payload"`
}

// recursive reports whether a precondition checks nested subjects too.
func (p precondition) recursive() bool {
	return p.Payload.Options != nil && p.Payload.Options.Recursive
}

type cloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Time            string          `json:"time"`
	Source          string          `json:"source"`
	Subject         string          `json:"subject"`
	Type            string          `json:"type"`
	DataContentType string          `json:"datacontenttype"`
	Data            json.RawMessage `json:"data"`
	PredecessorHash string          `json:"predecessorhash"`
	Hash            string          `json:"hash"`
	TraceParent     *string         `json:"traceparent,omitempty"`
	TraceState      *string         `json:"tracestate,omitempty"`
	Signature       *string         `json:"signature"`
}

// hashV1 is the version-1 hash: the SHA-256 of the hex SHA-256 of the
// metadata line followed by the hex SHA-256 of the data as sent.
func hashV1(e *cloudEvent) string {
	meta := strings.Join([]string{e.SpecVersion, e.ID, e.PredecessorHash, e.Time, e.Source, e.Subject, e.Type, e.DataContentType}, "|")
	m := sha256.Sum256([]byte(meta))
	d := sha256.Sum256(e.Data)
	f := sha256.Sum256([]byte(hex.EncodeToString(m[:]) + hex.EncodeToString(d[:])))
	return hex.EncodeToString(f[:])
}

func validSubject(s string) bool   { return subjectRE.MatchString(s) }
func validEventType(t string) bool { return len(t) <= 1024 && eventTypeRE.MatchString(t) }

func (s *Server) writeEvents(c *call) {
	var req struct {
		Events        []candidate    `json:"events"`
		Preconditions []precondition `json:"preconditions"`
	}
	if err := c.decode(&req); err != nil {
		c.fail(http.StatusBadRequest, "", "%v", err)
		return
	}
	if len(req.Events) == 0 {
		c.fail(http.StatusBadRequest, codeEventsMissing, "events must contain at least one event candidate")
		return
	}
	datas := make([][]byte, len(req.Events))
	for i, ec := range req.Events {
		switch {
		case ec.Source == "":
			c.fail(http.StatusBadRequest, codeSourceMissing, "event candidate %d: source must not be empty", i)
			return
		case !validSubject(ec.Subject):
			c.fail(http.StatusBadRequest, codeSubjectMalformed, "event candidate %d: malformed subject '%s'", i, ec.Subject)
			return
		case !validEventType(ec.Type):
			c.fail(http.StatusBadRequest, codeEventTypeMalformed, "event candidate %d: malformed event type '%s'", i, ec.Type)
			return
		case ec.TraceParent != nil && !traceparentRE.MatchString(*ec.TraceParent):
			c.fail(http.StatusBadRequest, codeTraceparentMalformed, "event candidate %d: malformed traceparent '%s'", i, *ec.TraceParent)
			return
		}
		trimmed := bytes.TrimSpace(ec.Data)
		if len(trimmed) == 0 || trimmed[0] != '{' {
			c.fail(http.StatusBadRequest, codeDataMalformed, "event candidate %d: data must be a JSON object", i)
			return
		}
		// Marshalling a RawMessage compacts it and escapes <, > and &, as
		// the real server writes data.
		d, err := json.Marshal(json.RawMessage(trimmed))
		if err != nil {
			c.fail(http.StatusBadRequest, codeDataMalformed, "event candidate %d: malformed data: %v", i, err)
			return
		}
		datas[i] = d
	}
	for i, p := range req.Preconditions {
		if p.Payload.Options != nil && (!c.v2 || p.Type == "isEventQlQueryTrue") {
			c.fail(http.StatusBadRequest, codePreconditionUnknown, "precondition %d: %s takes no options", i, p.Type)
			return
		}
		switch p.Type {
		case "isSubjectPristine", "isSubjectPopulated":
			if !validSubject(p.Payload.Subject) {
				c.fail(http.StatusBadRequest, codeSubjectMalformed, "precondition %d: malformed subject '%s'", i, p.Payload.Subject)
				return
			}
		case "isSubjectOnEventId":
			if !validSubject(p.Payload.Subject) {
				c.fail(http.StatusBadRequest, codeSubjectMalformed, "precondition %d: malformed subject '%s'", i, p.Payload.Subject)
				return
			}
			if _, err := parseID(p.Payload.EventID); err != nil {
				c.fail(http.StatusBadRequest, codeEventIDMalformed, "precondition %d: malformed event ID '%s'", i, p.Payload.EventID)
				return
			}
		case "isEventQlQueryTrue":
			if _, err := parseQuery(p.Payload.Query); err != nil {
				c.fail(http.StatusBadRequest, codeQueryMalformed, "precondition %d: %v", i, err)
				return
			}
		default:
			c.fail(http.StatusBadRequest, codePreconditionUnknown, "precondition %d: unknown precondition type '%s'", i, p.Type)
			return
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range req.Preconditions {
		ok, err := s.holds(p)
		if err != nil {
			c.failErr(err)
			return
		}
		if !ok {
			c.fail(http.StatusConflict, codePreconditionViolated, "state conflict: precondition failed (precondition %d)", i)
			return
		}
	}
	for i, ec := range req.Events {
		if e := s.schemas[ec.Type]; e != nil {
			if err := e.parsed.validate(datas[i]); err != nil {
				c.fail(http.StatusConflict, codeEventSchemaViolated, "schema conflict: event candidate does not match schema: %v", err)
				return
			}
		}
	}
	now := s.now().UTC()
	out := make([]json.RawMessage, 0, len(req.Events))
	for i, ec := range req.Events {
		prev := ZeroHash
		if n := len(s.events); n > 0 {
			prev = s.events[n-1].hash
		}
		ev := &cloudEvent{
			SpecVersion:     "1.0",
			ID:              strconv.Itoa(len(s.events)),
			Time:            now.Format(TimeFormat),
			Source:          ec.Source,
			Subject:         ec.Subject,
			Type:            ec.Type,
			DataContentType: "application/json",
			Data:            datas[i],
			PredecessorHash: prev,
			TraceParent:     ec.TraceParent,
			TraceState:      ec.TraceState,
		}
		if s.v1Only {
			ev.Hash = hashV1(ev)
		} else {
			ev.Hash = hashV2(ev)
		}
		line, err := json.Marshal(ev)
		if err != nil {
			http.Error(c.w, "internal error", http.StatusInternalServerError)
			return
		}
		fields := map[string]any{}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.UseNumber()
		if err := dec.Decode(&fields); err != nil {
			http.Error(c.w, "internal error", http.StatusInternalServerError)
			return
		}
		fields["traceparent"] = fieldOrNil(ec.TraceParent)
		fields["tracestate"] = fieldOrNil(ec.TraceState)
		s.events = append(s.events, storedEvent{id: uint64(len(s.events)), subject: ec.Subject, typ: ec.Type, hash: ev.Hash, line: line, fields: fields})
		out = append(out, line)
	}
	close(s.changed)
	s.changed = make(chan struct{})
	if !c.v2 {
		writeJSON(c.w, out)
		return
	}
	st := c.stream()
	for _, line := range out {
		if !st.item("event", line) {
			return
		}
	}
	st.end()
}

func fieldOrNil(p *string) any {
	if p == nil {
		return nil
	}
	return *p
}

// holds evaluates one precondition; s.mu is held.
func (s *Server) holds(p precondition) (bool, error) {
	switch p.Type {
	case "isSubjectPristine":
		return s.lastOf(p.Payload.Subject, p.recursive()) < 0, nil
	case "isSubjectPopulated":
		return s.lastOf(p.Payload.Subject, p.recursive()) >= 0, nil
	case "isSubjectOnEventId":
		id, _ := parseID(p.Payload.EventID)
		last := s.lastOf(p.Payload.Subject, p.recursive())
		return last >= 0 && uint64(last) == id, nil
	case "isEventQlQueryTrue":
		q, err := parseQuery(p.Payload.Query)
		if err != nil {
			return false, err
		}
		var rows []any
		err = q.run(s.events, func(row any) bool {
			rows = append(rows, row)
			return true
		})
		if err != nil {
			return false, coded(codeQueryUnevaluable, "isEventQlQueryTrue: %v", err)
		}
		if len(rows) != 1 {
			return false, coded(codeQueryNotBoolean, "isEventQlQueryTrue: query must return exactly one boolean row, got %d rows", len(rows))
		}
		b, ok := rows[0].(bool)
		if !ok {
			return false, coded(codeQueryNotBoolean, "isEventQlQueryTrue: query must return a boolean, got %v", rows[0])
		}
		return b, nil
	}
	return false, coded(codePreconditionUnknown, "unknown precondition type '%s'", p.Type)
}

// lastOf returns the ID of the last event of the subject (and, when
// recursive, of its nested subjects), or -1.
func (s *Server) lastOf(subject string, recursive bool) int {
	for i := len(s.events) - 1; i >= 0; i-- {
		if matches(s.events[i].subject, subject, recursive) {
			return i
		}
	}
	return -1
}

func parseID(s string) (uint64, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("malformed event ID '%s'", s)
	}
	return strconv.ParseUint(s, 10, 63)
}

// ---- reading ----

type bound struct {
	ID   string `json:"id"`
	Type string `json:"type"`
}

type fromLatest struct {
	Subject          string `json:"subject"`
	Type             string `json:"type"`
	IfEventIsMissing string `json:"ifEventIsMissing"`
}

type readOptions struct {
	Recursive       bool        `json:"recursive"`
	Order           string      `json:"order"`
	LowerBound      *bound      `json:"lowerBound"`
	UpperBound      *bound      `json:"upperBound"`
	FromLatestEvent *fromLatest `json:"fromLatestEvent"`
}

type readRequest struct {
	Subject string      `json:"subject"`
	Options readOptions `json:"options"`
}

// matches reports whether an event's subject is the requested one or,
// when recursive, below it.
func matches(subject, want string, recursive bool) bool {
	if subject == want {
		return true
	}
	if !recursive {
		return false
	}
	if want == "/" {
		return true
	}
	return strings.HasPrefix(subject, strings.TrimSuffix(want, "/")+"/")
}

// lowest turns a lower bound into the first ID it admits.
func lowest(b *bound) (uint64, error) {
	id, err := parseID(b.ID)
	if err != nil {
		return 0, coded(codeEventIDMalformed, "lowerBound: %v", err)
	}
	switch b.Type {
	case "inclusive":
		return id, nil
	case "exclusive":
		return id + 1, nil
	}
	return 0, coded(codeBoundTypeUnknown, "lowerBound: type must be inclusive or exclusive, got '%s'", b.Type)
}

// highest turns an upper bound into the first ID it excludes.
func highest(b *bound) (uint64, error) {
	id, err := parseID(b.ID)
	if err != nil {
		return 0, coded(codeEventIDMalformed, "upperBound: %v", err)
	}
	switch b.Type {
	case "inclusive":
		return id + 1, nil
	case "exclusive":
		return id, nil
	}
	return 0, coded(codeBoundTypeUnknown, "upperBound: type must be inclusive or exclusive, got '%s'", b.Type)
}

func checkFromLatest(f *fromLatest, missing ...string) error {
	if !validSubject(f.Subject) {
		return coded(codeSubjectMalformed, "fromLatestEvent: malformed subject '%s'", f.Subject)
	}
	if !validEventType(f.Type) {
		return coded(codeEventTypeMalformed, "fromLatestEvent: malformed event type '%s'", f.Type)
	}
	for _, m := range missing {
		if f.IfEventIsMissing == m {
			return nil
		}
	}
	return coded(codeIfEventIsMissingUnknown, "fromLatestEvent: ifEventIsMissing must be one of %s, got '%s'", strings.Join(missing, ", "), f.IfEventIsMissing)
}

// latestOf returns the ID of the latest event with the subject and type,
// or -1; s.mu is held.
func (s *Server) latestOf(subject, typ string) int {
	for i := len(s.events) - 1; i >= 0; i-- {
		if s.events[i].subject == subject && s.events[i].typ == typ {
			return i
		}
	}
	return -1
}

// stream writes NDJSON lines and applies an injected fault.
type stream struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	r     *http.Request
	fault *Fault
	items int
	done  bool // a fault ended the stream
	v2    bool // envelopes {"type","data"}, ended by an end item
}

func newStream(w http.ResponseWriter, r *http.Request, f *Fault, v2 bool) *stream {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	st := &stream{w: w, rc: http.NewResponseController(w), r: r, fault: f, v2: v2}
	st.flush()
	return st
}

func (st *stream) flush() { _ = st.rc.Flush() }

func (st *stream) line(b []byte) bool {
	buf := make([]byte, 0, len(b)+1)
	if _, err := st.w.Write(append(append(buf, b...), '\n')); err != nil {
		return false
	}
	st.flush()
	return st.r.Context().Err() == nil
}

// strike applies the fault if it is due; it reports false when the stream
// must end.
func (st *stream) strike(final bool) bool {
	f := st.fault
	if f == nil || st.done {
		return !st.done
	}
	if st.items < f.After && !final {
		return true
	}
	if final && f.Kind != FaultErrorLine && f.Kind != FaultMalformedLine && f.Kind != FaultUnknownLine {
		return true
	}
	switch f.Kind {
	case FaultDropConnection:
		panic(http.ErrAbortHandler)
	case FaultErrorLine:
		msg := f.Message
		if msg == "" {
			msg = "injected fault"
		}
		st.line(errorItem(st.v2, "", msg))
	case FaultMalformedLine:
		st.line([]byte(`{"type":"event","` + st.key() + `":{"specversion":`))
	case FaultUnknownLine:
		st.line([]byte(`{"type":"surprise","` + st.key() + `":{}}`))
	case FaultStall:
		<-st.r.Context().Done()
	default:
		return true
	}
	st.done = true
	return false
}

// item sends one data line; it reports false when the stream must end.
func (st *stream) item(kind string, payload json.RawMessage) bool {
	if !st.strike(false) {
		return false
	}
	var b []byte
	var err error
	if st.v2 {
		b, err = json.Marshal(struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}{kind, payload})
	} else {
		b, err = json.Marshal(struct {
			Type    string          `json:"type"`
			Payload json.RawMessage `json:"payload"`
		}{kind, payload})
	}
	if err != nil {
		return false
	}
	st.items++
	return st.line(b)
}

// key is the key of an item's content: "payload" (v1) or "data" (v2).
func (st *stream) key() string {
	if st.v2 {
		return "data"
	}
	return "payload"
}

// heartbeat sends a heartbeat line.
func (st *stream) heartbeat() bool {
	if st.v2 {
		return st.line([]byte(`{"type":"heartbeat","data":{}}`))
	}
	return st.line([]byte(`{"type":"heartbeat"}`))
}

// end applies a fault still pending at the end of a finite stream; a v2
// stream that no fault ended then sends its end item.
func (st *stream) end() {
	if st.strike(true) && st.v2 {
		st.line([]byte(`{"type":"end","data":{}}`))
	}
}

func (s *Server) readEvents(c *call) {
	var req readRequest
	if err := c.decode(&req); err != nil {
		c.fail(http.StatusBadRequest, "", "%v", err)
		return
	}
	o := req.Options
	if !validSubject(req.Subject) {
		c.fail(http.StatusBadRequest, codeSubjectMalformed, "malformed subject '%s'", req.Subject)
		return
	}
	lo, hi := uint64(0), ^uint64(0)
	var err error
	if o.LowerBound != nil {
		if lo, err = lowest(o.LowerBound); err != nil {
			c.failErr(err)
			return
		}
	}
	if o.UpperBound != nil {
		if hi, err = highest(o.UpperBound); err != nil {
			c.failErr(err)
			return
		}
	}
	if o.Order != "" && o.Order != "chronological" && o.Order != "antichronological" {
		c.fail(http.StatusBadRequest, codeOrderUnknown, "order must be chronological or antichronological, got '%s'", o.Order)
		return
	}
	if o.FromLatestEvent != nil {
		if o.LowerBound != nil {
			c.fail(http.StatusBadRequest, codeSelectionConflicting, "lowerBound and fromLatestEvent are mutually exclusive")
			return
		}
		if err := checkFromLatest(o.FromLatestEvent, "read-nothing", "read-everything"); err != nil {
			c.failErr(err)
			return
		}
	}
	s.mu.Lock()
	n := len(s.events)
	snapshot := s.events[:n:n]
	if f := o.FromLatestEvent; f != nil {
		if at := s.latestOf(f.Subject, f.Type); at >= 0 {
			lo = uint64(at)
		} else if f.IfEventIsMissing == "read-nothing" {
			lo = ^uint64(0)
		}
	}
	s.mu.Unlock()
	if o.FromLatestEvent != nil && lo != ^uint64(0) && lo >= hi {
		c.fail(http.StatusConflict, codeRangeUnsatisfiable, "state conflict: fromLatestEvent results in an event ID greater than upperBound ID")
		return
	}

	st := c.stream()
	emit := func(e storedEvent) bool {
		if e.id < lo || e.id >= hi || !matches(e.subject, req.Subject, o.Recursive) {
			return true
		}
		return st.item("event", e.line)
	}
	if o.Order == "antichronological" {
		for i := len(snapshot) - 1; i >= 0; i-- {
			if !emit(snapshot[i]) {
				return
			}
		}
	} else {
		for _, e := range snapshot {
			if !emit(e) {
				return
			}
		}
	}
	st.end()
}

func (s *Server) observeEvents(c *call) {
	var req readRequest
	if err := c.decode(&req); err != nil {
		c.fail(http.StatusBadRequest, "", "%v", err)
		return
	}
	o := req.Options
	if !validSubject(req.Subject) {
		c.fail(http.StatusBadRequest, codeSubjectMalformed, "malformed subject '%s'", req.Subject)
		return
	}
	if o.Order != "" || o.UpperBound != nil {
		c.fail(http.StatusBadRequest, codeSelectionConflicting, "observe-events supports neither order nor upperBound")
		return
	}
	var lo uint64
	var err error
	if o.LowerBound != nil {
		if lo, err = lowest(o.LowerBound); err != nil {
			c.failErr(err)
			return
		}
	}
	waitFor := false
	if f := o.FromLatestEvent; f != nil {
		if o.LowerBound != nil {
			c.fail(http.StatusBadRequest, codeSelectionConflicting, "lowerBound and fromLatestEvent are mutually exclusive")
			return
		}
		if err := checkFromLatest(f, "wait-for-event", "read-everything"); err != nil {
			c.failErr(err)
			return
		}
		s.mu.Lock()
		if at := s.latestOf(f.Subject, f.Type); at >= 0 {
			lo = uint64(at)
		} else if f.IfEventIsMissing == "wait-for-event" {
			waitFor = true
		}
		s.mu.Unlock()
	}

	st := c.stream()
	next := lo
	heartbeat := time.NewTimer(s.heartbeat)
	defer heartbeat.Stop()
	for {
		s.mu.Lock()
		pending := s.events[min(next, uint64(len(s.events))):len(s.events)]
		changed := s.changed
		s.mu.Unlock()
		for _, e := range pending {
			next = e.id + 1
			if waitFor {
				f := o.FromLatestEvent
				if e.subject != f.Subject || e.typ != f.Type {
					continue
				}
				waitFor = false
			}
			if !matches(e.subject, req.Subject, o.Recursive) {
				continue
			}
			if !st.item("event", e.line) {
				return
			}
		}
		// A stall or drop due at this count strikes without waiting for
		// another event.
		if f := st.fault; f != nil && st.items >= f.After && (f.Kind == FaultStall || f.Kind == FaultDropConnection || f.Kind == FaultErrorLine || f.Kind == FaultMalformedLine || f.Kind == FaultUnknownLine) {
			st.strike(false)
			return
		}
		select {
		case <-c.r.Context().Done():
			return
		case <-changed:
		case <-heartbeat.C:
			if !st.heartbeat() {
				return
			}
			heartbeat.Reset(s.heartbeat)
		}
	}
}

func (s *Server) runQuery(c *call) {
	var req struct {
		Query string `json:"query"`
	}
	if err := c.decode(&req); err != nil {
		c.fail(http.StatusBadRequest, "", "%v", err)
		return
	}
	if strings.TrimSpace(req.Query) == "" {
		c.fail(http.StatusBadRequest, codeQueryMissing, "query is missing")
		return
	}
	q, err := parseQuery(req.Query)
	if err != nil {
		c.fail(http.StatusBadRequest, codeQueryMalformed, "%v", err)
		return
	}
	s.mu.Lock()
	n := len(s.events)
	snapshot := s.events[:n:n]
	s.mu.Unlock()
	st := c.stream()
	stopped := false
	err = q.run(snapshot, func(row any) bool {
		if c.v2 {
			row = map[string]any{"value": row}
		}
		b, err := json.Marshal(row)
		if err != nil || !st.item("row", b) {
			stopped = true
			return false
		}
		return true
	})
	if stopped {
		return
	}
	if err != nil {
		st.line(errorItem(c.v2, codeQueryUnevaluable, err.Error()))
		return
	}
	st.end()
}

func (s *Server) registerSchema(c *call) {
	var req struct {
		EventType string          `json:"eventType"`
		Schema    json.RawMessage `json:"schema"`
	}
	if c.v2 {
		var v2 struct {
			Type   string          `json:"type"`
			Schema json.RawMessage `json:"schema"`
		}
		if err := c.decode(&v2); err != nil {
			c.fail(http.StatusBadRequest, "", "%v", err)
			return
		}
		req.EventType, req.Schema = v2.Type, v2.Schema
	} else if err := c.decode(&req); err != nil {
		c.fail(http.StatusBadRequest, "", "%v", err)
		return
	}
	if !validEventType(req.EventType) {
		c.fail(http.StatusBadRequest, codeEventTypeMalformed, "invalid event type '%s'", req.EventType)
		return
	}
	sc, err := parseSchema(req.Schema)
	if err != nil {
		c.fail(http.StatusBadRequest, codeEventSchemaMalformed, "invalid schema: %v", err)
		return
	}
	raw, err := json.Marshal(req.Schema)
	if err != nil {
		c.fail(http.StatusBadRequest, codeEventSchemaMalformed, "invalid schema: %v", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.schemas[req.EventType]; ok {
		c.fail(http.StatusConflict, codeEventSchemaAlreadyRegistered, "schema conflict: schema already exists")
		return
	}
	for _, e := range s.events {
		if e.typ != req.EventType {
			continue
		}
		var ce cloudEvent
		if err := json.Unmarshal(e.line, &ce); err == nil {
			if err := sc.validate(ce.Data); err != nil {
				c.fail(http.StatusConflict, codeEventSchemaViolated, "schema conflict: event with ID %d does not match schema: %v", e.id, err)
				return
			}
		}
	}
	s.schemas[req.EventType] = &schemaEntry{raw: raw, parsed: sc}
	if !c.v2 {
		writeJSON(c.w, map[string]any{"eventType": req.EventType, "schema": json.RawMessage(raw)})
		return
	}
	b, err := json.Marshal(s.apiEvent("io.eventsourcingdb.api.event-schema-registered", "/api/v2/data/register-event-schema"))
	if err != nil {
		http.Error(c.w, "internal error", http.StatusInternalServerError)
		return
	}
	st := c.stream()
	if st.item("event", b) {
		st.end()
	}
}

func (s *Server) readSubjects(c *call) {
	var req struct {
		BaseSubject string `json:"baseSubject"`
	}
	recursive := true
	if c.v2 {
		var v2 struct {
			Subject string `json:"subject"`
			Options *struct {
				Recursive *bool `json:"recursive"`
			} `json:"options"`
		}
		if err := c.decode(&v2); err != nil {
			c.fail(http.StatusBadRequest, "", "%v", err)
			return
		}
		if v2.Options == nil || v2.Options.Recursive == nil {
			c.fail(http.StatusBadRequest, "", "options.recursive is required")
			return
		}
		req.BaseSubject, recursive = v2.Subject, *v2.Options.Recursive
	} else if err := c.decode(&req); err != nil {
		c.fail(http.StatusBadRequest, "", "%v", err)
		return
	}
	if !validSubject(req.BaseSubject) {
		c.fail(http.StatusBadRequest, codeSubjectMalformed, "malformed base subject '%s'", req.BaseSubject)
		return
	}
	s.mu.Lock()
	set := map[string]bool{}
	for _, e := range s.events {
		// Every subject with events and each of its ancestors.
		for sub := e.subject; ; {
			set[sub] = true
			if sub == "/" {
				break
			}
			i := strings.LastIndex(strings.TrimSuffix(sub, "/"), "/")
			if i <= 0 {
				sub = "/"
			} else {
				sub = sub[:i]
			}
		}
	}
	s.mu.Unlock()
	var subjects []string
	for sub := range set {
		if matches(sub, req.BaseSubject, recursive) {
			subjects = append(subjects, sub)
		}
	}
	sort.Strings(subjects)
	st := c.stream()
	for _, sub := range subjects {
		b, _ := json.Marshal(map[string]string{"subject": sub})
		if !st.item("subject", b) {
			return
		}
	}
	st.end()
}

type eventTypeInfo struct {
	EventType string          `json:"eventType"`
	IsPhantom bool            `json:"isPhantom"`
	Schema    json.RawMessage `json:"schema,omitempty"`
}

// wire is the item of the API version: v1 {eventType, isPhantom, schema},
// v2 {type, hasEvents, schema}.
func (t eventTypeInfo) wire(v2 bool) any {
	if !v2 {
		return t
	}
	return struct {
		Type      string          `json:"type"`
		HasEvents bool            `json:"hasEvents"`
		Schema    json.RawMessage `json:"schema,omitempty"`
	}{t.EventType, !t.IsPhantom, t.Schema}
}

// eventTypes lists the types of stored events and of registered schemas.
func (s *Server) eventTypes() []eventTypeInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	for _, e := range s.events {
		seen[e.typ] = true
	}
	for t := range s.schemas {
		if !seen[t] {
			seen[t] = false
		}
	}
	out := make([]eventTypeInfo, 0, len(seen))
	for t, has := range seen {
		info := eventTypeInfo{EventType: t, IsPhantom: !has}
		if sc := s.schemas[t]; sc != nil {
			info.Schema = sc.raw
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].EventType < out[j].EventType })
	return out
}

func (s *Server) readEventTypes(c *call) {
	var req struct{}
	if err := c.decode(&req); err != nil {
		c.fail(http.StatusBadRequest, "", "%v", err)
		return
	}
	st := c.stream()
	for _, t := range s.eventTypes() {
		b, _ := json.Marshal(t.wire(c.v2))
		if !st.item("eventType", b) {
			return
		}
	}
	st.end()
}

func (s *Server) readEventType(c *call) {
	var req struct {
		EventType string `json:"eventType"`
	}
	if c.v2 {
		var v2 struct {
			Type string `json:"type"`
		}
		if err := c.decode(&v2); err != nil {
			c.fail(http.StatusBadRequest, "", "%v", err)
			return
		}
		req.EventType = v2.Type
	} else if err := c.decode(&req); err != nil {
		c.fail(http.StatusBadRequest, "", "%v", err)
		return
	}
	if !validEventType(req.EventType) {
		c.fail(http.StatusBadRequest, codeEventTypeMalformed, "invalid event type '%s'", req.EventType)
		return
	}
	for _, t := range s.eventTypes() {
		if t.EventType == req.EventType {
			c.single("eventType", t.wire(c.v2))
			return
		}
	}
	c.fail(http.StatusNotFound, codeEventTypeUnknown, "event type '%s' not found", req.EventType)
}

// errNotBool is returned when a WHERE condition is not a boolean.
var errNotBool = errors.New("condition is not a boolean")
