package outbox_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Benchmarks. Each runs once per op and reports its figures as metrics;
// run them with -benchtime=1x (see bench/README.md, "Outbox relay", for the commands and results).
//
//	ORCHESTRIX_BENCH_EVENTS  backlog sizes of BenchmarkRelayDrain, comma-separated (default 1000000)
//	ORCHESTRIX_BENCH_ROUNDS  rounds of the alternating phases (default 3)
//	ORCHESTRIX_BENCH_SECONDS duration of each latency and append phase (default 10)
//	ORCHESTRIX_BENCH_WARMUP  rounds of BenchmarkAppendWithRelay run first and not counted (default 1)
//	ORCHESTRIX_BENCH_LINGER, ORCHESTRIX_BENCH_COMPRESSION the relay's producer settings (see benchClientOpts)
//	ORCHESTRIX_BENCH_CPUPROFILE a CPU profile of the drain, or of the last with-relay phase of
//	                         BenchmarkAppendWithRelay (of this process: set ORCHESTRIX_BENCH_IN_PROCESS)
//	ORCHESTRIX_OUTBOX_CHILD_CPUPROFILE a CPU profile of the relay process's last with-relay phase
//	ORCHESTRIX_BENCH_IN_PROCESS=1 BenchmarkAppendWithRelay runs the relay in this process instead of its own
//	ORCHESTRIX_BENCH_RELAY_ENV environment of BenchmarkAppendWithRelay's relay process (default GOGC=400)
//	ORCHESTRIX_BENCH_RELAY_LINGER the relay's Linger in BenchmarkRelayLatency (default outbox.DefaultLinger)
//	ORCHESTRIX_BENCH_BROKER_PID the broker's process ID, to report its CPU per event (a local broker:
//	                         ORCHESTRIX_BENCH_BROKER_PID=$(pgrep -f kafka.Kafka))

func benchInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchClientOpts are the relay's producer options the environment asks
// for: ORCHESTRIX_BENCH_LINGER (a duration) and
// ORCHESTRIX_BENCH_COMPRESSION (none, snappy, lz4 or zstd; franz-go's
// default is snappy).
func benchClientOpts() []kgo.Opt {
	var opts []kgo.Opt
	if v := os.Getenv("ORCHESTRIX_BENCH_LINGER"); v != "" {
		d, _ := time.ParseDuration(v)
		opts = append(opts, kgo.ProducerLinger(d))
	}
	switch os.Getenv("ORCHESTRIX_BENCH_COMPRESSION") {
	case "none":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.NoCompression()))
	case "snappy":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.SnappyCompression()))
	case "lz4":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.Lz4Compression()))
	case "zstd":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.ZstdCompression()))
	}
	return opts
}

// benchEvent is the i-th event of stream: about 300 bytes as a record.
func benchEvent(stream string, i int) orchestrix.Event {
	return orchestrix.Event{
		Metadata: orchestrix.Metadata{
			ID: fmt.Sprintf("%s-%08d", stream, i), Type: "bench.Deposited", Source: "/bench",
			Time: time.Unix(1_700_000_000, int64(i)).UTC(), CorrelationID: "corr-" + stream,
		},
		ContentType: "application/json",
		Data:        []byte(`{"amount":12345,"currency":"EUR","note":"benchmark payload"}`),
	}
}

// BenchmarkRelayDrain fills a backlog (store.Append batches of 5000, which
// use COPY), then measures the database's own read rate of the log
// (ReadLogBatch), a naive read-and-produce loop, and, alternating over
// ORCHESTRIX_BENCH_ROUNDS rounds (default 3) so that the drift of a shared
// machine hits both alike: raw franz-go produce of the same records to
// the same broker (idempotent, not transactional), and the relay draining
// the backlog into a fresh topic. It reports the medians and the median of
// the rounds' ratios, with the relay's peak heap, to compare across
// backlog sizes.
//
// ORCHESTRIX_BENCH_EVENTS may list several sizes ("100000,1000000"): one
// sub-benchmark each, to show the relay's heap does not grow with the
// backlog. ORCHESTRIX_BENCH_CPUPROFILE names a file for a CPU profile of
// the relay's drains alone.
func BenchmarkRelayDrain(b *testing.B) {
	sizes := []int{1_000_000}
	if v := os.Getenv("ORCHESTRIX_BENCH_EVENTS"); v != "" {
		sizes = sizes[:0]
		for f := range strings.SplitSeq(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				b.Fatalf("ORCHESTRIX_BENCH_EVENTS=%q: want sizes separated by commas", v)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) { benchDrain(b, n) })
	}
}

// drainPerAppend is how many events each append of the backlog carries
// (one stream each).
const drainPerAppend = 5000

// drainEvent is the i-th event of the backlog's stream s, as the store
// returns it.
func drainEvent(s, i int) orchestrix.Event {
	stream := fmt.Sprintf("acct-%05d", s)
	ev := benchEvent(stream, i)
	ev.StreamID, ev.Version, ev.Position = stream, uint64(i+1), uint64(s*drainPerAppend+i+1)
	return ev
}

func benchDrain(b *testing.B, n int) {
	rounds := benchInt("ORCHESTRIX_BENCH_ROUNDS", 3)
	streams := (n + drainPerAppend - 1) / drainPerAppend
	for b.Loop() {
		e := newEnv(b, 8)
		ctx := b.Context()

		start := time.Now()
		for s := range streams {
			evs := make([]orchestrix.Event, min(drainPerAppend, n-s*drainPerAppend))
			for i := range evs {
				evs[i] = drainEvent(s, i)
				evs[i].StreamID, evs[i].Version, evs[i].Position = "", 0, 0
			}
			if _, err := e.store.Append(ctx, fmt.Sprintf("acct-%05d", s), stores.NoStream, evs); err != nil {
				b.Fatal(err)
			}
		}
		fill := time.Since(start)

		// The database's own read rate of the log, in the relay's
		// batches (one query each, no Kafka).
		batchSize := benchInt("ORCHESTRIX_BENCH_BATCH", outbox.DefaultBatchSize)
		start = time.Now()
		read := 0
		for cur := (stores.Cursor{}); ; {
			page, err := e.store.ReadLogBatch(ctx, cur, batchSize)
			if err != nil {
				b.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			read += len(page)
			cur = page[len(page)-1].Cursor
		}
		readTime := time.Since(start)
		if read != n {
			b.Fatalf("read %d events, want %d", read, n)
		}

		// The naive at-least-once pipeline on the same machine: read
		// pages and produce them (idempotent, no transactions, no
		// checkpoint), flushing once at the end.
		var perr atomic.Value
		onErr := func(_ *kgo.Record, err error) {
			if err != nil {
				perr.CompareAndSwap(nil, err)
			}
		}
		naiveTopic := testenv.Topic(b, e.seeds, 8, nil)
		ncl := testenv.Client(b, e.seeds)
		start = time.Now()
		for cur := (stores.Cursor{}); ; {
			page, err := e.store.ReadLogBatch(ctx, cur, batchSize)
			if err != nil {
				b.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			for _, en := range page {
				rec, err := codec.EventToRecord(naiveTopic, en.Event)
				if err != nil {
					b.Fatal(err)
				}
				ncl.Produce(ctx, rec, onErr)
			}
			cur = page[len(page)-1].Cursor
		}
		if err := ncl.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		naiveTime := time.Since(start)

		var raw, relay, ratio, rawCPU, relayCPU []float64
		var peakInuse, peakLive float64
		var txns uint64
		stopProfile := func() {}
		for round := range rounds {
			// Raw produce of the same records, encoded the same way.
			topic := testenv.Topic(b, e.seeds, 8, nil)
			cl := testenv.Client(b, e.seeds)
			cpu0 := processCPU()
			start = time.Now()
			for s := range streams {
				for i := range min(drainPerAppend, n-s*drainPerAppend) {
					rec, err := codec.EventToRecord(topic, drainEvent(s, i))
					if err != nil {
						b.Fatal(err)
					}
					cl.Produce(ctx, rec, onErr)
				}
			}
			if err := cl.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			raw = append(raw, float64(n)/time.Since(start).Seconds())
			rawCPU = append(rawCPU, float64((processCPU()-cpu0).Microseconds())/float64(n))
			if err, ok := perr.Load().(error); ok {
				b.Fatal(err)
			}

			// The relay, into a fresh topic. Its checkpoint topic is
			// made beforehand: a relay creates it once in its life.
			topic = fmt.Sprintf("%s-drain-%d", e.topic, round)
			createTopic(b, e.seeds, topic, 8)
			createTopic(b, e.seeds, topic+outbox.CheckpointSuffix, 1)
			r := e.relay(b, fmt.Sprintf("bench-%d", round), outbox.ToTopic(topic), outbox.BatchSize(batchSize),
				outbox.NoOutboxTable(), outbox.WithClientOpts(benchClientOpts()...))
			runtime.GC()
			heap := sampleHeap(ctx)
			if round == 0 {
				stopProfile = profileCPU(b, "ORCHESTRIX_BENCH_CPUPROFILE")
			}
			cpu0 = processCPU()
			start = time.Now()
			stop := runRelay(b, r)
			last := e.lastCursor(b)
			waitFor(b, 30*time.Minute, "drain", func() bool { return r.Stats().Checkpoint.Events == last })
			relay = append(relay, float64(n)/time.Since(start).Seconds())
			relayCPU = append(relayCPU, float64((processCPU()-cpu0).Microseconds())/float64(n))
			stopProfile()
			stopProfile = func() {}
			inuse, live := heap()
			peakInuse, peakLive = max(peakInuse, inuse), max(peakLive, live)
			txns += r.Stats().Transactions
			if err := stop(); err != nil {
				b.Fatal(err)
			}
			ratio = append(ratio, relay[round]/raw[round])
		}

		b.ReportMetric(float64(n), "events")
		b.ReportMetric(float64(n)/fill.Seconds(), "fill_events/s")
		b.ReportMetric(float64(n)/readTime.Seconds(), "db_read_events/s")
		b.ReportMetric(float64(n)/naiveTime.Seconds(), "naive_read+produce_events/s")
		b.ReportMetric(median(raw), "raw_produce_events/s")
		b.ReportMetric(median(relay), "relay_events/s")
		b.ReportMetric(100*median(ratio), "relay_%_of_raw")
		b.ReportMetric(100*median(relay)/(float64(n)/naiveTime.Seconds()), "relay_%_of_naive")
		b.ReportMetric(peakInuse, "peak_heap_inuse_MB_above_base")
		b.ReportMetric(peakLive, "peak_live_heap_MB_above_base")
		b.ReportMetric(float64(txns)/float64(rounds), "transactions")
		b.ReportMetric(median(relayCPU), "relay_process_cpu_µs/event")
		b.ReportMetric(median(rawCPU), "raw_produce_process_cpu_µs/event")
		b.Logf("%d events, %d rounds: raw produce %.0f events/s, relay %.0f events/s, ratios %.2f", n, rounds, raw, relay, ratio)
	}
}

// median returns the median of v (which it sorts).
func median(v []float64) float64 {
	slices.Sort(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

// sampleHeap samples the heap every 20ms until the returned function is
// called, which returns the peak in-use and live heap above the heap at
// the start, in MiB.
func sampleHeap(ctx context.Context) (stop func() (inuse, live float64)) {
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	baseLive := sample[0].Value.Uint64()
	var peak, peakLive uint64
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				runtime.ReadMemStats(&ms)
				peak = max(peak, ms.HeapInuse)
				metrics.Read(sample)
				peakLive = max(peakLive, sample[0].Value.Uint64())
			}
		}
	}()
	return func() (float64, float64) {
		cancel()
		<-done
		above := func(v, base uint64) float64 { return float64(v-min(v, base)) / (1 << 20) }
		return above(peak, base.HeapInuse), above(peakLive, baseLive)
	}
}

// profileCPU writes a CPU profile of what runs until the returned
// function is called to the file named by the environment variable env,
// if set.
func profileCPU(b *testing.B, env string) (stop func()) {
	path := os.Getenv(env)
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// processCPU is the CPU time (user and system) this process used so far:
// the relay's own cost, whatever the machine's load.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRelayLatency offers a fixed rate of single-event appends
// (8 writers, random streams) with the relay running and measures, per
// event, from the append's commit (Append returned) to the broker's
// acknowledgement of the Kafka transaction that carried it (OnCommit).
// "wake" calls Relay.Wake after every append (a post-commit hook) instead
// of relying on the adaptive poll alone: it matters at low rates, where the
// poll has backed off.
func BenchmarkRelayLatency(b *testing.B) {
	secs := benchInt("ORCHESTRIX_BENCH_SECONDS", 10)
	for _, rate := range []int{100, 1000, 5000} {
		for _, wake := range []bool{false, true} {
			name := fmt.Sprintf("rate=%d/poll", rate)
			if wake {
				name = fmt.Sprintf("rate=%d/wake", rate)
			}
			b.Run(name, func(b *testing.B) {
				for b.Loop() {
					benchLatency(b, rate, time.Duration(secs)*time.Second, wake)
				}
			})
		}
	}
}

func benchLatency(b *testing.B, rate int, d time.Duration, wake bool) {
	e := newEnv(b, 8)
	ctx := b.Context()
	var mu sync.Mutex
	committedAt := map[string]time.Time{}
	var lat, before []time.Duration // commit to ack; commit to the start of its Kafka transaction
	opts := []outbox.Option{outbox.NoOutboxTable(), outbox.WithClientOpts(benchClientOpts()...)}
	if v := os.Getenv("ORCHESTRIX_BENCH_RELAY_LINGER"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("ORCHESTRIX_BENCH_RELAY_LINGER: %v", err)
		}
		opts = append(opts, outbox.Linger(d))
	}
	brokerPID, _ := strconv.Atoi(os.Getenv("ORCHESTRIX_BENCH_BROKER_PID"))
	r := e.relay(b, "latency", append(opts, outbox.OnCommit(func(c outbox.Commit) {
		now := time.Now()
		txnStart := now.Add(-c.Duration)
		mu.Lock()
		defer mu.Unlock()
		for _, rec := range c.Records {
			for _, h := range rec.Headers {
				if h.Key == "ce_id" {
					if t, ok := committedAt[string(h.Value)]; ok {
						lat = append(lat, now.Sub(t))
						before = append(before, txnStart.Sub(t))
					}
					break
				}
			}
		}
	}))...)
	stop := runRelay(b, r)
	waitFor(b, time.Minute, "relay leading", func() bool { return r.Stats().Leader })
	time.Sleep(500 * time.Millisecond)
	cpu0, broker0 := processCPU(), procCPU(brokerPID)

	const writers = 8
	var wg sync.WaitGroup
	var sent atomic.Int64
	start := time.Now()
	total := max(int64(float64(rate)*d.Seconds()), 200)
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for {
				i := sent.Add(1)
				if i > total {
					return
				}
				time.Sleep(time.Until(start.Add(time.Duration(float64(i) / float64(rate) * float64(time.Second)))))
				stream := fmt.Sprintf("s-%04d", rng.IntN(1000))
				ev := benchEvent(stream, int(i))
				if _, err := e.store.Append(ctx, stream, stores.Any, []orchestrix.Event{ev}); err != nil {
					b.Error(err)
					return
				}
				now := time.Now()
				mu.Lock()
				committedAt[ev.ID] = now
				mu.Unlock()
				if wake {
					r.Wake()
				}
			}
		})
	}
	wg.Wait()
	offered := time.Since(start)
	e.waitCaughtUp(b, r, 5*time.Minute)
	// This process holds the writers too: its CPU per event is an upper
	// bound of the relay's, comparable between settings of one run.
	cpuPer := float64((processCPU() - cpu0).Microseconds()) / float64(total)
	brokerPer := float64((procCPU(brokerPID) - broker0).Microseconds()) / float64(total)
	if err := stop(); err != nil {
		b.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lat) == 0 {
		b.Fatal("no latencies measured")
	}
	slices.Sort(lat)
	slices.Sort(before)
	pct := func(lat []time.Duration, p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(total)/offered.Seconds(), "achieved_events/s")
	b.ReportMetric(pct(lat, 0.50), "p50_ms")
	b.ReportMetric(pct(lat, 0.99), "p99_ms")
	// The part of the latency before the event's transaction started:
	// waiting to be read (the poll, the database's oldest running
	// transaction) and for the transaction before it.
	b.ReportMetric(pct(before, 0.50), "p50_before_txn_ms")
	b.ReportMetric(pct(before, 0.99), "p99_before_txn_ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max_ms")
	b.ReportMetric(float64(len(lat))/float64(r.Stats().Transactions), "events/txn")
	b.ReportMetric(cpuPer, "process_cpu_us/event")
	if brokerPID != 0 {
		b.ReportMetric(brokerPer, "broker_cpu_us/event")
	}
}

// BenchmarkAppendWithRelay measures append throughput (8 writers, 10-event
// appends to random streams) in three settings and reports the medians:
// alone; with the relay publishing the same load (after it caught up with
// the previous phases); and with only the relay's database side (a
// follower making the relay's reads, as often as the relay read in the
// last round, no Kafka), which separates what the relay costs the database
// from what a broker and a publisher competing for the writers' CPUs cost.
//
// The relay runs in a process of its own, as `orchestrix relay` does in
// production (this test binary as a child, see TestMain), with GOGC=400
// as that command sets it; it reports the relay's CPU time per event
// published during the measured phases, and the broker's with
// ORCHESTRIX_BENCH_BROKER_PID. ORCHESTRIX_BENCH_IN_PROCESS=1 runs it in
// this process instead, sharing the writers' garbage collector.
//
// The settings are interleaved over ORCHESTRIX_BENCH_ROUNDS rounds
// (default 3) so that the drift of a shared machine hits all three alike,
// and each round rotates their order, because the tables grow and
// PostgreSQL checkpoints as the run goes on, which would otherwise always
// burden the same setting; the ratios reported are the medians of the
// rounds' ratios. ORCHESTRIX_BENCH_WARMUP rounds (default 1) run first and
// are not counted: a freshly started broker spends a large share of a core
// compiling its transaction and produce paths (sampled in its C2 compiler
// threads), a start-up cost that a long-running broker does not pay.
func BenchmarkAppendWithRelay(b *testing.B) {
	d := time.Duration(benchInt("ORCHESTRIX_BENCH_SECONDS", 5)) * time.Second
	rounds := benchInt("ORCHESTRIX_BENCH_ROUNDS", 3)
	inProcess := os.Getenv("ORCHESTRIX_BENCH_IN_PROCESS") == "1"
	brokerPID, _ := strconv.Atoi(os.Getenv("ORCHESTRIX_BENCH_BROKER_PID"))
	// The relay process collects garbage at GOGC=400, as `orchestrix
	// relay` does (internal/cli.relayGCPercent).
	relayEnv := "GOGC=400"
	if v, ok := os.LookupEnv("ORCHESTRIX_BENCH_RELAY_ENV"); ok {
		relayEnv = v
	}
	for b.Loop() {
		e := newEnv(b, 8)
		phase := 0
		appendFor := func() float64 {
			phase++
			prefix := fmt.Sprintf("p%d", phase)
			// Appends are never cancelled half-way (a cancelled append
			// may still commit), the writers stop between appends.
			ctx := b.Context()
			var n atomic.Int64
			var wg sync.WaitGroup
			start := time.Now()
			end := start.Add(d)
			for w := range 8 {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(w), uint64(phase)))
					for i := 0; time.Now().Before(end); i++ {
						stream := fmt.Sprintf("%s-%04d", prefix, rng.IntN(1000))
						evs := make([]orchestrix.Event, 10)
						for j := range evs {
							evs[j] = benchEvent(stream, i*10+j)
							evs[j].ID = fmt.Sprintf("%s-%d-%d-%d", prefix, w, i, j)
						}
						if _, err := e.store.Append(ctx, stream, stores.Any, evs); err != nil {
							b.Error(err)
							return
						}
						n.Add(10)
					}
				})
			}
			wg.Wait()
			return float64(n.Load()) / time.Since(start).Seconds()
		}
		var alone, with, reads, relayRate, withRatio, readsRatio []float64
		var events, txns uint64
		// CPU time of the relay (its process, or this one when in process)
		// and of the broker during the with-relay phases.
		var relayCPU, brokerCPU, roundRelayCPU, roundBrokerCPU time.Duration
		relayPID := 0 // the relay process's, when it has one
		// every is the follower's read interval: the relay's time per
		// transaction in the last with-relay phase.
		every := outbox.DefaultPollMin
		phaseWith := func(last bool) (rate, relayed float64, roundEvents, roundTxns uint64) {
			var stats func() (events, txns uint64)
			var relayProc *child
			var stop func() error
			if inProcess {
				r := e.relay(b, "append", outbox.NoOutboxTable(), outbox.WithClientOpts(benchClientOpts()...))
				stop = runRelay(b, r)
				e.waitCaughtUp(b, r, 10*time.Minute)
				stats = func() (uint64, uint64) { st := r.Stats(); return st.Events, st.Transactions }
			} else {
				c := startChild(b, e.schema, e.topic, "append", outbox.DefaultLease,
					append(strings.Fields(relayEnv), childStatsEnv+"=250ms")...)
				c.waitCaughtUp(b, e, 10*time.Minute)
				if last && os.Getenv(childProfileEnv) != "" {
					c.signal(b, syscall.SIGUSR1)
				}
				stats = func() (uint64, uint64) { st := c.stats(b); return st.events, st.txns }
				stop = func() error {
					c.stop(b)
					if _, line, ok := strings.Cut(c.logText(), "msg=\"relay child stopped\""); ok {
						line, _, _ = strings.Cut(line, "\n")
						b.Logf("relay process:%s", line)
					}
					return nil
				}
				relayPID = c.cmd.Process.Pid
				relayProc = c
			}
			cpu0, bcpu0 := procCPU(relayPID), procCPU(brokerPID)
			before, beforeTxns := stats()
			stopProfile := func() {}
			if last {
				stopProfile = profileCPU(b, "ORCHESTRIX_BENCH_CPUPROFILE")
			}
			start := time.Now()
			rate = appendFor()
			elapsed := time.Since(start)
			stopProfile()
			if !inProcess {
				// The child's last stats line is up to 250ms old, and it
				// may still be publishing the phase's tail: count its
				// events and CPU once it has published everything.
				relayProc.waitCaughtUp(b, e, 10*time.Minute)
			}
			after, afterTxns := stats()
			roundEvents, roundTxns = after-before, afterTxns-beforeTxns
			roundRelayCPU, roundBrokerCPU = procCPU(relayPID)-cpu0, procCPU(brokerPID)-bcpu0
			if err := stop(); err != nil {
				b.Fatal(err)
			}
			every = max(outbox.DefaultPollMin, elapsed/time.Duration(max(roundTxns, 1)))
			return rate, float64(roundEvents) / elapsed.Seconds(), roundEvents, roundTxns
		}
		// The relay's reads alone, as often as the relay read (once per
		// transaction under load, see Relay.read): what the relay costs
		// a database whose broker and relay run on other machines.
		phaseReads := func() float64 {
			fctx, stopFollow := context.WithCancel(b.Context())
			done := make(chan struct{})
			go func() {
				defer close(done)
				cur := e.lastCursor(b)
				var page []stores.Entry
				for fctx.Err() == nil {
					var err error
					page, err = e.store.AppendLogBatch(fctx, page[:0], cur, outbox.DefaultBatchSize)
					if err != nil {
						return
					}
					if len(page) > 0 {
						cur = page[len(page)-1].Cursor
					}
					if len(page) < outbox.DefaultBatchSize {
						time.Sleep(every)
					}
				}
			}()
			rate := appendFor()
			stopFollow()
			<-done
			return rate
		}
		warmup := 1
		if v, err := strconv.Atoi(os.Getenv("ORCHESTRIX_BENCH_WARMUP")); err == nil && v >= 0 {
			warmup = v
		}
		for round := -warmup; round < rounds; round++ {
			var al, wi, rd, rr float64
			var ev, tx uint64
			// Round r runs the phases in the order rotated by r.
			for k := range 3 {
				switch (k + max(round, 0)) % 3 {
				case 0:
					al = appendFor()
				case 1:
					wi, rr, ev, tx = phaseWith(round == rounds-1)
				case 2:
					rd = phaseReads()
				}
			}
			perEvent := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(max(ev, 1)) }
			b.Logf("round %d: alone %.0f, with relay %.0f (%.2f), reads only %.0f (%.2f) events/s; relay %.0f events/s in %d transactions; CPU µs/event relay process %.2f, broker %.2f (0: not measured)",
				round, al, wi, wi/al, rd, rd/al, rr, tx, perEvent(roundRelayCPU), perEvent(roundBrokerCPU))
			if round < 0 {
				continue
			}
			alone, with, reads, relayRate = append(alone, al), append(with, wi), append(reads, rd), append(relayRate, rr)
			withRatio, readsRatio = append(withRatio, wi/al), append(readsRatio, rd/al)
			events += ev
			relayCPU += roundRelayCPU
			brokerCPU += roundBrokerCPU
			txns += tx
		}
		a, w, rd := median(alone), median(with), median(reads)
		b.ReportMetric(a, "append_alone_events/s")
		b.ReportMetric(w, "append_with_relay_events/s")
		b.ReportMetric(100*median(withRatio), "with_relay_%_of_alone")
		b.ReportMetric(rd, "append_with_relay_reads_only_events/s")
		b.ReportMetric(100*median(readsRatio), "reads_only_%_of_alone")
		b.ReportMetric(median(relayRate), "relay_events/s_during")
		b.ReportMetric(float64(events)/float64(max(txns, 1)), "events/txn")
		if !inProcess {
			b.ReportMetric(float64(relayCPU.Nanoseconds())/1e3/float64(max(events, 1)), "relay_cpu_µs/event")
		}
		if brokerPID != 0 {
			b.ReportMetric(float64(brokerCPU.Nanoseconds())/1e3/float64(max(events, 1)), "broker_cpu_µs/event")
		}
	}
}

// childStats are the counters of a relay child's last stats line.
type childStats struct {
	events, txns uint64
	checkpoint   string
}

// stats parses the last "relay stats" line of c's log.
func (c *child) stats(t testing.TB) childStats {
	t.Helper()
	text := c.logText()
	i := strings.LastIndex(text, "msg=\"relay stats\"")
	if i < 0 {
		return childStats{}
	}
	line, _, _ := strings.Cut(text[i:], "\n")
	var st childStats
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "events":
			st.events, _ = strconv.ParseUint(v, 10, 64)
		case "transactions":
			st.txns, _ = strconv.ParseUint(v, 10, 64)
		case "checkpoint":
			st.checkpoint = strings.Trim(v, `"`)
		}
	}
	return st
}

// waitCaughtUp waits until c's checkpoint is e's last cursor, like
// env.waitCaughtUp.
func (c *child) waitCaughtUp(t testing.TB, e *env, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for c.stats(t).checkpoint != e.lastCursor(t).String() {
		if time.Now().After(deadline) {
			t.Fatalf("relay %s did not reach %s within %s; last lines:\n%s", c.name, e.lastCursor(t), d, c.logText()[max(0, len(c.logText())-2000):])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procCPU returns the user and system CPU time of process pid from
// /proc (Linux), or 0 when pid is 0 or it cannot be read. It assumes 100
// clock ticks per second, the Linux default.
func procCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; the fields after it
	// start after its closing parenthesis: utime and stime are the 12th
	// and 13th of them.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}
