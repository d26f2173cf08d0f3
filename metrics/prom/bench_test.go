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

// benchRecords is the backlog the consumer benchmarks read: records of
// 50 bytes over 4 partitions of a kfake broker.
const benchRecords = 1_000_000

// benchBacklog starts a kfake broker holding the backlog in topic
// "bench.events".
func benchBacklog(b *testing.B) (seeds []string, adm *kadm.Client) {
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "bench.events"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(fake.Close)
	seeds = fake.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cl.Close)
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
	return seeds, kadm.NewClient(cl)
}

// benchGroup returns a group reading the backlog from the start with h,
// with every consumer series on when on is set: WithStats(Observe), the
// rebalance hook, kprom client metrics through KafkaClient, and a scrape
// of the registry every 100ms (far busier than a real scraper) until ctx
// ends.
func benchGroup(ctx context.Context, b *testing.B, seeds []string, adm *kadm.Client, group string, on bool, h consumers.Handler) *consumers.Group {
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, consumers.DeadLetterTopic("bench.events", group)); err != nil {
		b.Fatal(err)
	}
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
		go func() {
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
	return g
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// BenchmarkConsumerMetrics measures what the Prometheus wiring of a
// consumer group costs: the backlog is read by a fresh group per round,
// alternately without and with every consumer series (see benchGroup), in
// adjacent pairs (alternating which goes first). The handler does
// nothing: the worst case for the relative cost. It reports the median
// pair ratios of the rate (records/s, first to last record) and of the
// process CPU time per record (kfake's included, the same in both modes;
// 1 = free). On a machine shared with other work the rates of
// neighbouring rounds swing by 2x; the CPU ratio is steadier, and a CPU
// profile of the run (-cpuprofile) attributes the metrics' share exactly
// (see README.md). Run it with -benchtime=1x.
//
//	go test -run '^$' -bench BenchmarkConsumerMetrics -benchtime=1x -cpuprofile cpu.out .
func BenchmarkConsumerMetrics(b *testing.B) {
	const rounds = 11
	seeds, adm := benchBacklog(b)
	round := 0
	run := func(on bool) (rate, cpu float64) {
		round++
		var n, first, last atomic.Int64
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
		g := benchGroup(ctx, b, seeds, adm, fmt.Sprintf("alt-%d", round), on, h)
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
		b.ReportMetric(median(rateOff), "records/s-off")
		b.ReportMetric(median(rateOn), "records/s-on")
		b.ReportMetric(median(rateRatio), "rate-on/off")
		b.ReportMetric(median(cpuRatio), "cpu-off/on")
		b.Logf("median %.0f records/s without metrics, %.0f with; median pair ratios: rate on/off %.3f, CPU per record off/on %.3f; rate ratios %.2f, CPU ratios %.2f",
			median(rateOff), median(rateOn), median(rateRatio), median(cpuRatio), rateRatio, cpuRatio)
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
