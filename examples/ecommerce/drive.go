package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// driveMain sends orders to a running `serve` at a fixed rate and prints
// what became of each (the order's final event on <context>.events):
// Confirmed, Cancelled, Failed or Rejected. It exits 0 when every order
// reached one, 1 when some did not within --timeout, 2 on bad flags.
func driveMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ecommerce drive", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", os.Getenv("KAFKA_BROKERS"), "Kafka seed brokers of the running service (env KAFKA_BROKERS; required)")
	name := fs.String("context", flagenv.Or("ORCHESTRIX_CONTEXT", "ecommerce"), "the service's topic context (env ORCHESTRIX_CONTEXT)")
	rate := fs.Float64("rate", 10, "orders per second")
	count := fs.Int("count", 20, "orders to send")
	sku := fs.String("sku", "widget", "the SKU ordered (the drive adds stock for all its orders first unless --restock=false)")
	restock := fs.Bool("restock", true, "add enough stock of --sku before the orders")
	declined := fs.Float64("declined", 0, "fraction of orders paid with the card the gateway declines (0 to 1)")
	timeout := fs.Duration("timeout", time.Minute, "wait this long after the last order for the results")
	quiet := fs.Bool("q", false, "print only the summary")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var errs exampleapp.Problems
	seeds := flagenv.List(*brokers)
	if len(seeds) == 0 {
		errs.Addf("--brokers (or KAFKA_BROKERS) is required: the brokers of the running service")
	}
	if fs.NArg() > 0 {
		errs.Addf("unexpected arguments %q", fs.Args())
	}
	if *rate <= 0 || *rate > 100_000 {
		errs.Addf("--rate %g: want more than 0, at most 100000", *rate)
	}
	errs.Int("--count", *count, 1, 1_000_000)
	if *declined < 0 || *declined > 1 {
		errs.Addf("--declined %g: want 0 to 1", *declined)
	}
	if *timeout <= 0 {
		errs.Addf("--timeout: want a positive duration")
	}
	if strings.TrimSpace(*sku) == "" || strings.TrimSpace(*name) == "" {
		errs.Addf("--sku and --context must not be empty")
	}
	kopts, err := exampleapp.KafkaOptions()
	if err != nil {
		errs.Add(err)
	}
	if len(errs) > 0 {
		return errs.Report(stderr, "ecommerce drive")
	}
	res, err := drive(ctx, driveConfig{seeds: seeds, kafka: kopts, topics: NewTopics(*name), rate: *rate, count: *count, sku: *sku,
		restock: *restock, declined: *declined, timeout: *timeout, quiet: *quiet}, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "ecommerce drive:", err)
		return 1
	}
	if res.missing > 0 {
		return 1
	}
	return 0
}

type driveConfig struct {
	seeds    []string
	kafka    []kgo.Opt
	topics   Topics
	rate     float64
	count    int
	sku      string
	restock  bool
	declined float64
	timeout  time.Duration
	quiet    bool
}

// driveResult counts the final states of the driven orders.
type driveResult struct {
	states  map[string]int
	missing int
}

func drive(ctx context.Context, c driveConfig, stdout io.Writer) (driveResult, error) {
	res := driveResult{states: map[string]int{}}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.seeds...)}, c.kafka...)...)
	if err != nil {
		return res, err
	}
	defer cl.Close()
	// Follow the events topic from its current end: every final event of
	// the orders sent below comes after it.
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, c.topics.Events)
	if err != nil {
		return res, fmt.Errorf("events topic %s: %w", c.topics.Events, err)
	}
	if err := ends.Error(); err != nil {
		return res, fmt.Errorf("events topic %s (is the service initialised? serve --init): %w", c.topics.Events, err)
	}
	from := map[string]map[int32]kgo.Offset{c.topics.Events: {}}
	ends.Each(func(o kadm.ListedOffset) { from[o.Topic][o.Partition] = kgo.NewOffset().At(o.Offset) })
	events, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.seeds...), kgo.ConsumePartitions(from), kgo.FetchMaxWait(200 * time.Millisecond)}, c.kafka...)...)
	if err != nil {
		return res, err
	}
	defer events.Close()

	reg := codec.NewRegistry()
	if err := Register(reg); err != nil {
		return res, err
	}
	orders, err := producers.NewSender(cl, reg, c.topics.Orders, "/"+c.topics.Context+"/drive")
	if err != nil {
		return res, err
	}
	stock, err := producers.NewSender(cl, reg, c.topics.Inventory, "/"+c.topics.Context+"/drive")
	if err != nil {
		return res, err
	}
	run := exampleapp.RunID()
	rng := rand.New(rand.NewPCG(exampleapp.Seed(0), 7))
	type order struct {
		cmd  PlaceOrder
		sent time.Time
	}
	placed := map[string]*order{}
	var sentMu sync.Mutex // guards order.sent
	ids := make([]string, c.count)
	total := 0
	for i := range c.count {
		ids[i] = fmt.Sprintf("d-%s-%05d", run, i)
		card := "4242-4242-4242-4242"
		if rng.Float64() < c.declined {
			card = DeclinedCard
		}
		q := 1 + rng.IntN(3)
		total += q
		placed[ids[i]] = &order{cmd: PlaceOrder{Customer: fmt.Sprintf("customer-%d", rng.IntN(1000)), SKU: c.sku, Quantity: q, Amount: int64(q) * 1999, Card: card}}
	}
	if c.restock {
		cmd, err := stock.Command(StockID(c.sku), AddStock{Quantity: total})
		if err != nil {
			return res, err
		}
		if err := stock.Send(ctx, cmd); err != nil {
			return res, err
		}
	}
	fmt.Fprintf(stdout, "driving %d orders of %s at %g/s to %s\n", c.count, c.sku, c.rate, c.topics.Orders)

	// Send at the rate while collecting results.
	sending := exampleapp.Pace(ctx, c.rate, len(ids), c.timeout, func(ctx context.Context, i int) error {
		cmd, err := orders.Command(ids[i], placed[ids[i]].cmd)
		if err != nil {
			return err
		}
		sentMu.Lock()
		placed[ids[i]].sent = time.Now()
		sentMu.Unlock()
		return orders.Send(ctx, cmd)
	})
	final := map[string]string{TypeOrderConfirmed: StateConfirmed, TypeOrderCancelled: StateCancelled, TypeOrderFailed: StateFailed, TypeOrderRejected: StateRejected}
	got := map[string]string{}
	var lat []time.Duration
	for len(got) < c.count {
		fs, err := exampleapp.Poll(ctx, events, 250*time.Millisecond)
		if err != nil {
			return res, err
		}
		fs.EachRecord(func(r *kgo.Record) {
			o, ok := placed[string(r.Key)]
			if !ok {
				return
			}
			var typ string
			for _, h := range r.Headers {
				if h.Key == "ce_type" {
					typ = string(h.Value)
				}
			}
			st, ok := final[typ]
			if !ok {
				return
			}
			if prev, seen := got[string(r.Key)]; seen && prev != StateFailed {
				return
			}
			sentMu.Lock()
			took := time.Since(o.sent)
			sentMu.Unlock()
			if _, seen := got[string(r.Key)]; !seen {
				lat = append(lat, took)
			}
			got[string(r.Key)] = st
			if !c.quiet {
				fmt.Fprintf(stdout, "%s  %-9s after %s\n", r.Key, st, took.Round(time.Millisecond))
			}
		})
		if over, err := sending.Over(); err != nil {
			return res, fmt.Errorf("send: %w", err)
		} else if over {
			break
		}
	}
	for _, st := range got {
		res.states[st]++
	}
	res.missing = c.count - len(got)
	var parts []string
	for _, st := range []string{StateConfirmed, StateCancelled, StateFailed, StateRejected} {
		if res.states[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", res.states[st], st))
		}
	}
	if res.missing > 0 {
		parts = append(parts, fmt.Sprintf("%d without a result after %s", res.missing, c.timeout))
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))].Round(time.Millisecond)
	}
	fmt.Fprintf(stdout, "%d orders: %s; placed → final p50 %s, p99 %s\n", c.count, strings.Join(parts, ", "), pct(0.5), pct(0.99))
	return res, nil
}
