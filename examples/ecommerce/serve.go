package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/internal/redact"
	"github.com/orchestrix/orchestrix/service"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/twmb/franz-go/pkg/kgo"
)

// serveMain runs every worker of the example — the three command
// processors, the relay (unless --relay=false: a separate `orchestrix
// relay` publishes), the saga's forwarder, inbox and timers, the
// failed-order marker — under service.Run until SIGTERM, with /livez and
// /readyz on --listen. Topics and the schema are created only with
// --init (in production: `orchestrix topics create`, `orchestrix
// migrate`). Without --brokers it starts an embedded broker and prints
// its address (for drive); without --database-url it keeps everything in
// memory (gone with the process).
func serveMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ecommerce serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", os.Getenv("KAFKA_BROKERS"), "Kafka seed brokers (env KAFKA_BROKERS); empty: an embedded broker whose address is printed")
	dbURL := fs.String("database-url", os.Getenv("DATABASE_URL"), "PostgreSQL URL (env DATABASE_URL); empty: memory stores, gone with the process")
	schema := fs.String("schema", flagenv.Or("ORCHESTRIX_SCHEMA", postgres.DefaultSchema), "PostgreSQL schema (env ORCHESTRIX_SCHEMA)")
	listen := fs.String("listen", flagenv.Or("ORCHESTRIX_LISTEN", ":8080"), "address of /livez and /readyz (env ORCHESTRIX_LISTEN)")
	name := fs.String("context", flagenv.Or("ORCHESTRIX_CONTEXT", "ecommerce"), "topic context: <context>.orders.commands, <context>.events, ... (env ORCHESTRIX_CONTEXT)")
	initFlag := fs.Bool("init", false, "migrate the schema and create the topics at start (in production: orchestrix migrate, orchestrix topics create)")
	partitions := fs.Int("partitions", 4, "partitions of the topics --init creates")
	replication := fs.Int("replication", 1, "replication factor of the topics --init and the relay create")
	step := fs.Duration("step-timeout", 5*time.Second, "how long a saga step waits for its outcome")
	shutdown := fs.Duration("shutdown-timeout", 30*time.Second, "bound on the graceful stop after SIGTERM")
	session := fs.Duration("session-timeout", 45*time.Second, "consumer groups' session timeout: how long a member killed without leaving holds its partitions")
	relay := fs.Bool("relay", true, "run the outbox relay in this process; --relay=false where a separate `orchestrix relay` publishes the schema (needs --database-url)")
	verbose := fs.Bool("v", false, "log at info level (default: warnings)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var errs exampleapp.Problems
	if fs.NArg() > 0 {
		errs.Addf("unexpected arguments %q", fs.Args())
	}
	errs.Int("--partitions", *partitions, 1, 1000)
	errs.Int("--replication", *replication, 1, 10)
	if *step < 100*time.Millisecond || *step > 10*time.Minute {
		errs.Addf("--step-timeout %s: want 100ms to 10m", *step)
	}
	if *session < time.Second || *session > 30*time.Minute {
		errs.Addf("--session-timeout %s: want 1s to 30m", *session)
	}
	if *shutdown <= 0 {
		errs.Addf("--shutdown-timeout: want a positive duration")
	}
	if !*relay && *dbURL == "" {
		errs.Addf("--relay=false needs --database-url: a separate relay publishes from PostgreSQL, and nothing else can read this process's memory store")
	}
	if strings.TrimSpace(*listen) == "" {
		errs.Addf("--listen: want an address such as :8080")
	}
	if strings.TrimSpace(*name) == "" || strings.ContainsAny(*name, " /") {
		errs.Addf("--context %q: want a topic-name prefix", *name)
	}
	var kopts []kgo.Opt
	seeds := flagenv.List(*brokers)
	if len(seeds) > 0 {
		var err error
		if kopts, err = exampleapp.KafkaOptions(); err != nil {
			errs.Add(err)
		}
	}
	if len(errs) > 0 {
		return errs.Report(stderr, "ecommerce serve")
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := exampleapp.Logger(stderr, level)
	if err := serve(ctx, serveConfig{seeds: seeds, kafka: kopts, databaseURL: *dbURL, schema: *schema, listen: *listen, context: *name,
		init: *initFlag, partitions: int32(*partitions), replication: int16(*replication), step: *step, shutdown: *shutdown, session: *session, noRelay: !*relay, log: log}, stdout); err != nil {
		fmt.Fprintln(stderr, "ecommerce serve:", redact.Text(err.Error()))
		return 1
	}
	return 0
}

type serveConfig struct {
	seeds       []string
	kafka       []kgo.Opt
	databaseURL string
	schema      string
	listen      string
	context     string
	init        bool
	partitions  int32
	replication int16
	step        time.Duration
	shutdown    time.Duration
	session     time.Duration
	noRelay     bool // a separate `orchestrix relay` publishes the schema
	log         *slog.Logger
}

func serve(ctx context.Context, c serveConfig, stdout io.Writer) error {
	kb, err := exampleapp.OpenBroker(c.seeds, 0)
	if err != nil {
		return err
	}
	defer kb.Close()
	if kb.Embedded {
		c.seeds, c.init = kb.Seeds, true
		fmt.Fprintf(stdout, "embedded Kafka at %s (drive --brokers %s)\n", c.seeds[0], c.seeds[0])
	}
	var pool *pgxpool.Pool
	var ready []service.Check
	if c.databaseURL != "" {
		var err error
		if pool, err = pgxpool.New(ctx, c.databaseURL); err != nil {
			return fmt.Errorf("database: %w", err)
		}
		defer pool.Close()
		if c.init {
			if _, err := postgres.Migrate(ctx, pool, c.schema); err != nil {
				return fmt.Errorf("migrate schema %s: %w", c.schema, err)
			}
		}
		ready = append(ready, service.Check{Name: "postgres", Check: pool.Ping})
	} else {
		fmt.Fprintln(stdout, "no --database-url: memory stores, nothing survives a restart")
	}
	t := NewTopics(c.context)
	if c.init {
		cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.seeds...)}, c.kafka...)...)
		if err != nil {
			return err
		}
		err = ensureTopics(ctx, cl, t, c.partitions, c.replication)
		cl.Close()
		if err != nil {
			return err
		}
	}
	a, err := newApp(ctx, appConfig{seeds: c.seeds, kafka: c.kafka, pool: pool, schema: c.schema, topics: t,
		timing: Timing{Step: c.step, Compensation: 2 * c.step, Backoff: c.step / 5}, partitions: c.partitions, replication: c.replication,
		log: c.log, fetchWait: 500 * time.Millisecond, sessionTimeout: c.session, noRelay: c.noRelay})
	if err != nil {
		return err
	}
	defer a.close()
	ready = append(ready, service.Check{Name: "kafka", Check: a.client.Ping})
	if c.noRelay {
		fmt.Fprintf(stdout, "no relay in this process (--relay=false): `orchestrix relay --context %s --schema %s` publishes the events and the saga's commands\n", t.Context, c.schema)
	}
	fmt.Fprintf(stdout, "serving context %s: orders on %s, saga %s, %d workers\n", t.Context, t.Orders, t.SagaType, len(a.workers))
	err = service.Run(ctx, service.Options{ShutdownTimeout: c.shutdown, Addr: c.listen, Ready: ready,
		OnListen: func(addr string) { fmt.Fprintf(stdout, "listening on %s (/livez, /readyz)\n", addr) }}, a.workers...)
	if err != nil {
		return err
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		fmt.Fprintln(stdout, "stopped cleanly")
	}
	return nil
}
