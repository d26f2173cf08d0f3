// Package storetest is the conformance suite every stores.EventStore must
// pass. A store's own test calls Run with a factory that returns a fresh,
// empty store for each subtest:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) stores.EventStore { return memory.New() })
//	}
//
// Stores that can hold an append's transaction open implement
// PendingAppender; for them the suite also checks that reading the log
// never skips an event committed late by a slower concurrent transaction.
//
// Optional capabilities (stores.MultiStreamReader, stores.RejectionRecorder)
// are tested where a store has them and skipped otherwise; a store that
// must record rejections passes RequireRejections, so lacking
// stores.RejectionRecorder fails the Rejections subtest instead:
//
//	storetest.Run(t, newStore, storetest.RequireRejections())
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
)

// Factory returns a fresh, empty store. It registers its own cleanup.
type Factory func(t *testing.T) stores.EventStore

// PendingAppender is implemented by stores (or test adapters of them)
// whose appends run in a transaction that can be held open.
type PendingAppender interface {
	// BeginAppend performs the append in a transaction and leaves it open;
	// finish commits it (commit=true) or rolls it back.
	BeginAppend(ctx context.Context, streamID string, expected stores.ExpectedVersion, events []orchestrix.Event) (finish func(ctx context.Context, commit bool) error, err error)
}

// Option configures Run.
type Option func(*config)

type config struct {
	requireRejections bool
}

// RequireRejections makes the Rejections subtest fail, instead of skip,
// when the store does not implement stores.RejectionRecorder: pass it for
// every store that must record rejected commands, so losing the
// capability is a failure and not a silent skip.
func RequireRejections() Option { return func(c *config) { c.requireRejections = true } }

// Run runs the conformance suite.
func Run(t *testing.T, newStore Factory, opts ...Option) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	t.Run("AppendAndReadStream", func(t *testing.T) { testAppendRead(t, newStore(t)) })
	t.Run("ExpectedVersion", func(t *testing.T) { testExpected(t, newStore(t)) })
	t.Run("ConcurrentWriters", func(t *testing.T) { testConcurrentWriters(t, newStore(t)) })
	t.Run("CommandDedup", func(t *testing.T) { testCommandDedup(t, newStore(t)) })
	t.Run("AppendMany", func(t *testing.T) { testAppendMany(t, newStore(t)) })
	t.Run("CommandTwiceInOneBatch", func(t *testing.T) { testCommandTwiceInOneBatch(t, newStore(t)) })
	t.Run("ReadAll", func(t *testing.T) { testReadAll(t, newStore(t)) })
	t.Run("BadInput", func(t *testing.T) { testBadInput(t, newStore(t)) })
	t.Run("Snapshots", func(t *testing.T) { testSnapshots(t, newStore(t)) })
	t.Run("GapSafeReadAll", func(t *testing.T) {
		s := newStore(t)
		p, ok := s.(PendingAppender)
		if !ok {
			t.Skip("store does not implement storetest.PendingAppender (commits in position order)")
		}
		testGapSafe(t, s, p)
	})
	t.Run("MultiStreamReader", func(t *testing.T) {
		s := newStore(t)
		m, ok := s.(stores.MultiStreamReader)
		if !ok {
			t.Skip("store does not implement stores.MultiStreamReader")
		}
		testMultiStreamReader(t, s, m)
	})
	t.Run("Rejections", func(t *testing.T) {
		s := newStore(t)
		r, ok := s.(stores.RejectionRecorder)
		if !ok && cfg.requireRejections {
			t.Fatalf("store %T does not implement stores.RejectionRecorder, which RequireRejections requires", s)
		}
		if !ok {
			t.Skip("store does not implement stores.RejectionRecorder")
		}
		testRejections(t, s, r)
	})
}

// Events returns n JSON events of the given type for tests.
func Events(typ string, n int) []orchestrix.Event {
	out := make([]orchestrix.Event, n)
	for i := range out {
		out[i] = orchestrix.Event{
			Metadata:    orchestrix.Metadata{Type: typ, Source: "/storetest"},
			ContentType: "application/json",
			Data:        fmt.Appendf(nil, `{"n":%d}`, i),
		}
	}
	return out
}

func withCommand(evs []orchestrix.Event, id string) []orchestrix.Event {
	for i := range evs {
		evs[i].CommandID = id
	}
	return evs
}

func mustAppend(t testing.TB, s stores.EventStore, stream string, exp stores.ExpectedVersion, evs []orchestrix.Event) stores.AppendResult {
	t.Helper()
	r, err := s.Append(t.Context(), stream, exp, evs)
	if err != nil {
		t.Fatalf("append %s (expected %s): %v", stream, exp, err)
	}
	return r
}

// ReadStream collects a stream, failing the test on error.
func ReadStream(t testing.TB, s stores.EventStore, stream string, after uint64) []orchestrix.Event {
	t.Helper()
	var out []orchestrix.Event
	for e, err := range s.ReadStream(t.Context(), stream, after) {
		if err != nil {
			t.Fatalf("read %s: %v", stream, err)
		}
		out = append(out, e)
	}
	return out
}

// ReadAll collects the log after c, failing the test on error.
func ReadAll(t testing.TB, s stores.EventStore, c stores.Cursor) []stores.Entry {
	t.Helper()
	var out []stores.Entry
	for e, err := range s.ReadAll(t.Context(), c, 0) {
		if err != nil {
			t.Fatalf("read all: %v", err)
		}
		out = append(out, e)
	}
	return out
}

// ReadAllSettled reads the log after c until it holds want events or a
// minute has passed, and returns the last read. A gap-safe store hides
// committed events behind any transaction still running in its database
// cluster — another test's, in a parallel package — so a read straight
// after an append may be short for a while; that is the contract, not a
// failure.
func ReadAllSettled(t testing.TB, s stores.EventStore, c stores.Cursor, want int) []stores.Entry {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		got := ReadAll(t, s, c)
		if len(got) >= want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testAppendRead(t *testing.T, s stores.EventStore) {
	evs := Events("Tested", 3)
	evs[0].ID = "0190b7a4-0000-7000-8000-000000000001"
	evs[0].CorrelationID = "corr-1"
	evs[0].CausationID = "cause-1"
	evs[0].TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	evs[0].Extensions = map[string]string{"tenant": "acme"}
	evs[0].Time = time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	r := mustAppend(t, s, "acct-1", stores.NoStream, evs)
	if r.FromVersion != 1 || r.ToVersion != 3 || r.Duplicate {
		t.Fatalf("result = %+v, want versions 1..3", r)
	}
	r = mustAppend(t, s, "acct-1", stores.Exact(3), Events("Tested", 2))
	if r.FromVersion != 4 || r.ToVersion != 5 {
		t.Fatalf("second result = %+v, want versions 4..5", r)
	}
	got := ReadStream(t, s, "acct-1", 0)
	if len(got) != 5 {
		t.Fatalf("read %d events, want 5", len(got))
	}
	var lastPos uint64
	for i, e := range got {
		if e.Version != uint64(i+1) || e.StreamID != "acct-1" {
			t.Errorf("event %d: stream %q version %d", i, e.StreamID, e.Version)
		}
		if e.Position <= lastPos {
			t.Errorf("event %d: position %d not after %d", i, e.Position, lastPos)
		}
		lastPos = e.Position
		if e.ID == "" || e.Time.IsZero() || e.Type != "Tested" || e.Source != "/storetest" || e.ContentType != "application/json" {
			t.Errorf("event %d: metadata not kept: %+v", i, e.Metadata)
		}
	}
	e := got[0]
	if e.ID != evs[0].ID || e.CorrelationID != "corr-1" || e.CausationID != "cause-1" || e.TraceParent != evs[0].TraceParent ||
		e.Extensions["tenant"] != "acme" || !e.Time.Equal(evs[0].Time) || string(e.Data) != `{"n":0}` {
		t.Errorf("first event not kept as written: %+v data %s", e, e.Data)
	}
	if tail := ReadStream(t, s, "acct-1", 3); len(tail) != 2 || tail[0].Version != 4 {
		t.Errorf("read after 3: %d events", len(tail))
	}
	if none := ReadStream(t, s, "missing", 0); len(none) != 0 {
		t.Errorf("missing stream yielded %d events", len(none))
	}
	// Early stop must not leak or fail.
	for range s.ReadStream(t.Context(), "acct-1", 0) {
		break
	}
}

func testExpected(t *testing.T, s stores.EventStore) {
	mustAppend(t, s, "s", stores.Any, Events("A", 1))
	mustAppend(t, s, "s", stores.Any, Events("A", 1))
	tests := []struct {
		name string
		exp  stores.ExpectedVersion
	}{
		{"no stream on existing", stores.NoStream},
		{"behind", stores.Exact(1)},
		{"ahead", stores.Exact(5)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Append(t.Context(), "s", tc.exp, Events("B", 2))
			var ce *stores.ConflictError
			if !errors.Is(err, stores.ErrConflict) || !errors.As(err, &ce) || ce.StreamID != "s" {
				t.Fatalf("err = %v, want a *ConflictError for stream s", err)
			}
		})
	}
	if got := ReadStream(t, s, "s", 0); len(got) != 2 {
		t.Fatalf("conflicting appends wrote: stream has %d events, want 2", len(got))
	}
	mustAppend(t, s, "s", stores.Exact(2), Events("C", 1))
}

func testConcurrentWriters(t *testing.T, s stores.EventStore) {
	const writers, rounds = 16, 10
	wins := make([][]int, rounds)
	var mu sync.Mutex
	for round := range rounds {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for w := range writers {
			wg.Go(func() {
				<-start
				evs := Events(fmt.Sprintf("W%d", w), 1)
				_, err := s.Append(t.Context(), "contended", stores.Exact(uint64(round)), evs)
				switch {
				case err == nil:
					mu.Lock()
					wins[round] = append(wins[round], w)
					mu.Unlock()
				case !errors.Is(err, stores.ErrConflict):
					t.Errorf("writer %d round %d: %v, want nil or a conflict", w, round, err)
				}
			})
		}
		close(start)
		wg.Wait()
		if len(wins[round]) != 1 {
			t.Fatalf("round %d: %d winners, want exactly 1", round, len(wins[round]))
		}
	}
	got := ReadStream(t, s, "contended", 0)
	if len(got) != rounds {
		t.Fatalf("stream has %d events, want %d", len(got), rounds)
	}
	for i, e := range got {
		if want := fmt.Sprintf("W%d", wins[i][0]); e.Type != want {
			t.Errorf("version %d written by %s, winner was %s", i+1, e.Type, want)
		}
	}
}

func testCommandDedup(t *testing.T, s stores.EventStore) {
	first := mustAppend(t, s, "c", stores.Any, withCommand(Events("Done", 2), "cmd-1"))
	again := mustAppend(t, s, "c", stores.Any, withCommand(Events("Done", 2), "cmd-1"))
	if !again.Duplicate || again.FromVersion != first.FromVersion || again.ToVersion != first.ToVersion {
		t.Fatalf("second append = %+v, want duplicate of %+v", again, first)
	}
	// Even with a version expectation that would otherwise conflict.
	if r, err := s.Append(t.Context(), "c", stores.NoStream, withCommand(Events("Done", 1), "cmd-1")); err != nil || !r.Duplicate {
		t.Fatalf("duplicate with stale expectation = %+v, %v; want duplicate", r, err)
	}
	if got := ReadStream(t, s, "c", 0); len(got) != 2 || got[0].CommandID != "cmd-1" {
		t.Fatalf("stream has %d events, want the command's 2 once", len(got))
	}
	r, ok, err := s.FindCommand(t.Context(), "cmd-1")
	if err != nil || !ok || r.ToVersion != 2 || r.StreamID != "c" {
		t.Fatalf("FindCommand = %+v, %v, %v", r, ok, err)
	}
	if _, ok, err := s.FindCommand(t.Context(), "cmd-unknown"); ok || err != nil {
		t.Fatalf("FindCommand(unknown) = %v, %v", ok, err)
	}
	// Concurrent duplicates: exactly one append writes.
	var wg sync.WaitGroup
	var mu sync.Mutex
	written := 0
	for range 8 {
		wg.Go(func() {
			r, err := s.Append(t.Context(), "d", stores.Any, withCommand(Events("Once", 1), "cmd-2"))
			if err != nil && !errors.Is(err, stores.ErrConflict) {
				t.Errorf("concurrent duplicate: %v", err)
			}
			if err == nil && !r.Duplicate {
				mu.Lock()
				written++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if got := ReadStream(t, s, "d", 0); len(got) != 1 || written != 1 {
		t.Fatalf("concurrent duplicates wrote %d events in %d appends, want 1", len(got), written)
	}
}

func testAppendMany(t *testing.T, s stores.EventStore) {
	mustAppend(t, s, "m2", stores.NoStream, withCommand(Events("X", 1), "cmd-m2"))
	res, err := s.AppendMany(t.Context(), []stores.AppendRequest{
		{StreamID: "m1", Expected: stores.NoStream, Events: Events("A", 2)},
		{StreamID: "m2", Expected: stores.Exact(1), Events: withCommand(Events("B", 1), "cmd-m2")},
		{StreamID: "m3", Expected: stores.Any, Events: Events("C", 1)},
	})
	if err != nil {
		t.Fatalf("AppendMany: %v", err)
	}
	if res[0].ToVersion != 2 || !res[1].Duplicate || res[2].ToVersion != 1 {
		t.Fatalf("results = %+v", res)
	}
	res, err = s.AppendMany(t.Context(), []stores.AppendRequest{{StreamID: "m6", Expected: stores.NoStream, Events: withCommand(Events("H", 2), "cmd-m6")}})
	if err != nil || res[0].ToVersion != 2 {
		t.Fatalf("AppendMany with a command = %+v, %v", res, err)
	}
	for _, e := range ReadStream(t, s, "m6", 0) {
		if e.CommandID != "cmd-m6" {
			t.Fatalf("event %d of an AppendMany has command id %q, want cmd-m6", e.Version, e.CommandID)
		}
	}
	if r, ok, err := s.FindCommand(t.Context(), "cmd-m6"); err != nil || !ok || r.ToVersion != 2 {
		t.Fatalf("FindCommand after AppendMany = %+v, %v, %v", r, ok, err)
	}
	_, err = s.AppendMany(t.Context(), []stores.AppendRequest{
		{StreamID: "m4", Expected: stores.NoStream, Events: Events("D", 1)},
		{StreamID: "m1", Expected: stores.Exact(1), Events: Events("E", 1)},
	})
	var ce *stores.ConflictError
	if !errors.As(err, &ce) || ce.StreamID != "m1" {
		t.Fatalf("conflicting AppendMany err = %v, want conflict on m1", err)
	}
	if got := ReadStream(t, s, "m4", 0); len(got) != 0 {
		t.Fatalf("a conflicting AppendMany wrote %d events to m4", len(got))
	}
	// Two requests for one stream chain their versions.
	res, err = s.AppendMany(t.Context(), []stores.AppendRequest{
		{StreamID: "m5", Expected: stores.NoStream, Events: Events("F", 1)},
		{StreamID: "m5", Expected: stores.Exact(1), Events: Events("G", 1)},
	})
	if err != nil || res[1].ToVersion != 2 {
		t.Fatalf("chained AppendMany = %+v, %v", res, err)
	}
}

// testCommandTwiceInOneBatch: a command ID in two requests of one
// AppendMany (a sender that resent it, a redrive) is written once; the
// later copy is reported Duplicate with the first copy's versions, writes
// nothing and checks no expectation, and the requests after it see the
// stream as the first copy left it.
func testCommandTwiceInOneBatch(t *testing.T, s stores.EventStore) {
	res, err := s.AppendMany(t.Context(), []stores.AppendRequest{
		{StreamID: "tw", Expected: stores.NoStream, Events: withCommand(Events("A", 2), "cmd-tw")},
		{StreamID: "tw", Expected: stores.Exact(2), Events: withCommand(Events("A", 2), "cmd-tw")},
		{StreamID: "tw", Expected: stores.Exact(2), Events: withCommand(Events("B", 1), "cmd-tw2")},
		{StreamID: "tw", Expected: stores.Exact(3), Events: withCommand(Events("A", 2), "cmd-tw")},
	})
	if err != nil {
		t.Fatalf("AppendMany with a command twice: %v", err)
	}
	want := []stores.AppendResult{
		{StreamID: "tw", FromVersion: 1, ToVersion: 2},
		{StreamID: "tw", FromVersion: 1, ToVersion: 2, Duplicate: true},
		{StreamID: "tw", FromVersion: 3, ToVersion: 3},
		{StreamID: "tw", FromVersion: 1, ToVersion: 2, Duplicate: true},
	}
	for i := range want {
		got := res[i]
		if got.StreamID != want[i].StreamID || got.FromVersion != want[i].FromVersion || got.ToVersion != want[i].ToVersion || got.Duplicate != want[i].Duplicate {
			t.Errorf("result %d = %+v, want %+v", i, got, want[i])
		}
	}
	evs := ReadStream(t, s, "tw", 0)
	if len(evs) != 3 || evs[0].CommandID != "cmd-tw" || evs[2].CommandID != "cmd-tw2" {
		t.Fatalf("stream has %d events, want cmd-tw's 2 once and cmd-tw2's 1", len(evs))
	}
	if r, ok, err := s.FindCommand(t.Context(), "cmd-tw"); err != nil || !ok || r.FromVersion != 1 || r.ToVersion != 2 {
		t.Fatalf("FindCommand(cmd-tw) = %+v, %v, %v; want versions 1-2", r, ok, err)
	}
}

// testMultiStreamReader: ReadStreams yields each named stream's events
// after its version, stream by stream in the order named, across pages
// (one stream longer than any page), and nothing of a missing stream;
// LoadSnapshots returns the latest snapshot of the streams that have one.
func testMultiStreamReader(t *testing.T, s stores.EventStore, m stores.MultiStreamReader) {
	mustAppend(t, s, "ms-a", stores.NoStream, Events("A", 3))
	for range 5 { // 2,500 events, in appends of 500
		mustAppend(t, s, "ms-long", stores.Any, Events("L", 500))
	}
	mustAppend(t, s, "ms-b", stores.NoStream, Events("B", 2))
	reads := []stores.StreamRead{{StreamID: "ms-b"}, {StreamID: "ms-long", After: 10}, {StreamID: "ms-missing"}, {StreamID: "ms-a", After: 1}}
	var got []string
	for e, err := range m.ReadStreams(t.Context(), reads) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s@%d", e.StreamID, e.Version))
	}
	var want []string
	want = append(want, "ms-b@1", "ms-b@2")
	for v := 11; v <= 2500; v++ {
		want = append(want, fmt.Sprintf("ms-long@%d", v))
	}
	want = append(want, "ms-a@2", "ms-a@3")
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ReadStreams yielded %d events, want %d in order (first differences: got %v..., want %v...)", len(got), len(want), got[:min(4, len(got))], want[:4])
	}
	if err := s.SaveSnapshot(t.Context(), stores.Snapshot{StreamID: "ms-a", Version: 2, Type: "snap", ContentType: "application/json", Data: []byte(`{"n":2}`)}); err != nil {
		t.Fatal(err)
	}
	snaps, err := m.LoadSnapshots(t.Context(), []string{"ms-a", "ms-b", "ms-missing"})
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 1 || snaps["ms-a"].Version != 2 || string(snaps["ms-a"].Data) != `{"n":2}` || snaps["ms-a"].Type != "snap" {
		t.Fatalf("LoadSnapshots = %+v, want ms-a's snapshot at version 2 only", snaps)
	}
}

func testReadAll(t *testing.T, s stores.EventStore) {
	streams := []string{"r1", "r2", "r3"}
	for i := range 30 {
		mustAppend(t, s, streams[i%3], stores.Any, Events("R", 1+i%2))
	}
	all := ReadAllSettled(t, s, stores.Cursor{}, 45)
	if len(all) != 45 {
		t.Fatalf("read %d events, want 45", len(all))
	}
	checkLog(t, all)
	// Resume from every cursor.
	for _, i := range []int{0, 7, 44} {
		rest := ReadAll(t, s, all[i].Cursor)
		if len(rest) != 44-i || (len(rest) > 0 && rest[0].Position != all[i+1].Position) {
			t.Fatalf("resume after %d: %d events", i, len(rest))
		}
	}
	var n int
	for range s.ReadAll(t.Context(), stores.Cursor{}, 10) {
		n++
	}
	if n != 10 {
		t.Fatalf("limit 10 yielded %d", n)
	}
}

// checkLog asserts that entries hold no position twice and keep each
// stream's versions consecutive.
func checkLog(t testing.TB, entries []stores.Entry) {
	t.Helper()
	seen := map[uint64]bool{}
	next := map[string]uint64{}
	for _, e := range entries {
		if seen[e.Position] {
			t.Fatalf("position %d read twice", e.Position)
		}
		seen[e.Position] = true
		if want := next[e.StreamID] + 1; e.Version != want && next[e.StreamID] != 0 {
			t.Fatalf("stream %s: version %d read after %d", e.StreamID, e.Version, want-1)
		}
		next[e.StreamID] = e.Version
	}
}

func testBadInput(t *testing.T, s stores.EventStore) {
	big := Events("Big", 1)
	big[0].Data = make([]byte, stores.DefaultMaxEventSize+1)
	nilData := Events("Nil", 1)
	nilData[0].Data = nil
	noType := Events("", 1)
	tests := []struct {
		name   string
		stream string
		events []orchestrix.Event
	}{
		{"empty stream id", "", Events("A", 1)},
		{"control byte in stream id", "a\x00b", Events("A", 1)},
		{"no events", "bad", nil},
		{"nil data", "bad", nilData},
		{"empty type", "bad", noType},
		{"oversized", "bad", big},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Append(t.Context(), tc.stream, stores.Any, tc.events)
			if !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
	if all := ReadAll(t, s, stores.Cursor{}); len(all) != 0 {
		t.Fatalf("bad input wrote %d events", len(all))
	}
	for _, err := range s.ReadStream(t.Context(), "", 0) {
		if !errors.Is(err, orchestrix.ErrInvalid) {
			t.Fatalf("ReadStream(\"\") err = %v, want ErrInvalid", err)
		}
	}
}

func testSnapshots(t *testing.T, s stores.EventStore) {
	if _, ok, err := s.LoadSnapshot(t.Context(), "snap"); ok || err != nil {
		t.Fatalf("LoadSnapshot(empty) = %v, %v", ok, err)
	}
	for _, v := range []uint64{5, 9, 7} {
		err := s.SaveSnapshot(t.Context(), stores.Snapshot{StreamID: "snap", Version: v, Type: "State", ContentType: "application/json", Data: fmt.Appendf(nil, `{"v":%d}`, v)})
		if err != nil {
			t.Fatalf("SaveSnapshot(%d): %v", v, err)
		}
	}
	snap, ok, err := s.LoadSnapshot(t.Context(), "snap")
	if err != nil || !ok || snap.Version != 9 || string(snap.Data) != `{"v":9}` || snap.Type != "State" {
		t.Fatalf("LoadSnapshot = %+v, %v, %v; want version 9", snap, ok, err)
	}
}

// testGapSafe holds several append transactions open, commits them in
// reverse order (one is rolled back, one stays open longest) while a reader
// polls the log, and checks that the reader gets every committed event
// exactly once, in each stream's order, and no rolled-back one.
func testGapSafe(t *testing.T, s stores.EventStore, p PendingAppender) {
	ctx := t.Context()
	mustAppend(t, s, "shared", stores.NoStream, Events("V1", 1))

	type pending struct {
		stream string
		finish func(context.Context, bool) error
	}
	var open []pending
	begin := func(stream string, exp stores.ExpectedVersion) {
		t.Helper()
		f, err := p.BeginAppend(ctx, stream, exp, Events("P", 2))
		if err != nil {
			t.Fatalf("begin append %s: %v", stream, err)
		}
		open = append(open, pending{stream, f})
	}
	begin("long", stores.NoStream) // the long-open one
	for i := range 5 {
		begin(fmt.Sprintf("tx%d", i), stores.NoStream)
	}
	// A long transaction now sits between shared's version 1 and 2.
	mustAppend(t, s, "shared", stores.Exact(1), Events("V2", 1))

	var (
		mu     sync.Mutex
		cursor stores.Cursor
		got    []stores.Entry
	)
	poll := func() {
		mu.Lock()
		defer mu.Unlock()
		for e, err := range s.ReadAll(ctx, cursor, 0) {
			if err != nil {
				t.Errorf("read all: %v", err)
				return
			}
			got = append(got, e)
			cursor = e.Cursor
		}
	}
	poll()
	for i := len(open) - 1; i >= 1; i-- {
		commit := i != 2 // tx1 rolls back
		if err := open[i].finish(ctx, commit); err != nil {
			t.Fatalf("finish %s: %v", open[i].stream, err)
		}
		mustAppend(t, s, fmt.Sprintf("between%d", i), stores.NoStream, Events("B", 1))
		poll()
	}
	poll()
	if err := open[0].finish(ctx, true); err != nil {
		t.Fatalf("finish long: %v", err)
	}
	// Up to 90 s: another package's test may hold a transaction open on
	// the same cluster (the outbox's long-transaction test holds one 30 s).
	deadline := time.Now().Add(90 * time.Second)
	for {
		poll()
		mu.Lock()
		n := len(got)
		mu.Unlock()
		// 2 shared + 5 between + 4 committed tx × 2 + long × 2
		if n >= 17 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	poll()
	checkLog(t, got)
	streams := map[string]int{}
	for _, e := range got {
		streams[e.StreamID]++
	}
	want := map[string]int{"shared": 2, "long": 2, "tx0": 2, "tx2": 2, "tx3": 2, "tx4": 2}
	for i := 1; i <= 5; i++ {
		want[fmt.Sprintf("between%d", i)] = 1
	}
	for k, v := range want {
		if streams[k] != v {
			t.Errorf("stream %s: read %d events, want %d", k, streams[k], v)
		}
	}
	if streams["tx1"] != 0 {
		t.Errorf("rolled-back stream tx1 was read: %d events", streams["tx1"])
	}
	if len(got) != 17 {
		t.Errorf("read %d events, want 17", len(got))
	}
}

// RunLongStream appends n events to one stream in batches and reads them
// back, failing if the heap grows by more than maxGrowth bytes while
// reading: a store's stream read must not hold the whole stream.
func RunLongStream(t *testing.T, s stores.EventStore, n int, maxGrowth uint64) {
	const batch = 5000
	for v := 0; v < n; v += batch {
		k := min(batch, n-v)
		if _, err := s.Append(t.Context(), "long-stream", stores.Exact(uint64(v)), Events("L", k)); err != nil {
			t.Fatalf("append at %d: %v", v, err)
		}
	}
	runtime.GC()
	var base, ms runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak uint64
	var count uint64
	for e, err := range s.ReadStream(t.Context(), "long-stream", 0) {
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		count++
		if e.Version != count {
			t.Fatalf("version %d at index %d", e.Version, count)
		}
		if count%50000 == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}
	if count != uint64(n) {
		t.Fatalf("read %d events, want %d", count, n)
	}
	if peak > base.HeapInuse && peak-base.HeapInuse > maxGrowth {
		t.Fatalf("heap grew by %d MiB while reading %d events (limit %d MiB)", (peak-base.HeapInuse)>>20, n, maxGrowth>>20)
	}
	t.Logf("read %d events; heap in use %d MiB before, peak %d MiB", n, base.HeapInuse>>20, peak>>20)
}

// testRejections: a recorded rejection is found with its reason, a later
// append with its command ID writes nothing, recording an ID that is
// already recorded conflicts and writes nothing else, and bad input is
// refused.
func testRejections(t *testing.T, s stores.EventStore, r stores.RejectionRecorder) {
	ctx := t.Context()
	reason := []byte(`{"code":"insufficient_funds"}`)
	res, err := r.AppendDecisions(ctx,
		[]stores.AppendRequest{{StreamID: "acct-1", Expected: stores.NoStream, Events: withCommand(Events("Opened", 1), "c-open")}},
		[]stores.RejectedCommand{{CommandID: "c-rejected", StreamID: "acct-1", Reason: reason}})
	if err != nil || len(res) != 1 || res[0].ToVersion != 1 {
		t.Fatalf("AppendDecisions = %+v, %v; want one result at version 1", res, err)
	}
	prev, ok, err := s.FindCommand(ctx, "c-rejected")
	if err != nil || !ok || prev.Rejection == nil || prev.ToVersion != 0 {
		t.Fatalf("FindCommand(rejected) = %+v, %v, %v; want a rejection without versions", prev, ok, err)
	}
	var got, want map[string]any
	if err := json.Unmarshal(prev.Rejection, &got); err != nil {
		t.Fatalf("recorded reason %q: %v", prev.Rejection, err)
	}
	_ = json.Unmarshal(reason, &want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("recorded reason = %s, want %s", prev.Rejection, reason)
	}
	if acc, ok, _ := s.FindCommand(ctx, "c-open"); !ok || acc.Rejection != nil || acc.ToVersion != 1 {
		t.Errorf("FindCommand(accepted) = %+v, %v; want version 1 and no rejection", acc, ok)
	}
	// A redelivered copy that would now be accepted writes nothing.
	dup, err := s.AppendMany(ctx, []stores.AppendRequest{{StreamID: "acct-1", Expected: stores.Exact(1), Events: withCommand(Events("Withdrawn", 1), "c-rejected")}})
	if err != nil || len(dup) != 1 || !dup[0].Duplicate || dup[0].Rejection == nil {
		t.Fatalf("append of a rejected command = %+v, %v; want a duplicate carrying the rejection", dup, err)
	}
	// Recording a decision for an ID already recorded conflicts, atomically.
	for _, id := range []string{"c-open", "c-rejected"} {
		_, err = r.AppendDecisions(ctx,
			[]stores.AppendRequest{{StreamID: "acct-2", Expected: stores.NoStream, Events: Events("Opened", 1)}},
			[]stores.RejectedCommand{{CommandID: id, StreamID: "acct-1", Reason: reason}})
		if !errors.Is(err, stores.ErrConflict) {
			t.Errorf("recording %s again = %v, want a conflict", id, err)
		}
	}
	if evs := ReadStream(t, s, "acct-2", 0); len(evs) != 0 {
		t.Errorf("a conflicting AppendDecisions wrote %d events", len(evs))
	}
	if evs := ReadStream(t, s, "acct-1", 0); len(evs) != 1 {
		t.Errorf("acct-1 has %d events, want 1", len(evs))
	}
	for _, bad := range []stores.RejectedCommand{{StreamID: "acct-1", Reason: reason}, {CommandID: "c-x", Reason: reason}, {CommandID: "c-x", StreamID: "acct-1"}, {CommandID: "c-x", StreamID: "acct-1", Reason: []byte("{")}} {
		if _, err := r.AppendDecisions(ctx, nil, []stores.RejectedCommand{bad}); !errors.Is(err, orchestrix.ErrInvalid) {
			t.Errorf("AppendDecisions(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
}
