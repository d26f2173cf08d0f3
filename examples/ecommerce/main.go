// Command ecommerce is the order saga example: an Order aggregate with a
// nine-state machine, Payment and Inventory aggregates, and an order saga
// that starts on OrderPlaced, takes the payment, reserves the stock and
// confirms the order — or undoes what it did (refund, release, cancel)
// when a card is declined, the stock runs out or the payment service does
// not answer in time (a durable timeout). A refund that keeps failing
// leaves the saga in compensation_failed (and the order Failed) until an
// operator's `orchestrix sagas retry` finishes it.
//
// Three modes:
//
//	go run ./examples/ecommerce [--scenario S] [--watch]    # self-check, exits 1 on a violated invariant
//	go run ./examples/ecommerce serve --brokers B --database-url U --listen :8080 [--init]
//	go run ./examples/ecommerce drive --brokers B --rate 20 --count 100
//
// The self-check runs on an embedded broker (kfake) and the memory stores
// unless --brokers (KAFKA_BROKERS) and --database-url (DATABASE_URL) are
// given; it ends with a verdict table of its invariants: stock never
// negative, every captured payment matched by a confirmed order or
// refunded, every saga in an expected status. Scenarios: happy,
// payment-declined, out-of-stock, payment-timeout, refund-down. Bad
// flags exit 2. See README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/internal/redact"
)

func main() { exampleapp.Main(realMain) }

// realMain runs a mode and returns the exit code: 0 fine, 1 failed (an
// invariant violated, a service stopped with an error), 2 bad flags.
var realMain = exampleapp.Modes(checkMain, map[string]exampleapp.RunFunc{"serve": serveMain, "drive": driveMain})

// checkMain runs the self-check: the scenario, then the verdict table.
func checkMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ecommerce", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	brokers := fs.String("brokers", os.Getenv("KAFKA_BROKERS"), "Kafka seed brokers (env KAFKA_BROKERS); empty: an embedded in-process broker (kfake)")
	fs.StringVar(&c.databaseURL, "database-url", os.Getenv("DATABASE_URL"), "PostgreSQL URL (env DATABASE_URL); empty: the memory stores")
	fs.StringVar(&c.schema, "schema", "", "PostgreSQL schema (default: a fresh ecommerce_<run> per run, kept for `orchestrix sagas list --schema`)")
	fs.StringVar(&c.context, "context", "", "topic context (default ecommerce-<run>, a fresh one per run)")
	fs.StringVar(&c.scenario, "scenario", "happy", "failures to inject: "+strings.Join(scenarioNames, ", "))
	fs.IntVar(&c.orders, "orders", 20, "orders placed (plus one over the quantity limit, placed as Rejected)")
	seed := fs.Uint64("seed", 0, "seed of the random choices (0: from the clock; the run prints it)")
	fs.IntVar(&c.partitions, "partitions", 4, "partitions of each topic")
	fs.DurationVar(&c.timing.Step, "step-timeout", time.Second, "how long a saga step waits for its outcome (the payment-timeout scenario's durable timer)")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "give up waiting for the orders to settle after this long")
	fs.BoolVar(&c.watch, "watch", false, "print a live timeline of commands, outcomes, events, saga transitions, retries and dead letters")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var errs exampleapp.Problems
	if fs.NArg() > 0 {
		errs.Addf("unexpected arguments %q (modes: serve, drive; no mode runs the self-check)", fs.Args())
	}
	if _, ok := scenarios[c.scenario]; !ok {
		errs.Addf("--scenario %q: want one of %s", c.scenario, strings.Join(scenarioNames, ", "))
	}
	errs.Int("--orders", c.orders, 2, 10_000)
	errs.Int("--partitions", c.partitions, 1, 1000)
	if c.timing.Step < 100*time.Millisecond || c.timing.Step > time.Minute {
		errs.Addf("--step-timeout %s: want 100ms to 1m", c.timing.Step)
	}
	if c.timeout <= 0 {
		errs.Addf("--timeout: want a positive duration")
	}
	if len(errs) > 0 {
		return errs.Report(stderr, "ecommerce")
	}
	c.brokers = flagenv.List(*brokers)
	if len(c.brokers) > 0 {
		opts, err := exampleapp.KafkaOptions()
		if err != nil {
			return exampleapp.Problems{err.Error()}.Report(stderr, "ecommerce")
		}
		c.kafka = opts
	}
	c.timing.Compensation, c.timing.Backoff = 2*c.timing.Step, c.timing.Step/5
	c.seed = exampleapp.Seed(*seed)
	if c.context == "" {
		c.context = "ecommerce-" + exampleapp.RunID()
	}
	c.stdout, c.stderr = stdout, stderr
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(stderr, "ecommerce:", redact.Text(err.Error()))
		return 1
	}
	return 0
}
