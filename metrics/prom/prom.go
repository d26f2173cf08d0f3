// Package prom exposes Orchestrix runtimes as Prometheus metrics. It is a
// module of its own, like franz-go's plugin/kprom, so that the core does
// not import client_golang.
//
// Each runtime is wired through the hook it already has; nothing here
// sits on a hot path beyond a counter increment:
//
//	reg := prometheus.NewRegistry()
//	// consumer groups: per-poll stats, rebalances, client metrics; broker-side lag and DLQ depth
//	cm, err := prom.NewConsumer(reg, "billing")
//	kc, err := prom.NewKafkaClient(reg, "billing")
//	group, err := consumers.New(seeds, "billing", topics, consumers.Chain(h, cm.Middleware()),
//		consumers.WithStats(cm.Observe), consumers.WithClientOpts(kgo.WithHooks(cm.Hook(), kc)))
//	reg.MustRegister(prom.GroupLag(kadm.NewClient(cl), "billing", topics...))
//	// the relay: counters at scrape, lag from its periodic report, transaction times, backlog
//	rep := prom.NewRelayReports()
//	relay, err := outbox.NewRelay(store, seeds, outbox.ToTopic("billing.events"),
//		outbox.ReportStats(5*time.Second, rep.Observe), outbox.OnCommit(rep.Commit))
//	reg.MustRegister(prom.Relay(relay, rep), prom.RelayBacklog(store, "billing.events", seeds))
//	// the store (for the aggregates processor), PostgreSQL, sagas, projections
//	sm, err := prom.NewStoreMetrics(reg)
//	processor := aggregates.NewProcessor(accounts, prom.Store(store, sm))
//	poolCfg.ConnConfig.Tracer, err = prom.NewQueryTracer(reg)
//	sg, err := prom.NewSagas(reg)
//	rt, err := sagas.NewRuntime(sg.Store(sagaStore), codecs, defs, sagas.OnTransition(sg.Observe))
//	reg.MustRegister(prom.SagaInstances(sagaStore, "transfer"))
//	pc, err := prom.NewProjectionCommits(reg)
//	runner, err := projections.New("balances", backend, source, apply, projections.OnCommit(pc.Observe))
//	reg.MustRegister(prom.Projection("balances", runner))
//	// one address for /metrics, /livez and /readyz
//	service.Run(ctx, service.Options{Addr: ":8080", Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{})}, ...)
//
// Label sets stay small and bounded: group, topic, partition (lag only),
// level and outcome for consumers; topic and instance for a relay;
// saga_type and status for sagas; projection, version and shard for
// projections; op and outcome for the store and PostgreSQL. No label
// carries an ID, a key or an error message. README.md lists every series
// with its meaning and a suggested alert.
//
// Collectors that query a database or a broker at scrape time do so with
// a timeout (ScrapeTimeout) and bounded queries; a failed query drops its
// series from that scrape and counts orchestrix_scrape_errors_total.
package prom

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ScrapeTimeout bounds the queries a collector makes during one scrape.
const ScrapeTimeout = 5 * time.Second

// scrapeErrorsDesc is the series a scrape-time collector reports its
// failed queries on. Const labels name the collector and what it watches
// (a group, a saga type), so collectors can be registered side by side.
func scrapeErrorsDesc(collector, target string) *prometheus.Desc {
	return prometheus.NewDesc("orchestrix_scrape_errors_total",
		"Queries of a scrape-time collector that failed (its series are missing from that scrape).",
		nil, prometheus.Labels{"collector": collector, "target": target})
}

// scrapeCtx is the context of one scrape's queries.
func scrapeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), ScrapeTimeout)
}

// counter is a lock-free count for collectors' own failures.
type counter struct{ n atomic.Uint64 }

func (c *counter) inc()         { c.n.Add(1) }
func (c *counter) load() uint64 { return c.n.Load() }
