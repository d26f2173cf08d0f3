package prom

import (
	"strconv"
	"strings"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Consumer turns a group's per-partition Stats into metrics; pass its
// Observe to consumers.WithStats and its Hook to the group's client.
//
//	orchestrix_consumer_records_total{group,topic,outcome="ok|failed|dead_lettered"}
//	orchestrix_consumer_batch_seconds{group,topic}   time to process a partition's share of a poll
//	orchestrix_consumer_lag_records{group,topic,partition}
//	orchestrix_consumer_retries_total{group,topic,level}      records handled again from retry level n
//	orchestrix_consumer_dead_letters_total{group,topic,level} records dead-lettered from level n (0: the topic itself)
//	orchestrix_consumer_rebalances_total{group}              group generations this member joined
//
// Records read from a retry topic ("<topic>.<group>.retry.<n>") are
// counted under their origin topic with level n, so topic stays one label
// value per consumed topic.
type Consumer struct {
	group       string
	records     *prometheus.CounterVec
	seconds     *prometheus.HistogramVec
	lag         *prometheus.GaugeVec
	retries     *prometheus.CounterVec
	dead        *prometheus.CounterVec
	rebalances  prometheus.Counter
	retryMarker string
}

// NewConsumer registers the metrics of group with reg. Several groups may
// share one registry; registering one group twice fails.
func NewConsumer(reg prometheus.Registerer, group string) (*Consumer, error) {
	gl := prometheus.Labels{"group": group}
	c := &Consumer{group: group, retryMarker: "." + group + ".retry.",
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_consumer_records_total", ConstLabels: gl,
			Help: "Records processed, by outcome: ok, failed (handed to the failure policy), dead_lettered."}, []string{"topic", "outcome"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "orchestrix_consumer_batch_seconds", ConstLabels: gl,
			Help: "Time to process one partition's share of a poll.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"topic"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "orchestrix_consumer_lag_records", ConstLabels: gl,
			Help: "Records behind the partition's high watermark, as of this member's last fetch."}, []string{"topic", "partition"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_consumer_retries_total", ConstLabels: gl,
			Help: "Records handled again from retry topic level n, by origin topic."}, []string{"topic", "level"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_consumer_dead_letters_total", ConstLabels: gl,
			Help: "Records dead-lettered, by origin topic and the level they failed at (0: the topic itself)."}, []string{"topic", "level"}),
		rebalances: prometheus.NewCounter(prometheus.CounterOpts{Name: "orchestrix_consumer_rebalances_total", ConstLabels: gl,
			Help: "Group generations this member joined (SyncGroup requests answered): one per rebalance it took part in."}),
	}
	if err := register(reg, c.records, c.seconds, c.lag, c.retries, c.dead, c.rebalances); err != nil {
		return nil, err
	}
	return c, nil
}

// Observe records one partition's share of a poll; give it to
// consumers.WithStats. It does not block.
func (c *Consumer) Observe(st consumers.Stats) {
	topic, level := c.origin(st.Topic)
	ok := st.Records - st.Failed
	c.records.WithLabelValues(topic, "ok").Add(float64(max(ok, 0)))
	if st.Failed > 0 {
		c.records.WithLabelValues(topic, "failed").Add(float64(st.Failed))
	}
	if st.DeadLettered > 0 {
		c.records.WithLabelValues(topic, "dead_lettered").Add(float64(st.DeadLettered))
		c.dead.WithLabelValues(topic, c.level(level)).Add(float64(st.DeadLettered))
	}
	if level > 0 && st.Records > 0 {
		c.retries.WithLabelValues(topic, c.level(level)).Add(float64(st.Records))
	}
	c.seconds.WithLabelValues(topic).Observe(st.Duration.Seconds())
	c.lag.WithLabelValues(st.Topic, strconv.Itoa(int(st.Partition))).Set(float64(st.Lag))
}

// origin splits a retry topic of the group into its origin topic and
// level; any other topic is its own origin at level 0.
func (c *Consumer) origin(topic string) (string, int) {
	i := strings.LastIndex(topic, c.retryMarker)
	if i <= 0 {
		return topic, 0
	}
	n, err := strconv.Atoi(topic[i+len(c.retryMarker):])
	if err != nil || n < 1 {
		return topic, 0
	}
	return topic[:i], n
}

// level formats n without allocating for the usual few levels.
func (c *Consumer) level(n int) string {
	if n < len(levelNames) {
		return levelNames[n]
	}
	return strconv.Itoa(n)
}

var levelNames = []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}

// Hook returns a franz-go hook for the group's client that counts the
// rebalances this member took part in; pass it with
// consumers.WithClientOpts(kgo.WithHooks(c.Hook())). It counts answered
// SyncGroup requests, so it covers the classic group protocol (the one
// consumers uses), not KIP-848 groups.
func (c *Consumer) Hook() kgo.Hook { return rebalanceHook{c.rebalances} }

type rebalanceHook struct{ n prometheus.Counter }

// syncGroupKey is the Kafka API key of SyncGroup.
const syncGroupKey = 14

// OnBrokerE2E implements kgo.HookBrokerE2E.
func (h rebalanceHook) OnBrokerE2E(_ kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	if key == syncGroupKey && e2e.Err() == nil {
		h.n.Inc()
	}
}

var _ kgo.HookBrokerE2E = rebalanceHook{}
