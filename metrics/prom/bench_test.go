package prom_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/metrics/prom"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// BenchmarkConsumerMetrics measures what the Prometheus wiring of a
// consumer group costs: the same backlog (benchRecords records of 50 bytes over 4
// partitions of a kfake broker) is consumed by a fresh group per round,
// alternately without metrics and with every consumer series on
// (WithStats(Consumer.Observe), the rebalance hook, kprom client metrics
// through KafkaClient, and a scrape of the registry every 100ms). It
// reports the median rate of each and their ratio (on/off; 1 = free).
// Run it with -benchtime=1x: each iteration is a full set of rounds.
//
//	go test -run '^$' -bench BenchmarkConsumerMetrics -benchtime=1x .
func BenchmarkConsumerMetrics(b *testing.B) {
	const benchRecords, rounds = 300_000, 11
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "bench.events"))
	if err != nil {
		b.Fatal(err)
	}
	defer fake.Close()
	seeds := fake.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	val := make([]byte, 50)
	for i := 0; i < benchRecords; i += 10_000 {
		recs := make([]*kgo.Record, 0, 10_000)
		for j := range 10_000 {
			recs = append(recs, &kgo.Record{Topic: "bench.events", Key: fmt.Appendf(nil, "k%d", (i+j)%1000), Value: val})
		}
		if err := cl.ProduceSync(b.Context(), recs...).FirstErr(); err != nil {
			b.Fatal(err)
		}
	}
	adm := kadm.NewClient(cl)
	round := 0
	// run consumes the backlog with a fresh group and returns the rate
	// (records/s, first to last record handled) and the process CPU time
	// per record (user+system, the kfake broker's included: the same in
	// both modes), which a machine shared with other work disturbs less.
	run := func(on bool) (rate, cpu float64) {
		round++
		group := fmt.Sprintf("bench-%d", round)
		if _, err := adm.CreateTopic(b.Context(), 1, 1, nil, consumers.DeadLetterTopic("bench.events", group)); err != nil {
			b.Fatal(err)
		}
		var n atomic.Int64
		var first, last atomic.Int64
		ctx, cancel := context.WithCancel(b.Context())
		defer cancel()
		h := consumers.HandlerFunc(func(context.Context, *kgo.Record) error {
			now := time.Now().UnixNano()
			if n.Add(1) == 1 {
				first.Store(now)
			}
			last.Store(now)
			if n.Load() == benchRecords {
				cancel()
			}
			return nil
		})
		opts := []consumers.Option{consumers.PollLinger(0)}
		if on {
			reg := prometheus.NewRegistry()
			cm, err := prom.NewConsumer(reg, group)
			if err != nil {
				b.Fatal(err)
			}
			kc, err := prom.NewKafkaClient(reg, group)
			if err != nil {
				b.Fatal(err)
			}
			opts = append(opts, consumers.WithStats(cm.Observe), consumers.WithClientOpts(kgo.WithHooks(cm.Hook(), kc)))
			go func() { // a scraper far busier than a real one
				t := time.NewTicker(100 * time.Millisecond)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
						_, _ = reg.Gather()
					}
				}
			}()
		}
		g, err := consumers.New(seeds, group, []string{"bench.events"}, h, opts...)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC() // the previous round's garbage is not this round's cost
		cpu0 := cpuSeconds()
		if err := g.Run(ctx); err != nil {
			b.Fatal(err)
		}
		cpu = (cpuSeconds() - cpu0) / benchRecords
		if n.Load() < benchRecords {
			b.Fatalf("round %d handled %d of %d", round, n.Load(), benchRecords)
		}
		return float64(benchRecords-1) / time.Duration(last.Load()-first.Load()).Seconds(), cpu
	}
	for b.Loop() {
		// Adjacent pairs share the machine's mood: compare within a pair,
		// alternating which mode goes first, and take medians.
		var rateOff, rateOn, rateRatio, cpuRatio []float64
		for i := range rounds {
			var rOff, cOff, rOn, cOn float64
			if i%2 == 0 {
				rOff, cOff = run(false)
				rOn, cOn = run(true)
			} else {
				rOn, cOn = run(true)
				rOff, cOff = run(false)
			}
			rateOff, rateOn = append(rateOff, rOff), append(rateOn, rOn)
			rateRatio, cpuRatio = append(rateRatio, rOn/rOff), append(cpuRatio, cOff/cOn)
		}
		med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
		b.ReportMetric(med(rateOff), "records/s-off")
		b.ReportMetric(med(rateOn), "records/s-on")
		b.ReportMetric(med(rateRatio), "rate-on/off")
		b.ReportMetric(med(cpuRatio), "cpu-off/on")
		b.Logf("consumer group over kfake, %d records, 4 partitions, %d pairs of rounds: median %.0f records/s without metrics, %.0f with; "+
			"median pair ratios: rate on/off %.3f, CPU per record off/on %.3f (1 = free; below 0.97 = over the 3%% budget); rate ratios %.2f, CPU ratios %.2f",
			benchRecords, rounds, med(rateOff), med(rateOn), med(rateRatio), med(cpuRatio), rateRatio, cpuRatio)
	}
}

// cpuSeconds is the user and system CPU time of this process so far.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
