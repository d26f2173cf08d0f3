package suite

import (
	"fmt"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
)

// mb returns the growth from before to after in MiB (0 if it shrank).
func mb(before, after uint64) float64 {
	if after < before {
		return 0
	}
	return float64(after-before) / (1 << 20)
}

// liveHeap returns the live heap after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// BenchmarkMemoryFootprint appends 100,000 events (100-byte payloads, in
// appends of 100 to 1,000 streams) to a fresh memory store and measures
// the live heap it holds, beside the map-and-slice baseline holding the
// same events. It reports MB for each (the original design's target:
// under 100 MB for 100k events), the ratio base-MB ÷ MB (higher is
// better, as for speeds), and the fill's events/s.
//
//	go test -run '^$' -bench MemoryFootprint -benchtime 3x ./bench/suite/
func BenchmarkMemoryFootprint(b *testing.B) {
	const total, per, streams = 100_000, 100, 1000
	evs := events(per)
	var sysMB, baseMB, rate float64
	for range b.N {
		h0 := liveHeap()
		raw := newRawMem()
		for k := range total / per {
			stream := fmt.Sprintf("acct-%d", k%streams)
			if err := raw.append(b.Context(), stream, uint64(k/streams*per), evs); err != nil {
				b.Fatal(err)
			}
		}
		h1 := liveHeap()
		runtime.KeepAlive(raw)
		raw = nil
		h2 := liveHeap()
		s := memory.New()
		t0 := time.Now()
		for k := range total / per {
			stream := fmt.Sprintf("acct-%d", k%streams)
			if _, err := s.Append(b.Context(), stream, stores.Exact(uint64(k/streams*per)), evs); err != nil {
				b.Fatal(err)
			}
		}
		d := time.Since(t0)
		h3 := liveHeap()
		runtime.KeepAlive(s)
		baseMB += mb(h0, h1)
		sysMB += mb(h2, h3)
		rate += total / d.Seconds()
	}
	n := float64(b.N)
	b.ReportMetric(sysMB/n, "MB")
	b.ReportMetric(baseMB/n, "base-MB")
	b.ReportMetric(baseMB/sysMB, "ratio")
	b.ReportMetric(rate/n, "events/s")
}
