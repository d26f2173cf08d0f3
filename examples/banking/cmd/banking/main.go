// Command banking is the banking example: accounts (the banking
// aggregate), a money-transfer saga over them (debit → credit → refund
// when the credit fails) and an account-statement projection, run as one
// service.
//
// With no subcommand it runs a self-check and ends with a verdict table of
// its invariants, exiting 1 when one does not hold (2 on bad flags):
//
//   - the sum of the balances is constant, and each balance follows the
//     completed transfers;
//   - every transfer ends: completed, declined, or refunded when its
//     credit failed;
//   - every statement equals its account's events;
//   - a blue/green rebuild of the statements while transfers run changes
//     nothing a reader sees.
//
// On the embedded default (kfake, memory stores, no services):
//
//	go run ./examples/banking/cmd/banking
//	go run ./examples/banking/cmd/banking --scenario credit-fails --watch
//
// or against real Kafka and PostgreSQL with --brokers (KAFKA_BROKERS) and
// --database-url (DATABASE_URL). As a long-running service, and a driver
// that sends it work:
//
//	go run ./examples/banking/cmd/banking serve --brokers ... --database-url ... --listen :8080 [--init]
//	go run ./examples/banking/cmd/banking drive --brokers ... --rate 50 --count 1000
//
// See examples/banking/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/internal/redact"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() { exampleapp.Main(realMain) }

// errUsage marks bad flags: exit 2.
var errUsage = errors.New("usage")

// realMain runs the subcommand in args and returns the exit code: 0, 1
// for a failure or a violated invariant, 2 for bad flags.
func realMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd, run := "banking", runCheck
	if len(args) > 0 {
		switch args[0] {
		case "serve":
			cmd, run, args = "banking serve", runServe, args[1:]
		case "drive":
			cmd, run, args = "banking drive", runDrive, args[1:]
		}
	}
	err := run(ctx, args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		if msg := strings.TrimPrefix(err.Error(), errUsage.Error()+": "); msg != errUsage.Error() {
			fmt.Fprintln(stderr, cmd+":", msg)
		}
		return 2
	case errors.Is(err, errViolation):
		fmt.Fprintln(stderr, cmd+":", err)
		return 1
	}
	fmt.Fprintln(stderr, cmd+":", redact.Error(err))
	return 1
}

// usagef returns a usage error.
func usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// connFlags are the flags every subcommand has.
type connFlags struct {
	brokers, databaseURL, context string
}

func addConnFlags(fs *flag.FlagSet, c *connFlags, contextDefault, contextHelp string, database bool) {
	fs.StringVar(&c.brokers, "brokers", os.Getenv("KAFKA_BROKERS"), "Kafka seed brokers, comma-separated (env KAFKA_BROKERS; TLS and SASL from the KAFKA_* variables of kafkaconn.FromEnv)")
	if database {
		c.databaseURL = os.Getenv("DATABASE_URL")
		fs.Var(redact.FlagValue(&c.databaseURL), "database-url", "PostgreSQL `URL` (env DATABASE_URL)")
	}
	fs.StringVar(&c.context, "context", contextDefault, contextHelp)
}

func (c connFlags) seeds() []string { return flagenv.List(c.brokers) }

// kafkaOpts returns the TLS and SASL options of the environment.
func kafkaOpts() ([]kgo.Opt, error) {
	opts, err := exampleapp.KafkaOptions()
	if err != nil {
		return nil, usagef("kafka connection settings: %v", err)
	}
	return opts, nil
}

// parse parses args into fs, printing its errors to stderr.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage // the flag package printed it
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// checkContext validates a context name: it is part of topic, group and
// saga type names.
func checkContext(name string) error {
	if name == "" || len(name) > 60 {
		return fmt.Errorf("--context %q: want 1 to 60 characters", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("--context %q: want lower-case letters, digits, '-' and '_'", name)
		}
	}
	return nil
}

// runCheck is the self-check (no subcommand).
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("banking", flag.ContinueOnError)
	var cf connFlags
	var c checkConfig
	addConnFlags(fs, &cf, "", "topics <context>.* and groups <context>-* (default banking-<run>, a fresh one per run)", true)
	fs.StringVar(&c.scenario, "scenario", "all", "what to inject: "+strings.Join(scenarioNames, ", "))
	seed := fs.Uint64("seed", 0, "seed of the planned transfers (0: from the clock; the run prints it)")
	fs.IntVar(&c.accounts, "accounts", 12, "accounts opened, each with 1000")
	fs.IntVar(&c.transfers, "transfers", 300, "transfers started")
	fs.IntVar(&c.rate, "rate", 100, "transfers started per second")
	fs.DurationVar(&c.timeout, "timeout", time.Minute, "give up when the transfers have not all ended this long after the last start")
	fs.BoolVar(&c.watch, "watch", false, "print a live timeline: commands, events, saga transitions (retries, refunds), failed and dead-lettered records, the rebuild and cut-over")
	fs.BoolVar(&c.keep, "keep", false, "keep the run's PostgreSQL schema and Kafka topics (default: dropped at the end, unless --context was given)")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	var errs exampleapp.Problems
	if _, ok := scenarios[c.scenario]; !ok {
		errs.Addf("--scenario %q: want one of %s", c.scenario, strings.Join(scenarioNames, ", "))
	}
	errs.Int("--accounts", c.accounts, 2, 1000)
	errs.Int("--transfers", c.transfers, 4, 100_000)
	errs.Int("--rate", c.rate, 1, 10_000)
	if c.timeout <= 0 {
		errs.Addf("--timeout %s: want a positive duration", c.timeout)
	}
	if cf.context == "" {
		cf.context = "banking-" + exampleapp.RunID()
	} else {
		c.keep = true // a context the user named may hold more than this run: never dropped
	}
	errs.Add(checkContext(cf.context))
	if len(errs) > 0 {
		return usagef("%s", strings.Join(errs, "; "))
	}
	var err error
	if len(cf.seeds()) > 0 {
		if c.kafka, err = kafkaOpts(); err != nil {
			return err
		}
	}
	c.brokers, c.databaseURL, c.context = cf.seeds(), cf.databaseURL, cf.context
	c.schema = strings.ReplaceAll(cf.context, "-", "_")
	c.seed = exampleapp.Seed(*seed)
	c.stdout, c.stderr = stdout, stderr
	return run(ctx, c)
}
