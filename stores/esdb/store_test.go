package esdb_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/esdb"
	"github.com/orchestrix/orchestrix/stores/esdb/esdbtest"
	"github.com/orchestrix/orchestrix/stores/storetest"
)

const token = "secret"

// backend is where a test's store lives: a real server when ESDB_URL and
// ESDB_API_TOKEN are set (each test under its own subject prefix), the
// in-process double otherwise. srv is nil on a real server.
type backend struct {
	client *esdb.Client
	srv    *esdbtest.Server
	prefix string
}

func realServer() (url, tok string) { return os.Getenv("ESDB_URL"), os.Getenv("ESDB_API_TOKEN") }

func newBackend(t testing.TB, opts ...esdbtest.Option) backend {
	t.Helper()
	if url, tok := realServer(); url != "" {
		if tok == "" {
			t.Fatal("ESDB_URL is set but ESDB_API_TOKEN is not")
		}
		c, err := esdb.NewClient(url, tok)
		if err != nil {
			t.Fatalf("client for ESDB_URL: %v", err)
		}
		var b [6]byte
		_, _ = rand.Read(b[:])
		return backend{client: c, prefix: "/t" + hex.EncodeToString(b[:])}
	}
	srv := esdbtest.NewServer(token, opts...)
	t.Cleanup(srv.Close)
	c, err := esdb.NewClient(srv.URL, token)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return backend{client: c, srv: srv, prefix: esdb.DefaultSubjectPrefix}
}

// needDouble skips a test that injects faults when it runs on a real
// server.
func needDouble(t testing.TB, b backend) {
	t.Helper()
	if b.srv == nil {
		t.Skip("injects faults: runs only against the esdbtest double")
	}
}

func newStore(t testing.TB, opts ...esdb.Option) (*esdb.Store, backend) {
	t.Helper()
	b := newBackend(t)
	s, err := esdb.New(b.client, append([]esdb.Option{esdb.WithSubjectPrefix(b.prefix)}, opts...)...)
	if err != nil {
		t.Fatalf("new store: %v", err)
	}
	return s, b
}

func TestConformance(t *testing.T) {
	if url, _ := realServer(); url != "" {
		t.Logf("running against the real server at %s", url)
	}
	storetest.Run(t, func(t *testing.T) stores.EventStore {
		s, b := newStore(t)
		if api, err := b.client.API(t.Context()); b.srv != nil && (err != nil || api != esdb.APIv2) {
			t.Fatalf("client speaks %q (%v) with the double, want v2", api, err)
		}
		return s
	}, storetest.RequireRejections())
}

// TestConformanceV1API runs the suite on a double from before the v2 API,
// which the client then speaks v1 with.
func TestConformanceV1API(t *testing.T) {
	storetest.Run(t, func(t *testing.T) stores.EventStore {
		b := newBackend(t, esdbtest.WithV1Only())
		if b.srv == nil {
			t.Skip("runs only against the esdbtest double")
		}
		if api, err := b.client.API(t.Context()); err != nil || api != esdb.APIv1 {
			t.Fatalf("client speaks %q (%v), want v1", api, err)
		}
		s, err := esdb.New(b.client)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, storetest.RequireRejections())
}

func TestStoreMapping(t *testing.T) {
	s, b := newStore(t)
	ctx := t.Context()
	evs := storetest.Events("banking.Deposited", 2)
	evs[1].ContentType = "application/octet-stream"
	evs[1].Data = []byte{0, 1, 2, 0xff}
	evs[0].TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	if _, err := s.Append(ctx, "order/42 ü", stores.NoStream, evs); err != nil {
		t.Fatalf("append: %v", err)
	}
	subject := b.prefix + "/streams/order_2F42_20_C3_BC"
	if got := s.StreamSubject("order/42 ü"); got != subject {
		t.Fatalf("StreamSubject = %q, want %q", got, subject)
	}
	var raw []esdb.Event
	for e, err := range b.client.ReadEvents(ctx, subject, esdb.ReadOptions{}) {
		if err != nil {
			t.Fatalf("read subject: %v", err)
		}
		raw = append(raw, e)
	}
	if len(raw) != 2 {
		t.Fatalf("subject %s holds %d events, want 2", subject, len(raw))
	}
	if raw[0].Type != "io.orchestrix.event.banking.Deposited" || raw[0].Source != "/storetest" || raw[0].TraceParent != evs[0].TraceParent {
		t.Errorf("cloud event = %+v", raw[0])
	}
	if !strings.Contains(string(raw[0].Data), `"payload":{"n":0}`) || !strings.Contains(string(raw[1].Data), `"payloadBase64":"AAEC/w=="`) {
		t.Errorf("envelopes: %s / %s", raw[0].Data, raw[1].Data)
	}
	got := storetest.ReadStream(t, s, "order/42 ü", 0)
	if len(got) != 2 || !bytes.Equal(got[1].Data, []byte{0, 1, 2, 0xff}) || got[1].ContentType != "application/octet-stream" {
		t.Fatalf("round trip: %+v", got)
	}
	if p, _ := raw[0].Position(); got[0].Position != p+1 {
		t.Errorf("position %d, want ESDB ID %s + 1", got[0].Position, raw[0].ID)
	}
	// A command record and a snapshot live in their own subjects, outside
	// the log.
	cmdEvs := storetest.Events("Done", 1)
	cmdEvs[0].CommandID = "cmd/1"
	if _, err := s.Append(ctx, "c", stores.Any, cmdEvs); err != nil {
		t.Fatalf("append with command: %v", err)
	}
	if err := s.SaveSnapshot(ctx, stores.Snapshot{StreamID: "c", Version: 1, Type: "State", Data: []byte(`{}`)}); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	var subjects []string
	for sub, err := range b.client.ReadSubjects(ctx, b.prefix) {
		if err != nil {
			t.Fatalf("read subjects: %v", err)
		}
		subjects = append(subjects, sub)
	}
	for _, want := range []string{b.prefix + "/commands/cmd_2F1", b.prefix + "/snapshots/c", b.prefix + "/streams/c"} {
		if !contains(subjects, want) {
			t.Errorf("subjects %v lack %s", subjects, want)
		}
	}
	if all := storetest.ReadAll(t, s, stores.Cursor{}); len(all) != 3 {
		t.Errorf("ReadAll read %d events, want the 3 stream events only", len(all))
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestStoreJSONPayloadKeptByteForByte(t *testing.T) {
	s, _ := newStore(t)
	tests := []struct {
		name, contentType, data string
	}{
		{"compact json", "application/json", `{"a":1,"b":[true,null]}`},
		{"spaced json travels as base64", "application/json", `{ "a" : 1 }`},
		{"html chars travel as base64", "application/json", `{"a":"<b>"}`},
		{"cloudevents json", "application/cloudevents+json; charset=utf-8", `{"x":"y"}`},
		{"not json", "text/plain", `hello`},
		{"json array", "application/json", `[1,2,3]`},
		{"empty", "application/octet-stream", ``},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stream := fmt.Sprintf("p%d", i)
			evs := storetest.Events("T", 1)
			evs[0].ContentType, evs[0].Data = tc.contentType, []byte(tc.data)
			if _, err := s.Append(t.Context(), stream, stores.NoStream, evs); err != nil {
				t.Fatalf("append: %v", err)
			}
			got := storetest.ReadStream(t, s, stream, 0)
			if len(got) != 1 || string(got[0].Data) != tc.data || got[0].ContentType != tc.contentType {
				t.Fatalf("read %+v, want data %q", got, tc.data)
			}
		})
	}
}

func TestStoreNewValidates(t *testing.T) {
	c, err := esdb.NewClient("http://127.0.0.1:1", token)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		c    *esdb.Client
		opts []esdb.Option
	}{
		{"nil client", nil, nil},
		{"relative prefix", c, []esdb.Option{esdb.WithSubjectPrefix("orchestrix")}},
		{"prefix with a dot", c, []esdb.Option{esdb.WithSubjectPrefix("/a.b")}},
		{"bad type prefix", c, []esdb.Option{esdb.WithEventTypePrefix("x")}},
		{"empty source", c, []esdb.Option{esdb.WithSource("")}},
		{"zero size", c, []esdb.Option{esdb.WithMaxEventSize(0)}},
		{"zero attempts", c, []esdb.Option{esdb.WithMaxAppendAttempts(0)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := esdb.New(tc.c, tc.opts...); !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
	// Every problem is reported at once.
	_, err = esdb.New(nil, esdb.WithSource(""), esdb.WithMaxEventSize(-1))
	if err == nil || !strings.Contains(err.Error(), "client is nil") || !strings.Contains(err.Error(), "source is empty") {
		t.Fatalf("err = %v, want all problems", err)
	}
}

func TestStoreConcurrentAnyAppends(t *testing.T) {
	s, _ := newStore(t)
	const writers = 8
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			if _, err := s.Append(t.Context(), "any", stores.Any, storetest.Events(fmt.Sprintf("W%d", w), 2)); err != nil {
				t.Errorf("writer %d: %v", w, err)
			}
		})
	}
	wg.Wait()
	got := storetest.ReadStream(t, s, "any", 0)
	if len(got) != 2*writers {
		t.Fatalf("stream has %d events, want %d", len(got), 2*writers)
	}
	for i := 0; i < len(got); i += 2 {
		if got[i].Type != got[i+1].Type {
			t.Fatalf("appends interleaved at version %d: %s then %s", i+1, got[i].Type, got[i+1].Type)
		}
	}
}

func TestStoreForeignEvents(t *testing.T) {
	s, b := newStore(t)
	ctx := t.Context()
	// Someone else writes into the store's subjects.
	_, err := b.client.WriteEvents(ctx, []esdb.EventCandidate{{
		Source: "https://other.example", Subject: s.StreamSubject("x"), Type: "io.example.thing-happened", Data: []byte(`{"a":1}`),
	}})
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	for _, err := range s.ReadStream(ctx, "x", 0) {
		if !errors.Is(err, esdb.ErrForeignEvent) {
			t.Fatalf("ReadStream err = %v, want ErrForeignEvent", err)
		}
	}
	if _, err := s.Append(ctx, "x", stores.Any, storetest.Events("A", 1)); !errors.Is(err, esdb.ErrForeignEvent) {
		t.Fatalf("Append err = %v, want ErrForeignEvent", err)
	}
	for _, err := range s.ReadAll(ctx, stores.Cursor{}, 0) {
		if !errors.Is(err, esdb.ErrForeignEvent) {
			t.Fatalf("ReadAll err = %v, want ErrForeignEvent", err)
		}
	}
}

func TestStoreTimeDefaultsToServerTime(t *testing.T) {
	s, _ := newStore(t)
	before := time.Now().Add(-time.Minute)
	if _, err := s.Append(t.Context(), "t", stores.NoStream, storetest.Events("A", 1)); err != nil {
		t.Fatal(err)
	}
	got := storetest.ReadStream(t, s, "t", 0)
	if got[0].Time.Before(before) || got[0].ID == "" || got[0].Subject != "t" {
		t.Fatalf("defaults not filled: %+v", got[0].Metadata)
	}
}

// The store records rejections (stores.RejectionRecorder) in the command's
// record subject.
var _ stores.RejectionRecorder = (*esdb.Store)(nil)

// TestStoreRejections: a rejection is a CommandRejectedType event in the
// command's subject, its reason comes back byte for byte, and racing
// decisions of one command ID record exactly one of them.
func TestStoreRejections(t *testing.T) {
	s, b := newStore(t)
	ctx := t.Context()
	reason := []byte(`{ "code": "insufficient_funds", "html": "<b>" }`) // not compact: travels as base64
	if _, err := s.AppendDecisions(ctx, nil, []stores.RejectedCommand{{CommandID: "cmd/r1", StreamID: "acct-1", Reason: reason}}); err != nil {
		t.Fatalf("AppendDecisions: %v", err)
	}
	var raw []esdb.Event
	for e, err := range b.client.ReadEvents(ctx, b.prefix+"/commands/cmd_2Fr1", esdb.ReadOptions{}) {
		if err != nil {
			t.Fatalf("read record: %v", err)
		}
		raw = append(raw, e)
	}
	if len(raw) != 1 || raw[0].Type != esdb.CommandRejectedType {
		t.Fatalf("command subject holds %+v, want one %s event", raw, esdb.CommandRejectedType)
	}
	got, ok, err := s.FindCommand(ctx, "cmd/r1")
	if err != nil || !ok || !bytes.Equal(got.Rejection, reason) || got.StreamID != "acct-1" || got.ToVersion != 0 {
		t.Fatalf("FindCommand = %+v (%s), %v, %v; want the reason byte for byte", got, got.Rejection, ok, err)
	}
	if all := storetest.ReadAll(t, s, stores.Cursor{}); len(all) != 0 {
		t.Errorf("a rejection put %d events into the log", len(all))
	}

	const deciders = 8
	var wg sync.WaitGroup
	errs := make([]error, deciders)
	for d := range deciders {
		wg.Go(func() {
			reqs := []stores.AppendRequest{{StreamID: fmt.Sprintf("side-%d", d), Expected: stores.NoStream, Events: storetest.Events("Side", 1)}}
			_, errs[d] = s.AppendDecisions(ctx, reqs, []stores.RejectedCommand{{CommandID: "c-race", StreamID: "acct-2", Reason: fmt.Appendf(nil, `{"by":%d}`, d)}})
		})
	}
	wg.Wait()
	winner := -1
	for d, err := range errs {
		switch {
		case err == nil && winner < 0:
			winner = d
		case err == nil:
			t.Fatalf("deciders %d and %d both recorded c-race", winner, d)
		case !errors.Is(err, stores.ErrConflict):
			t.Fatalf("decider %d: %v, want a conflict", d, err)
		}
	}
	if winner < 0 {
		t.Fatal("no decider recorded c-race")
	}
	got, ok, err = s.FindCommand(ctx, "c-race")
	if want := fmt.Sprintf(`{"by":%d}`, winner); err != nil || !ok || string(got.Rejection) != want {
		t.Fatalf("FindCommand(c-race) = %s, %v, %v; want the winner's %s", got.Rejection, ok, err, want)
	}
	for d := range deciders {
		evs := storetest.ReadStream(t, s, fmt.Sprintf("side-%d", d), 0)
		if want := map[bool]int{true: 1, false: 0}[d == winner]; len(evs) != want {
			t.Errorf("side-%d has %d events, want %d: a losing decision must write nothing", d, len(evs), want)
		}
	}
}

// TestStoreCommandLookupsBatched: an append looks up all its command IDs
// in one request, not one read per ID (before: 1 + 40 read-events for 40
// requests on one stream).
func TestStoreCommandLookupsBatched(t *testing.T) {
	s, b := newStore(t)
	needDouble(t, b)
	ctx := t.Context()
	const n = 40
	reqs := make([]stores.AppendRequest, n)
	for i := range reqs {
		evs := storetest.Events("Batched", 1)
		evs[0].CommandID = fmt.Sprintf("cmd-%d", i)
		reqs[i] = stores.AppendRequest{StreamID: "batched", Expected: stores.Any, Events: evs}
	}
	reads, queries := b.srv.Requests("read-events"), b.srv.Requests("run-eventql-query")
	if _, err := s.AppendMany(ctx, reqs); err != nil {
		t.Fatalf("AppendMany: %v", err)
	}
	reads, queries = b.srv.Requests("read-events")-reads, b.srv.Requests("run-eventql-query")-queries
	t.Logf("AppendMany of %d commands on one stream: %d read-events, %d run-eventql-query", n, reads, queries)
	if reads+queries > 2 {
		t.Fatalf("AppendMany of %d commands on one stream made %d read-events and %d run-eventql-query requests, want 1 head read and 1 lookup", n, reads, queries)
	}
	// Appending them again: every request is a duplicate, found at once.
	dup, err := s.AppendMany(ctx, reqs)
	if err != nil || len(dup) != n || !dup[n-1].Duplicate || dup[n-1].ToVersion != n {
		t.Fatalf("AppendMany again = %v (last %+v), want %d duplicates", err, dup[len(dup)-1], n)
	}

	// FindCommands: accepted, rejected, unknown and repeated IDs, more
	// than one query's worth.
	if _, err := s.AppendDecisions(ctx, nil, []stores.RejectedCommand{{CommandID: "cmd-rejected", StreamID: "batched", Reason: []byte(`{"code":"no"}`)}}); err != nil {
		t.Fatal(err)
	}
	ids := []string{"cmd-rejected", "cmd-0", "cmd-0"}
	for i := range 300 {
		ids = append(ids, fmt.Sprintf("unknown-%d", i))
	}
	ids = append(ids, fmt.Sprintf("cmd-%d", n-1))
	reads, queries = b.srv.Requests("read-events"), b.srv.Requests("run-eventql-query")
	found, err := s.FindCommands(ctx, ids)
	if err != nil {
		t.Fatalf("FindCommands: %v", err)
	}
	reads, queries = b.srv.Requests("read-events")-reads, b.srv.Requests("run-eventql-query")-queries
	if reads != 0 || queries != 2 {
		t.Errorf("FindCommands of %d IDs made %d reads and %d queries, want 0 and 2", len(ids), reads, queries)
	}
	if len(found) != 3 || string(found["cmd-rejected"].Rejection) != `{"code":"no"}` || found["cmd-0"].ToVersion != 1 || found[fmt.Sprintf("cmd-%d", n-1)].FromVersion != n || !found["cmd-0"].Duplicate {
		t.Fatalf("FindCommands = %+v", found)
	}
}

// countingTransport counts the response bytes of read-events requests.
type countingTransport struct {
	mu    sync.Mutex
	bytes int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && strings.HasSuffix(r.URL.Path, "/read-events") {
		resp.Body = &countingBody{ReadCloser: resp.Body, c: c}
	}
	return resp, err
}

func (c *countingTransport) take() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.bytes
	c.bytes = 0
	return n
}

type countingBody struct {
	io.ReadCloser
	c *countingTransport
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.c.mu.Lock()
	b.c.bytes += int64(n)
	b.c.mu.Unlock()
	return n, err
}

// TestStoreReadStreamFromVersion: ReadStream(after) yields exactly the
// versions after `after` on every path (tail in memory, skip from the
// start, lower bound from the ID found backwards), and reading the last
// few events of a long stream transfers a few events, not the stream
// (before: ReadStream(1995) of 2,000 events read all 2,000).
func TestStoreReadStreamFromVersion(t *testing.T) {
	_, b := newStore(t)
	needDouble(t, b)
	counter := &countingTransport{}
	c, err := esdb.NewClient(b.srv.URL, token, esdb.WithHTTPClient(&http.Client{Transport: counter}))
	if err != nil {
		t.Fatal(err)
	}
	s, err := esdb.New(c, esdb.WithSubjectPrefix(b.prefix))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const n = 2000
	for range n / 500 {
		if _, err := s.Append(ctx, "long", stores.Any, storetest.Events("L", 500)); err != nil {
			t.Fatal(err)
		}
	}
	// Another stream's events interleave in the log.
	if _, err := s.Append(ctx, "other", stores.Any, storetest.Events("O", 3)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, "long", stores.Any, storetest.Events("L", 1)); err != nil {
		t.Fatal(err)
	}
	const total = n + 1
	counter.take()
	if got := storetest.ReadStream(t, s, "long", 0); len(got) != total {
		t.Fatalf("full read: %d events", len(got))
	}
	fullBytes := counter.take()
	for _, after := range []uint64{1, 10, 511, 600, 1000, 1400, 1488, 1489, 1490, 1500, 1995, 2000, total, 2500} {
		got := storetest.ReadStream(t, s, "long", after)
		want := int(max(0, int64(total)-int64(after)))
		if len(got) != want {
			t.Fatalf("ReadStream(%d) yielded %d events, want %d", after, len(got), want)
		}
		for i, e := range got {
			if e.Version != after+1+uint64(i) || e.StreamID != "long" {
				t.Fatalf("ReadStream(%d): event %d is %s@%d", after, i, e.StreamID, e.Version)
			}
		}
		bytes := counter.take()
		if after == 1995 {
			t.Logf("ReadStream(1995) of %d events read %d bytes, the full stream %d", total, bytes, fullBytes)
			// The client reads ahead at most 128 KiB (its 64 KiB buffer,
			// and the drain of a read it abandons) whatever after is.
			if bytes > fullBytes/4 {
				t.Errorf("ReadStream(1995) read %d bytes, the full stream is %d: the cost grows with after", bytes, fullBytes)
			}
		}
	}
	if got := storetest.ReadStream(t, s, "missing", 5); len(got) != 0 {
		t.Fatalf("missing stream yielded %d events", len(got))
	}
}
