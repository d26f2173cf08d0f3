// Command pipeline measures the command pipeline end to end on real Kafka
// and PostgreSQL: commands sent by a producers.Sender, handled by an
// aggregate processor (consumer group, one AppendMany transaction per
// partition poll), outcomes awaited, and (--relay, default on) the stored
// events published by the outbox relay. Each row also reports the
// machine's busy cores during the run and the CPU time per command (every
// process: broker and PostgreSQL included, so run it on a quiet machine),
// the processor's partition batches and the relay's transactions per
// second. For each offered load it reports the
// achieved rate and the latency from send to outcome (events stored), and
// runs a bare franz-go produce→consume loop (read_committed, commit per
// poll) at the same load on the same broker as the baseline. A burst run
// measures the maximum sustained commands/s against the bare loop's
// records/s; two more bursts measure it with --duplicates of the commands
// sent twice (same ID, back to back) against a duplicate-free run.
//
//	go run ./bench/pipeline --brokers 127.0.0.1:19092 --database-url "$DATABASE_URL"
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	ox "github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/internal/redact"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

type config struct {
	brokers, dbURL string
	rates          []int
	duration       time.Duration
	burst          int
	aggregates     int
	partitions     int
	// dupEvery > 0 sends every dupEvery-th command twice, back to back
	// with the same ID (a sender that resends after a timeout).
	dupEvery int
	// dupShare is the share of duplicated commands of the extra burst run.
	dupShare float64
	// relay runs the outbox relay in the process too, publishing the
	// stored events to <context>.events.
	relay bool
	// cold opens the accounts in the store, not through the processor:
	// the measured run starts with a cold cache.
	cold bool
	// pollLinger and relayLinger are the processor group's and the
	// relay's waits after a small batch (consumers.PollLinger,
	// outbox.Linger).
	pollLinger, relayLinger time.Duration
}

func main() {
	var c config
	var rates string
	flag.StringVar(&c.brokers, "brokers", os.Getenv("KAFKA_BROKERS"), "seed brokers (env KAFKA_BROKERS)")
	c.dbURL = os.Getenv("DATABASE_URL")
	flag.Var(redact.FlagValue(&c.dbURL), "database-url", "PostgreSQL `URL` (env DATABASE_URL)")
	flag.StringVar(&rates, "rates", "100,1000,5000", "offered loads in commands/s")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "duration of each fixed-load run")
	flag.IntVar(&c.burst, "burst", 50000, "commands of the maximum-throughput run (0: skip)")
	flag.IntVar(&c.aggregates, "aggregates", 1000, "aggregates the commands are spread over")
	flag.IntVar(&c.partitions, "partitions", 6, "partitions of the command topic")
	flag.DurationVar(&c.pollLinger, "poll-linger", consumers.DefaultPollLinger, "the processor group's wait after a small poll (consumers.PollLinger; 0: off)")
	flag.DurationVar(&c.relayLinger, "relay-linger", outbox.DefaultLinger, "the relay's wait after a small batch (outbox.Linger; 0: off)")
	flag.BoolVar(&c.cold, "cold", false, "open the accounts in the store directly, so the processor starts with a cold cache (a member that just got its partitions); PIPELINE_DEBUG=1 shows each second's latency")
	flag.BoolVar(&c.relay, "relay", true, "run the outbox relay too (publishes the events to <context>.events), as a deployment would")
	dups := flag.Float64("duplicates", 0.01, "share of commands sent twice (same ID, back to back) in an extra burst run (0: skip)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	for _, r := range strings.Split(rates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "bad rate %q\n", r)
			os.Exit(2)
		}
		c.rates = append(c.rates, n)
	}
	if *dups < 0 || *dups > 1 {
		fmt.Fprintf(os.Stderr, "--duplicates %v: want a share between 0 and 1\n", *dups)
		os.Exit(2)
	}
	c.dupShare = *dups
	if c.brokers == "" || c.dbURL == "" {
		fmt.Fprintln(os.Stderr, "--brokers and --database-url are required (or KAFKA_BROKERS, DATABASE_URL)")
		os.Exit(2)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "pipeline:", err)
			os.Exit(2)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "pipeline:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "pipeline:", err)
		os.Exit(1)
	}
}

type result struct {
	sent           int
	elapsed        time.Duration
	p50, p99, p999 time.Duration
	heapMiB        float64
	// cores is the machine's busy cores during the run (every process:
	// broker, PostgreSQL, this one), from /proc/stat; 0 when unknown.
	cores float64
	// batches and txns are the processor's partition batches and the
	// relay's Kafka transactions per second.
	batches, txns float64
}

// cpuMicrosPerCommand is the machine's CPU time per command.
func (r result) cpuMicrosPerCommand() float64 {
	if r.sent == 0 {
		return 0
	}
	return r.cores * r.elapsed.Seconds() * 1e6 / float64(r.sent)
}

// machineCPU reads the busy and total jiffies of all cores from
// /proc/stat (Linux); ok is false elsewhere.
func machineCPU() (busy, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0, false
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, true
}

// coresBusy returns a function that reports the busy cores since the
// call.
func coresBusy() func() float64 {
	b0, t0, ok := machineCPU()
	return func() float64 {
		b1, t1, ok1 := machineCPU()
		if !ok || !ok1 || t1 == t0 {
			return 0
		}
		return float64(b1-b0) / float64(t1-t0) * float64(runtime.NumCPU())
	}
}

func (r result) rate() float64 { return float64(r.sent) / r.elapsed.Seconds() }

func pct(l []time.Duration, p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	slices.Sort(l)
	return l[min(len(l)-1, int(p*float64(len(l))))]
}

func run(ctx context.Context, c config) error {
	seeds := strings.Split(c.brokers, ",")
	pool, err := pgxpool.New(ctx, c.dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	fmt.Printf("pipeline benchmark: %d aggregates, %d partitions, %s per load, GOMAXPROCS %d, relay %v, poll linger %s, relay linger %s\n\n",
		c.aggregates, c.partitions, c.duration, runtime.GOMAXPROCS(0), c.relay, c.pollLinger, c.relayLinger)
	fmt.Printf("%-12s %-9s %12s %10s %10s %10s %9s %6s %9s %9s %8s\n", "offered/s", "system", "achieved/s", "p50", "p99", "p99.9", "heap MiB", "cores", "CPU us/op", "batches/s", "txns/s")
	for _, rate := range c.rates {
		n := int(float64(rate) * c.duration.Seconds())
		o, err := orchestrix(ctx, c, seeds, pool, n, rate)
		if err != nil {
			return err
		}
		b, err := bare(ctx, c, seeds, n, rate)
		if err != nil {
			return err
		}
		printRow(strconv.Itoa(rate), "orchestrix", o)
		printRow("", "bare kgo", b)
	}
	if c.burst > 0 {
		o, err := orchestrix(ctx, c, seeds, pool, c.burst, 0)
		if err != nil {
			return err
		}
		b, err := bare(ctx, c, seeds, c.burst, 0)
		if err != nil {
			return err
		}
		printRow("max", "orchestrix", o)
		printRow("", "bare kgo", b)
		fmt.Printf("\nmaximum: orchestrix %.0f commands/s = %.2f × bare franz-go produce→consume (%.0f records/s)\n", o.rate(), o.rate()/b.rate(), b.rate())
		if c.dupShare > 0 {
			// Duplicates: the same burst with every k-th command sent
			// twice, against a duplicate-free run right before it (the
			// first burst above warmed the machine as much).
			clean, err := orchestrix(ctx, c, seeds, pool, c.burst, 0)
			if err != nil {
				return err
			}
			dc := c
			dc.dupEvery = int(1 / c.dupShare)
			d, err := orchestrix(ctx, dc, seeds, pool, c.burst, 0)
			if err != nil {
				return err
			}
			printRow("max", "no dups", clean)
			printRow("", fmt.Sprintf("%.3g%% dups", 100/float64(dc.dupEvery)), d)
			fmt.Printf("with %.3g%% of commands sent twice: %.0f commands/s = %.2f × duplicate-free (%.0f)\n", 100/float64(dc.dupEvery), d.rate(), d.rate()/clean.rate(), clean.rate())
		}
	}
	return nil
}

func printRow(offered, system string, r result) {
	fmt.Printf("%-12s %-9s %12.0f %10s %10s %10s %9.1f %6.2f %9.0f %9.0f %8.0f\n", offered, system, r.rate(),
		r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.p999.Round(10*time.Microsecond), r.heapMiB,
		r.cores, r.cpuMicrosPerCommand(), r.batches, r.txns)
}

// pace calls send(i) n times at rate per second (0: as fast as possible).
func pace(ctx context.Context, n, rate int, send func(i int)) {
	start := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		if rate > 0 {
			due := start.Add(time.Duration(float64(i) / float64(rate) * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		send(i)
	}
}

func heapSampler(ctx context.Context) func() float64 {
	var mu sync.Mutex
	var peak uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				runtime.ReadMemStats(&ms)
				mu.Lock()
				peak = max(peak, ms.HeapInuse)
				mu.Unlock()
			}
		}
	}()
	return func() float64 { mu.Lock(); defer mu.Unlock(); return float64(peak) / (1 << 20) }
}

func orchestrix(ctx context.Context, c config, seeds []string, pool *pgxpool.Pool, n, rate int) (result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bc := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	schema := strings.ReplaceAll(bc, "-", "_")
	defer pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	if _, err := postgres.Migrate(ctx, pool, schema); err != nil {
		return result{}, err
	}
	store, err := postgres.New(ctx, pool, postgres.WithSchema(schema))
	if err != nil {
		return result{}, err
	}
	cl, err := producers.NewClient(seeds)
	if err != nil {
		return result{}, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	specs := append(topics.ForContext(bc, int32(c.partitions), 1), topics.Spec{Name: consumers.DeadLetterTopic(topics.Commands(bc), bc), Partitions: 1, ReplicationFactor: 1})
	if _, err := topics.Ensure(ctx, adm, specs...); err != nil {
		return result{}, err
	}
	defer func() {
		for _, s := range specs {
			adm.DeleteTopics(context.Background(), s.Name)
		}
	}()
	reg := codec.NewRegistry()
	if err := banking.Register(reg); err != nil {
		return result{}, err
	}
	agg, _ := banking.NewAggregate(aggregates.SnapshotEvery(100))
	repo, _ := aggregates.NewRepository(agg, store, reg, "/bench")
	ocl, err := producers.NewClient(seeds, kgo.ProducerLinger(0))
	if err != nil {
		return result{}, err
	}
	defer ocl.Close()
	plog := slog.New(slog.DiscardHandler)
	if os.Getenv("PIPELINE_DEBUG") != "" {
		plog = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	proc, _ := aggregates.NewProcessor(repo, aggregates.WithOutcomes(ocl, topics.Outcomes(bc)), aggregates.WithProcessorLogger(plog))
	var smu sync.Mutex
	var batches, recsN int
	var busy time.Duration
	stats := consumers.WithStats(func(st consumers.Stats) {
		smu.Lock()
		batches++
		recsN += st.Records
		busy += st.Duration
		smu.Unlock()
	})
	defer func() {
		if os.Getenv("PIPELINE_DEBUG") != "" && batches > 0 {
			fmt.Fprintf(os.Stderr, "  processor: %d partition batches, %.1f records/batch, %.1f ms/batch\n", batches, float64(recsN)/float64(batches), busy.Seconds()*1000/float64(batches))
		}
	}()
	group, err := consumers.New(seeds, bc, []string{topics.Commands(bc)}, proc, stats, consumers.WithLogger(slog.New(slog.DiscardHandler)), consumers.PollLinger(c.pollLinger))
	if err != nil {
		return result{}, err
	}
	aw, err := producers.NewAwaiter(seeds, topics.Outcomes(bc))
	if err != nil {
		return result{}, err
	}
	sender, _ := producers.NewSender(cl, reg, topics.Commands(bc), "/bench")
	workers := map[string]func(context.Context) error{"processor": group.Run, "awaiter": aw.Run}
	var relay *outbox.Relay
	if c.relay {
		relay, err = outbox.NewRelay(store, seeds, outbox.ToTopic(topics.Events(bc)), outbox.Instance("bench"), outbox.WithLogger(plog), outbox.Linger(c.relayLinger))
		if err != nil {
			return result{}, err
		}
		workers["relay"] = relay.Run
		defer func() {
			adm.DeleteTopics(context.Background(), topics.Events(bc)+outbox.CheckpointSuffix, topics.Events(bc)+outbox.DeadLetterSuffix)
		}()
	}
	txns := func() uint64 {
		if relay == nil {
			return 0
		}
		return relay.Stats().Transactions
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	// A worker that stops early ends the run with its error instead of
	// leaving the waits below to time out.
	var runErr error
	var rmu sync.Mutex
	ctx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	for name, run := range workers {
		wg.Go(func() {
			if err := run(ctx); err != nil && ctx.Err() == nil {
				rmu.Lock()
				runErr = fmt.Errorf("%s stopped: %w", name, err)
				rmu.Unlock()
				stopRun(runErr)
			}
		})
	}
	stopped := func(err error) error {
		if cause := context.Cause(ctx); cause != nil && cause != context.Canceled {
			return cause
		}
		return err
	}
	// Open every account first (not measured). With --cold the accounts
	// are opened in the store directly, and one other account through
	// the pipeline (the group joins): the processor starts with none of
	// the measured accounts cached, as a member that just got its
	// partitions does.
	warm := c.aggregates
	if c.cold {
		for a := range c.aggregates {
			cmd := ox.Command{Metadata: ox.Metadata{ID: fmt.Sprintf("open-%05d", a), Source: "/bench"}, AggregateID: fmt.Sprintf("acct-%05d", a), Payload: banking.OpenAccount{Owner: "bench"}}
			if _, err := repo.Handle(ctx, cmd); err != nil {
				return result{}, fmt.Errorf("open accounts: %w", err)
			}
		}
		warm = 1
	}
	for a := range warm {
		id := fmt.Sprintf("acct-%05d", a)
		if c.cold {
			id = "warm-up"
		}
		cmd, _ := sender.Command(id, banking.OpenAccount{Owner: "bench"})
		sender.SendAsync(ctx, cmd, func(error) {})
		if a == warm-1 {
			wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
			_, err := aw.Wait(wctx, cmd.ID)
			wcancel()
			if err != nil {
				return result{}, fmt.Errorf("warm-up: %w", stopped(err))
			}
		}
	}
	peak := heapSampler(ctx)
	lat := make([]time.Duration, n)
	var lwg sync.WaitGroup
	smu.Lock()
	batches0 := batches
	smu.Unlock()
	txns0 := txns()
	cpu := coresBusy()
	start := time.Now()
	var failed error
	var fmu sync.Mutex
	pace(ctx, n, rate, func(i int) {
		cmd, _ := sender.Command(fmt.Sprintf("acct-%05d", i%c.aggregates), banking.Deposit{Amount: 1})
		at := time.Now()
		sent := func(err error) {
			if err != nil {
				fmu.Lock()
				failed = err
				fmu.Unlock()
			}
		}
		sender.SendAsync(ctx, cmd, sent)
		if c.dupEvery > 0 && i%c.dupEvery == c.dupEvery/2 {
			sender.SendAsync(ctx, cmd, sent)
		}
		lwg.Go(func() {
			wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
			defer wcancel()
			if _, err := aw.Wait(wctx, cmd.ID); err != nil {
				fmu.Lock()
				failed = err
				fmu.Unlock()
				return
			}
			lat[i] = time.Since(at)
		})
	})
	lwg.Wait()
	elapsed := time.Since(start)
	if failed != nil {
		return result{}, stopped(failed)
	}
	if os.Getenv("PIPELINE_DEBUG") != "" && rate > 0 {
		// Latency by second of sending: where the tail comes from.
		for s := 0; s*rate < n; s++ {
			part := slices.Clone(lat[s*rate : min(n, (s+1)*rate)])
			fmt.Fprintf(os.Stderr, "  second %2d: p50 %v p99 %v max %v\n", s, pct(part, .5).Round(time.Millisecond), pct(part, .99).Round(time.Millisecond), pct(part, 1).Round(time.Millisecond))
		}
	}
	cores := cpu()
	smu.Lock()
	nb := batches - batches0
	smu.Unlock()
	return result{sent: n, elapsed: elapsed, p50: pct(lat, .5), p99: pct(lat, .99), p999: pct(lat, .999), heapMiB: peak(),
		cores: cores, batches: float64(nb) / elapsed.Seconds(), txns: float64(txns()-txns0) / elapsed.Seconds()}, nil
}

// bare is the baseline: the same number of records, keyed the same way,
// produced by an idempotent franz-go client and consumed by a
// read_committed group that commits after each poll.
func bare(ctx context.Context, c config, seeds []string, n, rate int) (result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	topic := fmt.Sprintf("bench-bare-%d", time.Now().UnixNano())
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ProducerLinger(producers.DefaultLinger))
	if err != nil {
		return result{}, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, int32(c.partitions), 1, nil, topic); err != nil {
		return result{}, err
	}
	defer adm.DeleteTopics(context.Background(), topic)
	// A short fetch wait, as a user tuning for latency would set: with
	// franz-go's default of 5 s, a fetch sent to a partition that had
	// nothing yet holds that partition's first records for up to 5 s.
	cons, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumerGroup(topic), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return result{}, err
	}
	defer cons.Close()
	// Join the group before measuring, as the orchestrix run does with its
	// warm-up (a record produced and consumed).
	for warm := false; !warm; {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("warm-up")}).FirstErr(); err != nil {
			return result{}, err
		}
		for !warm {
			if ctx.Err() != nil {
				return result{}, ctx.Err()
			}
			cons.PollRecords(ctx, 1000).EachRecord(func(r *kgo.Record) { warm = warm || string(r.Value) == "warm-up" })
			if err := cons.CommitUncommittedOffsets(ctx); err != nil {
				return result{}, err
			}
		}
	}
	peak := heapSampler(ctx)
	cpu := coresBusy()
	sentAt := make([]time.Time, n)
	lat := make([]time.Duration, n)
	var mu sync.Mutex
	got := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for got < n && ctx.Err() == nil {
			fs := cons.PollRecords(ctx, 1000)
			now := time.Now()
			fs.EachRecord(func(r *kgo.Record) {
				i, err := strconv.Atoi(string(r.Value))
				if err != nil {
					return // the warm-up record
				}
				mu.Lock()
				lat[i] = now.Sub(sentAt[i])
				mu.Unlock()
				got++
			})
			_ = cons.CommitUncommittedOffsets(ctx)
		}
	}()
	start := time.Now()
	pace(ctx, n, rate, func(i int) {
		mu.Lock()
		sentAt[i] = time.Now()
		mu.Unlock()
		cl.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(fmt.Sprintf("acct-%05d", i%c.aggregates)), Value: []byte(strconv.Itoa(i))}, nil)
	})
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		return result{}, fmt.Errorf("bare loop: %d of %d records consumed", got, n)
	}
	return result{sent: n, elapsed: time.Since(start), p50: pct(lat, .5), p99: pct(lat, .99), p999: pct(lat, .999), heapMiB: peak(), cores: cpu()}, nil
}
