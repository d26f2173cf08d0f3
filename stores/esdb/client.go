package esdb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/redact"
)

// DefaultMaxLineSize bounds one NDJSON line (one event) and one JSON
// answer read by a Client.
const DefaultMaxLineSize = 64 << 20

// maxErrorBody bounds the text of a non-200 answer kept in a ServerError.
const maxErrorBody = 4 << 10

// Client talks to EventSourcingDB's HTTP API: the v2 API when the server
// offers it (EventSourcingDB 1.3 and later), else the v1 API (see API and
// WithAPI); both expose the same calls. It is safe for concurrent use and
// holds no connection of its own: the *http.Client (injected with
// WithHTTPClient, or a private one) pools them.
//
// Every call takes a context first; cancelling it aborts the request and
// ends a stream. Streams are iter.Seq2 values: they send the request when
// ranged over, hold at most one line in memory, and close the connection
// when the loop ends early. Every event read is checked against its hash
// and, where its neighbour was read too, the hash chain.
type Client struct {
	base    *url.URL
	token   string
	http    *http.Client
	maxLine int
	fixed   API // WithAPI; "" asks the server

	apiMu sync.Mutex
	api   API // the server's answer, "" until known
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithHTTPClient sets the HTTP client (default: a private client with a
// connection pool sized for concurrent writers and no overall timeout,
// since observations last indefinitely; use contexts for deadlines).
func WithHTTPClient(hc *http.Client) ClientOption { return func(c *Client) { c.http = hc } }

// WithMaxLineSize bounds one NDJSON line or JSON answer (default
// DefaultMaxLineSize); a longer one fails with ErrMalformedResponse.
func WithMaxLineSize(n int) ClientOption { return func(c *Client) { c.maxLine = n } }

// WithAPI makes the client speak one API version without asking the
// server which it offers (default: ask, see Client.API).
func WithAPI(v API) ClientOption { return func(c *Client) { c.fixed = v } }

// NewClient returns a client for the server at baseURL (e.g.
// "http://localhost:3000") with the API token. It reports every problem
// with its arguments at once; the errors wrap orchestrix.ErrInvalid.
func NewClient(baseURL, apiToken string, opts ...ClientOption) (*Client, error) {
	c := &Client{token: apiToken, maxLine: DefaultMaxLineSize}
	for _, o := range opts {
		o(c)
	}
	var errs []error
	u, err := url.Parse(baseURL)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("base URL %q: %w", redact.URL(baseURL), redact.Error(err)))
	case u.Scheme != "http" && u.Scheme != "https":
		errs = append(errs, fmt.Errorf("base URL %q: scheme must be http or https", redact.URL(baseURL)))
	case u.Host == "":
		errs = append(errs, fmt.Errorf("base URL %q has no host", redact.URL(baseURL)))
	}
	if apiToken == "" {
		errs = append(errs, errors.New("API token is empty"))
	}
	if strings.ContainsAny(apiToken, "\r\n") {
		errs = append(errs, errors.New("API token contains a line break"))
	}
	if c.maxLine <= 0 {
		errs = append(errs, fmt.Errorf("max line size %d is not positive", c.maxLine))
	}
	if c.fixed != "" && c.fixed != APIv1 && c.fixed != APIv2 {
		errs = append(errs, fmt.Errorf("API %q is neither v1 nor v2", c.fixed))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("esdb: new client: %w: %w", orchestrix.ErrInvalid, errors.Join(errs...))
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	c.base = u
	if c.http == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 64
		c.http = &http.Client{Transport: t}
	}
	return c, nil
}

// URL returns the base URL.
func (c *Client) URL() string { return c.base.String() }

// do sends a request to the endpoint (named as in the v1 API) in the API
// version the server speaks and returns the response of a 200 from
// EventSourcingDB with that version; anything else is an error and the
// body is closed. body may depend on the version.
func (c *Client) do(ctx context.Context, name string, body func(API) any, auth bool) (*http.Response, API, error) {
	api, err := c.API(ctx)
	if err != nil {
		return nil, "", err
	}
	resp, err := c.send(ctx, api, name, body(api), auth)
	return resp, api, err
}

func (c *Client) send(ctx context.Context, api API, name string, body any, auth bool) (*http.Response, error) {
	endpoint, method := c.route(api, name)
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("esdb: %s: encode request: %w", name, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, endpoint, rd)
	if err != nil {
		return nil, fmt.Errorf("esdb: %s: %w", name, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("esdb: %s: %w", name, context.Cause(ctx))
		}
		return nil, fmt.Errorf("esdb: %s: %w: %w", name, errTransport, err)
	}
	if !strings.HasPrefix(resp.Header.Get("Server"), "EventSourcingDB/") {
		// Not EventSourcingDB: the body may be anything, even endless.
		_ = resp.Body.Close()
		return nil, fmt.Errorf("esdb: %s: status %d, Server header %q: %w", name, resp.StatusCode, resp.Header.Get("Server"), ErrMissingServerHeader)
	}
	if api == APIv2 && (resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed) {
		c.forget() // the server no longer offers the v2 API: ask again next time
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		drain(resp.Body)
		return nil, &ServerError{Endpoint: name, Status: resp.StatusCode, Body: strings.TrimSpace(string(b))}
	}
	return resp, nil
}

// drain discards a little of what is left so the connection can be
// reused, then closes the body.
func drain(rc io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rc, 64<<10))
	_ = rc.Close()
}

// readJSON decodes a whole JSON answer into v.
func (c *Client) readJSON(ctx context.Context, name string, resp *http.Response, v any) error {
	defer drain(resp.Body)
	b, err := io.ReadAll(io.LimitReader(resp.Body, int64(c.maxLine)+1))
	if err != nil {
		return c.readErr(ctx, name, err)
	}
	if len(b) > c.maxLine {
		return fmt.Errorf("esdb: %s: answer exceeds %d bytes: %w", name, c.maxLine, ErrMalformedResponse)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("esdb: %s: %w: %w (answer %s)", name, ErrMalformedResponse, err, snippet(b))
	}
	return nil
}

// readErr classifies an error while reading a body.
func (c *Client) readErr(ctx context.Context, name string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("esdb: %s: %w", name, context.Cause(ctx))
	}
	return fmt.Errorf("esdb: %s: %w: %w", name, errTransport, err)
}

func snippet(b []byte) string {
	const n = 120
	if len(b) > n {
		return fmt.Sprintf("%q…", b[:n])
	}
	return fmt.Sprintf("%q", b)
}

// apiEvent is the CloudEvent with which ping and verify-api-token answer.
type apiEvent struct {
	SpecVersion string `json:"specversion"`
	Type        string `json:"type"`
}

func (c *Client) expectAPIEvent(ctx context.Context, name string, want map[API]string, body any, auth bool) error {
	resp, api, err := c.do(ctx, name, func(API) any { return body }, auth)
	if err != nil {
		return err
	}
	var ev apiEvent
	if err := c.readEnvelope(ctx, api, name, resp, "event", &ev); err != nil {
		return err
	}
	if want := want[api]; ev.Type != want || ev.SpecVersion == "" {
		return fmt.Errorf("esdb: %s: answer has type %q, want %q: %w", name, ev.Type, want, ErrMalformedResponse)
	}
	return nil
}

// Ping checks that the server is reachable and is EventSourcingDB. It
// sends no token.
func (c *Client) Ping(ctx context.Context) error {
	return c.expectAPIEvent(ctx, "ping", map[API]string{APIv1: "io.eventsourcingdb.api.ping-received", APIv2: "io.eventsourcingdb.api.ping-received"}, nil, false)
}

// VerifyAPIToken checks the API token; a wrong one fails with an error
// matching ErrUnauthorized.
func (c *Client) VerifyAPIToken(ctx context.Context) error {
	return c.expectAPIEvent(ctx, "verify-api-token", map[API]string{APIv1: "io.eventsourcingdb.api.api-token-verified", APIv2: "io.eventsourcingdb.api.token-verified"}, struct{}{}, true)
}

// WriteEvents writes the events atomically, in order, if every
// precondition holds, and returns them as stored (IDs, times, hashes). A
// failed precondition returns an error matching ErrPreconditionFailed and
// writes nothing. Candidates and preconditions are validated before
// sending; those errors wrap orchestrix.ErrInvalid.
func (c *Client) WriteEvents(ctx context.Context, events []EventCandidate, preconditions ...Precondition) ([]Event, error) {
	var errs []error
	if len(events) == 0 {
		errs = append(errs, fmt.Errorf("esdb: write-events: no events: %w", orchestrix.ErrInvalid))
	}
	wireEvents := make([]map[string]any, len(events))
	for i, e := range events {
		if err := e.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("event %d: %w", i, err))
			continue
		}
		w := map[string]any{"source": e.Source, "subject": e.Subject, "type": e.Type, "data": json.RawMessage(e.Data)}
		if e.TraceParent != "" {
			w["traceparent"] = e.TraceParent
		}
		if e.TraceState != "" {
			w["tracestate"] = e.TraceState
		}
		wireEvents[i] = w
	}
	wirePre := make([]map[string]any, 0, len(preconditions))
	recursive := false
	for i, p := range preconditions {
		if err := p.validate(); err != nil {
			errs = append(errs, fmt.Errorf("precondition %d: %w", i, err))
			continue
		}
		recursive = recursive || p.recursive
		wirePre = append(wirePre, p.wire())
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("esdb: write-events: %w", errors.Join(errs...))
	}
	api, err := c.API(ctx)
	if err != nil {
		return nil, err
	}
	if recursive && api != APIv2 {
		return nil, fmt.Errorf("esdb: write-events: a recursive precondition: %w", ErrUnsupported)
	}
	body := map[string]any{"events": wireEvents}
	if len(wirePre) > 0 || api == APIv1 {
		body["preconditions"] = wirePre
	}
	resp, err := c.send(ctx, api, "write-events", body, true)
	if err != nil {
		return nil, err
	}
	var raw []json.RawMessage
	if api == APIv2 {
		err = c.lines(ctx, api, "write-events", resp, nil, func(l line) (bool, error) {
			if l.Type != "event" {
				return false, unexpected("write-events", l)
			}
			raw = append(raw, l.Payload)
			return true, nil
		})
	} else {
		err = c.readJSON(ctx, "write-events", resp, &raw)
	}
	if err != nil {
		return nil, err
	}
	if len(raw) != len(events) {
		return nil, fmt.Errorf("esdb: write-events: wrote %d events, answer lists %d: %w", len(events), len(raw), ErrMalformedResponse)
	}
	out := make([]Event, len(raw))
	var ch chain
	for i, r := range raw {
		e, id, err := parseEvent(r)
		if err != nil {
			return nil, fmt.Errorf("esdb: write-events: %w", err)
		}
		if err := ch.check(e, id); err != nil {
			return nil, fmt.Errorf("esdb: write-events: %w", err)
		}
		out[i] = e
	}
	return out, nil
}

// RegisterEventSchema registers a JSON Schema (a JSON object) for an event
// type; the server then rejects events of the type that do not match it.
// A second schema for the same type is refused with a 409 *ServerError.
func (c *Client) RegisterEventSchema(ctx context.Context, eventType string, schema json.RawMessage) error {
	if err := ValidateEventType(eventType); err != nil {
		return fmt.Errorf("esdb: register-event-schema: %w", err)
	}
	s := bytes.TrimSpace(schema)
	if len(s) == 0 || s[0] != '{' || !json.Valid(s) {
		return fmt.Errorf("esdb: register-event-schema: schema of %s is not a JSON object: %w", eventType, orchestrix.ErrInvalid)
	}
	resp, api, err := c.do(ctx, "register-event-schema", func(api API) any {
		if api == APIv2 {
			return map[string]any{"type": eventType, "schema": json.RawMessage(s)}
		}
		return map[string]any{"eventType": eventType, "schema": json.RawMessage(s)}
	}, true)
	if err != nil {
		return err
	}
	if api != APIv2 {
		drain(resp.Body)
		return nil
	}
	registered := false
	err = c.lines(ctx, api, "register-event-schema", resp, nil, func(l line) (bool, error) {
		var ev apiEvent
		if l.Type != "event" || json.Unmarshal(l.Payload, &ev) != nil || ev.Type != "io.eventsourcingdb.api.event-schema-registered" {
			return false, unexpected("register-event-schema", l)
		}
		registered = true
		return true, nil
	})
	if err == nil && !registered {
		err = fmt.Errorf("esdb: register-event-schema: the answer does not confirm the registration: %w", ErrMalformedResponse)
	}
	return err
}

// wireEventType is an event type as v1 ({eventType, isPhantom, schema})
// or v2 ({type, hasEvents, schema}) sends it.
type wireEventType struct {
	EventType *string         `json:"eventType"`
	IsPhantom *bool           `json:"isPhantom"`
	Type      *string         `json:"type"`
	HasEvents *bool           `json:"hasEvents"`
	Schema    json.RawMessage `json:"schema"`
}

func (w wireEventType) parse(api API) (EventType, error) {
	if api == APIv2 {
		if w.Type == nil || w.HasEvents == nil {
			return EventType{}, fmt.Errorf("esdb: event type lacks type or hasEvents: %w", ErrMalformedResponse)
		}
		phantom := !*w.HasEvents
		w.EventType, w.IsPhantom = w.Type, &phantom
	}
	if w.EventType == nil || w.IsPhantom == nil {
		return EventType{}, fmt.Errorf("esdb: event type lacks eventType or isPhantom: %w", ErrMalformedResponse)
	}
	et := EventType{EventType: *w.EventType, IsPhantom: *w.IsPhantom}
	if s := bytes.TrimSpace(w.Schema); len(s) > 0 && !bytes.Equal(s, []byte("null")) {
		et.Schema = append([]byte(nil), s...)
	}
	return et, nil
}

// ReadEventType describes one event type; an unknown one fails with an
// error matching ErrNotFound.
func (c *Client) ReadEventType(ctx context.Context, eventType string) (EventType, error) {
	if err := ValidateEventType(eventType); err != nil {
		return EventType{}, fmt.Errorf("esdb: read-event-type: %w", err)
	}
	resp, api, err := c.do(ctx, "read-event-type", func(api API) any {
		if api == APIv2 {
			return map[string]string{"type": eventType}
		}
		return map[string]string{"eventType": eventType}
	}, true)
	if err != nil {
		return EventType{}, err
	}
	var w wireEventType
	if err := c.readEnvelope(ctx, api, "read-event-type", resp, "eventType", &w); err != nil {
		return EventType{}, err
	}
	et, err := w.parse(api)
	if err != nil {
		return EventType{}, fmt.Errorf("esdb: read-event-type: %w", err)
	}
	return et, nil
}
