package prom

import (
	"context"
	"strconv"
	"strings"
	"sync"

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
//	orchestrix_consumer_handler_errors_total{group,topic,class,reason} handler failures (Middleware)
//	orchestrix_consumer_redriven_records_total{group,topic}  redriven dead letters seen again (Middleware)
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
	handlerErrs *prometheus.CounterVec
	redriven    *prometheus.CounterVec
	retryMarker string
	topics      sync.Map // consumed topic -> *topicSeries
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
		handlerErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_consumer_handler_errors_total", ConstLabels: gl,
			Help: "Handler calls that failed, by origin topic, error class (permanent, transient) and reason (consumers.ErrorReason)."}, []string{"topic", "class", "reason"}),
		redriven: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_consumer_redriven_records_total", ConstLabels: gl,
			Help: "Records handled that carry the redrive header: dead letters sent back by orchestrix dlq redrive."}, []string{"topic"}),
	}
	if err := register(reg, c.records, c.seconds, c.lag, c.retries, c.dead, c.rebalances, c.handlerErrs, c.redriven); err != nil {
		return nil, err
	}
	return c, nil
}

// Observe records one partition's share of a poll; give it to
// consumers.WithStats. It does not block.
func (c *Consumer) Observe(st consumers.Stats) {
	ts := c.topicSeries(st.Topic)
	if ok := st.Records - st.Failed; ok > 0 {
		ts.ok.Add(float64(ok))
	}
	if st.Failed > 0 {
		ts.failed.Add(float64(st.Failed))
	}
	if st.DeadLettered > 0 {
		ts.deadRecords.Add(float64(st.DeadLettered))
		ts.dead.Add(float64(st.DeadLettered))
	}
	if ts.retries != nil && st.Records > 0 {
		ts.retries.Add(float64(st.Records))
	}
	ts.seconds.Observe(st.Duration.Seconds())
	ts.lagOf(c, st.Topic, st.Partition).Set(float64(st.Lag))
}

// topicSeries are the series Observe moves for one consumed topic,
// looked up once: Observe runs after every partition's share of a poll.
type topicSeries struct {
	ok, failed, deadRecords, dead prometheus.Counter
	retries                       prometheus.Counter // nil at level 0
	seconds                       prometheus.Observer
	lag                           sync.Map // int32 -> prometheus.Gauge
}

func (c *Consumer) topicSeries(topic string) *topicSeries {
	if v, ok := c.topics.Load(topic); ok {
		return v.(*topicSeries)
	}
	origin, level := c.origin(topic)
	ts := &topicSeries{
		ok:          c.records.WithLabelValues(origin, "ok"),
		failed:      c.records.WithLabelValues(origin, "failed"),
		deadRecords: c.records.WithLabelValues(origin, "dead_lettered"),
		dead:        c.dead.WithLabelValues(origin, c.level(level)),
		seconds:     c.seconds.WithLabelValues(origin),
	}
	if level > 0 {
		ts.retries = c.retries.WithLabelValues(origin, c.level(level))
	}
	v, _ := c.topics.LoadOrStore(topic, ts)
	return v.(*topicSeries)
}

func (ts *topicSeries) lagOf(c *Consumer, topic string, p int32) prometheus.Gauge {
	if g, ok := ts.lag.Load(p); ok {
		return g.(prometheus.Gauge)
	}
	g, _ := ts.lag.LoadOrStore(p, c.lag.WithLabelValues(topic, strconv.Itoa(int(p))))
	return g.(prometheus.Gauge)
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

// Middleware returns a consumers.Middleware that counts, per record, the
// handler's failures by error class and reason (the values the dead
// letters' headers carry: consumers.ErrorClass and ErrorReason, a bounded
// set) and the redriven dead letters it sees again. Put it outermost in
// consumers.Chain. A BatchHandler wrapped by a middleware is called record
// by record, so give it to per-record handlers only; batch handlers (the
// aggregate processor) get the per-level counts from Observe.
func (c *Consumer) Middleware() consumers.Middleware {
	return func(next consumers.Handler) consumers.Handler {
		return consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
			topic, _ := c.origin(r.Topic)
			for _, h := range r.Headers {
				if h.Key == consumers.HeaderRedrives {
					if n, err := strconv.Atoi(string(h.Value)); err == nil && n > 0 {
						c.redriven.WithLabelValues(topic).Inc()
					}
					break
				}
			}
			err := next.Handle(ctx, r)
			if err != nil {
				c.handlerErrs.WithLabelValues(topic, consumers.ErrorClass(err), consumers.ErrorReason(err)).Inc()
			}
			return err
		})
	}
}
