package prom_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/metrics/prom"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The event store wrapped for metrics: an append and a conflict.
func ExampleStore() {
	reg := prometheus.NewRegistry()
	m, err := prom.NewStoreMetrics(reg)
	if err != nil {
		fmt.Println(err)
		return
	}
	store := prom.Store(memory.New(), m) // give this to aggregates.NewProcessor
	ctx := context.Background()
	e := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "Opened", Source: "/bank"}, ContentType: "application/json", Data: []byte(`{}`)}
	_, _ = store.Append(ctx, "acc-1", stores.NoStream, []orchestrix.Event{e})
	_, err = store.Append(ctx, "acc-1", stores.NoStream, []orchestrix.Event{e})
	fmt.Println("conflict:", errors.Is(err, stores.ErrConflict))
	fmt.Println("conflicts:", testutil.ToFloat64(conflicts(reg)))
	// Output:
	// conflict: true
	// conflicts: 1
}

// conflicts sums orchestrix_store_conflicts_total into a gauge.
func conflicts(reg prometheus.Gatherer) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "sum"})
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "orchestrix_store_conflicts_total" {
			for _, m := range mf.GetMetric() {
				g.Add(m.GetCounter().GetValue())
			}
		}
	}
	return g
}
