package sagas_test

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kgo"
)

// e2eConfigs are BenchmarkSagaEndToEnd's configurations: the options of
// the saga's own parts (the relay, the inbox group, and in "saga" the
// forwarder group's ForwarderOptions); the ledger processor keeps its
// defaults in both.
var e2eConfigs = map[string]stepConfig{
	"default": {inbox: []consumers.Option{consumers.WithFailurePolicy(sagas.InboxFailurePolicy())}},
	"saga":    {relay: sagas.RelayOptions(), inbox: sagas.InboxOptions(), forwarder: sagas.ForwarderOptions()},
	// saga-fwd16: "saga" with the forwarder handling 16 keys of a
	// partition at once.
	"saga-fwd16": {relay: sagas.RelayOptions(), inbox: sagas.InboxOptions(),
		forwarder: append(sagas.ForwarderOptions(), consumers.KeyConcurrency(16))},
}

// BenchmarkSagaEndToEnd runs the whole path of a deployment in one
// process on real Kafka and PostgreSQL: the relay, the ledger aggregate
// processor, the forwarder and the inbox group, the runtime waking the
// relay after each transition. 3-step transfers (debit, credit, fee,
// between 100 pairs of accounts) start at ORCHESTRIX_BENCH_SAGAS per
// second (default 100) for ORCHESTRIX_BENCH_SECONDS (default 10). It
// reports
//
//   - saga: Start → completed;
//   - round: one transition committed → the instance's next one
//     committed (the command published, decided by the processor, its
//     outcome forwarded to the inbox and applied), and its parts
//     (means): relay (→ the command acknowledged by Kafka),
//     processor+forward (→ the forwarder produced the outcome to the
//     inbox: the processor's poll, decision, append and outcome, the
//     forwarder's poll), consume (→ the inbox handler has it) and txn
//     (→ the transition committed);
//
// The configurations (ORCHESTRIX_BENCH_CONFIGS, default "default,saga";
// see e2eConfigs) alternate for ORCHESTRIX_BENCH_ROUNDS (default 1) and
// the medians are printed:
//
//	eval "$(scripts/services.sh env)"
//	ORCHESTRIX_BENCH_ROUNDS=3 go test ./sagas -run '^$' -bench SagaEndToEnd -benchtime 1x
func BenchmarkSagaEndToEnd(b *testing.B) {
	secs, _ := strconv.Atoi(os.Getenv("ORCHESTRIX_BENCH_SECONDS"))
	if secs <= 0 {
		secs = 10
	}
	rate, _ := strconv.Atoi(os.Getenv("ORCHESTRIX_BENCH_SAGAS"))
	if rate <= 0 {
		rate = 100
	}
	rounds, _ := strconv.Atoi(os.Getenv("ORCHESTRIX_BENCH_ROUNDS"))
	results := map[string][]map[string]float64{}
	for r := range max(rounds, 1) {
		for _, c := range benchList("ORCHESTRIX_BENCH_CONFIGS", "default,saga") {
			if _, ok := e2eConfigs[c]; !ok {
				b.Fatalf("unknown configuration %q", c)
			}
			b.Run(fmt.Sprintf("round=%d/config=%s/sagas=%d/s", r+1, c, rate), func(b *testing.B) {
				for b.Loop() {
					key := fmt.Sprintf("%s/sagas=%d/s", c, rate)
					results[key] = append(results[key], benchEndToEnd(b, e2eConfigs[c], rate, time.Duration(secs)*time.Second))
				}
			})
		}
	}
	if rounds > 1 {
		printMedians(results, e2eMetrics)
	}
}

var e2eMetrics = []string{"saga-p50-ms", "saga-p99-ms", "round-p50-ms", "round-p99-ms", "relay-ms", "processor+forward-ms", "consume-ms", "txn-ms", "cpu-us/saga"}

func benchEndToEnd(b *testing.B, cfg stepConfig, rate int, d time.Duration) map[string]float64 {
	e := newEnvN(b, 8)
	ctx := b.Context()
	const pairs = 100
	var setup []orchestrix.Command
	want := map[string]int64{}
	for i := range pairs {
		for _, a := range []string{fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i), fmt.Sprintf("fee%d", i%10)} {
			if _, ok := want[a]; !ok {
				want[a] = 1_000_000
				setup = append(setup, open(a, 1_000_000)...)
			}
		}
	}
	p := newProcess()
	var closers []func()
	defer func() {
		p.stop()
		for _, c := range closers {
			c()
		}
	}()
	var relay *outbox.Relay
	var mu sync.Mutex
	last := map[string]time.Time{}  // saga → its last transition committed
	acked := map[string]time.Time{} // saga → its last command acknowledged
	got := map[string]time.Time{}   // saga → its last input handed to the inbox handler
	fwdAt := map[string]time.Time{} // saga → when the forwarder produced that input
	started := map[string]time.Time{}
	var sagaLat, roundLat, relayPart, procPart, consumePart, txnPart []time.Duration
	rt, err := newRuntime(e.pool, e.store.Schema(), e.reg, e.definition(b, 0), testLogger(b), sagas.OnTransition(func(tr sagas.Transition) {
		now := time.Now()
		mu.Lock()
		if l, ok := last[tr.SagaID]; ok {
			roundLat = append(roundLat, now.Sub(l))
			a, f, g := acked[tr.SagaID], fwdAt[tr.SagaID], got[tr.SagaID]
			if a.After(l) && f.After(a) && g.After(f) {
				relayPart, procPart = append(relayPart, a.Sub(l)), append(procPart, f.Sub(a))
				consumePart, txnPart = append(consumePart, g.Sub(f)), append(txnPart, now.Sub(g))
			}
		}
		last[tr.SagaID] = now
		if tr.To == sagas.StatusCompleted {
			sagaLat = append(sagaLat, now.Sub(started[tr.SagaID]))
		}
		mu.Unlock()
		relay.Wake()
	}))
	if err != nil {
		b.Fatal(err)
	}
	relay, err = outbox.NewRelay(e.store, e.seeds, append([]outbox.Option{outbox.ToTopic(topics.Events(e.bc)),
		outbox.TransactionalID("orchestrix-relay." + e.bc), outbox.OnCommit(func(c outbox.Commit) {
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			for _, rec := range c.Records {
				if rec.Topic != topics.Commands(e.bc) {
					continue
				}
				for _, h := range rec.Headers {
					if h.Key == "ce_correlationid" {
						_, id, _ := sagas.ParseCorrelation(string(h.Value))
						acked[id] = now
					}
				}
			}
		})}, cfg.relay...)...)
	if err != nil {
		b.Fatal(err)
	}
	p.run("relay", relay.Run)
	repo, err := aggregates.NewRepository(testdomain.Aggregate(b), e.store, e.reg, "/"+e.bc)
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"processor", "forwarder"} {
		cl, err := producers.NewClient(e.seeds)
		if err != nil {
			b.Fatal(err)
		}
		closers = append(closers, cl.Close)
		var g *consumers.Group
		if name == "processor" {
			proc, err := aggregates.NewProcessor(repo, aggregates.WithOutcomes(cl, topics.Outcomes(e.bc)))
			if err != nil {
				b.Fatal(err)
			}
			g, err = consumers.New(e.seeds, e.bc+"-aggregates", []string{topics.Commands(e.bc)}, proc, fast)
			if err != nil {
				b.Fatal(err)
			}
		} else {
			fwd, err := sagas.NewForwarder(cl, topics.Outcomes(e.bc), topics.Events(e.bc), rt)
			if err != nil {
				b.Fatal(err)
			}
			g, err = consumers.New(e.seeds, e.bc+"-saga-fwd", fwd.Topics(), fwd, append([]consumers.Option{fast}, cfg.forwarder...)...)
			if err != nil {
				b.Fatal(err)
			}
		}
		p.run(name, g.Run)
	}
	h := stamp{Runtime: rt, got: func(r *kgo.Record) {
		now := time.Now()
		mu.Lock()
		got[string(r.Key)], fwdAt[string(r.Key)] = now, r.Timestamp
		mu.Unlock()
	}}
	inbox, err := consumers.New(e.seeds, e.bc+"-sagas", []string{rt.Inbox()}, h, append([]consumers.Option{fast}, cfg.inbox...)...)
	if err != nil {
		b.Fatal(err)
	}
	p.run("inbox", inbox.Run)
	e.send(b, setup...)
	e.waitBalance(b, want, time.Minute)

	total := int(float64(rate) * d.Seconds())
	cpu0 := processCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < total; i += 8 {
				time.Sleep(time.Until(start.Add(time.Duration(float64(i) / float64(rate) * float64(time.Second)))))
				id := fmt.Sprintf("e%d", i)
				mu.Lock()
				started[id] = time.Now()
				mu.Unlock()
				k := i % pairs
				tr := Transfer{From: fmt.Sprintf("a%d", k), To: fmt.Sprintf("b%d", k), Fee: fmt.Sprintf("fee%d", k%10), UndoFrom: fmt.Sprintf("b%d", k), Amount: 10}
				if err := rt.Start(ctx, id, tr); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	awaitSagas(b, total, func() int { mu.Lock(); defer mu.Unlock(); return len(sagaLat) })
	cpu := processCPU() - cpu0
	p.check(b)
	mu.Lock()
	defer mu.Unlock()
	pct, mean := pctMs, meanMs
	m := map[string]float64{"saga-p50-ms": pct(sagaLat, 0.5), "saga-p99-ms": pct(sagaLat, 0.99),
		"round-p50-ms": pct(roundLat, 0.5), "round-p99-ms": pct(roundLat, 0.99), "cpu-us/saga": float64(cpu.Microseconds()) / float64(total),
		"relay-ms": mean(relayPart), "processor+forward-ms": mean(procPart), "consume-ms": mean(consumePart), "txn-ms": mean(txnPart)}
	for _, k := range e2eMetrics {
		b.ReportMetric(m[k], k)
	}
	return m
}
