package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/internal/redact"
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
	// accountPrefix makes the run's account IDs its own.
	accountPrefix string
	// kafka are the TLS and SASL client options for --brokers.
	kafka []kgo.Opt
	// runProcessor replaces the processor's Run (tests).
	runProcessor func(context.Context) error
}

// Bounds of the demo's numeric flags. The embedded run holds every
// command, outcome and event in memory: about 2.2 GB at its peak for a
// million commands.
const (
	demoMaxCommands   = 10_000_000
	demoMaxAccounts   = 1_000_000
	demoMaxPartitions = 1000
)

// demoContext is the demo's default bounded context: the one the README's
// topics, relay and dlq commands name.
const demoContext = "banking"

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("demo", stderr)
	var c demoConfig
	fs.IntVar(&c.commands, "commands", 10000, "commands to send")
	fs.IntVar(&c.accounts, "accounts", 100, "accounts the commands are spread over")
	fs.IntVar(&c.partitions, "partitions", 8, "partitions of the demo topics")
	fs.StringVar(&c.brokers, "brokers", env("KAFKA_BROKERS", ""), "Kafka seed brokers (env KAFKA_BROKERS); empty: an embedded in-process broker (kfake)")
	sec := kafkaFlags(fs)
	c.databaseURL = env("DATABASE_URL", "")
	fs.Var(redact.FlagValue(&c.databaseURL), "database-url", "PostgreSQL `URL` (env DATABASE_URL); empty: the in-memory store")
	fs.StringVar(&c.schema, "schema", env("ORCHESTRIX_SCHEMA", postgres.DefaultSchema), "schema for the PostgreSQL store, migrated if needed (env ORCHESTRIX_SCHEMA)")
	fs.StringVar(&c.context, "context", env("ORCHESTRIX_CONTEXT", demoContext), "bounded context: topics <context>.commands|events|outcomes, group <context>-aggregates (env ORCHESTRIX_CONTEXT)")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "give up when the outcomes have not all arrived this long after the last command was sent")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress bar")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := checkFlags(
		intIn("commands", c.commands, 1, demoMaxCommands),
		intIn("accounts", c.accounts, 1, demoMaxAccounts),
		intIn("partitions", c.partitions, 1, demoMaxPartitions),
		durationIn("timeout", c.timeout, time.Millisecond, math.MaxInt64),
	); err != nil {
		return err
	}
	var err error
	if c.kafka, err = sec.options(); err != nil {
		return err
	}
	if c.brokers != "" && sec.secured() {
		if err := sec.check(ctx, splitBrokers(c.brokers)); err != nil {
			return err
		}
	}
	if c.accounts > c.commands {
		return fmt.Errorf("%w: need commands ≥ accounts: the first command of each account opens it (--commands %d, --accounts %d)", errUsage, c.commands, c.accounts)
	}
	// Accounts are the run's own: a run on a store that holds an earlier
	// run's accounts starts from empty ones all the same.
	c.accountPrefix = strconv.FormatInt(time.Now().UnixMilli(), 36) + "-"
	return demo(ctx, c, stdout, stderr)
}

// plannedCommand is one command of the demo with the outcome a model of
// the accounts predicts (per-account order is kept by the key). It is
// small: a million of them are planned before the first is sent.
type plannedCommand struct {
	account int32
	kind    uint8 // planOpen, planDeposit, planWithdraw
	accept  bool
	amount  int64
}

const (
	planOpen uint8 = iota
	planDeposit
	planWithdraw
)

// payload returns the command's payload.
func (p plannedCommand) payload(owner string) any {
	switch p.kind {
	case planOpen:
		return banking.OpenAccount{Owner: owner}
	case planDeposit:
		return banking.Deposit{Amount: p.amount}
	}
	return banking.Withdraw{Amount: p.amount}
}

// kindName names the command in reports.
func (p plannedCommand) kindName() string {
	return [...]string{"OpenAccount", "Deposit", "Withdraw"}[p.kind]
}

// planDemo returns the demo's commands and the balance the model expects
// for each account (by index).
func planDemo(c demoConfig) ([]plannedCommand, []int64) {
	rng := rand.New(rand.NewPCG(42, uint64(c.commands)))
	balances := make([]int64, c.accounts)
	plan := make([]plannedCommand, 0, c.commands)
	for i := range c.accounts {
		plan = append(plan, plannedCommand{account: int32(i), kind: planOpen, accept: true})
	}
	for len(plan) < c.commands {
		a := rng.IntN(c.accounts)
		amount := int64(1 + rng.IntN(100))
		if rng.IntN(2) == 0 {
			plan = append(plan, plannedCommand{account: int32(a), kind: planDeposit, accept: true, amount: amount})
			balances[a] += amount
			continue
		}
		ok := balances[a] >= amount
		if ok {
			balances[a] -= amount
		}
		plan = append(plan, plannedCommand{account: int32(a), kind: planWithdraw, accept: ok, amount: amount})
	}
	return plan, balances
}

// demoResult is what became of one command: compact, as there may be a
// million.
type demoResult struct {
	latency time.Duration
	events  uint32
	status  uint8 // 0: none yet, then resultAccepted...
}

const (
	resultAccepted uint8 = 1 + iota
	resultRejected
	resultDuplicate
	resultOther
)

func statusCode(s string) uint8 {
	switch s {
	case orchestrix.OutcomeAccepted:
		return resultAccepted
	case orchestrix.OutcomeRejected:
		return resultRejected
	case orchestrix.OutcomeDuplicate:
		return resultDuplicate
	}
	return resultOther
}

// errStopped marks a demo ended because its processor or awaiter stopped
// on its own.
var errStopped = errors.New("stopped")

func demo(parent context.Context, c demoConfig, stdout, stderr io.Writer) error {
	// A processor or awaiter that stops on its own cancels ctx with the
	// reason: sending and waiting end at once.
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
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
		c.kafka = nil
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

	cl, err := producers.NewClient(seeds, c.kafka...)
	if err != nil {
		return err
	}
	defer cl.Close()
	specs := append(topics.ForContext(c.context, int32(c.partitions), 1),
		topics.Spec{Name: consumers.DeadLetterTopic(topics.Commands(c.context), c.context+"-aggregates"), Partitions: 1, ReplicationFactor: 1})
	// Ensure returns once the topics it created are in the metadata: the
	// processor checks its dead-letter topic as it starts.
	if _, err := topics.Ensure(ctx, kadm.NewClient(cl), specs...); err != nil {
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
	ocl, err := producers.NewClient(seeds, append(slices.Clone(c.kafka), kgo.ProducerLinger(0))...)
	if err != nil {
		return err
	}
	defer ocl.Close()
	proc, err := aggregates.NewProcessor(repo, aggregates.WithOutcomes(ocl, topics.Outcomes(c.context)), aggregates.WithProcessorLogger(logger))
	if err != nil {
		return err
	}
	group, err := consumers.New(seeds, c.context+"-aggregates", []string{topics.Commands(c.context)}, proc, consumers.WithLogger(logger), consumers.WithClientOpts(c.kafka...))
	if err != nil {
		return err
	}
	awaiter, err := producers.NewAwaiter(seeds, topics.Outcomes(c.context), c.kafka...)
	if err != nil {
		return err
	}
	sender, err := producers.NewSender(cl, reg, topics.Commands(c.context), "/demo")
	if err != nil {
		return err
	}

	runProcessor := group.Run
	if c.runProcessor != nil {
		runProcessor = c.runProcessor
	}
	var wg sync.WaitGroup
	runErr := make(chan error, 2)
	runner := func(what string, run func(context.Context) error) {
		err := run(ctx)
		if ctx.Err() == nil {
			if err == nil {
				err = errors.New("returned before the demo ended")
			}
			cancel(fmt.Errorf("%s %w: %w", what, errStopped, err))
		}
		runErr <- err
	}
	wg.Go(func() { runner("processor", runProcessor) })
	wg.Go(func() { runner("outcome awaiter", awaiter.Run) })
	defer wg.Wait()
	defer cancel(nil)
	// stoppedErr returns why ctx ended: a runner's reason, or the
	// caller's cancellation.
	stoppedErr := func() error {
		if cause := context.Cause(ctx); errors.Is(cause, errStopped) {
			return cause
		}
		return ctx.Err()
	}

	plan, balances := planDemo(c)
	accounts := make([]string, c.accounts)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("acct-%s%05d", c.accountPrefix, i)
	}
	// Every command's outcome is registered with the awaiter before the
	// command is sent: none can arrive unseen, however many commands are
	// in flight.
	results := make([]demoResult, len(plan))
	var done atomic.Int64
	allDone := make(chan struct{})
	total := int64(len(plan))
	var sendErr atomic.Value
	start := time.Now()
	stopBar := func() {}
	if !c.quiet {
		stopBar = progress(stderr, "commands", total, &done, start)
	}
	defer func() { stopBar() }()
	for i, p := range plan {
		if ctx.Err() != nil {
			return stoppedErr()
		}
		cmd, err := sender.Command(accounts[p.account], p.payload("owner-"+accounts[p.account]))
		if err != nil {
			return err
		}
		sentAt := time.Since(start)
		awaiter.Notify(cmd.ID, func(o orchestrix.Outcome) {
			results[i] = demoResult{latency: time.Since(start) - sentAt, events: uint32(o.ToVersion - o.FromVersion + 1), status: statusCode(o.Status)}
			if done.Add(1) == total {
				close(allDone)
			}
		})
		sender.SendAsync(ctx, cmd, func(err error) {
			if err != nil {
				sendErr.CompareAndSwap(nil, err)
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		if ctx.Err() != nil {
			return stoppedErr()
		}
		return fmt.Errorf("send commands: %w", err)
	}
	if err, ok := sendErr.Load().(error); ok {
		if ctx.Err() != nil {
			return stoppedErr()
		}
		return fmt.Errorf("send commands: %w", err)
	}

	// Wait for every outcome: --timeout after the last send was
	// acknowledged, or until the processor or the awaiter stops.
	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	select {
	case <-allDone:
	case <-ctx.Done():
		stopBar()
		stopBar = func() {}
		return fmt.Errorf("%w (%d of %d outcomes arrived)", stoppedErr(), done.Load(), total)
	case <-timer.C:
		stopBar()
		stopBar = func() {}
		return fmt.Errorf("%d of %d outcomes missing %s after the last command was sent: %w", total-done.Load(), total, c.timeout, producers.ErrNoOutcome)
	}
	stopBar()
	stopBar = func() {}
	elapsed := time.Since(start)

	// Check outcomes and balances against the model.
	var accepted, rejected, duplicates, events int
	var problems []string
	latencies := make([]time.Duration, len(results))
	for i, r := range results {
		latencies[i] = r.latency
		switch r.status {
		case resultAccepted:
			accepted++
			events += int(r.events)
		case resultRejected:
			rejected++
		case resultDuplicate:
			duplicates++
		}
		if (r.status == resultRejected) == plan[i].accept {
			p := plan[i]
			problems = append(problems, fmt.Sprintf("command %d (%s on %s): status %d, model expected accept=%v", i, p.kindName(), accounts[p.account], r.status, p.accept))
		}
	}
	for i, want := range balances {
		root, err := repo.Load(ctx, accounts[i])
		if err != nil {
			return err
		}
		if root.State.Balance != want || !root.State.Opened {
			problems = append(problems, fmt.Sprintf("account %s: balance %d, expected %d", accounts[i], root.State.Balance, want))
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
	if c.databaseURL != "" && c.brokers != "" {
		fmt.Fprintf(stdout, "the events are in the store; publish them to %s with:\n  orchestrix relay %s\n", topics.Events(c.context), relayArgs(c))
	}
	cancel(nil)
	for range 2 {
		if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return nil
}

// relayArgs returns the relay flags that publish what the demo stored:
// the same database, brokers, schema and context (the environment's
// variables where the demo took its values from them).
func relayArgs(c demoConfig) string {
	db := "'" + redact.URL(c.databaseURL) + "'"
	if c.databaseURL == os.Getenv("DATABASE_URL") {
		db = `"$DATABASE_URL"`
	}
	brokers := "'" + c.brokers + "'"
	if c.brokers == os.Getenv("KAFKA_BROKERS") {
		brokers = `"$KAFKA_BROKERS"`
	}
	args := fmt.Sprintf("--database-url %s --brokers %s --context %s", db, brokers, c.context)
	if c.schema != postgres.DefaultSchema {
		args += " --schema " + c.schema
	}
	return args
}
