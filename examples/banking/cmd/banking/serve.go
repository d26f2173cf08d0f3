package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/service"
	"github.com/orchestrix/orchestrix/stores/postgres"
)

// runServe runs the banking service until SIGTERM: the account processor,
// the outbox relay (unless --relay=false: a separate `orchestrix relay`
// publishes), the transfer saga (forwarder, inbox, timers) and the
// statement projection, under service.Run.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("banking serve", flag.ContinueOnError)
	var cf connFlags
	addConnFlags(fs, &cf, flagenv.Or("ORCHESTRIX_CONTEXT", "banking"), "bounded context: topics <context>.*, groups <context>-* (env ORCHESTRIX_CONTEXT)", true)
	schema := fs.String("schema", flagenv.Or("ORCHESTRIX_SCHEMA", postgres.DefaultSchema), "PostgreSQL schema of the store, sagas and statements (env ORCHESTRIX_SCHEMA)")
	listen := fs.String("listen", flagenv.Or("ORCHESTRIX_LISTEN", ":8080"), "address of /livez and /readyz (env ORCHESTRIX_LISTEN; empty: none)")
	initFirst := fs.Bool("init", false, "migrate the schema and create the topics first (in production, Jobs: `orchestrix migrate`, `orchestrix topics create`)")
	partitions := fs.Int("partitions", 4, "with --init: partitions of the topics")
	replication := fs.Int("replication", 1, "with --init: replication factor of the topics")
	embeddedPort := fs.Int("embedded-port", 0, "without --brokers: the embedded broker's port (0: any free port)")
	shutdown := fs.Duration("shutdown-timeout", 25*time.Second, "bound on the drain after SIGTERM (keep it below the orchestrator's grace period)")
	session := fs.Duration("session-timeout", 0, "the consumer groups' session timeout: how soon a member that died without leaving loses its partitions (0: franz-go's 45s; the broker bounds it)")
	level := fs.String("log-level", flagenv.Or("ORCHESTRIX_LOG_LEVEL", "warn"), "debug, info, warn or error (env ORCHESTRIX_LOG_LEVEL)")
	relay := fs.Bool("relay", true, "run the outbox relay in this process; --relay=false where a separate `orchestrix relay` publishes the schema (needs --database-url)")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	var errs exampleapp.Problems
	errs.Add(checkContext(cf.context))
	errs.Int("--partitions", *partitions, 1, 1000)
	errs.Int("--replication", *replication, 1, 32)
	errs.Int("--embedded-port", *embeddedPort, 0, 65535)
	if *session != 0 && (*session < time.Second || *session > 10*time.Minute) {
		errs.Addf("--session-timeout %s: want 1s to 10m", *session)
	}
	if *shutdown <= 0 {
		errs.Addf("--shutdown-timeout %s: want a positive duration", *shutdown)
	}
	lvl, err := exampleapp.ParseLevel(*level)
	errs.Add(err)
	if *schema == "" {
		errs.Addf("--schema: want a name")
	}
	if !*relay && cf.databaseURL == "" {
		errs.Addf("--relay=false needs --database-url: a separate relay publishes from PostgreSQL, and nothing else can read this process's memory store")
	}
	if len(errs) > 0 {
		return usagef("%s", strings.Join(errs, "; "))
	}
	log := exampleapp.Logger(stderr, lvl)

	c := appConfig{seeds: cf.seeds(), context: cf.context, log: log, sessionTimeout: *session, noRelay: !*relay}
	create := *initFirst
	kb, err := exampleapp.OpenBroker(c.seeds, *embeddedPort)
	if err != nil {
		return err
	}
	defer kb.Close()
	if kb.Embedded {
		c.seeds, create = kb.Seeds, true
		fmt.Fprintf(stdout, "embedded Kafka (kfake) at %s; nothing is kept after exit. Drive it with:\n  go run ./examples/banking/cmd/banking drive --brokers %s --context %s\n",
			strings.Join(c.seeds, ","), strings.Join(c.seeds, ","), c.context)
	} else if c.kafka, err = kafkaOpts(); err != nil {
		return err
	}
	if cf.databaseURL != "" {
		pool, err := pgxpool.New(ctx, cf.databaseURL)
		if err != nil {
			return fmt.Errorf("database: %w", err)
		}
		defer pool.Close()
		if *initFirst {
			if err := migrate(ctx, pool, *schema); err != nil {
				return err
			}
		}
		c.pool, c.schema = pool, *schema
	} else {
		log.Warn("no --database-url: accounts, sagas and statements live in memory and are lost at exit")
	}
	if create {
		if err := createTopics(ctx, c, int32(*partitions), int16(*replication)); err != nil {
			return err
		}
	}
	a, err := newApp(ctx, c)
	if err != nil {
		return err
	}
	defer a.close()
	store := "PostgreSQL schema " + c.schema
	if c.pool == nil {
		store = "memory"
	}
	relayWorker := "relay, "
	if c.noRelay {
		relayWorker = ""
		fmt.Fprintf(stdout, "no relay in this process (--relay=false): `orchestrix relay --context %s --schema %s` publishes the events and the saga's commands\n", c.context, c.schema)
	}
	fmt.Fprintf(stdout, "serving context %s on %s and %s: %d workers (processor, %ssaga forwarder, inbox and timers, statements); SIGTERM stops it\n",
		c.context, strings.Join(c.seeds, ","), store, len(a.workers), relayWorker)
	return service.Run(ctx, service.Options{
		ShutdownTimeout: *shutdown,
		Addr:            *listen,
		Ready:           a.readiness(),
		OnListen:        func(addr string) { fmt.Fprintf(stdout, "health on http://%s/livez and /readyz\n", addr) },
	}, a.workers...)
}
