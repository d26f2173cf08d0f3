package prom

import (
	"math"
	"sort"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix/outbox"
	"github.com/prometheus/client_golang/prometheus"
)

// relayCollector reads a relay's Stats at each scrape: nothing on the
// relay's hot path.
type relayCollector struct {
	r                                             *outbox.Relay
	rep                                           *RelayReports
	labels                                        []string
	leader, published, messages, txns, dead, errs *prometheus.Desc
	lagEvents, lagSeconds, txnSeconds, reportAge  *prometheus.Desc
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
//	orchestrix_relay_transaction_seconds      histogram: a Kafka transaction, start to acknowledged commit
//	orchestrix_relay_report_age_seconds       time since the last periodic report (the lag's age)
//
// The relay computes its lag only in its periodic report (outbox.ReportStats),
// and transaction times only reach outbox.OnCommit: pass a RelayReports
// wired to both, or the lag series read -1 and 0 and the histogram and
// report age are absent. Relay.Stats alone carries no lag.
func Relay(r *outbox.Relay, rep *RelayReports) prometheus.Collector {
	labels := prometheus.Labels{"topic": r.Topic(), "instance": r.Instance()}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("orchestrix_relay_"+name, help, nil, labels)
	}
	return &relayCollector{r: r, rep: rep,
		leader:     d("leader", "1 while this relay instance is the publishing leader."),
		published:  d("published_events_total", "Events published (committed in Kafka) by this instance."),
		messages:   d("published_messages_total", "Outbox-table messages published by this instance."),
		txns:       d("transactions_total", "Kafka transactions committed by this instance."),
		dead:       d("dead_letters_total", "Events and messages written to the relay's dead-letter topic."),
		errs:       d("errors_total", "Failures the relay recovered from (a term started over)."),
		lagEvents:  d("lag_events", "Events committed in the store but not yet published, as of the last report (-1: unknown, not leading, or no report)."),
		lagSeconds: d("lag_seconds", "Age of the newest published event while the relay is behind, as of the last report; 0 when caught up."),
		txnSeconds: d("transaction_seconds", "Time of one Kafka transaction of the relay, from its start to its acknowledged commit."),
		reportAge:  d("report_age_seconds", "Seconds since the relay's last periodic report (the age of the lag figures)."),
	}
}

// Describe implements prometheus.Collector.
func (c *relayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.leader, c.published, c.messages, c.txns, c.dead, c.errs, c.lagEvents, c.lagSeconds} {
		ch <- d
	}
	if c.rep != nil {
		ch <- c.txnSeconds
		ch <- c.reportAge
	}
}

// Collect implements prometheus.Collector.
func (c *relayCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.r.Stats()
	leader := 0.0
	if st.Leader {
		leader = 1
	}
	lagEvents, lagSeconds := float64(-1), 0.0
	if c.rep != nil {
		if last, at := c.rep.last(); !at.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.reportAge, prometheus.GaugeValue, time.Since(at).Seconds())
			if last.Leader && st.Leader {
				lagEvents, lagSeconds = float64(last.LagEvents), last.LagSeconds
			}
		}
		c.rep.txn.collect(ch, c.txnSeconds)
	}
	ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(c.published, prometheus.CounterValue, float64(st.Events))
	ch <- prometheus.MustNewConstMetric(c.messages, prometheus.CounterValue, float64(st.Messages))
	ch <- prometheus.MustNewConstMetric(c.txns, prometheus.CounterValue, float64(st.Transactions))
	ch <- prometheus.MustNewConstMetric(c.dead, prometheus.CounterValue, float64(st.DeadLettered))
	ch <- prometheus.MustNewConstMetric(c.errs, prometheus.CounterValue, float64(st.Errors))
	ch <- prometheus.MustNewConstMetric(c.lagEvents, prometheus.GaugeValue, lagEvents)
	ch <- prometheus.MustNewConstMetric(c.lagSeconds, prometheus.GaugeValue, lagSeconds)
}

// RelayReports keeps what a relay reports through its hooks: its last
// periodic Stats (the only ones with the lag) and its transaction times.
// Give Observe to outbox.ReportStats and Commit to outbox.OnCommit, and the
// value to Relay. It is safe for concurrent use; one per relay.
type RelayReports struct {
	mu  sync.Mutex
	st  outbox.Stats
	at  time.Time
	txn *hist
}

// NewRelayReports returns an empty RelayReports.
func NewRelayReports() *RelayReports {
	return &RelayReports{txn: newHist(prometheus.ExponentialBuckets(0.001, 2, 14))}
}

// Observe records a periodic report; pass it to outbox.ReportStats.
func (r *RelayReports) Observe(st outbox.Stats) {
	r.mu.Lock()
	r.st, r.at = st, time.Now()
	r.mu.Unlock()
}

// Commit records a committed transaction's duration; pass it to
// outbox.OnCommit (or call it from your own OnCommit).
func (r *RelayReports) Commit(c outbox.Commit) { r.txn.observe(c.Duration.Seconds()) }

func (r *RelayReports) last() (outbox.Stats, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st, r.at
}

// hist is a fixed-bucket histogram without labels, reported under a
// descriptor chosen at collection (so const labels known only later, like
// a relay's topic, can be attached).
type hist struct {
	mu     sync.Mutex
	bounds []float64
	counts []uint64
	count  uint64
	sum    float64
}

func newHist(bounds []float64) *hist {
	b := append([]float64(nil), bounds...)
	sort.Float64s(b)
	return &hist{bounds: b, counts: make([]uint64, len(b))}
}

func (h *hist) observe(v float64) {
	if math.IsNaN(v) {
		return
	}
	i := sort.SearchFloat64s(h.bounds, v) // first bound >= v
	h.mu.Lock()
	if i < len(h.counts) {
		h.counts[i]++
	}
	h.count++
	h.sum += v
	h.mu.Unlock()
}

func (h *hist) collect(ch chan<- prometheus.Metric, d *prometheus.Desc) {
	buckets := make(map[float64]uint64, len(h.bounds)) // the metric keeps it
	h.mu.Lock()
	cum := uint64(0)
	for i, b := range h.bounds {
		cum += h.counts[i]
		buckets[b] = cum
	}
	count, sum := h.count, h.sum
	h.mu.Unlock()
	ch <- prometheus.MustNewConstHistogram(d, count, sum, buckets)
}
