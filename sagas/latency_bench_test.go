package sagas_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kgo"
)

// stepConfig is one configuration of the step latency benchmark: the
// options of the relay and of the inbox group.
type stepConfig struct {
	relay []outbox.Option
	inbox []consumers.Option
	// forwarder: the forwarder group's options (BenchmarkSagaEndToEnd).
	forwarder []consumers.Option
	// noWake: the runtime does not wake the relay after a transition (a
	// relay in another process than the saga runtime).
	noWake bool
}

// stepConfigs are the configurations BenchmarkStepLatency can alternate
// (ORCHESTRIX_BENCH_CONFIGS).
var stepConfigs = map[string]stepConfig{
	// default: the relay's 10 ms linger and 5 ms minimum poll, the
	// group's 5 ms poll linger.
	"default": {},
	// nowake: the defaults, but nothing wakes the relay after a
	// transition: what a relay in another process sees.
	"nowake": {noWake: true},
	// relay-linger0: no relay linger (the 5 ms minimum poll stays).
	"relay-linger0": {relay: []outbox.Option{outbox.Linger(0)}},
	// poll-linger0: no poll linger in the inbox group.
	"poll-linger0": {inbox: []consumers.Option{consumers.PollLinger(0)}},
	// saga: sagas.RelayOptions and sagas.InboxOptions, the settings
	// docs/sagas.md recommends for a saga deployment.
	"saga": {relay: sagas.RelayOptions(), inbox: sagas.InboxOptions()},
	// saga-poll1: "saga" with the relay's minimum poll interval at 1 ms.
	"saga-poll1": {relay: append(sagas.RelayOptions(), outbox.PollInterval(time.Millisecond, sagas.RelayPollMax)), inbox: sagas.InboxOptions()},
	// saga-nowake: "saga" with a relay nothing wakes.
	"saga-nowake": {relay: sagas.RelayOptions(), inbox: sagas.InboxOptions(), noWake: true},
}

// BenchmarkStepLatency offers a fixed rate of saga steps on real Kafka
// and PostgreSQL: 3-step transfers start at rate/3 per second; the test
// answers each command the moment the relay's Kafka transaction carrying
// it is acknowledged (an accepted outcome produced to the inbox), so the
// measured path is the saga's own: inbox consumer → transition → outbox
// → relay → Kafka ack. Per step it reports
//
//   - step: reply produced → next command acknowledged by Kafka;
//   - relay (the baseline, same run): the transition's commit → that ack,
//     the relay's own commit→ack latency;
//   - saga: Start → completed, for the whole 3-step saga;
//   - cpu-us/step: this process's CPU time (the relay, the inbox
//     group, the runtime and the benchmark's own replies; not the broker's
//     or PostgreSQL's) per step;
//   - the step broken down (means, ms): consume (reply produced → the
//     inbox handler has it: fetch, the group's poll linger, the poll
//     before it), txn (→ the transition committed), relay-wait (→ the
//     relay's Kafka transaction starts: its read wait and linger), and
//     publish (→ produced and committed: the transaction's duration).
//
// The runtime wakes the relay after each transition (OnTransition →
// Relay.Wake), as a service embedding both would.
//
// ORCHESTRIX_BENCH_CONFIGS (default "default,saga"; see stepConfigs)
// and ORCHESTRIX_BENCH_ROUNDS (default 1) alternate configurations within
// one run, round after round, and log the medians of each figure over the
// rounds: the machine is shared, so only figures of one run compare.
//
//	eval "$(scripts/services.sh env)"
//	ORCHESTRIX_BENCH_RATES=1000 ORCHESTRIX_BENCH_ROUNDS=3 ORCHESTRIX_BENCH_CONFIGS=default,relay-linger0,poll-linger0,saga \
//	  go test ./sagas -run '^$' -bench StepLatency -benchtime 1x
func BenchmarkStepLatency(b *testing.B) {
	secs, _ := strconv.Atoi(os.Getenv("ORCHESTRIX_BENCH_SECONDS"))
	if secs <= 0 {
		secs = 5
	}
	rounds, _ := strconv.Atoi(os.Getenv("ORCHESTRIX_BENCH_ROUNDS"))
	rounds = max(rounds, 1)
	configs := benchList("ORCHESTRIX_BENCH_CONFIGS", "default,saga")
	for _, c := range configs {
		if _, ok := stepConfigs[c]; !ok {
			b.Fatalf("unknown configuration %q", c)
		}
	}
	results := map[string][]map[string]float64{} // config/rate -> one per round
	for r := range rounds {
		for _, rate := range benchRates() {
			for _, c := range configs {
				b.Run(fmt.Sprintf("round=%d/config=%s/steps=%d/s", r+1, c, rate), func(b *testing.B) {
					for b.Loop() {
						m := benchSteps(b, stepConfigs[c], rate, time.Duration(secs)*time.Second)
						key := fmt.Sprintf("%s/steps=%d/s", c, rate)
						results[key] = append(results[key], m)
					}
				})
			}
		}
	}
	if rounds > 1 {
		printMedians(results, stepMetrics)
	}
}

// stepMetrics are the figures benchSteps reports, in this order.
var stepMetrics = []string{"step-p50-ms", "step-p99-ms", "relay-p50-ms", "relay-p99-ms", "saga-p50-ms", "saga-p99-ms",
	"consume-ms", "txn-ms", "relay-wait-ms", "publish-ms", "transitions/s", "cpu-us/step"}

// printMedians prints each configuration's median of every metric over
// the rounds.
func printMedians(results map[string][]map[string]float64, metrics []string) {
	keys := make([]string, 0, len(results))
	for k := range results {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var sb strings.Builder
	fmt.Fprintf(&sb, "medians over rounds\n%-28s", "config")
	for _, m := range metrics {
		fmt.Fprintf(&sb, " %14s", m)
	}
	for _, k := range keys {
		fmt.Fprintf(&sb, "\n%-28s", k)
		for _, m := range metrics {
			var vs []float64
			for _, r := range results[k] {
				vs = append(vs, r[m])
			}
			slices.Sort(vs)
			fmt.Fprintf(&sb, " %14.1f", vs[len(vs)/2])
		}
	}
	// On stdout: a parent benchmark's b.Log is not shown once it has
	// run sub-benchmarks.
	fmt.Println(sb.String())
}

// stamp records when the inbox handler got each saga's record.
type stamp struct {
	*sagas.Runtime
	got func(r *kgo.Record)
}

func (s stamp) Handle(ctx context.Context, r *kgo.Record) error {
	s.got(r)
	return s.Runtime.Handle(ctx, r)
}

func (s stamp) HandleBatch(ctx context.Context, recs []*kgo.Record) []error {
	for _, r := range recs {
		s.got(r)
	}
	return s.Runtime.HandleBatch(ctx, recs)
}

func benchSteps(b *testing.B, cfg stepConfig, rate int, d time.Duration) map[string]float64 {
	e := newEnvN(b, 8)
	ctx := b.Context()
	var mu sync.Mutex
	replied := map[string]time.Time{}   // saga → its last reply (or start) produced
	got := map[string]time.Time{}       // saga → its last reply handed to the inbox handler
	committed := map[string]time.Time{} // saga → its last transition committed
	started := map[string]time.Time{}
	var stepLat, relayLat, sagaLat, consume, txn, wait, publish []time.Duration
	var relay *outbox.Relay
	d0, err := transferDef(e.typ, topics.Commands(e.bc), 0)
	if err != nil {
		b.Fatal(err)
	}
	rt, err := newRuntime(e.pool, e.store.Schema(), e.reg, d0, testLogger(b), sagas.OnTransition(func(tr sagas.Transition) {
		now := time.Now()
		mu.Lock()
		committed[tr.SagaID] = now
		if tr.To == sagas.StatusCompleted {
			sagaLat = append(sagaLat, now.Sub(started[tr.SagaID]))
		}
		mu.Unlock()
		if !cfg.noWake {
			relay.Wake()
		}
	}))
	if err != nil {
		b.Fatal(err)
	}
	cl := testenv.Client(b, e.seeds, kgo.ProducerLinger(0))
	relay, err = outbox.NewRelay(e.store, e.seeds, append([]outbox.Option{outbox.ToTopic(topics.Events(e.bc)),
		outbox.TransactionalID("orchestrix-relay." + e.bc),
		outbox.OnCommit(func(c outbox.Commit) {
			now := time.Now()
			txnStart := now.Add(-c.Duration)
			for _, rec := range c.Records {
				if rec.Topic != topics.Commands(e.bc) {
					continue
				}
				var id, corr string
				for _, h := range rec.Headers {
					switch h.Key {
					case "ce_id":
						id = string(h.Value)
					case "ce_correlationid":
						corr = string(h.Value)
					}
				}
				_, sagaID, _ := sagas.ParseCorrelation(corr)
				mu.Lock()
				if r, ok := replied[sagaID]; ok {
					stepLat = append(stepLat, now.Sub(r))
					if g, ok := got[sagaID]; ok && g.After(r) {
						c := committed[sagaID]
						consume, txn = append(consume, g.Sub(r)), append(txn, c.Sub(g))
						w := max(txnStart.Sub(c), 0)
						wait, publish = append(wait, w), append(publish, now.Sub(c)-w)
					}
				}
				if c, ok := committed[sagaID]; ok {
					relayLat = append(relayLat, now.Sub(c))
				}
				replied[sagaID] = time.Now()
				mu.Unlock()
				o, _ := json.Marshal(orchestrix.Outcome{CommandID: id, CorrelationID: corr, Status: orchestrix.OutcomeAccepted})
				m := sagas.InboxMessage(rt.Inbox(), sagaID, sagas.KindOutcome, "outcome:"+id, o)
				cl.Produce(ctx, &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: m.Headers}, nil)
			}
		})}, cfg.relay...)...)
	if err != nil {
		b.Fatal(err)
	}
	p := newProcess()
	p.run("relay", relay.Run)
	h := stamp{Runtime: rt, got: func(r *kgo.Record) {
		now := time.Now()
		mu.Lock()
		got[string(r.Key)] = now
		mu.Unlock()
	}}
	inbox, err := consumers.New(e.seeds, e.bc+"-sagas", []string{rt.Inbox()}, h, append([]consumers.Option{fast, consumers.KeyConcurrency(8),
		consumers.WithFailurePolicy(sagas.InboxFailurePolicy())}, cfg.inbox...)...)
	if err != nil {
		b.Fatal(err)
	}
	p.run("inbox", inbox.Run)
	defer p.stop()
	time.Sleep(2 * time.Second) // the relay leads, the group has its partitions

	sagasPerSec := float64(rate) / 3
	total := int(sagasPerSec * d.Seconds())
	cpu0 := processCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < total; i += 8 {
				time.Sleep(time.Until(start.Add(time.Duration(float64(i) / sagasPerSec * float64(time.Second)))))
				id := fmt.Sprintf("b%d", i)
				now := time.Now()
				mu.Lock()
				started[id], replied[id] = now, now
				mu.Unlock()
				if err := rt.Start(ctx, id, Transfer{From: "a", To: "b", Fee: "fee", UndoFrom: "b", Amount: 10}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	awaitSagas(b, total, func() int { mu.Lock(); defer mu.Unlock(); return len(sagaLat) })
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	p.check(b)
	mu.Lock()
	defer mu.Unlock()
	pct, mean := pctMs, meanMs
	m := map[string]float64{
		"step-p50-ms": pct(stepLat, 0.5), "step-p99-ms": pct(stepLat, 0.99),
		"relay-p50-ms": pct(relayLat, 0.5), "relay-p99-ms": pct(relayLat, 0.99),
		"saga-p50-ms": pct(sagaLat, 0.5), "saga-p99-ms": pct(sagaLat, 0.99),
		"consume-ms": mean(consume), "txn-ms": mean(txn), "relay-wait-ms": mean(wait), "publish-ms": mean(publish),
		"transitions/s": float64(total*4) / elapsed.Seconds(),
		"cpu-us/step":   float64(cpu.Microseconds()) / float64(total*3),
	}
	for _, k := range stepMetrics {
		b.ReportMetric(m[k], k)
	}
	return m
}

// processCPU is the CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchRates are the offered step rates: ORCHESTRIX_BENCH_RATES
// ("300,1000,2000"), default 300 and 1000.
func benchRates() []int {
	var out []int
	for _, f := range benchList("ORCHESTRIX_BENCH_RATES", "300,1000") {
		if n, err := strconv.Atoi(f); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// benchList is the comma-separated list in env (def when empty).
func benchList(env, def string) []string {
	v := os.Getenv(env)
	if strings.TrimSpace(v) == "" {
		v = def
	}
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// awaitSagas waits until done() reports total completed sagas, failing
// the benchmark after two minutes.
func awaitSagas(b *testing.B, total int, done func() int) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for n := done(); n != total; n = done() {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d sagas completed", n, total)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pctMs returns the q quantile of l in milliseconds (0 for none); it
// sorts l.
func pctMs(l []time.Duration, q float64) float64 {
	if len(l) == 0 {
		return 0
	}
	slices.Sort(l)
	return float64(l[min(len(l)-1, int(q*float64(len(l))))].Microseconds()) / 1000
}

// meanMs returns the mean of l in milliseconds (0 for none).
func meanMs(l []time.Duration) float64 {
	var sum time.Duration
	for _, x := range l {
		sum += x
	}
	return float64(sum.Microseconds()) / 1000 / float64(max(len(l), 1))
}
