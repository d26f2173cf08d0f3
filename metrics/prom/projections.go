package prom

import (
	"strconv"
	"time"

	"github.com/orchestrix/orchestrix/projections"
	"github.com/prometheus/client_golang/prometheus"
)

// ShardStatser is what Projection reads: a *projections.Runner[T] of any
// read model type.
type ShardStatser interface {
	Stats() []projections.ShardStats
}

// projectionCollector reads a runner's Stats at each scrape.
type projectionCollector struct {
	r                                  ShardStatser
	applied, parked, leading, stopped  *prometheus.Desc
	caughtUp, lagSeconds, heartbeatAge *prometheus.Desc
}

// Projection returns a collector of a projection runner's shards, read
// from r.Stats at each scrape (nothing on the runner's path), labelled
// projection (name), version and shard:
//
//	orchestrix_projection_applied_events_total   events this process applied since Run started
//	orchestrix_projection_parked_events_total    events this process parked (OnPoison(Park), SkipStopped)
//	orchestrix_projection_leading                1 while this process owns the shard
//	orchestrix_projection_stopped                1 while the shard is stopped on a poison event (status stopped), else 0 (running)
//	orchestrix_projection_caught_up              1 when the shard's last read found the end of its source
//	orchestrix_projection_lag_seconds            age (by event time) of the last event applied while behind, 0 when caught up
//	orchestrix_projection_heartbeat_age_seconds  seconds since this process last committed for the shard (leading shards only)
//
// Shard counts are small (a version's shard count is fixed), so the label
// stays bounded. Lag in events is not reported: Runner.Stats does not
// expose the source's head.
func Projection(name string, r ShardStatser) prometheus.Collector {
	l := prometheus.Labels{"projection": name}
	d := func(n, help string) *prometheus.Desc {
		return prometheus.NewDesc("orchestrix_projection_"+n, help, []string{"version", "shard"}, l)
	}
	return &projectionCollector{r: r,
		applied:      d("applied_events_total", "Events this process applied to the shard since Run started."),
		parked:       d("parked_events_total", "Events this process parked for the shard (dead-lettered to projection_dead_letters)."),
		leading:      d("leading", "1 while this process owns the shard."),
		stopped:      d("stopped", "1 while the shard is stopped on a poison event; 0 while it runs."),
		caughtUp:     d("caught_up", "1 when the shard's last read found the end of its source."),
		lagSeconds:   d("lag_seconds", "Age, by event time, of the last event applied while the shard is behind; 0 when caught up."),
		heartbeatAge: d("heartbeat_age_seconds", "Seconds since this process last committed for a shard it leads (its heartbeat)."),
	}
}

// Describe implements prometheus.Collector.
func (c *projectionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.applied, c.parked, c.leading, c.stopped, c.caughtUp, c.lagSeconds, c.heartbeatAge} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *projectionCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for _, s := range c.r.Stats() {
		v, sh := strconv.Itoa(s.Version), strconv.Itoa(s.Shard)
		ch <- prometheus.MustNewConstMetric(c.applied, prometheus.CounterValue, float64(s.Applied), v, sh)
		ch <- prometheus.MustNewConstMetric(c.parked, prometheus.CounterValue, float64(s.Parked), v, sh)
		ch <- prometheus.MustNewConstMetric(c.leading, prometheus.GaugeValue, b2f(s.Leading), v, sh)
		ch <- prometheus.MustNewConstMetric(c.stopped, prometheus.GaugeValue, b2f(s.Stopped != nil), v, sh)
		ch <- prometheus.MustNewConstMetric(c.caughtUp, prometheus.GaugeValue, b2f(s.CaughtUp), v, sh)
		ch <- prometheus.MustNewConstMetric(c.lagSeconds, prometheus.GaugeValue, s.LagSeconds, v, sh)
		if s.Leading && !s.LastCommit.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.heartbeatAge, prometheus.GaugeValue, max(0, now.Sub(s.LastCommit).Seconds()), v, sh)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ProjectionCommits are the series fed by projections.OnCommit (pass
// Observe), for every projection of a process:
//
//	orchestrix_projection_batch_seconds{projection}  histogram: one batch's transaction, handler included
//	orchestrix_projection_batch_events{projection}   histogram: events per committed batch
type ProjectionCommits struct {
	seconds, events *prometheus.HistogramVec
}

// NewProjectionCommits registers the batch series with reg.
func NewProjectionCommits(reg prometheus.Registerer) (*ProjectionCommits, error) {
	p := &ProjectionCommits{
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "orchestrix_projection_batch_seconds",
			Help: "Time of one projection batch's transaction, handler included.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"projection"}),
		events: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "orchestrix_projection_batch_events",
			Help: "Events per committed projection batch (0: a checkpoint-only commit).", Buckets: []float64{0, 1, 10, 100, 500, 1000, 2000, 5000}}, []string{"projection"}),
	}
	if err := register(reg, p.seconds, p.events); err != nil {
		return nil, err
	}
	return p, nil
}

// Observe records a committed batch; pass it to projections.OnCommit.
func (p *ProjectionCommits) Observe(c projections.Commit) {
	p.seconds.WithLabelValues(c.Projection).Observe(c.Took.Seconds())
	p.events.WithLabelValues(c.Projection).Observe(float64(len(c.Events)))
}
