package prom_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/metrics/prom"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// sumSeries adds the values of every series of name.
func sumSeries(t *testing.T, reg prometheus.Gatherer, name string) (float64, int) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum, n := 0.0, 0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetGauge().GetValue()
			n++
		}
	}
	return sum, n
}

// TestGroupLagIntegration: N records produced to a topic no member of the
// group has consumed show as a committed lag of N, summed over the
// partitions; once a member consumed and committed them, 0. The DLQ
// depth counts the records of "<topic>.<group>.dlq".
func TestGroupLagIntegration(t *testing.T) {
	ctx := t.Context()
	seeds := testenv.Brokers(t)
	topic := testenv.Topic(t, seeds, 3, nil)
	const group = "lag-test"
	testenv.TopicNamed(t, seeds, topic+"."+group+".dlq", 1, nil)
	cl := testenv.Client(t, seeds)
	const n = 1000
	recs := make([]*kgo.Record, 0, n)
	for i := range n {
		recs = append(recs, &kgo.Record{Topic: topic, Key: []byte(strconv.Itoa(i)), Value: []byte("v")})
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic + "." + group + ".dlq", Value: []byte("dead")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prom.GroupLag(kadm.NewClient(cl), group, topic))
	if lag, parts := sumSeries(t, reg, "orchestrix_consumer_committed_lag_records"); lag != n || parts != 3 {
		t.Fatalf("lag without a consumer = %v over %d partitions, want %d over 3", lag, parts, n)
	}
	if depth, _ := sumSeries(t, reg, "orchestrix_consumer_dlq_records"); depth != 1 {
		t.Fatalf("dlq depth = %v, want 1", depth)
	}
	// A member consumes everything and commits.
	member := testenv.Client(t, seeds, kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic), kgo.DisableAutoCommit())
	got := 0
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for got < n && pctx.Err() == nil {
		got += len(member.PollFetches(pctx).Records())
	}
	if err := member.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatal(err)
	}
	if lag, _ := sumSeries(t, reg, "orchestrix_consumer_committed_lag_records"); lag != 0 {
		t.Fatalf("lag after consuming %d and committing = %v, want 0", got, lag)
	}
	if errs := gaugeValue(t, reg, "orchestrix_scrape_errors_total"); errs != 0 {
		t.Fatalf("scrape errors = %v", errs)
	}
}

// TestPostgresIntegration: the query tracer on a real pool labels
// statements by operation; SagaInstances counts a PostgresStore's
// instances and timers in one query.
func TestPostgresIntegration(t *testing.T) {
	ctx := t.Context()
	base := testenv.Pool(t)
	store := pgtest.Store(t, base)
	reg := prometheus.NewRegistry()
	qt, err := prom.NewQueryTracer(reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := base.Config().Copy()
	cfg.ConnConfig.Tracer = qt
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ss, err := sagas.NewPostgresStore(pool, store.Schema())
	if err != nil {
		t.Fatal(err)
	}
	m, err := prom.NewSagas(reg)
	if err != nil {
		t.Fatal(err)
	}
	st := m.Store(ss)
	now := time.Now().UTC()
	for i, s := range []sagas.Status{sagas.StatusRunning, sagas.StatusCompensationFailed, sagas.StatusCompleted} {
		id := "s" + strconv.Itoa(i)
		ch := &sagas.Change{Instance: sagas.Instance{Type: "transfer", ID: id, DefinitionVersion: 1, Version: 1, Status: s, State: []byte(`{}`), StartedAt: now, UpdatedAt: now},
			Messages: []outbox.Message{{Topic: "x.commands", Key: []byte(id), Value: []byte("{}")}}}
		if s == sagas.StatusRunning {
			ch.Timer = &sagas.Timer{Type: "transfer", SagaID: id, Fired: sagas.TimerFired{Kind: "timeout"}, Due: now.Add(-3 * time.Second)}
		}
		if err := st.Apply(ctx, "transfer", id, "in-"+id, func(*sagas.Instance) (*sagas.Change, error) { return ch, nil }); err != nil {
			t.Fatal(err)
		}
	}
	reg.MustRegister(prom.SagaInstances(st, "transfer"))
	want := map[string]float64{"running": 1, "compensating": 0, "compensation_failed": 1}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, mf := range mfs {
		switch mf.GetName() {
		case "orchestrix_saga_instances":
			for _, s := range mf.GetMetric() {
				for _, l := range s.GetLabel() {
					if l.GetName() == "status" {
						seen++
						if w := want[l.GetValue()]; s.GetGauge().GetValue() != w {
							t.Errorf("instances %s = %v, want %v", l.GetValue(), s.GetGauge().GetValue(), w)
						}
					}
				}
			}
		case "orchestrix_saga_timers_pending":
			if v := mf.GetMetric()[0].GetGauge().GetValue(); v != 1 {
				t.Errorf("timers pending = %v, want 1", v)
			}
		case "orchestrix_saga_timer_overdue_seconds":
			if v := mf.GetMetric()[0].GetGauge().GetValue(); v < 3 || v > 60 {
				t.Errorf("timer overdue = %v, want about 3s", v)
			}
		case "orchestrix_scrape_errors_total":
			if v := mf.GetMetric()[0].GetCounter().GetValue(); v != 0 {
				t.Errorf("scrape errors = %v", v)
			}
		}
	}
	if seen != 3 {
		t.Errorf("%d status series, want 3", seen)
	}
	if v := gaugeValue(t, reg, "orchestrix_saga_commands_total"); v != 3 {
		t.Errorf("commands = %v, want 3", v)
	}
	ops := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() == "orchestrix_pg_queries_total" {
			for _, s := range mf.GetMetric() {
				for _, l := range s.GetLabel() {
					if l.GetName() == "op" {
						ops[l.GetValue()] = true
					}
				}
			}
		}
	}
	for _, op := range []string{"begin", "commit", "insert", "select"} {
		if !ops[op] {
			t.Errorf("no orchestrix_pg_queries_total{op=%q}; have %v", op, ops)
		}
	}
}
