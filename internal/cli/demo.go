package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

type demoConfig struct {
	commands, accounts, partitions int
	brokers, databaseURL, schema   string
	context                        string
	timeout                        time.Duration
	quiet                          bool
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("demo", stderr)
	var c demoConfig
	fs.IntVar(&c.commands, "commands", 10000, "commands to send")
	fs.IntVar(&c.accounts, "accounts", 100, "accounts the commands are spread over")
	fs.IntVar(&c.partitions, "partitions", 8, "partitions of the demo topics")
	fs.StringVar(&c.brokers, "brokers", "", "Kafka seed brokers; empty: an embedded in-process broker (kfake)")
	fs.StringVar(&c.databaseURL, "database-url", "", "PostgreSQL URL; empty: the in-memory store")
	fs.StringVar(&c.schema, "schema", "orchestrix_demo", "schema for the PostgreSQL store (migrated if needed)")
	fs.StringVar(&c.context, "context", "", "topic prefix (default: a fresh banking-<random> per run)")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "give up when the outcomes have not all arrived by then")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress bar")
	if err := parse(fs, args); err != nil {
		return err
	}
	if c.commands < 1 || c.accounts < 1 || c.partitions < 1 || c.accounts > c.commands {
		return fmt.Errorf("%w: need commands ≥ accounts ≥ 1 and partitions ≥ 1", errUsage)
	}
	if c.context == "" {
		c.context = fmt.Sprintf("banking-%d", time.Now().UnixNano()%1e9)
	}
	return demo(ctx, c, stdout, stderr)
}

// plannedCommand is one command of the demo with the outcome a model of
// the accounts predicts (per-account order is kept by the key).
type plannedCommand struct {
	account string
	payload any
	accept  bool
}

func planDemo(c demoConfig) ([]plannedCommand, map[string]int64) {
	rng := rand.New(rand.NewPCG(42, uint64(c.commands)))
	balances := map[string]int64{}
	var plan []plannedCommand
	for i := range c.accounts {
		id := fmt.Sprintf("acct-%05d", i)
		plan = append(plan, plannedCommand{id, banking.OpenAccount{Owner: "owner-" + id}, true})
		balances[id] = 0
	}
	for len(plan) < c.commands {
		id := fmt.Sprintf("acct-%05d", rng.IntN(c.accounts))
		amount := int64(1 + rng.IntN(100))
		if rng.IntN(2) == 0 {
			plan = append(plan, plannedCommand{id, banking.Deposit{Amount: amount}, true})
			balances[id] += amount
			continue
		}
		ok := balances[id] >= amount
		if ok {
			balances[id] -= amount
		}
		plan = append(plan, plannedCommand{id, banking.Withdraw{Amount: amount}, ok})
	}
	return plan, balances
}

func demo(ctx context.Context, c demoConfig, stdout, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// Broker: embedded kfake unless --brokers.
	seeds := splitBrokers(c.brokers)
	where := "Kafka at " + c.brokers
	if len(seeds) == 0 {
		fake, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			return fmt.Errorf("start embedded broker: %w", err)
		}
		defer fake.Close()
		seeds = fake.ListenAddrs()
		where = "embedded Kafka (kfake)"
	}
	// Store: memory unless --database-url.
	var store stores.EventStore = memory.New()
	storeName := "in-memory store"
	if c.databaseURL != "" {
		pool, err := openPool(ctx, c.databaseURL)
		if err != nil {
			return err
		}
		defer pool.Close()
		if _, err := postgres.Migrate(ctx, pool, c.schema); err != nil {
			return err
		}
		pg, err := postgres.New(ctx, pool, postgres.WithSchema(c.schema))
		if err != nil {
			return err
		}
		store, storeName = pg, "PostgreSQL schema "+c.schema
	}
	fmt.Fprintf(stdout, "orchestrix demo: %d commands over %d accounts, %d partitions, %s, %s\n", c.commands, c.accounts, c.partitions, where, storeName)

	cl, err := producers.NewClient(seeds)
	if err != nil {
		return err
	}
	defer cl.Close()
	specs := topics.ForContext(c.context, int32(c.partitions), 1)
	if _, err := topics.Ensure(ctx, kadm.NewClient(cl), append(specs, topics.Spec{Name: consumers.DeadLetterTopic(topics.Commands(c.context), c.context+"-aggregates"), Partitions: 1, ReplicationFactor: 1})...); err != nil {
		return err
	}

	reg := codec.NewRegistry()
	if err := banking.Register(reg); err != nil {
		return err
	}
	agg, err := banking.NewAggregate(aggregates.SnapshotEvery(100))
	if err != nil {
		return err
	}
	repo, err := aggregates.NewRepository(agg, store, reg, "/"+c.context)
	if err != nil {
		return err
	}
	// The processor's outcome producer must not linger: every poll waits
	// for its outcomes' acknowledgement.
	ocl, err := producers.NewClient(seeds, kgo.ProducerLinger(0))
	if err != nil {
		return err
	}
	defer ocl.Close()
	proc, err := aggregates.NewProcessor(repo, aggregates.WithOutcomes(ocl, topics.Outcomes(c.context)), aggregates.WithProcessorLogger(logger))
	if err != nil {
		return err
	}
	group, err := consumers.New(seeds, c.context+"-aggregates", []string{topics.Commands(c.context)}, proc, consumers.WithLogger(logger))
	if err != nil {
		return err
	}
	awaiter, err := producers.NewAwaiter(seeds, topics.Outcomes(c.context))
	if err != nil {
		return err
	}
	sender, err := producers.NewSender(cl, reg, topics.Commands(c.context), "/demo")
	if err != nil {
		return err
	}

	var wg sync.WaitGroup
	runErr := make(chan error, 2)
	wg.Go(func() { runErr <- group.Run(ctx) })
	wg.Go(func() { runErr <- awaiter.Run(ctx) })
	defer wg.Wait()
	defer cancel()

	plan, balances := planDemo(c)
	type sent struct {
		id     string
		at     time.Time
		accept bool
	}
	sents := make([]sent, len(plan))
	var sendErr atomic.Value
	start := time.Now()
	for i, p := range plan {
		cmd, err := sender.Command(p.account, p.payload)
		if err != nil {
			return err
		}
		sents[i] = sent{cmd.ID, time.Now(), p.accept}
		sender.SendAsync(ctx, cmd, func(err error) {
			if err != nil {
				sendErr.CompareAndSwap(nil, err)
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return fmt.Errorf("send commands: %w", err)
	}
	if err, ok := sendErr.Load().(error); ok {
		return fmt.Errorf("send commands: %w", err)
	}

	// Wait for every outcome, with a progress bar.
	waitCtx, waitCancel := context.WithTimeout(ctx, c.timeout)
	defer waitCancel()
	var done atomic.Int64
	stopBar := func() {}
	if !c.quiet {
		stopBar = progress(stderr, "commands", int64(len(plan)), &done, start)
	}
	latencies := make([]time.Duration, len(plan))
	outcomes := make([]orchestrix.Outcome, len(plan))
	var owg sync.WaitGroup
	errs := make(chan error, len(plan))
	for i := range sents {
		owg.Go(func() {
			o, err := awaiter.Wait(waitCtx, sents[i].id)
			if err != nil {
				errs <- err
				return
			}
			latencies[i] = time.Since(sents[i].at)
			outcomes[i] = o
			done.Add(1)
		})
	}
	owg.Wait()
	stopBar()
	elapsed := time.Since(start)
	select {
	case err := <-errs:
		select {
		case rerr := <-runErr:
			return fmt.Errorf("processor stopped: %v; %w", rerr, err)
		default:
		}
		return fmt.Errorf("%d of %d outcomes missing after %s: %w", len(plan)-int(done.Load()), len(plan), c.timeout, err)
	default:
	}

	// Check outcomes and balances against the model.
	var accepted, rejected, duplicates, events int
	var problems []string
	for i, o := range outcomes {
		switch o.Status {
		case orchestrix.OutcomeAccepted:
			accepted++
			events += int(o.ToVersion - o.FromVersion + 1)
		case orchestrix.OutcomeRejected:
			rejected++
		case orchestrix.OutcomeDuplicate:
			duplicates++
		}
		if (o.Status == orchestrix.OutcomeRejected) == sents[i].accept {
			problems = append(problems, fmt.Sprintf("command %d (%T on %s): %s, model expected accept=%v", i, plan[i].payload, plan[i].account, o.Status, sents[i].accept))
		}
	}
	for id, want := range balances {
		root, err := repo.Load(ctx, id)
		if err != nil {
			return err
		}
		if root.State.Balance != want || !root.State.Opened {
			problems = append(problems, fmt.Sprintf("account %s: balance %d, expected %d", id, root.State.Balance, want))
		}
	}
	slices.Sort(latencies)
	pct := func(p float64) time.Duration { return latencies[min(len(latencies)-1, int(p*float64(len(latencies))))] }
	fmt.Fprintf(stdout, "commands   %d sent, %d accepted, %d rejected (insufficient funds), %d duplicates\n", len(plan), accepted, rejected, duplicates)
	fmt.Fprintf(stdout, "events     %d stored\n", events)
	fmt.Fprintf(stdout, "throughput %.0f commands/s over %s\n", float64(len(plan))/elapsed.Seconds(), elapsed.Round(time.Millisecond))
	fmt.Fprintf(stdout, "latency    command sent → events stored and outcome seen: p50 %s, p99 %s, max %s\n",
		pct(0.50).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), latencies[len(latencies)-1].Round(time.Microsecond))
	if len(problems) > 0 {
		for _, p := range problems[:min(len(problems), 10)] {
			fmt.Fprintln(stderr, "inconsistent:", p)
		}
		return fmt.Errorf("%d inconsistencies between the store and the commands sent", len(problems))
	}
	fmt.Fprintf(stdout, "consistent: every balance matches the commands sent\n")
	cancel()
	for range 2 {
		if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return nil
}
