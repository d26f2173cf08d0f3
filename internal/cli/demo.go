package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/orchestrix/orchestrix/examples/banking/quickstart"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/internal/redact"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/topics"
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
	fs.StringVar(&c.brokers, "brokers", flagenv.Or("KAFKA_BROKERS", ""), "Kafka seed brokers (env KAFKA_BROKERS); empty: an embedded in-process broker (kfake)")
	sec := kafkaFlags(fs)
	c.databaseURL = flagenv.Or("DATABASE_URL", "")
	fs.Var(redact.FlagValue(&c.databaseURL), "database-url", "PostgreSQL `URL` (env DATABASE_URL); empty: the in-memory store")
	fs.StringVar(&c.schema, "schema", flagenv.Or("ORCHESTRIX_SCHEMA", postgres.DefaultSchema), "schema for the PostgreSQL store, migrated if needed (env ORCHESTRIX_SCHEMA)")
	fs.StringVar(&c.context, "context", flagenv.Or("ORCHESTRIX_CONTEXT", demoContext), "bounded context: topics <context>.commands|events|outcomes, group <context>-aggregates (env ORCHESTRIX_CONTEXT)")
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
		if err := sec.check(ctx, flagenv.List(c.brokers)); err != nil {
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

func demo(ctx context.Context, c demoConfig, stdout, stderr io.Writer) error {
	q := quickstart.Config{
		Commands: c.commands, Accounts: c.accounts, Partitions: c.partitions, Context: c.context,
		AccountPrefix: c.accountPrefix, Brokers: flagenv.List(c.brokers), Kafka: c.kafka, Timeout: c.timeout,
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if !c.quiet {
		q.Progress = func(total int64, done *atomic.Int64, start time.Time) func() {
			return progress(stderr, "commands", total, done, start)
		}
	}
	if c.databaseURL != "" {
		pool, err := openPool(ctx, c.databaseURL)
		if err != nil {
			return err
		}
		defer pool.Close()
		if _, err := postgres.Migrate(ctx, pool, c.schema); err != nil {
			return err
		}
		if q.Store, err = postgres.New(ctx, pool, postgres.WithSchema(c.schema)); err != nil {
			return err
		}
		q.StoreName = "PostgreSQL schema " + c.schema
	}
	if err := quickstart.Run(ctx, q, stdout, stderr); err != nil {
		return err
	}
	if c.databaseURL != "" && c.brokers != "" {
		fmt.Fprintf(stdout, "the events are in the store; publish them to %s with:\n  orchestrix relay %s\n", topics.Events(c.context), relayArgs(c))
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
