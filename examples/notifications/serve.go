package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/internal/redact"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/service"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// NotificationDelivered is what serve publishes on <context>.deliveries
// once a channel's receiver acknowledged a notification: the record of
// the delivery that drive (or kcat) reads. It is published at least once
// per delivery (a failed publish is retried with the send, which the
// receiver keeps once by Key), so readers count distinct keys.
type NotificationDelivered struct {
	Key      string `json:"key"`     // the idempotency key: event ID and channel
	Channel  string `json:"channel"` // email, sms, push or webhook
	UserID   string `json:"user_id"`
	EventID  string `json:"event_id"`    // the UserRegistered event's ID
	Level    int    `json:"retry_level"` // 0: the first try, n: retry level n
	Redriven bool   `json:"redriven"`    // from a dead-letter topic by `orchestrix dlq redrive`
}

// TypeNotificationDelivered is its CloudEvents type.
const TypeNotificationDelivered = "notifications.NotificationDelivered"

// DeliveriesTopic returns the topic serve publishes deliveries on.
func DeliveriesTopic(context string) string { return context + ".deliveries" }

// groupName returns the consumer group of a channel: <context>-<channel>.
func groupName(context, channel string) string { return context + "-" + channel }

// newRegistry returns a registry of the example's two event types.
func newRegistry() (*codec.Registry, error) {
	reg := codec.NewRegistry()
	if err := codec.RegisterJSON[UserRegistered](reg, TypeUserRegistered); err != nil {
		return nil, err
	}
	if err := codec.RegisterJSON[NotificationDelivered](reg, TypeNotificationDelivered); err != nil {
		return nil, err
	}
	return reg, nil
}

// checkContext accepts a context that makes legal topic names.
func checkContext(name string) error {
	if name == "" || len(name) > 180 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
		return fmt.Errorf("--context %q: want 1 to 180 of [a-zA-Z0-9._-]", name)
	}
	return nil
}

// parseDelays parses the retry ladder of --retry-delays.
func parseDelays(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, d := range strings.Split(s, ",") {
		v, err := time.ParseDuration(strings.TrimSpace(d))
		if err != nil || v < 10*time.Millisecond || v > time.Hour {
			return nil, fmt.Errorf("--retry-delays %q: want durations from 10ms to 1h, comma-separated", s)
		}
		out = append(out, v)
	}
	return out, nil
}

// parseFail parses --fail: channel=rate pairs, rates from 0 to 1.
func parseFail(s string) (map[string]float64, error) {
	out := map[string]float64{}
	for _, p := range flagenv.List(s) {
		name, v, ok := strings.Cut(p, "=")
		rate, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		known := false
		for _, c := range channelNames {
			known = known || c == strings.TrimSpace(name)
		}
		if !ok || !known || err != nil || !(rate >= 0 && rate <= 1) {
			return nil, fmt.Errorf("--fail %q: want channel=rate pairs, comma-separated, channels %s, rates 0 to 1", s, strings.Join(channelNames, ", "))
		}
		out[strings.TrimSpace(name)] = rate
	}
	return out, nil
}

// serveConfig is one serve process.
type serveConfig struct {
	seeds       []string // empty: an embedded broker
	kafka       []kgo.Opt
	context     string
	listen      string
	init        bool
	partitions  int32
	replication int16
	delays      []time.Duration
	fail        map[string]float64
	smtpAddr    string // empty: an SMTP server in the process
	webhookURL  string // empty: a webhook receiver in the process
	shutdown    time.Duration
	session     time.Duration
	log         *slog.Logger
}

// serveMain runs the four channel groups with their retry topics and
// dead-letter topics under service.Run until SIGTERM, with /livez and
// /readyz on --listen. Topics are created only with --init (in
// production: `orchestrix topics create`). Without --brokers it starts
// an embedded broker and prints its address for drive.
func serveMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("notifications serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", os.Getenv("KAFKA_BROKERS"), "Kafka seed brokers (env KAFKA_BROKERS; TLS/SASL from KAFKA_TLS*, KAFKA_SASL_*); empty: an embedded broker whose address is printed")
	listen := fs.String("listen", flagenv.Or("ORCHESTRIX_LISTEN", ":8080"), "address of /livez and /readyz (env ORCHESTRIX_LISTEN)")
	name := fs.String("context", flagenv.Or("ORCHESTRIX_CONTEXT", "notifications"), "topics <context>.events, <context>.deliveries and the groups <context>-<channel> (env ORCHESTRIX_CONTEXT)")
	initFlag := fs.Bool("init", false, "create the topics at start (in production: orchestrix topics create)")
	partitions := fs.Int("partitions", 4, "with --init: partitions of the topics")
	replication := fs.Int("replication", 1, "with --init: replication factor of the topics")
	delays := fs.String("retry-delays", "1s,2s,4s", "the retry ladder: one retry topic per delay, then the DLQ")
	fail := fs.String("fail", "", "inject failures: channel=rate pairs, e.g. sms=0.3,webhook=1 (1: the channel is down)")
	smtpAddr := fs.String("smtp-addr", os.Getenv("NOTIFICATIONS_SMTP_ADDR"), "host:port of the SMTP server to send email to (env NOTIFICATIONS_SMTP_ADDR); empty: one in the process, on 127.0.0.1")
	webhookURL := fs.String("webhook-url", os.Getenv("NOTIFICATIONS_WEBHOOK_URL"), "URL to POST webhooks to (env NOTIFICATIONS_WEBHOOK_URL); empty: a receiver in the process, on 127.0.0.1")
	shutdown := fs.Duration("shutdown-timeout", 25*time.Second, "bound on the drain after SIGTERM (keep it below the orchestrator's grace period)")
	session := fs.Duration("session-timeout", 0, "the consumer groups' session timeout: how soon a member that died without leaving loses its partitions (0: franz-go's 45s)")
	level := fs.String("log-level", flagenv.Or("ORCHESTRIX_LOG_LEVEL", "warn"), "debug, info, warn or error (env ORCHESTRIX_LOG_LEVEL)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c := serveConfig{seeds: flagenv.List(*brokers), context: *name, listen: *listen, init: *initFlag, smtpAddr: *smtpAddr,
		webhookURL: *webhookURL, shutdown: *shutdown, session: *session}
	var errs exampleapp.Problems
	if fs.NArg() > 0 {
		errs.Addf("unexpected arguments %q", fs.Args())
	}
	if err := checkContext(c.context); err != nil {
		errs.Add(err)
	}
	if strings.TrimSpace(c.listen) == "" {
		errs.Addf("--listen: want an address such as :8080")
	}
	errs.Int("--partitions", *partitions, 1, 1000)
	errs.Int("--replication", *replication, 1, 32)
	var err error
	if c.delays, err = parseDelays(*delays); err != nil {
		errs.Add(err)
	}
	if c.fail, err = parseFail(*fail); err != nil {
		errs.Add(err)
	}
	if c.smtpAddr != "" {
		if _, port, err := net.SplitHostPort(c.smtpAddr); err != nil || port == "" {
			errs.Addf("--smtp-addr %q: want host:port", c.smtpAddr)
		}
	}
	if c.webhookURL != "" {
		if u, err := url.Parse(c.webhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs.Addf("--webhook-url %q: want an http or https URL", redact.Text(c.webhookURL))
		}
	}
	if c.shutdown <= 0 {
		errs.Addf("--shutdown-timeout %s: want a positive duration", c.shutdown)
	}
	if c.session != 0 && (c.session < time.Second || c.session > 10*time.Minute) {
		errs.Addf("--session-timeout %s: want 1s to 10m", c.session)
	}
	lvl, err := exampleapp.ParseLevel(*level)
	errs.Add(err)
	if len(c.seeds) > 0 {
		if c.kafka, err = exampleapp.KafkaOptions(); err != nil {
			errs.Add(err)
		}
	}
	if len(errs) > 0 {
		return errs.Report(stderr, "notifications serve")
	}
	c.partitions, c.replication = int32(*partitions), int16(*replication)
	c.log = exampleapp.Logger(stderr, lvl)
	if err := serve(ctx, c, stdout); err != nil {
		fmt.Fprintln(stderr, "notifications serve:", redact.Text(err.Error()))
		return 1
	}
	return 0
}

// serveSpecs are the topics of a serve: the events, the deliveries, and
// each channel group's retry and dead-letter topics.
func serveSpecs(context string, policy consumers.FailurePolicy, partitions int32, replication int16) []topics.Spec {
	events := topics.Events(context)
	specs := []topics.Spec{
		{Name: events, Partitions: partitions, ReplicationFactor: replication},
		{Name: DeliveriesTopic(context), Partitions: partitions, ReplicationFactor: replication},
	}
	for _, ch := range channelNames {
		for _, t := range policy.Topics(events, groupName(context, ch)) {
			specs = append(specs, topics.Spec{Name: t, Partitions: partitions, ReplicationFactor: replication})
		}
	}
	return specs
}

func serve(ctx context.Context, c serveConfig, stdout io.Writer) error {
	kb, err := exampleapp.OpenBroker(c.seeds, 0)
	if err != nil {
		return err
	}
	defer kb.Close()
	if kb.Embedded {
		c.seeds, c.init = kb.Seeds, true
		fmt.Fprintf(stdout, "embedded Kafka at %s (drive --brokers %s); nothing is kept after exit\n", c.seeds[0], c.seeds[0])
	}
	policy := consumers.RetryTopics(c.delays...).ThenDLQ()
	events, deliveries := topics.Events(c.context), DeliveriesTopic(c.context)
	pub, err := producers.NewClient(c.seeds, append(append([]kgo.Opt(nil), c.kafka...), kgo.ProducerLinger(0))...)
	if err != nil {
		return err
	}
	defer pub.Close()
	adm := kadm.NewClient(pub)
	if c.init {
		if _, err := topics.Ensure(ctx, adm, serveSpecs(c.context, policy, c.partitions, c.replication)...); err != nil {
			if errors.Is(ctx.Err(), context.Canceled) {
				// SIGTERM during --init: the topics made so far stay, and
				// the next --init completes them (Ensure is idempotent).
				fmt.Fprintln(stdout, "stopped during --init, before serving")
				return nil
			}
			return fmt.Errorf("create topics: %w", err)
		}
	} else if _, err := topics.Describe(ctx, adm, deliveries); err != nil {
		// The groups check their own topics at start and name what is
		// missing; the deliveries topic is this program's.
		return fmt.Errorf("%w (create it: orchestrix topics create --topics %s, or serve --init)", err, deliveries)
	}

	// The receivers: in the process unless given.
	var smtpSrv *smtpServer
	if c.smtpAddr == "" {
		if smtpSrv, err = startSMTP(); err != nil {
			return err
		}
		defer smtpSrv.Close()
		c.smtpAddr = smtpSrv.addr
		fmt.Fprintf(stdout, "SMTP server (in the process) at %s\n", smtpSrv.addr)
	}
	var hook *webhookServer
	if c.webhookURL == "" {
		if hook, err = startWebhook(); err != nil {
			return err
		}
		defer hook.Close()
		c.webhookURL = hook.url
		fmt.Fprintf(stdout, "webhook receiver (in the process) at %s\n", hook.url)
	}
	base, sms, push := newChannels(c.smtpAddr, c.webhookURL, 10*time.Second)
	reg, err := newRegistry()
	if err != nil {
		return err
	}
	gopts := append([]kgo.Opt(nil), c.kafka...)
	if c.session > 0 {
		gopts = append(gopts, kgo.SessionTimeout(c.session), kgo.HeartbeatInterval(min(3*time.Second, c.session/3)))
	}
	seed := exampleapp.Seed(0)
	var workers []service.Worker
	for i, name := range channelNames {
		ch := base[name]
		if rate := c.fail[name]; rate > 0 {
			f := newFlaky(ch, rate, seed+uint64(i))
			f.down = rate >= 1
			ch = f
		}
		g, err := consumers.New(c.seeds, groupName(c.context, name), []string{events}, serveHandler(name, ch, reg, pub, deliveries, c.log),
			consumers.WithFailurePolicy(policy), consumers.WithLogger(c.log.With("channel", name)), consumers.WithClientOpts(gopts...))
		if err != nil {
			return err
		}
		workers = append(workers, service.Named(name, g))
	}
	injected := "none"
	if len(c.fail) > 0 {
		var parts []string
		for _, name := range channelNames {
			if r, ok := c.fail[name]; ok {
				parts = append(parts, fmt.Sprintf("%s %g%%", name, 100*r))
			}
		}
		injected = strings.Join(parts, ", ")
	}
	fmt.Fprintf(stdout, "serving context %s: %s → email, sms, push and webhook groups (retries %v, then %s); deliveries on %s; injected failures: %s; SIGTERM stops it\n",
		c.context, events, c.delays, consumers.DeadLetterTopic(events, groupName(c.context, "<channel>")), deliveries, injected)
	err = service.Run(ctx, service.Options{
		ShutdownTimeout: c.shutdown,
		Addr:            c.listen,
		Ready:           []service.Check{{Name: "kafka", Check: pub.Ping}},
		OnListen:        func(addr string) { fmt.Fprintf(stdout, "listening on %s (/livez, /readyz)\n", addr) },
	}, workers...)
	if err != nil {
		return err
	}
	// What the receivers in the process got, by distinct idempotency key
	// (a resent notification is kept once).
	got := map[string]*receipts{"sms": sms, "push": push}
	if smtpSrv != nil {
		got["email"] = smtpSrv.got
	}
	if hook != nil {
		got["webhook"] = hook.got
	}
	var parts []string
	for _, name := range channelNames {
		if r, ok := got[name]; ok {
			keys, twice := 0, 0
			for _, n := range r.snapshot() {
				keys, twice = keys+1, twice+n-1
			}
			parts = append(parts, fmt.Sprintf("%s %d (%d twice→one)", name, keys, twice))
		}
	}
	fmt.Fprintf(stdout, "received in the process: %s\n", strings.Join(parts, ", "))
	if errors.Is(ctx.Err(), context.Canceled) {
		fmt.Fprintln(stdout, "stopped cleanly")
	}
	return nil
}

// serveHandler delivers one channel's notification of each UserRegistered
// record, then publishes a NotificationDelivered on the deliveries topic.
// Records of other event types on the topic are not this service's and
// are skipped; a record that is no CloudEvent, or does not decode, fails
// permanently (straight to the dead-letter topic, with the reason), as
// does an address the channel cannot use. Any other failure, of the send
// or of the delivery's publication, is retried through the retry topics;
// the resend carries the same idempotency key.
func serveHandler(name string, ch Channel, reg *codec.Registry, pub *kgo.Client, deliveries string, log *slog.Logger) consumers.HandlerFunc {
	return func(ctx context.Context, rec *kgo.Record) error {
		e, err := codec.RecordToEvent(rec)
		if err != nil {
			return consumers.Permanent(fmt.Errorf("not a CloudEvent: %w", err))
		}
		if e.Type != TypeUserRegistered {
			return nil // another event of the users service
		}
		if err := reg.DecodeEvent(&e); err != nil {
			return consumers.Permanent(fmt.Errorf("undecodable %s %s: %w", e.Type, e.ID, err))
		}
		u, ok := e.Payload.(UserRegistered)
		if !ok || u.UserID == "" {
			return consumers.Permanent(fmt.Errorf("%s %s: %w: no user_id", e.Type, e.ID, errInvalidAddress))
		}
		n := notificationFor(e.ID, u, name)
		if n.To == "" {
			return consumers.Permanent(fmt.Errorf("%s to user %s: %w: empty", name, u.UserID, errInvalidAddress))
		}
		if err := ch.Send(ctx, n); err != nil {
			if errors.Is(err, errInvalidAddress) {
				return consumers.Permanent(err)
			}
			return err
		}
		level, redriven := retryInfo(rec)
		log.Debug("delivered", "key", n.Key, "user", u.UserID, "level", level, "redriven", redriven)
		d := orchestrix.Event{
			Metadata: orchestrix.Metadata{ID: uuid.Must(uuid.NewV7()).String(), Source: "/notifications/" + name, Subject: u.UserID,
				Time: time.Now().UTC(), CausationID: e.ID, CorrelationID: e.CorrelationID},
			StreamID: u.UserID,
			Payload:  NotificationDelivered{Key: n.Key, Channel: name, UserID: u.UserID, EventID: e.ID, Level: level, Redriven: redriven},
		}
		if err := reg.EncodeEvent(&d); err != nil {
			return consumers.Permanent(err)
		}
		out, err := codec.EventToRecord(deliveries, d)
		if err != nil {
			return consumers.Permanent(err)
		}
		if err := pub.ProduceSync(ctx, out).FirstErr(); err != nil {
			return fmt.Errorf("record the delivery of %s: %w", n.Key, producers.Classify(err))
		}
		return nil
	}
}
