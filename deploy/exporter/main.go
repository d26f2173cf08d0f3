// Command orchestrix-exporter serves, for Prometheus, the Orchestrix
// series that can be measured from outside the services: the relay's
// backlog (events committed after its last checkpoint in Kafka, and the
// age of the first), consumer groups' committed lag and dead-letter
// depth as the brokers see them, and saga instances by status with their
// pending and overdue timers. These grow while the process that should
// work them is dead, which no series of that process can show; they are
// also what a deployment of services that do not wire metrics/prom
// themselves (the examples, `orchestrix relay`) can watch.
//
//	orchestrix-exporter --brokers kafka:9092 --database-url "$DATABASE_URL" \
//	    --context banking --group banking-aggregates=banking.commands --saga-type banking.transfer
//
// Every scrape queries (each collector bounded by metrics/prom's
// ScrapeTimeout); nothing runs between scrapes. It connects as a role
// that may read the events and saga tables (deploy/postgres: the app
// role). /livez and /readyz (PostgreSQL and Kafka reachable) are served
// beside /metrics on --listen.
//
// It is a module of its own, like metrics/prom, so that the core does not
// import client_golang.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/kafkaconn"
	"github.com/orchestrix/orchestrix/metrics/prom"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/service"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil))
}

// list collects a repeatable flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// errUsage marks bad flags (exit code 2).
var errUsage = errors.New("usage")

// config is the parsed command line.
type config struct {
	seeds      []string
	kafka      kafkaconn.Config
	dbURL      string
	schema     string
	relayTopic []string
	groups     map[string][]string
	sagaTypes  []string
	listen     string
}

func parse(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("orchestrix-exporter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	env := flagenv.Or
	brokers := fs.String("brokers", env("KAFKA_BROKERS", ""), "comma-separated seed brokers (env KAFKA_BROKERS; TLS and SASL from KAFKA_TLS*, KAFKA_SASL_*)")
	dbURL := fs.String("database-url", env("DATABASE_URL", ""), "PostgreSQL URL of a role that may read the events and saga tables (env DATABASE_URL)")
	schema := fs.String("schema", env("ORCHESTRIX_SCHEMA", postgres.DefaultSchema), "the store's schema (env ORCHESTRIX_SCHEMA)")
	bc := fs.String("context", env("ORCHESTRIX_CONTEXT", ""), "bounded context: the relay backlog of <context>.events (env ORCHESTRIX_CONTEXT)")
	listen := fs.String("listen", env("ORCHESTRIX_LISTEN", ":9464"), "address of /metrics, /livez and /readyz (env ORCHESTRIX_LISTEN)")
	var relayTopics, groups, sagaTypes list
	fs.Var(&relayTopics, "relay-topic", "an events topic whose relay backlog to export (repeatable; besides <context>.events)")
	fs.Var(&groups, "group", "group=topic[,topic...]: a consumer group's committed lag and dead-letter depth on those topics (repeatable)")
	fs.Var(&sagaTypes, "saga-type", "a saga type whose instances and timers to count (repeatable)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return config{}, err
		}
		return config{}, fmt.Errorf("%w: %w", errUsage, err)
	}
	c := config{kafka: kafkaconn.FromEnv(os.Getenv), dbURL: *dbURL, schema: *schema, listen: *listen, groups: map[string][]string{}, sagaTypes: sagaTypes}
	var problems []string
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Sprintf("unexpected arguments %q", fs.Args()))
	}
	c.seeds = flagenv.List(*brokers)
	if len(c.seeds) == 0 {
		problems = append(problems, "--brokers or KAFKA_BROKERS is required")
	}
	if *bc != "" {
		c.relayTopic = append(c.relayTopic, topics.Events(*bc))
	}
	c.relayTopic = append(c.relayTopic, relayTopics...)
	if (len(c.relayTopic) > 0 || len(sagaTypes) > 0) && c.dbURL == "" {
		problems = append(problems, "--database-url or DATABASE_URL is required for the relay backlog and sagas")
	}
	for _, g := range groups {
		name, ts, ok := strings.Cut(g, "=")
		list := flagenv.List(ts)
		if !ok || strings.TrimSpace(name) == "" || len(list) == 0 {
			problems = append(problems, fmt.Sprintf("--group %q: want group=topic[,topic...]", g))
			continue
		}
		c.groups[strings.TrimSpace(name)] = append(c.groups[strings.TrimSpace(name)], list...)
	}
	if len(c.relayTopic) == 0 && len(c.groups) == 0 && len(sagaTypes) == 0 {
		problems = append(problems, "nothing to export: give --context, --relay-topic, --group or --saga-type")
	}
	if _, err := c.kafka.Options(); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return config{}, fmt.Errorf("%w: %s", errUsage, strings.Join(problems, "; "))
	}
	return c, nil
}

// run is the command; onListen, when set, gets the address served.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, onListen func(string)) int {
	c, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "orchestrix-exporter:", err)
		return 2
	}
	if err := serve(ctx, c, stdout, onListen); err != nil {
		fmt.Fprintln(stderr, "orchestrix-exporter:", err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, c config, stdout io.Writer, onListen func(string)) error {
	kopts, _ := c.kafka.Options() // checked in parse
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cl, err := kgo.NewClient(append(kopts, kgo.SeedBrokers(c.seeds...))...)
	if err != nil {
		return err
	}
	defer cl.Close()
	ready := []service.Check{{Name: "kafka", Check: cl.Ping}}
	adm := kadm.NewClient(cl)
	for g, ts := range c.groups {
		reg.MustRegister(prom.GroupLag(adm, g, ts...))
	}
	if c.dbURL != "" {
		pool, err := pgxpool.New(ctx, c.dbURL)
		if err != nil {
			return fmt.Errorf("database url: %w", err)
		}
		defer pool.Close()
		ready = append(ready, service.Check{Name: "postgres", Check: pool.Ping})
		src := pgSource{pool: pool, schema: c.schema}
		for _, t := range c.relayTopic {
			reg.MustRegister(prom.RelayBacklog(src, t, c.seeds, kopts...))
		}
		if len(c.sagaTypes) > 0 {
			ss, err := sagas.NewPostgresStore(pool, c.schema)
			if err != nil {
				return err
			}
			for _, typ := range c.sagaTypes {
				reg.MustRegister(prom.SagaInstances(ss, typ))
			}
		}
	}
	fmt.Fprintf(stdout, "exporting relay backlog %v, groups %v, sagas %v on %s/metrics\n", c.relayTopic, c.groups, c.sagaTypes, c.listen)
	idle := service.WorkerFunc(func(ctx context.Context) error { <-ctx.Done(); return nil })
	return service.Run(ctx, service.Options{Addr: c.listen, Ready: ready, ShutdownTimeout: 5 * time.Second, OnListen: onListen,
		Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})},
		service.Named("exporter", idle))
}

// pgSource is what prom.RelayBacklog reads: the pool and the schema.
type pgSource struct {
	pool   *pgxpool.Pool
	schema string
}

func (s pgSource) Pool() *pgxpool.Pool { return s.pool }
func (s pgSource) Schema() string      { return s.schema }
