package prom

import (
	"strconv"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
)

// groupLag asks the brokers at each scrape how far a group is behind and
// how deep its dead-letter topics are.
type groupLag struct {
	adm                     *kadm.Client
	group                   string
	topics, dlqs            []string
	lag, dlqDepth, scrapeEr *prometheus.Desc
	errs                    counter
}

// GroupLag returns a collector that asks the brokers, at each scrape, for
// group's committed lag on topics and the depth of their dead-letter
// topics ("<topic>.<group>.dlq"):
//
//	orchestrix_consumer_committed_lag_records{group,topic,partition}
//	    read_committed end offset minus the group's committed offset (minus the
//	    log start offset where the group committed nothing): what the group has
//	    not yet committed, whether or not any member runs
//	orchestrix_consumer_dlq_records{group,topic}
//	    records retained in the topic's dead-letter topic (absent without one)
//
// Unlike orchestrix_consumer_lag_records (each member's view as of its
// last fetch), this is the group's lag as Kafka sees it, so it grows while
// every member is down: alert on it. A transactional topic's last commit
// marker occupies an offset, so a caught-up group may show 1. One scrape
// costs three or four requests of adm's client (ScrapeTimeout each).
func GroupLag(adm *kadm.Client, group string, topics ...string) prometheus.Collector {
	g := &groupLag{adm: adm, group: group, topics: topics}
	for _, t := range topics {
		g.dlqs = append(g.dlqs, consumers.DeadLetterTopic(t, group))
	}
	gl := prometheus.Labels{"group": group}
	g.lag = prometheus.NewDesc("orchestrix_consumer_committed_lag_records",
		"Records of the partition the group has not committed (read_committed end offset minus committed offset), as the brokers see it.",
		[]string{"topic", "partition"}, gl)
	g.dlqDepth = prometheus.NewDesc("orchestrix_consumer_dlq_records",
		"Records retained in the topic's dead-letter topic <topic>.<group>.dlq.", []string{"topic"}, gl)
	g.scrapeEr = scrapeErrorsDesc("group_lag", group)
	return g
}

// Describe implements prometheus.Collector.
func (g *groupLag) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.lag
	ch <- g.dlqDepth
	ch <- g.scrapeEr
}

// Collect implements prometheus.Collector.
func (g *groupLag) Collect(ch chan<- prometheus.Metric) {
	defer func() {
		ch <- prometheus.MustNewConstMetric(g.scrapeEr, prometheus.CounterValue, float64(g.errs.load()))
	}()
	ctx, cancel := scrapeCtx()
	defer cancel()
	ends, err := g.adm.ListCommittedOffsets(ctx, g.topics...)
	if err != nil {
		g.errs.inc()
		return
	}
	committed, err := g.adm.FetchOffsetsForTopics(ctx, g.group, g.topics...)
	if err != nil {
		g.errs.inc()
		return
	}
	starts, err := g.adm.ListStartOffsets(ctx, append(append([]string(nil), g.topics...), g.dlqs...)...)
	if err != nil {
		g.errs.inc()
		return
	}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			return
		}
		from := int64(-1)
		if c, ok := committed.Lookup(o.Topic, o.Partition); ok && c.Err == nil && c.At >= 0 {
			from = c.At
		} else if s, ok := starts.Lookup(o.Topic, o.Partition); ok && s.Err == nil {
			from = s.Offset
		}
		if from < 0 {
			return
		}
		ch <- prometheus.MustNewConstMetric(g.lag, prometheus.GaugeValue, float64(max(0, o.Offset-from)),
			o.Topic, strconv.Itoa(int(o.Partition)))
	})
	dlqEnds, err := g.adm.ListEndOffsets(ctx, g.dlqs...)
	if err != nil {
		g.errs.inc()
		return
	}
	for i, dlq := range g.dlqs {
		parts, ok := dlqEnds[dlq]
		if !ok {
			continue
		}
		depth, found := int64(0), false
		for p, e := range parts {
			s, ok := starts.Lookup(dlq, p)
			if e.Err != nil || !ok || s.Err != nil {
				continue
			}
			depth += max(0, e.Offset-s.Offset)
			found = true
		}
		if found {
			ch <- prometheus.MustNewConstMetric(g.dlqDepth, prometheus.GaugeValue, float64(depth), g.topics[i])
		}
	}
}
