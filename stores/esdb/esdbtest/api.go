package esdbtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// MethodQuery is the HTTP method with which the v2 API is read (RFC 10008).
const MethodQuery = "QUERY"

// ErrorCodeBase prefixes the codes of the errors the v2 API reports: a
// code is the URL of the documentation page that explains the error,
// e.g. ErrorCodeBase + "precondition-violated".
const ErrorCodeBase = "https://docs.eventsourcingdb.io/errors/"

// The error codes the double reports (the last part of the code's URL).
const (
	codeEventsMissing                = "events-missing"
	codeSourceMissing                = "source-missing"
	codeSubjectMalformed             = "subject-malformed"
	codeEventTypeMalformed           = "event-type-malformed"
	codeEventTypeUnknown             = "event-type-unknown"
	codeTraceparentMalformed         = "traceparent-malformed"
	codeDataMalformed                = "data-malformed"
	codeEventIDMalformed             = "event-id-malformed"
	codeBoundTypeUnknown             = "bound-type-unknown"
	codeOrderUnknown                 = "order-unknown"
	codeSelectionConflicting         = "selection-conflicting"
	codeIfEventIsMissingUnknown      = "if-event-is-missing-unknown"
	codeRangeUnsatisfiable           = "range-unsatisfiable"
	codePreconditionUnknown          = "precondition-unknown"
	codePreconditionViolated         = "precondition-violated"
	codeQueryMissing                 = "query-missing"
	codeQueryMalformed               = "query-malformed"
	codeQueryUnevaluable             = "query-unevaluable"
	codeQueryNotBoolean              = "query-not-boolean"
	codeEventSchemaMalformed         = "event-schema-malformed"
	codeEventSchemaViolated          = "event-schema-violated"
	codeEventSchemaAlreadyRegistered = "event-schema-already-registered"
)

// apiError is an error with the code the v2 API reports it with.
type apiError struct {
	code string
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func coded(code, format string, args ...any) error {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

// route is one endpoint of an API version.
type route struct {
	endpoint string // the name faults and Requests use (the v1 name)
	method   string
	handle   func(*call)
}

func (s *Server) v1Routes() map[string]route {
	return map[string]route{
		"ping":                  {"ping", http.MethodGet, s.ping},
		"verify-api-token":      {"verify-api-token", http.MethodPost, s.verifyToken},
		"write-events":          {"write-events", http.MethodPost, s.writeEvents},
		"read-events":           {"read-events", http.MethodPost, s.readEvents},
		"observe-events":        {"observe-events", http.MethodPost, s.observeEvents},
		"run-eventql-query":     {"run-eventql-query", http.MethodPost, s.runQuery},
		"register-event-schema": {"register-event-schema", http.MethodPost, s.registerSchema},
		"read-subjects":         {"read-subjects", http.MethodPost, s.readSubjects},
		"read-event-types":      {"read-event-types", http.MethodPost, s.readEventTypes},
		"read-event-type":       {"read-event-type", http.MethodPost, s.readEventType},
	}
}

func (s *Server) v2Routes() map[string]route {
	return map[string]route{
		"system/ping":                {"ping", http.MethodGet, s.ping},
		"system/verify-token":        {"verify-api-token", http.MethodPost, s.verifyToken},
		"data/write-events":          {"write-events", http.MethodPost, s.writeEvents},
		"data/register-event-schema": {"register-event-schema", http.MethodPost, s.registerSchema},
		"data/read-events":           {"read-events", MethodQuery, s.readEvents},
		"data/observe-events":        {"observe-events", MethodQuery, s.observeEvents},
		"data/run-eventql-query":     {"run-eventql-query", MethodQuery, s.runQuery},
		"data/read-subjects":         {"read-subjects", MethodQuery, s.readSubjects},
		"data/read-event-types":      {"read-event-types", MethodQuery, s.readEventTypes},
		"data/read-event-type":       {"read-event-type", MethodQuery, s.readEventType},
	}
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	var rt route
	ok, v2 := false, false
	if name, found := strings.CutPrefix(r.URL.Path, "/api/v1/"); found {
		rt, ok = s.v1Routes()[name]
	} else if name, found := strings.CutPrefix(r.URL.Path, "/api/v2/"); found && !s.v1Only {
		rt, ok = s.v2Routes()[name]
		v2 = true
	}
	if !ok {
		s.header(w, nil)
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	fault := s.takeFault(rt.endpoint)
	s.header(w, fault)
	if fault != nil && fault.Kind == FaultStatus {
		status := fault.Status
		if status == 0 {
			status = http.StatusInternalServerError
		}
		http.Error(w, fault.Body, status)
		return
	}
	if r.Method != rt.method {
		w.Header().Set("Allow", rt.method)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if rt.endpoint != "ping" && !s.authorized(r) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	rt.handle(&call{w: w, r: r, fault: fault, v2: v2})
}

// call is one request to an endpoint, in the API version it came in.
type call struct {
	w     http.ResponseWriter
	r     *http.Request
	fault *Fault
	v2    bool
}

// decode reads the JSON request body into v; an empty body decodes as {}.
// The v2 API refuses unknown fields.
func (c *call) decode(v any) error {
	body, err := io.ReadAll(io.LimitReader(c.r.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading request body: %w", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if c.v2 {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed request body: %w", err)
	}
	return nil
}

// fail answers an error. The v1 API answers status with a text. The v2 API
// answers a request it cannot decode (no code) with 400 and a text, and
// any other error with a 200 whose body is one error item:
// {"type":"error","data":{"code":…,"description":…,"details":{}}}.
func (c *call) fail(status int, code, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if !c.v2 || code == "" {
		http.Error(c.w, msg, status)
		return
	}
	c.w.Header().Set("Content-Type", "application/x-ndjson")
	c.w.WriteHeader(http.StatusOK)
	_, _ = c.w.Write(append(errorItem(true, code, msg), '\n'))
}

// failErr answers err with its code (400 with v1).
func (c *call) failErr(err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		c.fail(http.StatusBadRequest, ae.code, "%s", ae.msg)
		return
	}
	c.fail(http.StatusBadRequest, "", "%v", err)
}

// errorItem is an error line: {"type":"error","payload":{"error":msg}}
// for v1, {"type":"error","data":{"code","description","details"}} for v2.
func errorItem(v2 bool, code, msg string) []byte {
	var b []byte
	if v2 {
		data := map[string]any{"description": msg, "details": map[string]any{}}
		if code != "" {
			data["code"] = ErrorCodeBase + code
		}
		b, _ = json.Marshal(struct {
			Type string         `json:"type"`
			Data map[string]any `json:"data"`
		}{"error", data})
	} else {
		b, _ = json.Marshal(struct {
			Type    string            `json:"type"`
			Payload map[string]string `json:"payload"`
		}{"error", map[string]string{"error": msg}})
	}
	return b
}

// single answers one item: the v1 API sends v as a JSON document, the v2
// API as one envelope {"type": kind, "data": v}.
func (c *call) single(kind string, v any) {
	if c.v2 {
		v = struct {
			Type string `json:"type"`
			Data any    `json:"data"`
		}{kind, v}
	}
	writeJSON(c.w, v)
}

func (c *call) stream() *stream { return newStream(c.w, c.r, c.fault, c.v2) }

// hashV2 is the version-2 hash the server writes since 1.3:
// "esdb:hash:v2:" and the SHA-256 of the prefix, specversion, id,
// predecessorhash, time, source, subject, type, datacontenttype,
// traceparent and tracestate ("-" when absent), one per line, then the
// data as sent.
func hashV2(e *cloudEvent) string {
	dash := func(p *string) string {
		if p == nil {
			return "-"
		}
		return *p
	}
	const prefix = "esdb:hash:v2:"
	content := strings.Join([]string{prefix, e.SpecVersion, e.ID, e.PredecessorHash, e.Time, e.Source, e.Subject, e.Type,
		e.DataContentType, dash(e.TraceParent), dash(e.TraceState)}, "\n")
	h := sha256.New()
	h.Write([]byte(content))
	h.Write([]byte("\n"))
	h.Write(e.Data)
	return prefix + hex.EncodeToString(h.Sum(nil))
}
