package consumers_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
)

// benchPartitions is how many partitions the goodput benchmarks' topics
// have.
const benchPartitions = 8

// filledTopic returns a fresh topic holding n records over 1000 keys.
func filledTopic(b *testing.B, seeds []string, n int) string {
	b.Helper()
	topic := testenv.Topic(b, seeds, benchPartitions, nil)
	cl := testenv.Client(b, seeds, kgo.ProducerBatchMaxBytes(1<<20))
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: topic, Key: []byte("k" + strconv.Itoa(i%1000)), Value: []byte(strconv.Itoa(i))}
	}
	if err := cl.ProduceSync(b.Context(), recs...).FirstErr(); err != nil {
		b.Fatal(err)
	}
	return topic
}

// goodput runs a group over n fresh records with a share of handler calls
// failing transiently, each call taking work, and returns the successful
// handler calls per second from the first call until every origin record
// is settled (handled, or sent to retry level 1).
func goodput(b *testing.B, seeds []string, n int, failRate float64, work time.Duration, policy consumers.FailurePolicy) float64 {
	b.Helper()
	topic := filledTopic(b, seeds, n)
	group := testenv.Name("g")
	createTopics(b, seeds, benchPartitions, policy.Topics(topic, group)...)
	var (
		ok, settled atomic.Int64
		first, last atomic.Int64 // unix nanos
		handledAt   atomic.Int64 // ok when the origin was settled
	)
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		if first.Load() == 0 {
			first.CompareAndSwap(0, time.Now().UnixNano())
		}
		if work > 0 {
			for t := time.Now(); time.Since(t) < work; {
				// Busy work: a CPU-bound handler.
			}
		}
		if rand.Float64() < failRate {
			return errors.New("transient")
		}
		ok.Add(1)
		return nil
	})
	allDone := make(chan struct{})
	stats := func(s consumers.Stats) {
		if s.Topic != topic {
			return
		}
		if settled.Add(int64(s.Records)) >= int64(n) && last.CompareAndSwap(0, time.Now().UnixNano()) {
			handledAt.Store(ok.Load())
			close(allDone)
		}
	}
	opts := []consumers.Option{consumers.WithFailurePolicy(policy), consumers.KeyConcurrency(4), consumers.WithStats(stats)}
	if d, err := time.ParseDuration(os.Getenv("BENCH_LINGER")); err == nil {
		opts = append(opts, consumers.WithClientOpts(kgo.ProducerLinger(d)))
	}
	g, err := consumers.New(seeds, group, []string{topic}, h, opts...)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
	defer cancel()
	if path := os.Getenv("BENCH_CPUPROFILE"); path != "" {
		f, err := os.CreateTemp(filepath.Dir(path), fmt.Sprintf("%s-fail%.2f-*", filepath.Base(path), failRate))
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	done := make(chan error, 1)
	cpu0 := benchCPU()
	go func() { done <- g.Run(ctx) }()
	select {
	case <-allDone:
	case <-ctx.Done():
	}
	if os.Getenv("BENCH_CPU") != "" {
		b.Logf("fail %.2f: %.3f µs CPU per record", failRate, float64((benchCPU()-cpu0).Nanoseconds())/1000/float64(n))
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if last.Load() == 0 {
		b.Fatal("origin not settled in time")
	}
	return float64(handledAt.Load()) / time.Duration(last.Load()-first.Load()).Seconds()
}

// bareGoodput is the baseline: a plain franz-go consumer-group loop (poll,
// run the same handler work on each partition's records in order, the
// partitions of a poll concurrently as a competent user would, commit the
// poll) over n fresh records laid out like goodput's, no failures. It
// returns the handled records per second from the first call to the last.
func bareGoodput(b *testing.B, seeds []string, n int, work time.Duration) float64 {
	b.Helper()
	topic := filledTopic(b, seeds, n)
	cons := testenv.Client(b, seeds, kgo.ConsumerGroup(testenv.Name("g")), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
	defer cancel()
	var first time.Time
	handled := 0
	for handled < n && ctx.Err() == nil {
		fs := cons.PollRecords(ctx, 1000)
		if first.IsZero() && fs.NumRecords() > 0 {
			first = time.Now()
		}
		var wg sync.WaitGroup
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			wg.Go(func() {
				for range p.Records {
					if work > 0 {
						for t := time.Now(); time.Since(t) < work; {
							// The same busy work as goodput's handler.
						}
					}
				}
			})
		})
		wg.Wait()
		handled += fs.NumRecords()
		if err := cons.CommitUncommittedOffsets(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if handled < n {
		b.Fatalf("bare loop handled %d of %d records in time", handled, n)
	}
	return float64(handled) / time.Since(first).Seconds()
}

// BenchmarkGoodput compares goodput with 1% of handler calls failing to
// the 0% rate in the same run, for a no-op handler (the runtime's own
// cost: the worst case) and ones that compute for 2µs and 20µs per call. It uses
// kfake, or the real broker with BENCH_KAFKA=1 and KAFKA_BROKERS set.
// Failing records go to the retry topics without in-place retries (the
// non-blocking path, RetryTopics' default); "inplace" retries once in
// place after 10ms first, for contrast. Each case also runs a bare
// franz-go loop over the same kind of records in the same run (bareGoodput):
// "vs-bare" is the runtime's goodput at 0% failing calls over it.
//
// BENCH_CPU=1 logs the process's CPU time per record of each run;
// BENCH_DELAY sets the first retry level's delay (default 1s);
// BENCH_CPUPROFILE=path writes a CPU profile of each run next to path
// (named after it and the failure rate; merge them with go tool pprof
// -proto, compare with -diff_base).
func BenchmarkGoodput(b *testing.B) {
	seeds := testenv.FakeBrokers(b)
	if os.Getenv("BENCH_KAFKA") == "1" {
		seeds = strings.Split(os.Getenv("KAFKA_BROKERS"), ",")
	}
	// Enough records for each run to last a second or more: a no-op
	// handler goes through 200k records in under 100ms.
	n := 2_000_000
	if testing.Short() {
		n = 20_000
	}
	retry := consumers.RetryTopics(benchDelay(), 10*time.Second).ThenDLQ()
	cases := []struct {
		name   string
		policy consumers.FailurePolicy
		work   time.Duration
		n      int
	}{
		{"retrytopics/noop", retry, 0, n},
		{"retrytopics/cpu2us", retry, 2 * time.Microsecond, n / 4},
		{"retrytopics/cpu20us", retry, 20 * time.Microsecond, n / 20},
		{"inplace/cpu20us", retry.InPlace(1, 10*time.Millisecond, 10*time.Millisecond), 20 * time.Microsecond, n / 40},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var bare, base, failing float64
			for b.Loop() {
				bare += bareGoodput(b, seeds, c.n, c.work)
				base += goodput(b, seeds, c.n, 0, c.work, c.policy)
				failing += goodput(b, seeds, c.n, 0.01, c.work, c.policy)
			}
			b.ReportMetric(bare/float64(b.N), "rec/s-bare")
			b.ReportMetric(base/float64(b.N), "rec/s@0%")
			b.ReportMetric(failing/float64(b.N), "rec/s@1%")
			b.ReportMetric(failing/base, "ratio")
			b.ReportMetric(base/bare, "vs-bare")
		})
	}
}

// benchCPU is the CPU time (user and system) the process used so far.
func benchCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchDelay is the first retry level's delay: BENCH_DELAY, default 1s.
func benchDelay() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("BENCH_DELAY")); err == nil {
		return d
	}
	return time.Second
}
