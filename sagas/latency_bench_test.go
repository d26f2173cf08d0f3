package sagas_test

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
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
//   - saga: Start → completed, for the whole 3-step saga.
//
// The runtime wakes the relay after each transition (OnTransition →
// Relay.Wake), as a service embedding both would.
//
//	eval "$(scripts/services.sh env)"; ORCHESTRIX_BENCH_SECONDS=5 go test ./sagas -run '^$' -bench StepLatency -benchtime 1x
func BenchmarkStepLatency(b *testing.B) {
	secs, _ := strconv.Atoi(os.Getenv("ORCHESTRIX_BENCH_SECONDS"))
	if secs <= 0 {
		secs = 5
	}
	for _, rate := range benchRates() {
		b.Run(fmt.Sprintf("steps=%d/s", rate), func(b *testing.B) {
			for b.Loop() {
				benchSteps(b, rate, time.Duration(secs)*time.Second)
			}
		})
	}
}

func benchSteps(b *testing.B, rate int, d time.Duration) {
	e := newEnvN(b, 8)
	ctx := b.Context()
	var mu sync.Mutex
	replied := map[string]time.Time{}   // saga → its last reply (or start) produced
	committed := map[string]time.Time{} // saga → its last transition committed
	started := map[string]time.Time{}
	var stepLat, relayLat, sagaLat []time.Duration
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
		relay.Wake()
	}))
	if err != nil {
		b.Fatal(err)
	}
	cl := testenv.Client(b, e.seeds, kgo.ProducerLinger(0))
	relay, err = outbox.NewRelay(e.store, e.seeds, outbox.ToTopic(topics.Events(e.bc)), outbox.TransactionalID("orchestrix-relay."+e.bc),
		outbox.OnCommit(func(c outbox.Commit) {
			now := time.Now()
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
		}))
	if err != nil {
		b.Fatal(err)
	}
	p := newProcess()
	p.run("relay", relay.Run)
	inbox, err := consumers.New(e.seeds, e.bc+"-sagas", []string{rt.Inbox()}, rt, fast, consumers.KeyConcurrency(8),
		consumers.WithFailurePolicy(sagas.InboxFailurePolicy()))
	if err != nil {
		b.Fatal(err)
	}
	p.run("inbox", inbox.Run)
	defer p.stop()
	time.Sleep(2 * time.Second) // the relay leads, the group has its partitions

	sagasPerSec := float64(rate) / 3
	total := int(sagasPerSec * d.Seconds())
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
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		done := len(sagaLat)
		mu.Unlock()
		if done == total {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d sagas completed", done, total)
		}
		time.Sleep(50 * time.Millisecond)
	}
	elapsed := time.Since(start)
	p.check(b)
	mu.Lock()
	defer mu.Unlock()
	pct := func(l []time.Duration, q float64) float64 {
		slices.Sort(l)
		return float64(l[min(len(l)-1, int(q*float64(len(l))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(stepLat, 0.5), "step-p50-ms")
	b.ReportMetric(pct(stepLat, 0.99), "step-p99-ms")
	b.ReportMetric(pct(relayLat, 0.5), "relay-p50-ms")
	b.ReportMetric(pct(relayLat, 0.99), "relay-p99-ms")
	b.ReportMetric(pct(sagaLat, 0.5), "saga-p50-ms")
	b.ReportMetric(pct(sagaLat, 0.99), "saga-p99-ms")
	b.ReportMetric(float64(total*4)/elapsed.Seconds(), "transitions/s")
}

// benchRates are the offered step rates: ORCHESTRIX_BENCH_RATES
// ("300,1000,2000"), default 300 and 1000.
func benchRates() []int {
	var out []int
	for _, f := range strings.Split(os.Getenv("ORCHESTRIX_BENCH_RATES"), ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		out = []int{300, 1000}
	}
	return out
}
