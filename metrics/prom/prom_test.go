package prom_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/metrics/prom"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestRelay: the relay's series, with their names, labels and values
// after it published n events (a golden list: renaming a series breaks
// dashboards and alerts, so it must break this test first).
func TestRelay(t *testing.T) {
	fake, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	seeds := fake.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopic(t.Context(), 1, 1, nil, "m.events"); err != nil {
		t.Fatal(err)
	}
	store := memory.New()
	const n = 25
	for i := range n {
		e := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "T", Source: "/m"}, ContentType: "application/json", Data: []byte(`{}`)}
		if _, err := store.Append(t.Context(), "s", stores.Exact(uint64(i)), []orchestrix.Event{e}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := outbox.NewRelay(store, seeds, outbox.ToTopic("m.events"), outbox.Instance("r1"))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prom.Relay(r, nil))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for r.Stats().Events < n {
		if time.Now().After(deadline) {
			t.Fatalf("relay published %d of %d", r.Stats().Events, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	want := `
# HELP orchestrix_relay_leader 1 while this relay instance is the publishing leader.
# TYPE orchestrix_relay_leader gauge
orchestrix_relay_leader{instance="r1",topic="m.events"} 1
# HELP orchestrix_relay_published_events_total Events published (committed in Kafka) by this instance.
# TYPE orchestrix_relay_published_events_total counter
orchestrix_relay_published_events_total{instance="r1",topic="m.events"} 25
# HELP orchestrix_relay_dead_letters_total Events and messages written to the relay's dead-letter topic.
# TYPE orchestrix_relay_dead_letters_total counter
orchestrix_relay_dead_letters_total{instance="r1",topic="m.events"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "orchestrix_relay_leader", "orchestrix_relay_published_events_total", "orchestrix_relay_dead_letters_total"); err != nil {
		t.Fatal(err)
	}
	names := []string{"orchestrix_relay_leader", "orchestrix_relay_published_events_total", "orchestrix_relay_published_messages_total",
		"orchestrix_relay_transactions_total", "orchestrix_relay_dead_letters_total", "orchestrix_relay_errors_total",
		"orchestrix_relay_lag_events", "orchestrix_relay_lag_seconds"}
	if got := testutil.CollectAndCount(prom.Relay(r, nil)); got != len(names) {
		t.Fatalf("%d relay series, want %d: %v", got, len(names), names)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestConsumer: the group's series from its Stats.
func TestConsumer(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, err := prom.NewConsumer(reg, "billing")
	if err != nil {
		t.Fatal(err)
	}
	c.Observe(consumers.Stats{Topic: "b.events", Partition: 3, Records: 10, Failed: 2, DeadLettered: 1, Duration: 3 * time.Millisecond, Lag: 7})
	c.Observe(consumers.Stats{Topic: "b.events", Partition: 3, Records: 5, Duration: time.Millisecond, Lag: 0})
	want := `
# HELP orchestrix_consumer_records_total Records processed, by outcome: ok, failed (handed to the failure policy), dead_lettered.
# TYPE orchestrix_consumer_records_total counter
orchestrix_consumer_records_total{group="billing",outcome="dead_lettered",topic="b.events"} 1
orchestrix_consumer_records_total{group="billing",outcome="failed",topic="b.events"} 2
orchestrix_consumer_records_total{group="billing",outcome="ok",topic="b.events"} 13
# HELP orchestrix_consumer_lag_records Records behind the partition's high watermark, as of this member's last fetch.
# TYPE orchestrix_consumer_lag_records gauge
orchestrix_consumer_lag_records{group="billing",partition="3",topic="b.events"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "orchestrix_consumer_records_total", "orchestrix_consumer_lag_records"); err != nil {
		t.Fatal(err)
	}
	if n := gatherCount(t, reg, "orchestrix_consumer_batch_seconds"); n != 1 {
		t.Fatalf("batch_seconds series = %d, want 1", n)
	}
	if _, err := prom.NewConsumer(reg, "billing"); err == nil {
		t.Fatal("registering the same group twice succeeded")
	}
	if _, err := prom.NewConsumer(reg, "shipping"); err != nil {
		t.Fatalf("a second group on one registry: %v", err)
	}
}

// TestConsumerRetryLevels: records read from the group's retry topics
// count under their origin topic with their level; dead letters carry the
// level they failed at.
func TestConsumerRetryLevels(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, err := prom.NewConsumer(reg, "billing")
	if err != nil {
		t.Fatal(err)
	}
	c.Observe(consumers.Stats{Topic: "b.events", Partition: 0, Records: 4, Failed: 1, DeadLettered: 1})
	c.Observe(consumers.Stats{Topic: consumers.RetryTopic("b.events", "billing", 1), Records: 3, Failed: 1})
	c.Observe(consumers.Stats{Topic: consumers.RetryTopic("b.events", "billing", 2), Records: 2, Failed: 2, DeadLettered: 2})
	c.Observe(consumers.Stats{Topic: "other.retry.x.billing.retry.1", Records: 1}) // a topic whose name looks like a retry topic
	want := `
# HELP orchestrix_consumer_retries_total Records handled again from retry topic level n, by origin topic.
# TYPE orchestrix_consumer_retries_total counter
orchestrix_consumer_retries_total{group="billing",level="1",topic="b.events"} 3
orchestrix_consumer_retries_total{group="billing",level="1",topic="other.retry.x"} 1
orchestrix_consumer_retries_total{group="billing",level="2",topic="b.events"} 2
# HELP orchestrix_consumer_dead_letters_total Records dead-lettered, by origin topic and the level they failed at (0: the topic itself).
# TYPE orchestrix_consumer_dead_letters_total counter
orchestrix_consumer_dead_letters_total{group="billing",level="0",topic="b.events"} 1
orchestrix_consumer_dead_letters_total{group="billing",level="1",topic="b.events"} 0
orchestrix_consumer_dead_letters_total{group="billing",level="1",topic="other.retry.x"} 0
orchestrix_consumer_dead_letters_total{group="billing",level="2",topic="b.events"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "orchestrix_consumer_retries_total", "orchestrix_consumer_dead_letters_total"); err != nil {
		t.Fatal(err)
	}
}

// TestConsumerMiddleware: handler failures by class and reason under the
// origin topic, and redriven records.
func TestConsumerMiddleware(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, err := prom.NewConsumer(reg, "billing")
	if err != nil {
		t.Fatal(err)
	}
	results := []error{nil, errors.New("db down"), consumers.Permanent(errors.New("bad")), fmt.Errorf("decode: %w", orchestrix.ErrInvalid), errors.New("db down")}
	i := 0
	h := consumers.Chain(consumers.HandlerFunc(func(context.Context, *kgo.Record) error { i++; return results[i-1] }), c.Middleware())
	redriven := []kgo.RecordHeader{{Key: "x", Value: []byte("y")}, {Key: consumers.HeaderRedrives, Value: []byte("2")}}
	for n := range results {
		r := &kgo.Record{Topic: "b.events"}
		if n == 4 {
			r.Topic, r.Headers = consumers.RetryTopic("b.events", "billing", 1), redriven
		}
		if got := h.Handle(t.Context(), r); got != results[n] {
			t.Fatalf("record %d: the middleware returned %v, want the handler's %v", n, got, results[n])
		}
	}
	want := `
# HELP orchestrix_consumer_handler_errors_total Handler calls that failed, by origin topic, error class (permanent, transient) and reason (consumers.ErrorReason).
# TYPE orchestrix_consumer_handler_errors_total counter
orchestrix_consumer_handler_errors_total{class="permanent",group="billing",reason="invalid",topic="b.events"} 1
orchestrix_consumer_handler_errors_total{class="permanent",group="billing",reason="permanent",topic="b.events"} 1
orchestrix_consumer_handler_errors_total{class="transient",group="billing",reason="retries-exhausted",topic="b.events"} 2
# HELP orchestrix_consumer_redriven_records_total Records handled that carry the redrive header: dead letters sent back by orchestrix dlq redrive.
# TYPE orchestrix_consumer_redriven_records_total counter
orchestrix_consumer_redriven_records_total{group="billing",topic="b.events"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "orchestrix_consumer_handler_errors_total", "orchestrix_consumer_redriven_records_total"); err != nil {
		t.Fatal(err)
	}
}
