package esdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// API is a version of EventSourcingDB's HTTP API.
type API string

// The API versions. EventSourcingDB offers v2 since 1.3 (and v1 beside
// it); older servers offer v1 only.
const (
	APIv1 API = "v1"
	APIv2 API = "v2"
)

// MethodQuery is the HTTP method with which the v2 API is read
// (RFC 10008). A proxy in front of the server must let it through.
const MethodQuery = "QUERY"

// ErrorCodeBase prefixes the codes of the errors the v2 API reports (the
// URL of the page that explains the error): ErrorCodeBase +
// "precondition-violated" is a failed precondition.
const ErrorCodeBase = "https://docs.eventsourcingdb.io/errors/"

// ErrUnsupported: the request needs the v2 API, which the server does not
// offer (a recursive precondition on a server before 1.3). Nothing was
// sent.
var ErrUnsupported = errors.New("esdb: the server does not offer the v2 API, which this request needs")

// APIError is an error the server reported with a code inside an answer
// of the v2 API ({"type":"error","data":{"code", "description",
// "details"}}). A failed precondition (code ErrorCodeBase +
// "precondition-violated") matches ErrPreconditionFailed, an unknown event
// type ErrNotFound.
type APIError struct {
	// Endpoint is the API endpoint, e.g. "write-events".
	Endpoint    string
	Code        string
	Description string
	// Details locates the error (e.g. the precondition that failed); may
	// be empty.
	Details json.RawMessage
}

// Error names the endpoint, the code's last part and the description.
func (e *APIError) Error() string {
	return fmt.Sprintf("esdb: %s: %s: %s", e.Endpoint, strings.TrimPrefix(e.Code, ErrorCodeBase), e.Description)
}

// Is maps codes onto the sentinels.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrPreconditionFailed:
		return e.Code == ErrorCodeBase+"precondition-violated"
	case ErrNotFound:
		return e.Code == ErrorCodeBase+"event-type-unknown"
	}
	return false
}

// retryable reports the codes of conditions that pass.
func (e *APIError) retryable() bool {
	switch strings.TrimPrefix(e.Code, ErrorCodeBase) {
	case "indexes-rebuilding", "server-shutting-down", "restore-in-progress":
		return true
	}
	return false
}

// v2Paths are the v2 paths of the endpoints (named as in v1).
var v2Paths = map[string]string{
	"ping":                  "system/ping",
	"verify-api-token":      "system/verify-token",
	"write-events":          "data/write-events",
	"register-event-schema": "data/register-event-schema",
	"read-events":           "data/read-events",
	"observe-events":        "data/observe-events",
	"run-eventql-query":     "data/run-eventql-query",
	"read-subjects":         "data/read-subjects",
	"read-event-types":      "data/read-event-types",
	"read-event-type":       "data/read-event-type",
}

// route returns the URL and method of an endpoint in an API version.
func (c *Client) route(api API, name string) (string, string) {
	if api == APIv2 {
		method := http.MethodPost
		switch name {
		case "ping":
			method = http.MethodGet
		case "read-events", "observe-events", "run-eventql-query", "read-subjects", "read-event-types", "read-event-type":
			method = MethodQuery
		}
		return c.base.String() + "/api/v2/" + v2Paths[name], method
	}
	if name == "ping" {
		return c.base.String() + "/api/v1/ping", http.MethodGet
	}
	return c.base.String() + "/api/v1/" + name, http.MethodPost
}

// API returns the API version the client speaks with the server: the one
// set WithAPI, or, by default, v2 if the server offers it, else v1. The
// client asks on its first request with an unauthenticated ping of the v2
// API (404 or 405: v1) and remembers a definite answer; a failed ping is
// returned and asked again next time. If the server later answers a v2
// path with 404 or 405 (rolled back), the client asks again on the next
// request.
func (c *Client) API(ctx context.Context) (API, error) {
	if c.fixed != "" {
		return c.fixed, nil
	}
	c.apiMu.Lock()
	api := c.api
	c.apiMu.Unlock()
	if api != "" {
		return api, nil
	}
	api, err := c.probe(ctx)
	if err != nil {
		return "", err
	}
	c.apiMu.Lock()
	c.api = api
	c.apiMu.Unlock()
	return api, nil
}

// forget drops a remembered v2 answer after a v2 path answered 404/405.
func (c *Client) forget() {
	c.apiMu.Lock()
	if c.api == APIv2 {
		c.api = ""
	}
	c.apiMu.Unlock()
}

func (c *Client) probe(ctx context.Context) (API, error) {
	url, method := c.route(APIv2, "ping")
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return "", fmt.Errorf("esdb: ping: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("esdb: ping (which API): %w", context.Cause(ctx))
		}
		return "", fmt.Errorf("esdb: ping (which API): %w: %w", errTransport, err)
	}
	defer drain(resp.Body)
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
		return APIv1, nil
	}
	if !strings.HasPrefix(resp.Header.Get("Server"), "EventSourcingDB/") {
		return "", fmt.Errorf("esdb: ping (which API): status %d, Server header %q: %w", resp.StatusCode, resp.Header.Get("Server"), ErrMissingServerHeader)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return "", &ServerError{Endpoint: "ping", Status: resp.StatusCode, Body: strings.TrimSpace(string(b))}
	}
	var ev apiEvent
	if err := c.readEnvelope(ctx, APIv2, "ping", resp, "event", &ev); err != nil {
		return "", err
	}
	if ev.Type != "io.eventsourcingdb.api.ping-received" {
		return "", fmt.Errorf("esdb: ping (which API): answer has type %q: %w", ev.Type, ErrMalformedResponse)
	}
	return APIv2, nil
}

// envelopeError turns an error item into an *APIError (with a code) or a
// *StreamError (without: the stream failed).
func envelopeError(name string, api API, payload json.RawMessage) error {
	if api != APIv2 {
		return streamError(name, line{Type: "error", Payload: payload})
	}
	var p struct {
		Code        string          `json:"code"`
		Description string          `json:"description"`
		Details     json.RawMessage `json:"details"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		return fmt.Errorf("esdb: %s: malformed error item: %w", name, ErrMalformedResponse)
	}
	if p.Code == "" {
		return &StreamError{Endpoint: name, Message: p.Description}
	}
	return &APIError{Endpoint: name, Code: p.Code, Description: p.Description, Details: p.Details}
}

// readEnvelope reads an answer of one envelope of the v2 API whose type
// must be kind, and decodes its data into v (an error item becomes the
// error it reports). With the v1 API the answer is v itself.
func (c *Client) readEnvelope(ctx context.Context, api API, name string, resp *http.Response, kind string, v any) error {
	if api != APIv2 {
		return c.readJSON(ctx, name, resp, v)
	}
	var env struct {
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := c.readJSON(ctx, name, resp, &env); err != nil {
		return err
	}
	switch env.Type {
	case "error":
		return envelopeError(name, api, env.Data)
	case kind:
	default:
		return fmt.Errorf("esdb: %s: answer has type %q, want %q: %w", name, env.Type, kind, ErrMalformedResponse)
	}
	if err := json.Unmarshal(env.Data, v); err != nil {
		return fmt.Errorf("esdb: %s: %w: %w", name, ErrMalformedResponse, err)
	}
	return nil
}
