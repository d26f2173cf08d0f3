package prom_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/metrics/prom"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestStoreCounts: appends, conflicts and duplicates are counted by op,
// and the wrapper keeps the optional interfaces the aggregates processor
// looks for.
func TestStoreCounts(t *testing.T) {
	ctx := t.Context()
	reg := prometheus.NewRegistry()
	m, err := prom.NewStoreMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	s := prom.Store(memory.New(), m)
	if _, ok := s.(stores.RejectionRecorder); !ok {
		t.Error("wrapped memory store lost RejectionRecorder")
	}
	if _, ok := s.(stores.MultiStreamReader); !ok {
		t.Error("wrapped memory store lost MultiStreamReader")
	}
	ev := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "T", Source: "/v"}, ContentType: "application/json", Data: []byte(`{}`)}
	if _, err := s.Append(ctx, "a", stores.NoStream, []orchestrix.Event{ev, ev, ev}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := s.Append(ctx, "a", stores.Exact(1), []orchestrix.Event{ev}); !errors.Is(err, stores.ErrConflict) {
			t.Fatalf("stale append: %v", err)
		}
	}
	cmd := ev
	cmd.CommandID = "c1"
	rr := s.(stores.RejectionRecorder)
	for range 2 {
		if _, err := rr.AppendDecisions(ctx, []stores.AppendRequest{{StreamID: "b", Expected: stores.Any, Events: []orchestrix.Event{cmd}}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Append(ctx, "", stores.Any, []orchestrix.Event{ev}); err == nil {
		t.Fatal("append to an empty stream ID succeeded")
	}
	want := `
# HELP orchestrix_store_appended_events_total Events written by append calls.
# TYPE orchestrix_store_appended_events_total counter
orchestrix_store_appended_events_total{op="append"} 3
orchestrix_store_appended_events_total{op="append_decisions"} 1
orchestrix_store_appended_events_total{op="append_many"} 0
# HELP orchestrix_store_conflicts_total Append calls that failed the expected-version check (stores.ErrConflict).
# TYPE orchestrix_store_conflicts_total counter
orchestrix_store_conflicts_total{op="append"} 2
orchestrix_store_conflicts_total{op="append_decisions"} 0
orchestrix_store_conflicts_total{op="append_many"} 0
# HELP orchestrix_store_duplicates_total Streams of an append whose command had been appended before (nothing written).
# TYPE orchestrix_store_duplicates_total counter
orchestrix_store_duplicates_total{op="append"} 0
orchestrix_store_duplicates_total{op="append_decisions"} 1
orchestrix_store_duplicates_total{op="append_many"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "orchestrix_store_appended_events_total",
		"orchestrix_store_conflicts_total", "orchestrix_store_duplicates_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(histCount(t, reg, "orchestrix_store_append_seconds", "append", "error")); n != 1 {
		t.Fatalf("append errors timed: %v, want 1", n)
	}
}

// histCount returns a gauge holding the sample count of the histogram
// series name{op,outcome}.
func histCount(t *testing.T, reg prometheus.Gatherer, name, op, outcome string) prometheus.Gauge {
	t.Helper()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "count"})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["op"] == op && l["outcome"] == outcome {
				g.Set(float64(m.GetHistogram().GetSampleCount()))
			}
		}
	}
	return g
}

// TestOperation: the PostgreSQL operation label is a known first keyword
// or "other", whatever the statement looks like.
func TestOperation(t *testing.T) {
	for _, tc := range []struct{ sql, want string }{
		{"SELECT 1", "select"},
		{"  insert into x values ($1)", "insert"},
		{"-- a comment\nUPDATE x SET y = 1", "update"},
		{"/* hint */ DELETE FROM x", "delete"},
		{"WITH a AS (SELECT 1) SELECT * FROM a", "with"},
		{"INSERT 0 5", "insert"}, // a command tag
		{"(SELECT 1)", "select"},
		{"VACUUM", "other"},
		{"", "other"},
		{"-- only a comment", "other"},
		{"/* unterminated", "other"},
		{"selectivity", "other"},
		{"BEGIN", "begin"},
	} {
		if got := prom.Operation(tc.sql); got != tc.want {
			t.Errorf("Operation(%q) = %q, want %q", tc.sql, got, tc.want)
		}
	}
}

// TestSagaCounts: commands of applied transitions, fired timers with their
// lateness, and the instance counts by status of the memory store.
func TestSagaCounts(t *testing.T) {
	ctx := t.Context()
	reg := prometheus.NewRegistry()
	m, err := prom.NewSagas(reg)
	if err != nil {
		t.Fatal(err)
	}
	raw := sagas.NewMemoryStore()
	st := m.Store(raw)
	now := time.Now()
	inst := func(id string, s sagas.Status) sagas.Instance {
		return sagas.Instance{Type: "transfer", ID: id, DefinitionVersion: 1, Version: 1, Status: s, State: []byte(`{}`), StartedAt: now, UpdatedAt: now}
	}
	msg := outbox.Message{Topic: "x.commands", Key: []byte("k"), Value: []byte("{}")}
	for i, s := range []sagas.Status{sagas.StatusRunning, sagas.StatusRunning, sagas.StatusCompensationFailed, sagas.StatusCompleted} {
		id := string(rune('a' + i))
		ch := &sagas.Change{Instance: inst(id, s), Messages: []outbox.Message{msg, msg}}
		if s == sagas.StatusRunning {
			ch.Timer = &sagas.Timer{Type: "transfer", SagaID: id, Due: now.Add(-2 * time.Second)}
		}
		if err := st.Apply(ctx, "transfer", id, "in-"+id, func(*sagas.Instance) (*sagas.Change, error) { return ch, nil }); err != nil {
			t.Fatal(err)
		}
	}
	// A batch: one item applies, one fails and writes nothing.
	errs := st.ApplyBatch(ctx, "transfer", []sagas.Item{
		{SagaID: "e", InputID: "in-e", Decide: func(*sagas.Instance) (*sagas.Change, error) {
			return &sagas.Change{Instance: inst("e", sagas.StatusCompensating), Messages: []outbox.Message{msg}}, nil
		}},
		{SagaID: "f", InputID: "in-f", Decide: func(*sagas.Instance) (*sagas.Change, error) { return nil, errors.New("refused") }},
	})
	if errs[0] != nil || errs[1] == nil {
		t.Fatalf("batch: %v", errs)
	}
	reg.MustRegister(prom.SagaInstances(st, "transfer"))
	want := `
# HELP orchestrix_saga_commands_total Commands written to the outbox with committed saga transitions.
# TYPE orchestrix_saga_commands_total counter
orchestrix_saga_commands_total{saga_type="transfer"} 9
# HELP orchestrix_saga_instances Saga instances by status (open ones and compensation_failed), counted up to InstanceCountCap.
# TYPE orchestrix_saga_instances gauge
orchestrix_saga_instances{saga_type="transfer",status="compensating"} 1
orchestrix_saga_instances{saga_type="transfer",status="compensation_failed"} 1
orchestrix_saga_instances{saga_type="transfer",status="running"} 2
# HELP orchestrix_saga_timers_pending Saga timers waiting to fire, counted up to InstanceCountCap.
# TYPE orchestrix_saga_timers_pending gauge
orchestrix_saga_timers_pending{saga_type="transfer"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "orchestrix_saga_commands_total", "orchestrix_saga_instances", "orchestrix_saga_timers_pending"); err != nil {
		t.Fatal(err)
	}
	if v := gaugeValue(t, reg, "orchestrix_saga_timer_overdue_seconds"); v < 2 || v > 60 {
		t.Fatalf("overdue = %v, want about 2s", v)
	}
	fire := func(sagas.Timer) (outbox.Message, error) {
		return outbox.Message{Topic: "transfer.inbox", Value: []byte("{}")}, nil
	}
	if n, err := st.FireTimers(ctx, "transfer", now, 10, fire); err != nil || n != 2 {
		t.Fatalf("fire: %d, %v", n, err)
	}
	if v := gaugeValue(t, reg, "orchestrix_saga_timers_fired_total"); v != 2 {
		t.Fatalf("fired = %v, want 2", v)
	}
	if v := gaugeValue(t, reg, "orchestrix_saga_timer_overdue_seconds"); v != 0 {
		t.Fatalf("overdue with no timer = %v, want 0", v)
	}
	// Observe: transitions by input kind and resulting status.
	m.Observe(sagas.Transition{Type: "transfer", InputKind: sagas.KindOutcome, To: sagas.StatusCompleted, At: now})
	m.Observe(sagas.Transition{Type: "transfer", InputKind: sagas.KindOutcome, To: sagas.StatusCompleted, At: now})
	m.Observe(sagas.Transition{Type: "transfer", InputKind: sagas.KindTimer, To: sagas.StatusCompensationFailed, At: now})
	want = `
# HELP orchestrix_saga_transitions_total Committed saga transitions, by saga type, input kind and the status they led to.
# TYPE orchestrix_saga_transitions_total counter
orchestrix_saga_transitions_total{input="outcome",saga_type="transfer",to="completed"} 2
orchestrix_saga_transitions_total{input="timer",saga_type="transfer",to="compensation_failed"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "orchestrix_saga_transitions_total"); err != nil {
		t.Fatal(err)
	}
}

// gaugeValue returns the value of the single series name (a gauge or a
// counter).
func gaugeValue(t *testing.T, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no single series %s", name)
	return 0
}

// TestProjectionShards: a runner's shard stats as series, the stopped
// shard flagged, the heartbeat age only for leading shards.
func TestProjectionShards(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prom.Projection("balances", fakeShards{
		{Version: 1, Shard: 0, Leading: true, Applied: 10, CaughtUp: true, LastCommit: time.Now()},
		{Version: 1, Shard: 1, Leading: true, Applied: 4, Parked: 1, Stopped: errors.New("poison"), LagSeconds: 12.5, LastCommit: time.Now()},
		{Version: 2, Shard: 0, Leading: false},
	}))
	want := `
# HELP orchestrix_projection_stopped 1 while the shard is stopped on a poison event; 0 while it runs.
# TYPE orchestrix_projection_stopped gauge
orchestrix_projection_stopped{projection="balances",shard="0",version="1"} 0
orchestrix_projection_stopped{projection="balances",shard="1",version="1"} 1
orchestrix_projection_stopped{projection="balances",shard="0",version="2"} 0
# HELP orchestrix_projection_lag_seconds Age, by event time, of the last event applied while the shard is behind; 0 when caught up.
# TYPE orchestrix_projection_lag_seconds gauge
orchestrix_projection_lag_seconds{projection="balances",shard="0",version="1"} 0
orchestrix_projection_lag_seconds{projection="balances",shard="1",version="1"} 12.5
orchestrix_projection_lag_seconds{projection="balances",shard="0",version="2"} 0
# HELP orchestrix_projection_parked_events_total Events this process parked for the shard (dead-lettered to projection_dead_letters).
# TYPE orchestrix_projection_parked_events_total counter
orchestrix_projection_parked_events_total{projection="balances",shard="0",version="1"} 0
orchestrix_projection_parked_events_total{projection="balances",shard="1",version="1"} 1
orchestrix_projection_parked_events_total{projection="balances",shard="0",version="2"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "orchestrix_projection_stopped", "orchestrix_projection_lag_seconds",
		"orchestrix_projection_parked_events_total"); err != nil {
		t.Fatal(err)
	}
	if n := gatherCount(t, reg, "orchestrix_projection_heartbeat_age_seconds"); n != 2 {
		t.Fatalf("heartbeat series = %d, want 2 (leading shards only)", n)
	}
	pc, err := prom.NewProjectionCommits(reg)
	if err != nil {
		t.Fatal(err)
	}
	pc.Observe(projections.Commit{Projection: "balances", Events: make([]orchestrix.Event, 500), Took: 20 * time.Millisecond})
	if n := gatherCount(t, reg, "orchestrix_projection_batch_seconds"); n != 1 {
		t.Fatalf("batch_seconds series = %d", n)
	}
}
