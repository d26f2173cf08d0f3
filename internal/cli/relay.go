package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/kafkaconn"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/service"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/topics"
)

// routeFlag collects repeated --route type=topic flags.
type routeFlag [][2]string

func (r *routeFlag) String() string {
	parts := make([]string, len(*r))
	for i, p := range *r {
		parts[i] = p[0] + "=" + p[1]
	}
	return strings.Join(parts, ",")
}

func (r *routeFlag) Set(v string) error {
	typ, topic, ok := strings.Cut(v, "=")
	if !ok || strings.TrimSpace(typ) == "" || strings.TrimSpace(topic) == "" {
		return fmt.Errorf("route %q is not event-type=topic", v)
	}
	*r = append(*r, [2]string{strings.TrimSpace(typ), strings.TrimSpace(topic)})
	return nil
}

// relayGCPercent is the relay command's GOGC unless the environment sets
// one. While keeping up with 30-40k events/s the relay holds ~10 MiB
// live, so at Go's default of 100 it collects several times a second:
// 8-11% of its CPU went to the collector, against 2-3% at 400
// (BenchmarkAppendWithRelay, the relay process's runtime/metrics). The
// heap may then grow to five times the live heap: ~50 MiB keeping up,
// up to ~175 MiB draining a backlog with reads of 5,000.
const relayGCPercent = 400

// runRelay publishes the PostgreSQL store's events (and its outbox table)
// to Kafka until ctx ends (SIGTERM, SIGINT), then drains the transaction
// in flight and returns nil.
func runRelay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("relay", stderr)
	url := urlFlag(fs, "database-url", flagenv.Or("DATABASE_URL", ""), "PostgreSQL `URL` (env DATABASE_URL)")
	brokers := fs.String("brokers", flagenv.Or("KAFKA_BROKERS", ""), "comma-separated seed brokers (env KAFKA_BROKERS)")
	sec := kafkaFlags(fs)
	schema := fs.String("schema", flagenv.Or("ORCHESTRIX_SCHEMA", postgres.DefaultSchema), "schema holding the store's tables (env ORCHESTRIX_SCHEMA)")
	bc := fs.String("context", flagenv.Or("ORCHESTRIX_CONTEXT", ""), "bounded context: events go to <context>.events (env ORCHESTRIX_CONTEXT)")
	topic := fs.String("topic", flagenv.Or("ORCHESTRIX_EVENTS_TOPIC", ""), "events topic (env ORCHESTRIX_EVENTS_TOPIC; default <context>.events)")
	var routes routeFlag
	fs.Var(&routes, "route", "event-type=topic: publish events of that type to topic instead (repeatable)")
	txnID := fs.String("transactional-id", flagenv.Or("ORCHESTRIX_RELAY_TRANSACTIONAL_ID", ""), "Kafka transactional ID, the same for every instance of this relay (env ORCHESTRIX_RELAY_TRANSACTIONAL_ID; default orchestrix-relay.<topic>)")
	instance := fs.String("instance", flagenv.Or("ORCHESTRIX_RELAY_INSTANCE", defaultInstance()), "this instance's name, in logs and the "+outbox.InstanceHeader+" header (env ORCHESTRIX_RELAY_INSTANCE)")
	batch := fs.Int("batch-size", outbox.DefaultBatchSize, "events (and outbox messages) per read")
	linger := fs.Duration("linger", outbox.DefaultLinger, "wait after a small batch (under 64 events) before the next read: fewer, larger Kafka transactions at moderate rates, at most this much later")
	pollMin := fs.Duration("poll-min", outbox.DefaultPollMin, "least wait after a read that found work but not a full batch (the next read also waits for the transaction in flight to commit)")
	pollMax := fs.Duration("poll-max", outbox.DefaultPollMax, "longest wait between reads of an idle store")
	lease := fs.Duration("lease", outbox.DefaultLease, "how long a paused or disconnected leader keeps leadership before a standby takes over")
	statsEvery := fs.Duration("stats-interval", outbox.DefaultStatsInterval, "how often to log throughput and lag")
	drainOutbox := fs.Bool("outbox", true, "also publish the schema's outbox table (messages such as sagas' commands)")
	dlqTopic := fs.String("dlq-topic", flagenv.Or("ORCHESTRIX_RELAY_DLQ_TOPIC", ""), "where events and outbox messages Kafka will not take go (too large, missing topic, invalid) (env ORCHESTRIX_RELAY_DLQ_TOPIC; default <topic>"+outbox.DeadLetterSuffix+")")
	maxEvent := fs.String("max-event-size", flagenv.Or("ORCHESTRIX_MAX_EVENT_SIZE", strconv.Itoa(stores.DefaultMaxEventSize)), "the largest event data in bytes the store accepts, the same setting as the appending services' (env ORCHESTRIX_MAX_EVENT_SIZE): the relay reports a topic whose max.message.bytes cannot take such an event")
	logLevel := fs.String("log-level", flagenv.Or("ORCHESTRIX_LOG_LEVEL", "info"), "debug, info, warn or error (env ORCHESTRIX_LOG_LEVEL)")
	logJSON := fs.Bool("log-json", false, "log JSON lines instead of text")
	listen := fs.String("listen", flagenv.Or("ORCHESTRIX_LISTEN", ""), "serve /livez and /readyz on this `address` (e.g. :8080) for an orchestrator's probes (env ORCHESTRIX_LISTEN; default: none)")
	gogc := fs.String("gogc", flagenv.Or("GOGC", strconv.Itoa(relayGCPercent)), "this process's garbage collection target percentage, or off (env GOGC): the relay's live heap is small, and at Go's default of 100 collecting it took 8-11% of the relay's CPU, at 400 2-3%")
	if err := parse(fs, args); err != nil {
		return err
	}

	var problems []string
	if *url == "" {
		problems = append(problems, "--database-url or DATABASE_URL is required")
	}
	seeds := flagenv.List(*brokers)
	if len(seeds) == 0 {
		problems = append(problems, "--brokers or KAFKA_BROKERS is required")
	}
	if *topic == "" && *bc != "" {
		*topic = topics.Events(*bc)
	}
	if *topic == "" {
		problems = append(problems, "name the events topic with --topic or --context")
	}
	maxEventSize, err := strconv.Atoi(*maxEvent)
	if err != nil || maxEventSize < 1 {
		problems = append(problems, fmt.Sprintf("--max-event-size (or ORCHESTRIX_MAX_EVENT_SIZE) %q: want a positive number of bytes", *maxEvent))
		maxEventSize = stores.DefaultMaxEventSize
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		problems = append(problems, fmt.Sprintf("--log-level %q: want debug, info, warn or error", *logLevel))
	}
	opts := []outbox.Option{
		outbox.ToTopic(*topic),
		outbox.Instance(*instance),
		outbox.BatchSize(*batch),
		outbox.PollInterval(*pollMin, *pollMax),
		outbox.Linger(*linger),
		outbox.Lease(*lease),
		outbox.ReportStats(*statsEvery, nil),
		outbox.MaxEventSize(maxEventSize),
	}
	if *dlqTopic != "" {
		opts = append(opts, outbox.DeadLetterTopic(*dlqTopic))
	}
	for _, r := range routes {
		opts = append(opts, outbox.Route(r[0], r[1]))
	}
	if *txnID != "" {
		opts = append(opts, outbox.TransactionalID(*txnID))
	}
	if !*drainOutbox {
		opts = append(opts, outbox.NoOutboxTable())
	}
	if kopts, err := sec.options(); err != nil {
		problems = append(problems, strings.TrimPrefix(err.Error(), errUsage.Error()+": "))
	} else if len(kopts) > 0 {
		opts = append(opts, outbox.WithClientOpts(kopts...))
	}
	// Check the relay's whole configuration before connecting anywhere.
	if err := outbox.CheckOptions(opts...); err != nil && *topic != "" {
		problems = append(problems, err.Error())
	}
	gcPercent := -1
	if *gogc != "off" {
		n, err := strconv.Atoi(*gogc)
		if err != nil || n < 0 {
			problems = append(problems, fmt.Sprintf("--gogc (or GOGC) %q: want a percentage or off", *gogc))
		}
		gcPercent = n
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", errUsage, strings.Join(problems, "; "))
	}
	// Restored on return, for callers that run the command in their own
	// process (the tests).
	defer debug.SetGCPercent(debug.SetGCPercent(gcPercent))

	hopts := &slog.HandlerOptions{Level: level}
	var handler slog.Handler = slog.NewTextHandler(stderr, hopts)
	if *logJSON {
		handler = slog.NewJSONHandler(stderr, hopts)
	}
	log := slog.New(handler)
	opts = append(opts, outbox.WithLogger(log))

	// Wrong credentials or certificates do not heal: say so once and stop.
	// Brokers that are down at start may come back: the relay waits.
	if sec.secured() {
		if err := sec.check(ctx, seeds); errors.Is(err, kafkaconn.ErrAuthentication) || errors.Is(err, kafkaconn.ErrTLS) {
			return err
		}
	}
	pool, err := openPool(ctx, *url)
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := postgres.New(ctx, pool, postgres.WithSchema(*schema), postgres.WithMaxEventSize(maxEventSize))
	if err != nil {
		if errors.Is(err, orchestrix.ErrInvalid) {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		return err
	}
	relay, err := outbox.NewRelay(store, seeds, opts...)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	log.Info("relay starting", "schema", *schema, "topic", *topic, "routes", routes.String(), "brokers", strings.Join(seeds, ","),
		"instance", *instance, "outbox_table", *drainOutbox)
	start := time.Now()
	if *listen == "" {
		err = relay.Run(ctx)
	} else {
		// /livez from the relay's loop, /readyz from PostgreSQL: a broker
		// outage must not restart the relay.
		err = service.Run(ctx, service.Options{Addr: *listen, Ready: []service.Check{{Name: "postgres", Check: pool.Ping}}},
			service.Named("relay", relay))
	}
	if err != nil {
		return err
	}
	st := relay.Stats()
	fmt.Fprintf(stdout, "relay stopped after %s: published %d events and %d outbox messages in %d transactions, dead-lettered %d; checkpoint %s\n",
		time.Since(start).Round(time.Second), st.Events, st.Messages, st.Transactions, st.DeadLettered, st.Checkpoint.Events)
	return nil
}

func defaultInstance() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "relay"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}
