package prom_test

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/metrics/prom"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// golden lists every series this package exports with its label names
// (RelayBacklog's, which need PostgreSQL, are checked by
// TestRelayFailoverIntegration). Dashboards and alerts are written against
// these: renaming a series or a label must break this test first (and
// README.md must follow). deploy/check parses this list to check that
// deploy/grafana and deploy/prometheus name only series that exist: keep
// its form, one "name{labels}" string per line.
var golden = []string{
	"orchestrix_consumer_batch_seconds{group,topic}",
	"orchestrix_consumer_committed_lag_records{group,partition,topic}",
	"orchestrix_consumer_dead_letters_total{group,level,topic}",
	"orchestrix_consumer_dlq_records{group,topic}",
	"orchestrix_consumer_handler_errors_total{class,group,reason,topic}",
	"orchestrix_consumer_lag_records{group,partition,topic}",
	"orchestrix_consumer_rebalances_total{group}",
	"orchestrix_consumer_records_total{group,outcome,topic}",
	"orchestrix_consumer_redriven_records_total{group,topic}",
	"orchestrix_consumer_retries_total{group,level,topic}",
	"orchestrix_pg_queries_total{op,outcome}",
	"orchestrix_pg_query_seconds{op,outcome}",
	"orchestrix_projection_applied_events_total{projection,shard,version}",
	"orchestrix_projection_batch_events{projection}",
	"orchestrix_projection_batch_seconds{projection}",
	"orchestrix_projection_caught_up{projection,shard,version}",
	"orchestrix_projection_heartbeat_age_seconds{projection,shard,version}",
	"orchestrix_projection_lag_seconds{projection,shard,version}",
	"orchestrix_projection_leading{projection,shard,version}",
	"orchestrix_projection_parked_events_total{projection,shard,version}",
	"orchestrix_projection_stopped{projection,shard,version}",
	"orchestrix_relay_dead_letters_total{instance,topic}",
	"orchestrix_relay_errors_total{instance,topic}",
	"orchestrix_relay_lag_events{instance,topic}",
	"orchestrix_relay_lag_seconds{instance,topic}",
	"orchestrix_relay_leader{instance,topic}",
	"orchestrix_relay_published_events_total{instance,topic}",
	"orchestrix_relay_published_messages_total{instance,topic}",
	"orchestrix_relay_report_age_seconds{instance,topic}",
	"orchestrix_relay_transaction_seconds{instance,topic}",
	"orchestrix_relay_transactions_total{instance,topic}",
	"orchestrix_saga_commands_total{saga_type}",
	"orchestrix_saga_instances{saga_type,status}",
	"orchestrix_saga_timer_lateness_seconds{saga_type}",
	"orchestrix_saga_timer_overdue_seconds{saga_type}",
	"orchestrix_saga_timers_fired_total{saga_type}",
	"orchestrix_saga_timers_pending{saga_type}",
	"orchestrix_saga_transition_seconds{saga_type}",
	"orchestrix_saga_transitions_total{input,saga_type,to}",
	"orchestrix_scrape_errors_total{collector,target}",
	"orchestrix_store_append_seconds{op,outcome}",
	"orchestrix_store_appended_events_total{op}",
	"orchestrix_store_conflicts_total{op}",
	"orchestrix_store_duplicates_total{op}",
}

// seriesOf returns "name{label,...}" for every series reg gathers whose
// name starts with prefix.
func seriesOf(t *testing.T, reg prometheus.Gatherer, prefix string) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), prefix) {
			continue
		}
		for _, m := range mf.GetMetric() {
			var names []string
			for _, l := range m.GetLabel() {
				names = append(names, l.GetName())
			}
			sort.Strings(names)
			seen[mf.GetName()+"{"+strings.Join(names, ",")+"}"] = true
		}
	}
	out := make([]string, 0, len(seen))
	for s := range seen {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// TestGolden wires every part of the package on fakes (kfake, the memory
// stores), drives each once, and checks the gathered series names and
// label names against golden: none missing, none unexpected.
func TestGolden(t *testing.T) {
	ctx := t.Context()
	reg := prometheus.NewRegistry()
	fake, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	seeds := fake.ListenAddrs()
	kc, err := prom.NewKafkaClient(reg, "golden")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.WithHooks(kc))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopics(ctx, 2, 1, nil, "g.events", "g.events.golden.dlq", "g.out"); err != nil {
		t.Fatal(err)
	}

	// Consumers: per-poll stats and broker-side lag and DLQ depth.
	cm, err := prom.NewConsumer(reg, "golden")
	if err != nil {
		t.Fatal(err)
	}
	cm.Observe(consumers.Stats{Topic: "g.events", Records: 2, Failed: 1, DeadLettered: 1, Duration: time.Millisecond, Lag: 3})
	cm.Observe(consumers.Stats{Topic: consumers.RetryTopic("g.events", "golden", 1), Records: 1, DeadLettered: 1})
	reg.MustRegister(prom.GroupLag(adm, "golden", "g.events"))
	failing := consumers.Chain(consumers.HandlerFunc(func(context.Context, *kgo.Record) error { return errors.New("down") }), cm.Middleware())
	_ = failing.Handle(ctx, &kgo.Record{Topic: "g.events", Headers: []kgo.RecordHeader{{Key: consumers.HeaderRedrives, Value: []byte("1")}}})
	recs := []*kgo.Record{{Topic: "g.events", Value: []byte("a")}, {Topic: "g.events.golden.dlq", Value: []byte("b")}}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	// The rebalance hook counts this member's join.
	member, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumerGroup("golden"), kgo.ConsumeTopics("g.events"),
		kgo.WithHooks(cm.Hook()))
	if err != nil {
		t.Fatal(err)
	}
	defer member.Close()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	for len(member.PollFetches(pctx).Records()) == 0 && pctx.Err() == nil {
	}
	cancel()
	if n := gaugeValue(t, reg, "orchestrix_consumer_rebalances_total"); n < 1 {
		t.Fatalf("rebalances after a member joined = %v, want at least 1", n)
	}

	// The relay with its reports.
	store := memory.New()
	ev := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "T", Source: "/g"}, ContentType: "application/json", Data: []byte(`{}`)}
	if _, err := store.Append(ctx, "s", stores.NoStream, []orchestrix.Event{ev}); err != nil {
		t.Fatal(err)
	}
	rep := prom.NewRelayReports()
	relayClient, err := prom.NewKafkaClient(reg, "relay") // also handed to the relay's side clients
	if err != nil {
		t.Fatal(err)
	}
	relay, err := outbox.NewRelay(store, seeds, outbox.ToTopic("g.out"), outbox.Instance("r"),
		outbox.ReportStats(50*time.Millisecond, rep.Observe), outbox.OnCommit(rep.Commit), outbox.WithClientOpts(kgo.WithHooks(relayClient)))
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(prom.Relay(relay, rep))
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(rctx) }()
	waitFor(t, 30*time.Second, "relay publishes and reports", func() bool {
		return relay.Stats().Events == 1 && gatherCount(t, reg, "orchestrix_relay_report_age_seconds") == 1
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// The store: an append, a conflict.
	sm, err := prom.NewStoreMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	timed := prom.Store(memory.New(), sm)
	if _, err := timed.Append(ctx, "a", stores.NoStream, []orchestrix.Event{ev}); err != nil {
		t.Fatal(err)
	}
	if _, err := timed.Append(ctx, "a", stores.NoStream, []orchestrix.Event{ev}); !errors.Is(err, stores.ErrConflict) {
		t.Fatalf("second append: %v, want a conflict", err)
	}
	withCmd := ev
	withCmd.CommandID = "c1"
	for range 2 {
		if _, err := timed.AppendMany(ctx, []stores.AppendRequest{{StreamID: "b", Expected: stores.Any, Events: []orchestrix.Event{withCmd}}}); err != nil {
			t.Fatal(err)
		}
	}

	// PostgreSQL: the tracer's hooks as pgx calls them.
	qt, err := prom.NewQueryTracer(reg)
	if err != nil {
		t.Fatal(err)
	}
	qctx := qt.TraceQueryStart(ctx, nil, pgx.TraceQueryStartData{SQL: "SELECT 1"})
	qt.TraceQueryEnd(qctx, nil, pgx.TraceQueryEndData{CommandTag: pgconn.NewCommandTag("SELECT 1")})

	// Sagas: a transition with a command and a due timer, fired.
	ss, err := prom.NewSagas(reg)
	if err != nil {
		t.Fatal(err)
	}
	sst := ss.Store(sagas.NewMemoryStore())
	now := time.Now()
	change := &sagas.Change{Instance: sagas.Instance{Type: "transfer", ID: "t1", DefinitionVersion: 1, Version: 1, Status: sagas.StatusRunning,
		State: []byte(`{}`), StartedAt: now, UpdatedAt: now},
		Messages: []outbox.Message{{Topic: "x.commands", Key: []byte("k"), Value: []byte("{}")}},
		Timer:    &sagas.Timer{Type: "transfer", SagaID: "t1", Due: now.Add(-time.Second)}}
	if err := sst.Apply(ctx, "transfer", "t1", "in-1", func(*sagas.Instance) (*sagas.Change, error) { return change, nil }); err != nil {
		t.Fatal(err)
	}
	ss.Observe(sagas.Transition{Type: "transfer", SagaID: "t1", Version: 1, At: now, InputKind: sagas.KindStart, To: sagas.StatusRunning})
	reg.MustRegister(prom.SagaInstances(sst, "transfer"))
	if got := gatherCount(t, reg, "orchestrix_saga_timers_pending"); got != 1 {
		t.Fatalf("timers pending series: %d", got)
	}
	if n, err := sst.FireTimers(ctx, "transfer", now, 10, func(sagas.Timer) (outbox.Message, error) {
		return outbox.Message{Topic: "transfer.inbox", Value: []byte("{}")}, nil
	}); err != nil || n != 1 {
		t.Fatalf("fire timers: %d, %v", n, err)
	}

	// Projections: a runner's shards and its commits.
	reg.MustRegister(prom.Projection("balances", fakeShards{{Version: 1, Shard: 0, Leading: true, Applied: 5, LastCommit: now}}))
	pc, err := prom.NewProjectionCommits(reg)
	if err != nil {
		t.Fatal(err)
	}
	pc.Observe(projections.Commit{Projection: "balances", Events: make([]orchestrix.Event, 3), Took: time.Millisecond})

	got := slices.DeleteFunc(seriesOf(t, reg, "orchestrix_"), func(s string) bool { return strings.HasPrefix(s, "orchestrix_kafka_") })
	if !slices.Equal(got, golden) {
		t.Fatalf("series differ from the golden list\n got: %s\nwant: %s\nmissing: %v\nextra: %v",
			strings.Join(got, "\n      "), strings.Join(golden, "\n      "), minus(golden, got), minus(got, golden))
	}
	// kprom's client series, under their own prefix (kprom names them),
	// for both clients.
	kafka := seriesOf(t, reg, "orchestrix_kafka_")
	if n := gatherCount(t, reg, "orchestrix_kafka_connects_total"); n < 2 {
		t.Errorf("connects_total has %d series, want one per broker of each client (golden, relay)", n)
	}
	for _, want := range []string{"orchestrix_kafka_connects_total{client,node_id}", "orchestrix_kafka_read_bytes_total{client,node_id}",
		"orchestrix_kafka_write_bytes_total{client,node_id}", "orchestrix_kafka_produce_bytes_total{client,node_id,topic}",
		"orchestrix_kafka_buffered_produce_records_total{client}"} {
		if !slices.Contains(kafka, want) {
			t.Errorf("kafka client series %s missing; have %v", want, kafka)
		}
	}
}

// minus returns the elements of a not in b.
func minus(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}

type fakeShards []projections.ShardStats

func (f fakeShards) Stats() []projections.ShardStats { return f }

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gatherCount counts the series of name reg gathers.
func gatherCount(t testing.TB, reg prometheus.Gatherer, name string) int {
	t.Helper()
	n, err := testutil.GatherAndCount(reg, name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
