package esdb_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores/esdb"
	"github.com/orchestrix/orchestrix/stores/esdb/esdbtest"
)

func TestValidateSubject(t *testing.T) {
	tests := []struct {
		subject string
		ok      bool
	}{
		{"/", true},
		{"/books", true},
		{"/books/42", true},
		{"/books/42/", true},
		{"/a_b-C9/x", true},
		{"", false},
		{"books", false},
		{"//", false},
		{"/books//42", false},
		{"/books/4.2", false},
		{"/books/42 ", false},
		{"/bücher", false},
		{"/" + strings.Repeat("a", esdb.MaxNameLength), false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%.20q", tc.subject), func(t *testing.T) {
			err := esdb.ValidateSubject(tc.subject)
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, orchestrix.ErrInvalid)) {
				t.Fatalf("ValidateSubject(%q) = %v, want ok=%v", tc.subject, err, tc.ok)
			}
		})
	}
}

func TestValidateEventType(t *testing.T) {
	tests := []struct {
		typ string
		ok  bool
	}{
		{"io.example.account-opened", true},
		{"io.eventsourcingdb.test", true},
		{"io.thenativeweb.user.janeDoe.loggedIn", true},
		{"com.foo.bar", true},
		{"", false},
		{"Deposited", false},
		{"banking.Deposited", false},
		{"i.example.opened", false},
		{"io..opened", false},
		{"io.example.opened.", false},
		{"io.example.account opened", false},
		{"io.example/x.y", false},
	}
	for _, tc := range tests {
		t.Run(tc.typ, func(t *testing.T) {
			err := esdb.ValidateEventType(tc.typ)
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, orchestrix.ErrInvalid)) {
				t.Fatalf("ValidateEventType(%q) = %v, want ok=%v", tc.typ, err, tc.ok)
			}
		})
	}
}

func TestNewClientValidates(t *testing.T) {
	tests := []struct {
		name, url, token string
		opts             []esdb.ClientOption
	}{
		{"empty url", "", "t", nil},
		{"no scheme", "localhost:3000", "t", nil},
		{"ftp", "ftp://localhost:3000", "t", nil},
		{"no host", "http://", "t", nil},
		{"empty token", "http://localhost:3000", "", nil},
		{"token with newline", "http://localhost:3000", "a\nb", nil},
		{"bad line size", "http://localhost:3000", "t", []esdb.ClientOption{esdb.WithMaxLineSize(0)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := esdb.NewClient(tc.url, tc.token, tc.opts...); !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
	c, err := esdb.NewClient("http://localhost:3000/", "t")
	if err != nil || c.URL() != "http://localhost:3000" {
		t.Fatalf("NewClient = %v, %v", c, err)
	}
}

// The first events of the official eventsourcingdb-merkle test backup:
// real hashes computed by EventSourcingDB.
const merkleFixture = `{"specversion":"1.0","id":"0","time":"2024-01-01T12:00:00.000000000Z","source":"tag:example.com,2024:test:app","subject":"/test-subject/items/00000000-0000-0000-0000-000000000001","type":"com.example.item.created","datacontenttype":"application/json","predecessorhash":"0000000000000000000000000000000000000000000000000000000000000000","data":{"title":"Lorem ipsum","description":"Dolor sit amet"},"hash":"a5137d458a5639ee5d1f1248559058b2dfc25c98c8731aefc3efbf9decb5dbeb"}
{"specversion":"1.0","id":"1","time":"2024-01-01T12:01:00.000000000Z","source":"tag:example.com,2024:test:app","subject":"/test-subject/items/00000000-0000-0000-0000-000000000002","type":"com.example.item.created","datacontenttype":"application/json","predecessorhash":"a5137d458a5639ee5d1f1248559058b2dfc25c98c8731aefc3efbf9decb5dbeb","data":{"title":"Consectetur adipiscing","description":"Elit sed do"},"hash":"414c8cfda7891fd289c4ce4aeacaa3349e39e54dded74254bba9f89d81c6a265"}
{"specversion":"1.0","id":"2","time":"2024-01-01T12:02:00.000000000Z","source":"tag:example.com,2024:test:app","subject":"/test-subject/items/00000000-0000-0000-0000-000000000003","type":"com.example.item.updated","datacontenttype":"application/json","predecessorhash":"414c8cfda7891fd289c4ce4aeacaa3349e39e54dded74254bba9f89d81c6a265","data":{"title":"Eiusmod tempor","description":"Incididunt ut labore"},"hash":"b858182943c324718ac47f96fe4cfbb41e5f50dac2b645b1578304a7b40d5454"}`

// fakeServer serves read-events with the given lines (and the Server
// header), to feed the client answers the double never produces.
func fakeServer(t *testing.T, handler http.HandlerFunc) *esdb.Client {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	c, err := esdb.NewClient(srv.URL, token, esdb.WithAPI(esdb.APIv1))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func serveLines(lines ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Server", "EventSourcingDB/fake")
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	}
}

func eventLines(events ...string) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = `{"type":"event","payload":` + e + `}`
	}
	return out
}

func readAll(c *esdb.Client, opts esdb.ReadOptions) ([]esdb.Event, error) {
	var out []esdb.Event
	for e, err := range c.ReadEvents(context.Background(), "/", opts) {
		if err != nil {
			return out, err
		}
		out = append(out, e)
	}
	return out, nil
}

func TestHashChainVerification(t *testing.T) {
	fixture := strings.Split(merkleFixture, "\n")
	tamper := func(i int, old, new string) []string {
		out := append([]string(nil), fixture...)
		out[i] = strings.Replace(out[i], old, new, 1)
		return out
	}
	reversed := []string{fixture[2], fixture[1], fixture[0]}
	tests := []struct {
		name   string
		events []string
		want   int // events read before the error; -1: no error
	}{
		{"official fixture verifies", fixture, -1},
		{"antichronological verifies", reversed, -1},
		{"tampered data", tamper(1, "Elit sed do", "Elit sed dO"), 1},
		{"tampered time", tamper(0, "12:00:00", "12:00:01"), 0},
		{"tampered subject", tamper(2, "000000000003", "000000000004"), 2},
		{"broken link", []string{fixture[0], fixture[2]}, -1}, // not adjacent: each hash alone verifies
		{"wrong predecessor", tamper(1, `"predecessorhash":"a5137d`, `"predecessorhash":"b5137d`), 1},
		{"first event without zero predecessor", []string{strings.Replace(fixture[0], `"predecessorhash":"00`, `"predecessorhash":"10`, 1)}, 0},
		{"repeated event", []string{fixture[0], fixture[0]}, 1},
		{"unsupported hash version", tamper(0, `"hash":"a5137d`, `"hash":"esdb:hash:v9:a5137d`), 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeServer(t, serveLines(eventLines(tc.events...)...))
			got, err := readAll(c, esdb.ReadOptions{Recursive: true})
			if tc.want < 0 {
				if err != nil || len(got) != len(tc.events) {
					t.Fatalf("read %d events, err %v", len(got), err)
				}
				return
			}
			var ie *esdb.IntegrityError
			if !errors.Is(err, esdb.ErrIntegrity) || !errors.As(err, &ie) || len(got) != tc.want {
				t.Fatalf("read %d events, err %v; want an *IntegrityError after %d", len(got), err, tc.want)
			}
		})
	}
}

func TestHashV2(t *testing.T) {
	e := esdb.Event{SpecVersion: "1.0", ID: "7", RawTime: "2024-01-01T12:00:00.000000000Z", Source: "s", Subject: "/a",
		Type: "io.example.x", DataContentType: "application/json", Data: json.RawMessage(`{"a":1}`),
		PredecessorHash: strings.Repeat("1", 64), TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		Hash: "esdb:hash:v2:"}
	h, err := e.ComputeHash()
	if err != nil || !strings.HasPrefix(h, "esdb:hash:v2:") || len(h) != len("esdb:hash:v2:")+64 {
		t.Fatalf("ComputeHash = %q, %v", h, err)
	}
	e.Hash = h
	if err := e.VerifyHash(); err != nil {
		t.Fatalf("VerifyHash: %v", err)
	}
	e.TraceState = "x=1" // v2 covers the trace state, v1 does not
	if err := e.VerifyHash(); !errors.Is(err, esdb.ErrIntegrity) {
		t.Fatalf("VerifyHash after tampering = %v", err)
	}
}

func TestMalformedAnswers(t *testing.T) {
	valid := strings.Split(merkleFixture, "\n")[0]
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    error
	}{
		{"not json", serveLines(`{"type":"event","payload":{`), esdb.ErrMalformedResponse},
		{"garbage", serveLines(`hello`), esdb.ErrMalformedResponse},
		{"no type", serveLines(`{"payload":{}}`), esdb.ErrMalformedResponse},
		{"unknown type", serveLines(`{"type":"surprise","payload":{}}`), esdb.ErrMalformedResponse},
		{"row in read-events", serveLines(`{"type":"row","payload":1}`), esdb.ErrMalformedResponse},
		{"event lacks fields", serveLines(`{"type":"event","payload":{"id":"0"}}`), esdb.ErrMalformedResponse},
		{"event payload not an object", serveLines(`{"type":"event","payload":[1]}`), esdb.ErrMalformedResponse},
		{"bad id", serveLines(eventLines(strings.Replace(valid, `"id":"0"`, `"id":"-1"`, 1))...), esdb.ErrMalformedResponse},
		{"bad time", serveLines(eventLines(strings.Replace(valid, `2024-01-01T12`, `yesterday`, 1))...), esdb.ErrMalformedResponse},
		{"error line without message", serveLines(`{"type":"error","payload":{}}`), esdb.ErrMalformedResponse},
		{"huge line", serveLines(`{"type":"event","payload":"` + strings.Repeat("x", 2<<10) + `"}`), esdb.ErrMalformedResponse},
		{"no server header", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, valid) }, esdb.ErrMissingServerHeader},
		{"other server header", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Server", "nginx")
			fmt.Fprintln(w, valid)
		}, esdb.ErrMissingServerHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			c, err := esdb.NewClient(srv.URL, token, esdb.WithAPI(esdb.APIv1), esdb.WithMaxLineSize(1<<10))
			if err != nil {
				t.Fatal(err)
			}
			_, err = readAll(c, esdb.ReadOptions{})
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if esdb.IsRetryable(err) {
				t.Errorf("IsRetryable(%v) = true", err)
			}
		})
	}
}

func TestMalformedUnaryAnswers(t *testing.T) {
	tests := []struct {
		name string
		body string
		call func(*esdb.Client) error
	}{
		{"ping not json", `nope`, func(c *esdb.Client) error { return c.Ping(context.Background()) }},
		{"ping wrong type", `{"specversion":"1.0","type":"io.example.other"}`, func(c *esdb.Client) error { return c.Ping(context.Background()) }},
		{"verify wrong type", `{"specversion":"1.0","type":"io.eventsourcingdb.api.ping-received"}`, func(c *esdb.Client) error { return c.VerifyAPIToken(context.Background()) }},
		{"write not a list", `{}`, func(c *esdb.Client) error {
			_, err := c.WriteEvents(context.Background(), candidates("/a", 1))
			return err
		}},
		{"write wrong count", `[]`, func(c *esdb.Client) error {
			_, err := c.WriteEvents(context.Background(), candidates("/a", 1))
			return err
		}},
		{"event type without fields", `{}`, func(c *esdb.Client) error {
			_, err := c.ReadEventType(context.Background(), "io.example.x")
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Server", "EventSourcingDB/fake")
				fmt.Fprint(w, tc.body)
			})
			if err := tc.call(c); !errors.Is(err, esdb.ErrMalformedResponse) {
				t.Fatalf("err = %v, want ErrMalformedResponse", err)
			}
		})
	}
}

func candidates(subject string, n int) []esdb.EventCandidate {
	out := make([]esdb.EventCandidate, n)
	for i := range out {
		out[i] = esdb.EventCandidate{Source: "https://test.example", Subject: subject, Type: "io.example.thing-happened", Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))}
	}
	return out
}

func TestInvalidInputIsNotSent(t *testing.T) {
	var hits atomic.Int32
	c := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Server", "EventSourcingDB/fake")
	})
	ctx := context.Background()
	good := candidates("/a", 1)[0]
	with := func(f func(*esdb.EventCandidate)) []esdb.EventCandidate {
		c := good
		f(&c)
		return []esdb.EventCandidate{c}
	}
	write := func(evs []esdb.EventCandidate, pre ...esdb.Precondition) func() error {
		return func() error { _, err := c.WriteEvents(ctx, evs, pre...); return err }
	}
	first := func(seq func(func(esdb.Event, error) bool)) func() error {
		return func() error {
			for _, err := range seq {
				return err
			}
			return nil
		}
	}
	tests := []struct {
		name string
		call func() error
	}{
		{"no events", write(nil)},
		{"relative subject", write(with(func(e *esdb.EventCandidate) { e.Subject = "books/42" }))},
		{"empty subject", write(with(func(e *esdb.EventCandidate) { e.Subject = "" }))},
		{"bad type", write(with(func(e *esdb.EventCandidate) { e.Type = "Deposited" }))},
		{"empty source", write(with(func(e *esdb.EventCandidate) { e.Source = "" }))},
		{"data not an object", write(with(func(e *esdb.EventCandidate) { e.Data = json.RawMessage(`[1]`) }))},
		{"data not json", write(with(func(e *esdb.EventCandidate) { e.Data = json.RawMessage(`{`) }))},
		{"bad traceparent", write(with(func(e *esdb.EventCandidate) { e.TraceParent = "01-xyz" }))},
		{"zero precondition", write([]esdb.EventCandidate{good}, esdb.Precondition{})},
		{"precondition subject", write([]esdb.EventCandidate{good}, esdb.IsSubjectPristine("x"))},
		{"precondition event id", write([]esdb.EventCandidate{good}, esdb.IsSubjectOnEventID("/a", "one"))},
		{"empty query", write([]esdb.EventCandidate{good}, esdb.IsEventQLQueryTrue(""))},
		{"read relative subject", first(c.ReadEvents(ctx, "a", esdb.ReadOptions{}))},
		{"read bad order", first(c.ReadEvents(ctx, "/a", esdb.ReadOptions{Order: "sideways"}))},
		{"read bad bound type", first(c.ReadEvents(ctx, "/a", esdb.ReadOptions{LowerBound: &esdb.Bound{ID: 1, Type: "open"}}))},
		{"read bound and latest", first(c.ReadEvents(ctx, "/a", esdb.ReadOptions{LowerBound: &esdb.Bound{Type: esdb.Inclusive},
			FromLatestEvent: &esdb.FromLatestEvent{Subject: "/a", Type: "io.example.x", IfEventIsMissing: esdb.ReadNothing}}))},
		{"read latest with observe mode", first(c.ReadEvents(ctx, "/a", esdb.ReadOptions{
			FromLatestEvent: &esdb.FromLatestEvent{Subject: "/a", Type: "io.example.x", IfEventIsMissing: esdb.WaitForEvent}}))},
		{"observe bad subject", first(c.ObserveEvents(ctx, "", esdb.ObserveOptions{}))},
		{"observe bad latest type", first(c.ObserveEvents(ctx, "/", esdb.ObserveOptions{
			FromLatestEvent: &esdb.FromLatestEvent{Subject: "/a", Type: "x", IfEventIsMissing: esdb.WaitForEvent}}))},
		{"schema bad type", func() error { return c.RegisterEventSchema(ctx, "x", json.RawMessage(`{}`)) }},
		{"schema not object", func() error { return c.RegisterEventSchema(ctx, "io.example.x", json.RawMessage(`"x"`)) }},
		{"event type bad", func() error { _, err := c.ReadEventType(ctx, "io..x"); return err }},
		{"subjects bad base", func() error {
			for _, err := range c.ReadSubjects(ctx, "base") {
				return err
			}
			return nil
		}},
		{"empty query run", func() error {
			for _, err := range c.RunEventQLQuery(ctx, "") {
				return err
			}
			return nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("invalid input reached the server %d times", n)
	}
}

func TestStatusesMapToTypedErrors(t *testing.T) {
	tests := []struct {
		status    int
		body      string
		endpoint  string
		is        error
		retryable bool
	}{
		{400, "malformed subject", "write-events", nil, false},
		{401, "unauthorized", "write-events", esdb.ErrUnauthorized, false},
		{404, "event type 'a.b.c' not found", "read-event-type", esdb.ErrNotFound, false},
		{409, "state conflict: precondition failed", "write-events", esdb.ErrPreconditionFailed, false},
		{409, "schema conflict: event candidate does not match schema", "write-events", nil, false},
		{429, "slow down", "read-events", nil, true},
		{500, "boom", "read-events", nil, false},
		{503, "the current operation mode conflicts with the given request", "write-events", nil, true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d %s", tc.status, tc.endpoint), func(t *testing.T) {
			srv := esdbtest.NewServer(token)
			defer srv.Close()
			c, _ := esdb.NewClient(srv.URL, token)
			srv.InjectFault(esdbtest.Fault{Endpoint: tc.endpoint, Kind: esdbtest.FaultStatus, Status: tc.status, Body: tc.body})
			var err error
			switch tc.endpoint {
			case "write-events":
				_, err = c.WriteEvents(t.Context(), candidates("/a", 1))
			case "read-event-type":
				_, err = c.ReadEventType(t.Context(), "io.example.thing-happened")
			default:
				_, err = readAll(c, esdb.ReadOptions{})
			}
			var se *esdb.ServerError
			if !errors.As(err, &se) || se.Status != tc.status || se.Endpoint != tc.endpoint || !strings.Contains(se.Body, tc.body) {
				t.Fatalf("err = %v, want a *ServerError %d", err, tc.status)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.is)
			}
			for _, other := range []error{esdb.ErrUnauthorized, esdb.ErrNotFound, esdb.ErrPreconditionFailed} {
				if other != tc.is && errors.Is(err, other) {
					t.Errorf("errors.Is(%v, %v) = true", err, other)
				}
			}
			if got := esdb.IsRetryable(err); got != tc.retryable {
				t.Errorf("IsRetryable = %v, want %v", got, tc.retryable)
			}
		})
	}
}

func TestWrongTokenAndUnreachable(t *testing.T) {
	srv := esdbtest.NewServer(token)
	defer srv.Close()
	c, _ := esdb.NewClient(srv.URL, "wrong")
	if err := c.Ping(t.Context()); err != nil {
		t.Fatalf("ping needs no token: %v", err)
	}
	if err := c.VerifyAPIToken(t.Context()); !errors.Is(err, esdb.ErrUnauthorized) {
		t.Fatalf("verify = %v, want ErrUnauthorized", err)
	}
	if _, err := readAll(c, esdb.ReadOptions{}); !errors.Is(err, esdb.ErrUnauthorized) {
		t.Fatalf("read = %v, want ErrUnauthorized", err)
	}
	srv.Close()
	err := c.Ping(t.Context())
	if err == nil || !esdb.IsRetryable(err) {
		t.Fatalf("ping of a closed server = %v, want a retryable error", err)
	}
}

func TestMissingServerHeaderEverywhere(t *testing.T) {
	srv := esdbtest.NewServer(token)
	defer srv.Close()
	c, _ := esdb.NewClient(srv.URL, token)
	ctx := t.Context()
	calls := map[string]func() error{
		"ping":             func() error { return c.Ping(ctx) },
		"verify-api-token": func() error { return c.VerifyAPIToken(ctx) },
		"write-events":     func() error { _, err := c.WriteEvents(ctx, candidates("/a", 1)); return err },
		"read-events":      func() error { _, err := readAll(c, esdb.ReadOptions{}); return err },
		"register-event-schema": func() error {
			return c.RegisterEventSchema(ctx, "io.example.thing-happened", json.RawMessage(`{"type":"object"}`))
		},
		"read-event-type": func() error { _, err := c.ReadEventType(ctx, "io.example.thing-happened"); return err },
		"run-eventql-query": func() error {
			for _, err := range c.RunEventQLQuery(ctx, "FROM e IN events PROJECT INTO e") {
				return err
			}
			return nil
		},
		"read-subjects": func() error {
			for _, err := range c.ReadSubjects(ctx, "/") {
				return err
			}
			return nil
		},
		"read-event-types": func() error {
			for _, err := range c.ReadEventTypes(ctx) {
				return err
			}
			return nil
		},
		"observe-events": func() error {
			for _, err := range c.ObserveEvents(ctx, "/", esdb.ObserveOptions{}) {
				return err
			}
			return nil
		},
	}
	for endpoint, call := range calls {
		t.Run(endpoint, func(t *testing.T) {
			srv.InjectFault(esdbtest.Fault{Endpoint: endpoint, Kind: esdbtest.FaultOmitServerHeader})
			if err := call(); !errors.Is(err, esdb.ErrMissingServerHeader) {
				t.Fatalf("err = %v, want ErrMissingServerHeader", err)
			}
		})
	}
}

func TestStreamFaults(t *testing.T) {
	tests := []struct {
		name      string
		fault     esdbtest.Fault
		wantRead  int
		check     func(error) bool
		retryable bool
	}{
		{"error line after 2", esdbtest.Fault{Kind: esdbtest.FaultErrorLine, After: 2, Message: "disk on fire"}, 2,
			func(err error) bool {
				var se *esdb.StreamError
				return errors.As(err, &se) && se.Message == "disk on fire" && se.Endpoint == "read-events"
			}, true},
		{"error line at the end", esdbtest.Fault{Kind: esdbtest.FaultErrorLine, After: 100}, 5,
			func(err error) bool { var se *esdb.StreamError; return errors.As(err, &se) }, true},
		{"malformed line after 3", esdbtest.Fault{Kind: esdbtest.FaultMalformedLine, After: 3}, 3,
			func(err error) bool { return errors.Is(err, esdb.ErrMalformedResponse) }, false},
		{"unknown line after 1", esdbtest.Fault{Kind: esdbtest.FaultUnknownLine, After: 1}, 1,
			func(err error) bool { return errors.Is(err, esdb.ErrMalformedResponse) }, false},
		{"dropped connection after 4", esdbtest.Fault{Kind: esdbtest.FaultDropConnection, After: 4}, 4,
			func(err error) bool { return err != nil }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := esdbtest.NewServer(token)
			defer srv.Close()
			c, _ := esdb.NewClient(srv.URL, token)
			if _, err := c.WriteEvents(t.Context(), candidates("/s", 5)); err != nil {
				t.Fatal(err)
			}
			tc.fault.Endpoint = "read-events"
			srv.InjectFault(tc.fault)
			got, err := readAll(c, esdb.ReadOptions{Recursive: true})
			if len(got) != tc.wantRead || !tc.check(err) {
				t.Fatalf("read %d events, err %v; want %d and a matching error", len(got), err, tc.wantRead)
			}
			if esdb.IsRetryable(err) != tc.retryable {
				t.Errorf("IsRetryable(%v) = %v", err, !tc.retryable)
			}
			// The fault is spent: the next read is whole.
			if got, err := readAll(c, esdb.ReadOptions{Recursive: true}); err != nil || len(got) != 5 {
				t.Fatalf("second read: %d events, %v", len(got), err)
			}
		})
	}
}

func TestContextCancelEndsStreams(t *testing.T) {
	srv := esdbtest.NewServer(token)
	defer srv.Close()
	c, _ := esdb.NewClient(srv.URL, token)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.Ping(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("ping = %v", err)
	}
	for _, err := range c.ObserveEvents(ctx, "/", esdb.ObserveOptions{Recursive: true}) {
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("observe = %v", err)
		}
	}
}

// TestClientSpeaksV2: the client settles on the v2 API where the server
// offers it (reads by QUERY, which the double enforces), on v1 where it
// does not; recursive preconditions work on v2 and are refused before
// sending on v1; failed preconditions and unknown event types map to the
// same sentinels in both; a v2 stream without its end item broke off.
func TestClientSpeaksV2(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name string
		opts []esdbtest.Option
		want esdb.API
	}{
		{"v2 server", nil, esdb.APIv2},
		{"v1 server", []esdbtest.Option{esdbtest.WithV1Only()}, esdb.APIv1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := esdbtest.NewServer(token, tc.opts...)
			defer srv.Close()
			c, err := esdb.NewClient(srv.URL, token)
			if err != nil {
				t.Fatal(err)
			}
			if api, err := c.API(ctx); err != nil || api != tc.want {
				t.Fatalf("API = %q, %v; want %q", api, err, tc.want)
			}
			if _, err := c.WriteEvents(ctx, candidates("/books/1/copies", 2)); err != nil {
				t.Fatalf("write: %v", err)
			}
			writes := srv.Requests("write-events")
			_, err = c.WriteEvents(ctx, candidates("/books/2", 1), esdb.IsSubjectPristine("/books").Recursive())
			switch tc.want {
			case esdb.APIv2:
				if !errors.Is(err, esdb.ErrPreconditionFailed) {
					t.Fatalf("recursive pristine on /books = %v, want ErrPreconditionFailed", err)
				}
				var ae *esdb.APIError
				if !errors.As(err, &ae) || ae.Code != esdb.ErrorCodeBase+"precondition-violated" {
					t.Fatalf("err = %#v, want an *APIError with the code", err)
				}
				if _, err := c.WriteEvents(ctx, candidates("/books/2", 1), esdb.IsSubjectPristine("/books"), esdb.IsSubjectOnEventID("/books", "1").Recursive()); err != nil {
					t.Fatalf("pristine /books alone and recursive on event 1: %v", err)
				}
			case esdb.APIv1:
				if !errors.Is(err, esdb.ErrUnsupported) || srv.Requests("write-events") != writes {
					t.Fatalf("recursive precondition on v1 = %v after %d requests, want ErrUnsupported before sending", err, srv.Requests("write-events")-writes)
				}
			}
			if _, err := c.WriteEvents(ctx, candidates("/books/3", 1), esdb.IsSubjectPopulated("/books/3")); !errors.Is(err, esdb.ErrPreconditionFailed) {
				t.Fatalf("failed precondition = %v, want ErrPreconditionFailed", err)
			}
			if _, err := c.ReadEventType(ctx, "io.example.none"); !errors.Is(err, esdb.ErrNotFound) {
				t.Fatalf("unknown event type = %v, want ErrNotFound", err)
			}
			if _, err := c.WriteEvents(ctx, candidates("/x", 1), esdb.IsEventQLQueryTrue("FROM e IN events PROJECT INTO COUNT() > 0").Recursive()); !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("recursive EventQL precondition = %v, want ErrInvalid", err)
			}
		})
	}
	// A v2 answer that ends before its end item broke off.
	c := fakeV2(t, `{"type":"row","data":{"value":1}}`)
	var err error
	for _, e := range c.RunEventQLQuery(ctx, "FROM e IN events PROJECT INTO 1") {
		err = e
	}
	if err == nil || !esdb.IsRetryable(err) {
		t.Fatalf("stream without end item: %v, want a retryable error", err)
	}
}

// fakeV2 is a client whose server answers the v2 ping and every other
// request with lines.
func fakeV2(t *testing.T, lines ...string) *esdb.Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Server", "EventSourcingDB/fake")
		if r.URL.Path == "/api/v2/system/ping" {
			fmt.Fprintln(w, `{"type":"event","data":{"specversion":"1.0","type":"io.eventsourcingdb.api.ping-received"}}`)
			return
		}
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	}))
	t.Cleanup(srv.Close)
	c, err := esdb.NewClient(srv.URL, token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
