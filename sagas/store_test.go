package sagas

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/twmb/franz-go/pkg/kgo"
)

// backend is a store under test and a view of its outbox.
type backend struct {
	store   Store
	outbox  func(t *testing.T) []outbox.Message
	cleanup func()
}

func memoryBackend(t testing.TB) backend {
	m := NewMemoryStore()
	return backend{store: m, outbox: func(*testing.T) []outbox.Message { return m.Pending() }}
}

func postgresBackend(t testing.TB) backend {
	pool := testenv.Pool(t)
	pg := pgtest.Store(t, pool)
	s, err := NewPostgresStore(pool, pg.Schema())
	if err != nil {
		t.Fatal(err)
	}
	return backend{store: s, outbox: func(t *testing.T) []outbox.Message {
		rows, err := pool.Query(t.Context(), "SELECT topic, key, value FROM "+pgx.Identifier{pg.Schema(), "outbox"}.Sanitize()+" ORDER BY position")
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (outbox.Message, error) {
			var m outbox.Message
			return m, r.Scan(&m.Topic, &m.Key, &m.Value)
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}}
}

// TestStoreConformance runs the same checks on both stores.
func TestStoreConformance(t *testing.T) {
	for name, mk := range map[string]func(testing.TB) backend{"memory": memoryBackend, "postgres": postgresBackend} {
		t.Run(name, func(t *testing.T) {
			t.Run("apply", func(t *testing.T) { testApply(t, mk(t)) })
			t.Run("timers", func(t *testing.T) { testTimers(t, mk(t)) })
			t.Run("list", func(t *testing.T) { testList(t, mk(t)) })
			t.Run("runtime", func(t *testing.T) { testRuntimeOnStore(t, mk(t)) })
			t.Run("batch", func(t *testing.T) { testApplyBatch(t, mk(t)) })
		})
	}
}

func inst(id string, v int64, s Status, at time.Time) Instance {
	return Instance{Type: "t", ID: id, DefinitionVersion: 1, Version: v, Status: s, Attempt: 1, Tries: 1, Wait: waitOutcome,
		State: json.RawMessage(`{"a":1}`), StartedAt: at, UpdatedAt: at}
}

func testApply(t *testing.T, b backend) {
	ctx := t.Context()
	s := b.store
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	msg := outbox.Message{Topic: "x.commands", Key: []byte("k"), Value: []byte("v")}
	change := func(i Instance, msgs ...outbox.Message) func(*Instance) (*Change, error) {
		return func(*Instance) (*Change, error) {
			return &Change{Instance: i, Messages: msgs, Transition: Transition{At: at, InputID: "in", InputKind: KindStart, To: i.Status, Note: "n"}}, nil
		}
	}
	if err := s.Apply(ctx, "t", "s1", "start", change(inst("s1", 1, StatusRunning, at), msg)); err != nil {
		t.Fatal(err)
	}
	called := false
	err := s.Apply(ctx, "t", "s1", "start", func(*Instance) (*Change, error) { called = true; return nil, nil })
	if !errors.Is(err, ErrDuplicateInput) || called {
		t.Fatalf("second copy of an input: err %v, fn called %v", err, called)
	}
	// A second version 1 (a racing start) is fenced, and writes nothing.
	if err := s.Apply(ctx, "t", "s1", "other-start", change(inst("s1", 1, StatusRunning, at), msg)); !errors.Is(err, ErrFenced) {
		t.Fatalf("second create: %v", err)
	}
	// A stale version is fenced.
	if err := s.Apply(ctx, "t", "s1", "in2", change(inst("s1", 3, StatusRunning, at), msg)); !errors.Is(err, ErrFenced) {
		t.Fatalf("stale version: %v", err)
	}
	// A failing fn writes nothing, not even the inbox row.
	boom := errors.New("boom")
	if err := s.Apply(ctx, "t", "s1", "in2", func(*Instance) (*Change, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("fn error: %v", err)
	}
	var seen *Instance
	if err := s.Apply(ctx, "t", "s1", "in2", func(cur *Instance) (*Change, error) {
		seen = cur
		next := *cur
		next.Version, next.Status = 2, StatusCompleted
		return &Change{Instance: next, Transition: Transition{At: at, InputID: "in2", InputKind: KindOutcome, From: cur.Status, To: next.Status}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if seen == nil || seen.Version != 1 || seen.Status != StatusRunning || string(seen.State) != `{"a": 1}` && string(seen.State) != `{"a":1}` {
		t.Fatalf("fn saw %+v", seen)
	}
	// An ignored input (nil change) is still recorded.
	if err := s.Apply(ctx, "t", "s1", "in3", func(*Instance) (*Change, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, "t", "s1", "in3", func(*Instance) (*Change, error) { return nil, nil }); !errors.Is(err, ErrDuplicateInput) {
		t.Fatalf("ignored input again: %v", err)
	}
	got, err := s.Get(ctx, "t", "s1")
	if err != nil || got.Version != 2 || got.Status != StatusCompleted || !got.StartedAt.Equal(at) {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := s.Get(ctx, "t", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
	h, err := s.History(ctx, "t", "s1")
	if err != nil || len(h) != 2 || h[0].Version != 1 || h[1].Version != 2 || h[1].From != StatusRunning || h[1].To != StatusCompleted {
		t.Fatalf("history: %+v %v", h, err)
	}
	if out := b.outbox(t); len(out) != 1 || string(out[0].Value) != "v" {
		t.Fatalf("outbox: %+v", out)
	}
}

func testTimers(t *testing.T, b backend) {
	ctx := t.Context()
	s := b.store
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	timer := func(id string, due time.Duration, try int) *Timer {
		return &Timer{Type: "t", SagaID: id, Due: at.Add(due), Fired: TimerFired{Phase: PhaseAction, Step: 0, Try: try, Kind: waitOutcome}}
	}
	for i, d := range []time.Duration{time.Second, 2 * time.Second, time.Hour} {
		id := fmt.Sprintf("s%d", i)
		if err := s.Apply(ctx, "t", id, "start", func(*Instance) (*Change, error) {
			return &Change{Instance: inst(id, 1, StatusRunning, at), Timer: timer(id, d, 1), Transition: Transition{At: at}}, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// s0: an event keeps its timer; s1: a transition replaces it.
	apply := func(id, in string, v int64, ch Change) {
		t.Helper()
		ch.Instance, ch.Transition = inst(id, v, StatusRunning, at), Transition{At: at}
		if err := s.Apply(ctx, "t", id, in, func(*Instance) (*Change, error) { return &ch, nil }); err != nil {
			t.Fatal(err)
		}
	}
	apply("s0", "e", 2, Change{KeepTimer: true})
	apply("s1", "r", 2, Change{Timer: timer("s1", 3*time.Second, 2)})
	ts, err := s.Timers(ctx, "t", 10)
	if err != nil || len(ts) != 3 || ts[0].SagaID != "s0" || ts[1].SagaID != "s1" || ts[1].Fired.Try != 2 || !ts[1].Due.Equal(at.Add(3*time.Second)) {
		t.Fatalf("timers: %+v %v", ts, err)
	}
	msg := func(tm Timer) (outbox.Message, error) {
		return outbox.Message{Topic: "t.saga-inbox", Key: []byte(tm.SagaID), Value: []byte(tm.Fired.ID())}, nil
	}
	n, err := s.FireTimers(ctx, "t", at.Add(5*time.Second), 1, msg)
	if err != nil || n != 1 {
		t.Fatalf("fire: %d %v", n, err)
	}
	n, err = s.FireTimers(ctx, "t", at.Add(5*time.Second), 10, msg)
	if err != nil || n != 1 {
		t.Fatalf("fire: %d %v", n, err)
	}
	if n, err := s.FireTimers(ctx, "other", at.Add(10*time.Hour), 10, msg); err != nil || n != 0 {
		t.Fatalf("fire another type: %d %v", n, err)
	}
	out := b.outbox(t)
	if len(out) != 2 || string(out[0].Key) != "s0" || string(out[1].Key) != "s1" || string(out[1].Value) != "timer:action:0:2:outcome" {
		t.Fatalf("fired: %+v", out)
	}
	// s2 ends: its timer goes.
	apply("s2", "end", 2, Change{})
	if ts, err := s.Timers(ctx, "", 10); err != nil || len(ts) != 0 {
		t.Fatalf("timers left: %+v %v", ts, err)
	}
}

func testList(t *testing.T, b backend) {
	ctx := t.Context()
	s := b.store
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, st := range []Status{StatusRunning, StatusCompensationFailed, StatusCompleted, StatusCompensationFailed} {
		id := fmt.Sprintf("s%d", i)
		if err := s.Apply(ctx, "t", id, "start", func(*Instance) (*Change, error) {
			return &Change{Instance: inst(id, 1, st, at.Add(time.Duration(i)*time.Minute)), Transition: Transition{At: at}}, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.List(ctx, Filter{Type: "t", Status: StatusCompensationFailed})
	if err != nil || len(got) != 2 || got[0].ID != "s1" || got[1].ID != "s3" {
		t.Fatalf("list failed: %+v %v", got, err)
	}
	got, err = s.List(ctx, Filter{UpdatedBefore: at.Add(2 * time.Minute)})
	if err != nil || len(got) != 2 || got[0].ID != "s0" {
		t.Fatalf("list older: %+v %v", got, err)
	}
	if got, err = s.List(ctx, Filter{Type: "u"}); err != nil || len(got) != 0 {
		t.Fatalf("list other type: %+v %v", got, err)
	}
}

// testRuntimeOnStore runs the transfer definition through a Runtime on
// the store, replies delivered 1-5 times each.
func testRuntimeOnStore(t *testing.T, b backend) {
	ctx := t.Context()
	reg := codec.NewRegistry()
	for _, err := range []error{codec.RegisterJSON[debit](reg, "t.Debit"), codec.RegisterJSON[credit](reg, "t.Credit"),
		codec.RegisterJSON[refund](reg, "t.Refund"), codec.RegisterJSON[uncredit](reg, "t.Uncredit"), codec.RegisterJSON[notify](reg, "t.Notify")} {
		if err != nil {
			t.Fatal(err)
		}
	}
	var transitions int
	rt, err := NewRuntime(b.store, reg, []Saga{testDef(t)}, OnTransition(func(Transition) { transitions++ }))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, "s1", xfer{From: "a", To: "b", Amount: 10}); err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, "s1", xfer{From: "a", To: "b", Amount: 99}); err != nil {
		t.Fatal(err)
	}
	for step := 0; step < 3; step++ {
		out := b.outbox(t)
		if len(out) != step+1 {
			t.Fatalf("step %d: %d commands in the outbox", step, len(out))
		}
		id := CommandID("transfer", "s1", PhaseAction, step, 1)
		o, _ := json.Marshal(orchestrix.Outcome{CommandID: id, CorrelationID: Correlation("transfer", "s1"), Status: orchestrix.OutcomeAccepted})
		m := InboxMessage(rt.Inbox(), "s1", KindOutcome, "outcome:"+id, o)
		for copy := 0; copy <= step+1; copy++ {
			if err := rt.Handle(ctx, &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: m.Headers}); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, err := b.store.Get(ctx, "transfer", "s1")
	if err != nil || got.Status != StatusCompleted || got.Version != 4 || transitions != 4 {
		t.Fatalf("after 3 replies: %+v, %d transitions, %v", got, transitions, err)
	}
	// Bad input is permanent.
	bad := []*kgo.Record{
		{Key: []byte("nobody"), Value: o(t, "nobody"), Headers: hdrs(KindOutcome, "outcome:x")},
		{Key: []byte("s1"), Value: []byte("{"), Headers: hdrs(KindOutcome, "outcome:y")},
		{Key: []byte("s1"), Value: []byte("{}"), Headers: hdrs("bogus", "z")},
		{Key: []byte("s1"), Value: []byte("{}"), Headers: hdrs(KindRetry, "op:1")},
	}
	for i, r := range bad {
		if err := rt.Handle(ctx, r); !consumers.IsPermanent(err) {
			t.Fatalf("bad input %d: %v", i, err)
		}
	}
}

func o(t *testing.T, sagaID string) []byte {
	b, _ := json.Marshal(orchestrix.Outcome{CommandID: "c", CorrelationID: Correlation("transfer", sagaID), Status: orchestrix.OutcomeAccepted})
	return b
}

func hdrs(kind InputKind, id string) []kgo.RecordHeader {
	return []kgo.RecordHeader{{Key: HeaderKind, Value: []byte(kind)}, {Key: HeaderInput, Value: []byte(id)}}
}

func testApplyBatch(t *testing.T, b backend) {
	ctx := t.Context()
	s := b.store
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := s.Apply(ctx, "t", "s1", "old", func(*Instance) (*Change, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	next := func(note string, msg string, timer *Timer) func(*Instance) (*Change, error) {
		return func(cur *Instance) (*Change, error) {
			i := inst("s1", 1, StatusRunning, at)
			if cur != nil {
				i = *cur
				i.Version++
			}
			i.Reason = note
			return &Change{Instance: i, Messages: []outbox.Message{{Topic: "x.commands", Key: []byte("k"), Value: []byte(msg)}}, Timer: timer,
				Transition: Transition{At: at, InputID: note, To: i.Status}}, nil
		}
	}
	boom := errors.New("boom")
	tm := &Timer{Type: "t", SagaID: "s1", Due: at.Add(time.Hour), Fired: TimerFired{Phase: PhaseAction, Step: 0, Try: 2, Kind: waitOutcome}}
	items := []Item{
		{SagaID: "s1", InputID: "a", Decide: next("a", "m1", nil)},
		{SagaID: "s1", InputID: "b", Decide: next("b", "m2", tm)},
		{SagaID: "s1", InputID: "old", Decide: next("old", "never", nil)},
		{SagaID: "s2", InputID: "c", Decide: func(*Instance) (*Change, error) { return nil, boom }},
		{SagaID: "s2", InputID: "d", Decide: next("d", "never", nil)},
		{SagaID: "s3", InputID: "e", Decide: func(*Instance) (*Change, error) { return nil, nil }},
		{SagaID: "s1", InputID: "a", Decide: next("a-again", "never", nil)},
	}
	errs := s.ApplyBatch(ctx, "t", items)
	want := []error{nil, nil, ErrDuplicateInput, boom, consumers.ErrBlocked, nil, ErrDuplicateInput}
	for i := range items {
		if !errors.Is(errs[i], want[i]) || (want[i] == nil && errs[i] != nil) {
			t.Fatalf("item %d: %v, want %v", i, errs[i], want[i])
		}
	}
	got, err := s.Get(ctx, "t", "s1")
	if err != nil || got.Version != 2 || got.Reason != "b" {
		t.Fatalf("s1: %+v %v", got, err)
	}
	if h, err := s.History(ctx, "t", "s1"); err != nil || len(h) != 2 || h[0].InputID != "a" || h[1].InputID != "b" {
		t.Fatalf("history: %+v %v", h, err)
	}
	if ts, err := s.Timers(ctx, "t", 10); err != nil || len(ts) != 1 || ts[0].Fired.Try != 2 {
		t.Fatalf("timers: %+v %v", ts, err)
	}
	if out := b.outbox(t); len(out) != 2 || string(out[0].Value) != "m1" || string(out[1].Value) != "m2" {
		t.Fatalf("outbox: %+v", out)
	}
	// s2's inputs were not recorded; s3's ignored one was.
	for _, in := range []string{"c", "d"} {
		if err := s.Apply(ctx, "t", "s2", in, func(*Instance) (*Change, error) { return nil, nil }); err != nil {
			t.Fatalf("s2 input %s again: %v", in, err)
		}
	}
	if err := s.Apply(ctx, "t", "s3", "e", func(*Instance) (*Change, error) { return nil, nil }); !errors.Is(err, ErrDuplicateInput) {
		t.Fatalf("s3 input again: %v", err)
	}
	if errs := s.ApplyBatch(ctx, "t", nil); len(errs) != 0 {
		t.Fatal(errs)
	}
}
