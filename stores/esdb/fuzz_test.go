package esdb_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/orchestrix/orchestrix/stores/esdb"
)

// bodyTransport answers every request with the same body, as
// EventSourcingDB would (status 200, Server header).
type bodyTransport []byte

func (b bodyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: 200,
		Header:     http.Header{"Server": {"EventSourcingDB/fuzz"}},
		Body:       io.NopCloser(bytes.NewReader(b)),
		Request:    r,
	}, nil
}

// FuzzAnswers feeds arbitrary answers to every reading call: they may fail,
// but must never panic or yield an event together with an error.
func FuzzAnswers(f *testing.F) {
	for _, seed := range strings.Split(merkleFixture, "\n") {
		f.Add([]byte(`{"type":"event","payload":` + seed + "}\n"))
	}
	f.Add([]byte("{\"type\":\"heartbeat\"}\n{\"type\":\"error\",\"payload\":{\"error\":\"x\"}}\n"))
	f.Add([]byte(`{"type":"row","payload":{"a":[1,2]}}` + "\n" + `{"type":"subject","payload":{"subject":"/a"}}`))
	f.Add([]byte(`{"type":"eventType","payload":{"eventType":"a.b.c","isPhantom":true,"schema":{}}}`))
	f.Add([]byte(`[{"specversion":"1.0"}]`))
	f.Add([]byte{0xff, '\n', '{'})
	f.Add([]byte(`{"type":"event","data":{"specversion":"1.0"}}` + "\n" + `{"type":"end","data":{}}`))
	f.Add([]byte(`{"type":"error","data":{"code":"` + esdb.ErrorCodeBase + `precondition-violated","description":"x"}}`))
	f.Add([]byte(`{"type":"row","data":{"value":[1]}}` + "\n" + `{"type":"eventType","data":{"type":"a.b.c","hasEvents":true}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		// Every answer in both API versions.
		for _, api := range []esdb.API{esdb.APIv1, esdb.APIv2} {
			c, err := esdb.NewClient("http://fuzz.invalid", "t", esdb.WithAPI(api), esdb.WithHTTPClient(&http.Client{Transport: bodyTransport(body)}), esdb.WithMaxLineSize(1<<16))
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			for e, err := range c.ReadEvents(ctx, "/", esdb.ReadOptions{Recursive: true}) {
				if err != nil && e.ID != "" {
					t.Fatalf("event %s yielded with error %v", e.ID, err)
				}
			}
			for range c.RunEventQLQuery(ctx, "FROM e IN events PROJECT INTO e") {
			}
			for range c.ReadSubjects(ctx, "/") {
			}
			for range c.ReadEventTypes(ctx) {
			}
			_, _ = c.WriteEvents(ctx, candidates("/a", 1))
			_ = c.RegisterEventSchema(ctx, "io.example.x", []byte(`{}`))
			_, _ = c.ReadEventType(ctx, "io.example.x")
			_ = c.Ping(ctx)
			// One attempt only: the body ends, which an observation retries.
			for range c.ObserveEvents(ctx, "/", esdb.ObserveOptions{MaxAttempts: 1}) {
			}
		}
		// The client that asks which API the server offers.
		c, err := esdb.NewClient("http://fuzz.invalid", "t", esdb.WithHTTPClient(&http.Client{Transport: bodyTransport(body)}))
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Ping(context.Background())
	})
}
