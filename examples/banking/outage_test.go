package banking_test

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestBrokerOutageIntegration kills the Kafka broker (kill -9 of a broker
// the test starts for itself, so the shared one is left alone) while
// commands flow, sends more while it is down, and restarts it: the
// senders, the processor group and the outcome awaiter recover by
// themselves; every command is applied once and in order, and every
// sender learns its command's outcome.
func TestBrokerOutageIntegration(t *testing.T) {
	broker := testenv.OwnBroker(t)
	seeds := broker.Seeds()
	_, _, store := pgStore(t)
	bc := testenv.Name("outage")
	setupTopics(t, seeds, bc, 4)
	reg := codec.NewRegistry()
	if err := banking.Register(reg); err != nil {
		t.Fatal(err)
	}
	// Records buffered while the broker is down wait for it: the broker
	// may take a while to come back on a busy machine.
	cl, err := producers.NewClient(seeds, kgo.RecordDeliveryTimeout(3*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sender, err := producers.NewSender(cl, reg, topics.Commands(bc), "/test")
	if err != nil {
		t.Fatal(err)
	}
	aw, err := producers.NewAwaiter(seeds, topics.Outcomes(bc))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	procErr := make(chan error, 1)
	wg.Go(func() { procErr <- runProcessor(ctx, seeds, bc, store, log, kgo.RecordDeliveryTimeout(3*time.Minute)) })
	wg.Go(func() { _ = aw.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	const accounts, perAccount = 100, 10
	rounds := workload(t, sender, accounts, accounts*perAccount)
	var mu sync.Mutex
	var sendErr error
	sendAsync := func(cmds []orchestrix.Command) {
		for _, c := range cmds {
			sender.SendAsync(t.Context(), c, func(err error) {
				mu.Lock()
				defer mu.Unlock()
				if err != nil && sendErr == nil {
					sendErr = err
				}
			})
		}
	}
	for _, r := range rounds[:4] {
		send(t, sender, cl, r)
	}
	broker.Kill(t)
	for _, r := range rounds[4:7] {
		sendAsync(r) // buffered by the producer while the broker is down
	}
	time.Sleep(2 * time.Second) // clients notice the outage and retry
	broker.Start(t)
	for _, r := range rounds[7:] {
		sendAsync(r)
	}
	fctx, fcancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer fcancel()
	if err := cl.Flush(fctx); err != nil {
		t.Fatalf("flush after the outage: %v", err)
	}
	if sendErr != nil {
		t.Fatalf("a send failed across the outage: %v", sendErr)
	}
	for _, r := range rounds {
		for _, c := range r {
			wctx, wcancel := context.WithTimeout(t.Context(), 2*time.Minute)
			o, err := aw.Wait(wctx, c.ID)
			wcancel()
			if err != nil {
				select {
				case perr := <-procErr:
					t.Fatalf("no outcome for %s; the processor stopped: %v", c.ID, perr)
				default:
				}
				t.Fatalf("no outcome for %s after the outage: %v", c.ID, err)
			}
			if o.Status != orchestrix.OutcomeAccepted && o.Status != orchestrix.OutcomeDuplicate {
				t.Fatalf("%s: outcome %+v", c.ID, o)
			}
		}
	}
	select {
	case err := <-procErr:
		t.Fatalf("the processor group stopped during the outage: %v", err)
	default:
	}
	checkStreams(t, store, reg, accounts, perAccount)
}
