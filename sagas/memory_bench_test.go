package sagas

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/twmb/franz-go/pkg/kgo"
)

// BenchmarkLiveSagasMemory: the runtime's heap against the number of live
// instances. For 10,000 and then 100,000 running instances (rows written
// straight to PostgreSQL, each with a pending timeout), the runtime on
// PostgresStore handles the same 10,000 inputs (the first step's outcome
// of as many instances drawn at random, a partition's poll of 100 at a
// time from 8 goroutines, HandleBatch) while its timer poller runs. The
// heap in use is sampled every 5 ms from a GC just before the inputs;
// it reports the peak growth over that start and the growth left after a
// GC at the end, the medians of three rounds per size, and the ratio
// 100k/10k of the peaks (1.0: flat). The memory store, which keeps every instance in memory, is
// not the subject here.
//
//	eval "$(scripts/services.sh env)"; go test ./sagas -run '^$' -bench LiveSagasMemory -benchtime 1x
func BenchmarkLiveSagasMemory(b *testing.B) {
	for b.Loop() {
		// Three rounds, the sizes alternating; the medians are reported.
		var peak, after = map[int][]float64{}, map[int][]float64{}
		for range 3 {
			for _, n := range []int{10_000, 100_000} {
				p, a := liveSagasHeap(b, n, 10_000)
				peak[n], after[n] = append(peak[n], p), append(after[n], a)
			}
		}
		med := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
		for _, n := range []int{10_000, 100_000} {
			b.ReportMetric(med(peak[n]), fmt.Sprintf("peak-MB@%dk", n/1000))
			b.ReportMetric(med(after[n]), fmt.Sprintf("after-MB@%dk", n/1000))
		}
		b.ReportMetric(med(peak[100_000])/med(peak[10_000]), "peak-ratio-100k/10k")
	}
}

// liveSagasHeap returns the peak growth of the heap in use while
// handling inputs of n live instances, and the growth left after a GC
// at the end, in MB, over the heap in use just before.
func liveSagasHeap(b *testing.B, n, inputs int) (peakMB, afterMB float64) {
	be := postgresBackend(b)
	s := be.store.(*PostgresStore)
	ctx := b.Context()
	rt := benchRuntime(b, s)
	st, _ := json.Marshal(xfer{From: "a", To: "b", Amount: 10})
	if _, err := s.Pool().Exec(ctx, `INSERT INTO `+s.t["saga_instances"]+` (`+instanceCols+`)
		SELECT 'transfer', 'l' || g, 1, 1, 'running', 0, 1, 1, 'outcome', $2::jsonb, '', now(), now() FROM generate_series(0, $1 - 1) g`, n, st); err != nil {
		b.Fatal(err)
	}
	if _, err := s.Pool().Exec(ctx, `INSERT INTO `+s.t["saga_timers"]+` (saga_type, saga_id, phase, step, try, kind, due_at)
		SELECT 'transfer', 'l' || g, 'action', 0, 1, 'outcome', now() + interval '1 hour' FROM generate_series(0, $1 - 1) g`, n); err != nil {
		b.Fatal(err)
	}
	recs := make([]*kgo.Record, 0, inputs)
	for _, i := range rand.Perm(n)[:inputs] {
		id := fmt.Sprintf("l%d", i)
		cid := CommandID("transfer", id, PhaseAction, 0, 1)
		o, _ := json.Marshal(orchestrix.Outcome{CommandID: cid, CorrelationID: Correlation("transfer", id), Status: orchestrix.OutcomeAccepted})
		m := InboxMessage(rt.Inbox(), id, KindOutcome, "outcome:"+cid, o)
		recs = append(recs, &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: m.Headers})
	}
	timerCtx, stopTimers := contextWithTimeout(b, time.Hour)
	timersDone := make(chan error, 1)
	go func() { timersDone <- rt.RunTimers(timerCtx) }()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	sampleDone := make(chan struct{})
	stopSampling := make(chan struct{})
	go func() {
		defer close(sampleDone)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				k := int(next.Add(100)) - 100
				if k >= len(recs) {
					return
				}
				for _, err := range rt.HandleBatch(ctx, recs[k:min(k+100, len(recs))]) {
					if err != nil {
						b.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(stopSampling)
	<-sampleDone
	stopTimers()
	if err := <-timersDone; err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	runtime.KeepAlive(recs)
	const mb = 1 << 20
	return (float64(peak.Load()) - float64(base.HeapInuse)) / mb, (float64(ms.HeapInuse) - float64(base.HeapInuse)) / mb
}
