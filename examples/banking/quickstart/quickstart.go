// Package quickstart is the smallest complete Orchestrix service, and the
// program behind `orchestrix demo`: the banking account aggregate's
// command processor, a command sender and an outcome awaiter on one
// broker and one event store.
//
// What it shows, in the order [Run] wires it:
//
//   - the topics of a bounded context (<context>.commands, .events,
//     .outcomes) and the processor's dead-letter topic, created with
//     [topics.Ensure];
//   - an aggregate ([banking.NewAggregate]) in a repository over an event
//     store, with snapshots every 100 events;
//   - its command processor, a consumer group on the command topic that
//     answers every command with an outcome (accepted, rejected,
//     duplicate) on the outcome topic;
//   - a [producers.Sender] that sends commands keyed by account, and a
//     [producers.Awaiter] that hands each command's outcome to a callback;
//   - a check of every outcome and every balance against a model of the
//     accounts, so a lost, reordered or repeated command shows.
//
// What it needs: nothing on the embedded default (an in-process Kafka,
// kfake, and the in-memory store); a Kafka broker ([Config.Brokers]) and
// an event store ([Config.Store], e.g. PostgreSQL) otherwise. It stores
// events but does not publish them: publishing is the outbox relay's job
// (`orchestrix relay`).
package quickstart

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Config is what [Run] sends and where.
type Config struct {
	// Commands is how many commands to send (at least Accounts: the first
	// command of each account opens it).
	Commands int
	// Accounts is how many accounts the commands are spread over.
	Accounts int
	// Partitions is the partition count of the topics Run creates.
	Partitions int
	// Context is the bounded context: topics <Context>.commands, .events
	// and .outcomes, consumer group <Context>-aggregates.
	Context string
	// AccountPrefix makes the run's account IDs its own, so a run on a
	// store that holds an earlier run's accounts starts from empty ones.
	AccountPrefix string
	// Brokers are the Kafka seed brokers; none: an embedded in-process
	// broker (kfake), closed when Run returns.
	Brokers []string
	// Kafka are client options for Brokers (TLS, SASL); not used with the
	// embedded broker.
	Kafka []kgo.Opt
	// Store is the event store; nil: a new in-memory store.
	Store stores.EventStore
	// StoreName names Store in the first line of the report.
	StoreName string
	// Timeout is how long Run waits for the outcomes after the last
	// command was sent.
	Timeout time.Duration
	// Progress, when set, is called once the commands start going out;
	// it may report done (outcomes arrived) of total until the stop it
	// returns is called.
	Progress func(total int64, done *atomic.Int64, start time.Time) (stop func())
	// Logger receives the runtimes' warnings; nil: discarded.
	Logger *slog.Logger

	// runProcessor replaces the processor's Run (tests).
	runProcessor func(context.Context) error
}

// errStopped marks a run ended because its processor or awaiter stopped
// on its own.
var errStopped = errors.New("stopped")

// stopped returns why ctx ended: a runner's reason, or the caller's
// cancellation.
func stopped(ctx context.Context) error {
	if cause := context.Cause(ctx); errors.Is(cause, errStopped) {
		return cause
	}
	return ctx.Err()
}

// ErrInconsistent is returned when an outcome or a balance differs from
// what the model of the accounts predicts.
var ErrInconsistent = errors.New("inconsistent with the commands sent")

// Run creates the context's topics, runs the account processor, sends
// c.Commands commands over c.Accounts accounts, waits for every outcome
// and checks outcomes and balances against the model. It writes a report
// to stdout and up to ten inconsistencies to stderr. It returns when the
// check is done, ctx ends, or the processor or the outcome awaiter stops
// on its own (with its reason).
func Run(parent context.Context, c Config, stdout, stderr io.Writer) error {
	if c.Accounts < 1 || c.Commands < c.Accounts {
		return fmt.Errorf("quickstart: need commands ≥ accounts ≥ 1 (commands %d, accounts %d)", c.Commands, c.Accounts)
	}
	// A processor or awaiter that stops on its own cancels ctx with the
	// reason: sending and waiting end at once.
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	kb, err := exampleapp.OpenBroker(c.Brokers, 0)
	if err != nil {
		return err
	}
	defer kb.Close()
	c.Brokers, c.Kafka = kb.Seeds, kb.ClientOpts(c.Kafka)
	if c.Store == nil {
		c.Store, c.StoreName = memory.New(), "in-memory store"
	}
	fmt.Fprintf(stdout, "orchestrix demo: %d commands over %d accounts, %d partitions, %s, %s\n", c.Commands, c.Accounts, c.Partitions, kb.Where, c.StoreName)

	p, err := wire(ctx, c)
	if err != nil {
		return err
	}
	defer p.close()
	runProcessor := p.group.Run
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
	wg.Go(func() { runner("outcome awaiter", p.awaiter.Run) })
	defer wg.Wait()
	defer cancel(nil)

	if err := p.sendAndCheck(ctx, c, stdout, stderr); err != nil {
		return err
	}
	cancel(nil)
	for range 2 {
		if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return nil
}

// pipeline is the wired service: the processor's group, the outcome
// awaiter, the command sender and the repository the check reads.
type pipeline struct {
	cl, ocl *kgo.Client
	repo    *aggregates.Repository[banking.Account]
	group   *consumers.Group
	awaiter *producers.Awaiter
	sender  *producers.Sender
	// outcomeTopic is where the processor answers.
	outcomeTopic string
}

func (p *pipeline) close() {
	p.ocl.Close()
	p.cl.Close()
}

// wire creates the topics and builds the processor, the awaiter and the
// sender.
func wire(ctx context.Context, c Config) (_ *pipeline, err error) {
	p := &pipeline{outcomeTopic: topics.Outcomes(c.Context)}
	if p.cl, err = producers.NewClient(c.Brokers, c.Kafka...); err != nil {
		return nil, err
	}
	// The processor's outcome producer must not linger: every poll waits
	// for its outcomes' acknowledgement.
	if p.ocl, err = producers.NewClient(c.Brokers, append(slices.Clone(c.Kafka), kgo.ProducerLinger(0))...); err != nil {
		p.cl.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	specs := append(topics.ForContext(c.Context, int32(c.Partitions), 1),
		topics.Spec{Name: consumers.DeadLetterTopic(topics.Commands(c.Context), c.Context+"-aggregates"), Partitions: 1, ReplicationFactor: 1})
	// Ensure returns once the topics it created are in the metadata: the
	// processor checks its dead-letter topic as it starts.
	if _, err := topics.Ensure(ctx, kadm.NewClient(p.cl), specs...); err != nil {
		return nil, err
	}
	reg := codec.NewRegistry()
	if err := banking.Register(reg); err != nil {
		return nil, err
	}
	agg, err := banking.NewAggregate(aggregates.SnapshotEvery(100))
	if err != nil {
		return nil, err
	}
	if p.repo, err = aggregates.NewRepository(agg, c.Store, reg, "/"+c.Context); err != nil {
		return nil, err
	}
	proc, err := aggregates.NewProcessor(p.repo, aggregates.WithOutcomes(p.ocl, topics.Outcomes(c.Context)), aggregates.WithProcessorLogger(c.Logger))
	if err != nil {
		return nil, err
	}
	if p.group, err = consumers.New(c.Brokers, c.Context+"-aggregates", []string{topics.Commands(c.Context)}, proc,
		consumers.WithLogger(c.Logger), consumers.WithClientOpts(c.Kafka...)); err != nil {
		return nil, err
	}
	if p.awaiter, err = producers.NewAwaiter(c.Brokers, topics.Outcomes(c.Context), c.Kafka...); err != nil {
		return nil, err
	}
	if p.sender, err = producers.NewSender(p.cl, reg, topics.Commands(c.Context), "/demo"); err != nil {
		return nil, err
	}
	return p, nil
}
