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

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/redact"
)

// DefaultMaxLineSize bounds one NDJSON line (one event) and one JSON
// answer read by a Client.
const DefaultMaxLineSize = 64 << 20

// maxErrorBody bounds the text of a non-200 answer kept in a ServerError.
const maxErrorBody = 4 << 10

// Client talks to EventSourcingDB's HTTP API (v1). It is safe for
// concurrent use and holds no connection of its own: the *http.Client
// (injected with WithHTTPClient, or a private one) pools them.
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

func (c *Client) endpoint(name string) string { return c.base.String() + "/api/v1/" + name }

// do sends a request and returns the response of a 200 from
// EventSourcingDB; anything else is an error and the body is closed.
func (c *Client) do(ctx context.Context, method, name string, body any, auth bool) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("esdb: %s: encode request: %w", name, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.endpoint(name), rd)
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

func (c *Client) expectAPIEvent(ctx context.Context, name, method, want string, body any, auth bool) error {
	resp, err := c.do(ctx, method, name, body, auth)
	if err != nil {
		return err
	}
	var ev apiEvent
	if err := c.readJSON(ctx, name, resp, &ev); err != nil {
		return err
	}
	if ev.Type != want || ev.SpecVersion == "" {
		return fmt.Errorf("esdb: %s: answer has type %q, want %q: %w", name, ev.Type, want, ErrMalformedResponse)
	}
	return nil
}

// Ping checks that the server is reachable and is EventSourcingDB. It
// sends no token.
func (c *Client) Ping(ctx context.Context) error {
	return c.expectAPIEvent(ctx, "ping", http.MethodGet, "io.eventsourcingdb.api.ping-received", nil, false)
}

// VerifyAPIToken checks the API token; a wrong one fails with an error
// matching ErrUnauthorized.
func (c *Client) VerifyAPIToken(ctx context.Context) error {
	return c.expectAPIEvent(ctx, "verify-api-token", http.MethodPost, "io.eventsourcingdb.api.api-token-verified", struct{}{}, true)
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
	for i, p := range preconditions {
		if err := p.validate(); err != nil {
			errs = append(errs, fmt.Errorf("precondition %d: %w", i, err))
			continue
		}
		wirePre = append(wirePre, p.wire())
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("esdb: write-events: %w", errors.Join(errs...))
	}
	resp, err := c.do(ctx, http.MethodPost, "write-events", map[string]any{"events": wireEvents, "preconditions": wirePre}, true)
	if err != nil {
		return nil, err
	}
	var raw []json.RawMessage
	if err := c.readJSON(ctx, "write-events", resp, &raw); err != nil {
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
	resp, err := c.do(ctx, http.MethodPost, "register-event-schema", map[string]any{"eventType": eventType, "schema": json.RawMessage(s)}, true)
	if err != nil {
		return err
	}
	drain(resp.Body)
	return nil
}

type wireEventType struct {
	EventType *string         `json:"eventType"`
	IsPhantom *bool           `json:"isPhantom"`
	Schema    json.RawMessage `json:"schema"`
}

func (w wireEventType) parse() (EventType, error) {
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
	resp, err := c.do(ctx, http.MethodPost, "read-event-type", map[string]string{"eventType": eventType}, true)
	if err != nil {
		return EventType{}, err
	}
	var w wireEventType
	if err := c.readJSON(ctx, "read-event-type", resp, &w); err != nil {
		return EventType{}, err
	}
	et, err := w.parse()
	if err != nil {
		return EventType{}, fmt.Errorf("esdb: read-event-type: %w", err)
	}
	return et, nil
}
