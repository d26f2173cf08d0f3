// Package prom exposes Orchestrix runtimes as Prometheus metrics. It is a
// module of its own, like franz-go's plugin/kprom, so that the core does
// not import client_golang.
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(prom.Relay(relay))                 // read at each scrape
//	stats := prom.NewConsumer(reg, "billing")           // one per group
//	group, _ := consumers.New(seeds, "billing", topics, h, consumers.WithStats(stats.Observe))
//	service.Run(ctx, service.Options{Addr: ":8080", Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{})}, ...)
//
// Label sets stay small: group, topic, partition (lag only) and outcome
// for consumers; topic and instance for a relay.
package prom

import (
	"strconv"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/prometheus/client_golang/prometheus"
)

// relayCollector reads a relay's Stats at each scrape: nothing on the
// relay's hot path.
type relayCollector struct {
	r                                             *outbox.Relay
	leader, published, messages, txns, dead, errs *prometheus.Desc
	lagEvents, lagSeconds                         *prometheus.Desc
}

// Relay returns a collector of r's metrics, labelled with its events
// topic and instance name:
//
//	orchestrix_relay_leader                   1 while this instance publishes
//	orchestrix_relay_published_events_total   events published (committed)
//	orchestrix_relay_published_messages_total outbox-table messages published
//	orchestrix_relay_transactions_total       Kafka transactions committed
//	orchestrix_relay_dead_letters_total       records written to the relay's dead-letter topic
//	orchestrix_relay_errors_total             failures the relay recovered from
//	orchestrix_relay_lag_events               events committed but not yet published (-1: unknown)
//	orchestrix_relay_lag_seconds              age of the newest published event while behind
func Relay(r *outbox.Relay) prometheus.Collector {
	labels := prometheus.Labels{"topic": r.Topic(), "instance": r.Instance()}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("orchestrix_relay_"+name, help, nil, labels)
	}
	return &relayCollector{r: r,
		leader:     d("leader", "1 while this relay instance is the publishing leader."),
		published:  d("published_events_total", "Events published (committed in Kafka) by this instance."),
		messages:   d("published_messages_total", "Outbox-table messages published by this instance."),
		txns:       d("transactions_total", "Kafka transactions committed by this instance."),
		dead:       d("dead_letters_total", "Events and messages written to the relay's dead-letter topic."),
		errs:       d("errors_total", "Failures the relay recovered from (a term started over)."),
		lagEvents:  d("lag_events", "Events committed in the store but not yet published (-1: the store cannot tell)."),
		lagSeconds: d("lag_seconds", "Age of the newest published event while the relay is behind; 0 when caught up."),
	}
}

// Describe implements prometheus.Collector.
func (c *relayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.leader, c.published, c.messages, c.txns, c.dead, c.errs, c.lagEvents, c.lagSeconds} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *relayCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.r.Stats()
	leader := 0.0
	if st.Leader {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(c.published, prometheus.CounterValue, float64(st.Events))
	ch <- prometheus.MustNewConstMetric(c.messages, prometheus.CounterValue, float64(st.Messages))
	ch <- prometheus.MustNewConstMetric(c.txns, prometheus.CounterValue, float64(st.Transactions))
	ch <- prometheus.MustNewConstMetric(c.dead, prometheus.CounterValue, float64(st.DeadLettered))
	ch <- prometheus.MustNewConstMetric(c.errs, prometheus.CounterValue, float64(st.Errors))
	ch <- prometheus.MustNewConstMetric(c.lagEvents, prometheus.GaugeValue, float64(st.LagEvents))
	ch <- prometheus.MustNewConstMetric(c.lagSeconds, prometheus.GaugeValue, st.LagSeconds)
}

// Consumer turns a group's per-partition Stats into metrics; pass its
// Observe to consumers.WithStats.
//
//	orchestrix_consumer_records_total{group,topic,outcome="ok|failed|dead_lettered"}
//	orchestrix_consumer_batch_seconds{group,topic}   time to process a partition's share of a poll
//	orchestrix_consumer_lag_records{group,topic,partition}
type Consumer struct {
	group   string
	records *prometheus.CounterVec
	seconds *prometheus.HistogramVec
	lag     *prometheus.GaugeVec
}

// NewConsumer registers the metrics of group with reg.
func NewConsumer(reg prometheus.Registerer, group string) (*Consumer, error) {
	c := &Consumer{group: group,
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_consumer_records_total",
			Help: "Records processed, by outcome: ok, failed (handed to the failure policy), dead_lettered."}, []string{"group", "topic", "outcome"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "orchestrix_consumer_batch_seconds",
			Help: "Time to process one partition's share of a poll.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"group", "topic"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "orchestrix_consumer_lag_records",
			Help: "Records behind the partition's high watermark, as of the last fetch."}, []string{"group", "topic", "partition"}),
	}
	for _, col := range []prometheus.Collector{c.records, c.seconds, c.lag} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Observe records one partition's share of a poll; give it to
// consumers.WithStats.
func (c *Consumer) Observe(st consumers.Stats) {
	ok := st.Records - st.Failed
	c.records.WithLabelValues(c.group, st.Topic, "ok").Add(float64(max(ok, 0)))
	if st.Failed > 0 {
		c.records.WithLabelValues(c.group, st.Topic, "failed").Add(float64(st.Failed))
	}
	if st.DeadLettered > 0 {
		c.records.WithLabelValues(c.group, st.Topic, "dead_lettered").Add(float64(st.DeadLettered))
	}
	c.seconds.WithLabelValues(c.group, st.Topic).Observe(st.Duration.Seconds())
	c.lag.WithLabelValues(c.group, st.Topic, strconv.Itoa(int(st.Partition))).Set(float64(st.Lag))
}
