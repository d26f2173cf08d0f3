package suite

import (
	"flag"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// slowEnv names the cases (a regular expression on the benchmark's full
// name) whose measured side is deliberately slowed to twice its time, so
// that scripts/benchcheck.sh can be seen to fail. Never set it otherwise.
const slowEnv = "ORCHESTRIX_BENCH_SLOW"

// debugEnv, when set, logs each block's times (go test -v shows them).
const debugEnv = "ORCHESTRIX_BENCH_DEBUG"

// slowed reports whether b's measured side must be slowed (slowEnv).
func slowed(b *testing.B) bool {
	pat := os.Getenv(slowEnv)
	if pat == "" {
		return false
	}
	re, err := regexp.Compile(pat)
	if err != nil {
		b.Fatalf("%s: %v", slowEnv, err)
	}
	return re.MatchString(b.Name())
}

// pair measures a case and its baseline in the same run: b.N operations of
// each, in up to 20 blocks per side that alternate (the order flipping
// every block), so that the drift of a shared machine hits both alike; a
// garbage collection before each block charges each side (mostly) for its
// own garbage. Each operation handles perOp units (messages, events). It
// reports the system's units/s, the baseline's, and their ratio (system
// rate ÷ baseline rate). Both functions get the operation's index, 0 to
// b.N-1 on each side.
func pair(b *testing.B, perOp int, unit string, base, sys func(i int)) {
	b.Helper()
	slow := slowed(b)
	blocks := min(b.N, 20)
	var tBase, tSys time.Duration
	ratios := make([]float64, 0, blocks)
	run := func(f func(int), lo, hi int) time.Duration {
		runtime.GC()
		t0 := time.Now()
		for i := lo; i < hi; i++ {
			f(i)
		}
		return time.Since(t0)
	}
	b.ResetTimer()
	for j := range blocks {
		lo, hi := j*b.N/blocks, (j+1)*b.N/blocks
		var db, ds time.Duration
		sysBlock := func() {
			ds = run(sys, lo, hi)
			if slow {
				time.Sleep(ds)
				ds *= 2
			}
		}
		if j%2 == 0 {
			db = run(base, lo, hi)
			sysBlock()
		} else {
			sysBlock()
			db = run(base, lo, hi)
		}
		tBase += db
		if os.Getenv(debugEnv) != "" {
			b.Logf("block %d: base %v sys %v", j, db, ds)
		}
		tSys += ds
		if ds > 0 && db > 0 {
			ratios = append(ratios, float64(db)/float64(ds))
		}
	}
	b.StopTimer()
	report(b, perOp, unit, tBase, tSys, ratios)
}

// warmRun reports whether this call of a benchmark function is the
// testing package's first, one-operation run that it makes before running
// a fixed -benchtime=Nx (N > 1) count again: the integration cases then
// return at once instead of setting up topics, groups and schemas twice.
func warmRun(b *testing.B) bool {
	if b.N != 1 {
		return false
	}
	f := flag.Lookup("test.benchtime")
	if f == nil {
		return false
	}
	n, ok := strings.CutSuffix(f.Value.String(), "x")
	if !ok {
		return false
	}
	count, err := strconv.Atoi(n)
	return err == nil && count > 1
}

// report reports the rates of both sides over b.N operations of perOp
// units, and the ratio. The ratio is the median of the operations' ratios
// when there are at least 5 (one slow outlier on a shared machine moves a
// median little), else the ratio of the totals.
func report(b *testing.B, perOp int, unit string, tBase, tSys time.Duration, ratios []float64) {
	b.Helper()
	units := float64(b.N * perOp)
	if tBase <= 0 || tSys <= 0 {
		b.Fatalf("nothing measured (base %v, system %v)", tBase, tSys)
	}
	b.ReportMetric(units/tSys.Seconds(), unit+"/s")
	b.ReportMetric(units/tBase.Seconds(), "base-"+unit+"/s")
	ratio := tBase.Seconds() / tSys.Seconds()
	if len(ratios) >= 5 {
		slices.Sort(ratios)
		ratio = ratios[len(ratios)/2]
	}
	b.ReportMetric(ratio, "ratio")
}
