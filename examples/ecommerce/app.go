package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/service"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// appConfig is what the workers of one process need.
type appConfig struct {
	seeds      []string
	kafka      []kgo.Opt     // TLS/SASL options (kafkaconn)
	pool       *pgxpool.Pool // nil: the memory stores
	schema     string
	topics     Topics
	timing     Timing
	partitions int32
	log        *slog.Logger
	// sagaLog is the saga runtime's logger (default log): the self-check
	// shows its transitions on the timeline instead.
	sagaLog *slog.Logger
	// onTransition sees every committed saga transition (the timeline).
	onTransition func(sagas.Transition)
	// paymentsGate, when set, holds the payment processor's start until
	// it is closed (the
	// payment-timeout scenario: the payment service is down at first).
	paymentsGate <-chan struct{}
	// replication is the replication factor of the topics the relay
	// creates (its checkpoint).
	replication int16
	// sessionTimeout is the consumer groups' session timeout (0: the
	// franz-go default, 45s): how long a member that died without leaving
	// holds its partitions.
	sessionTimeout time.Duration
	// fetchWait bounds a consumer's fetch wait (latency of the example's
	// hops on a quiet topic).
	fetchWait time.Duration
	// noRelay leaves the outbox relay out of the workers: a separate
	// `orchestrix relay` publishes the schema (PostgreSQL only).
	noRelay bool
}

// app is one process of the example: the three aggregates' command
// processors, the relay, the order saga (forwarder, inbox, timers) and
// the failed-order marker, as workers for service.Run.
type app struct {
	cfg       appConfig
	reg       *codec.Registry
	events    stores.EventStore
	sagaStore sagas.Store
	memSagas  *sagas.MemoryStore // the memory backend's outbox, published by a worker
	pgStore   *postgres.Store
	rt        *sagas.Runtime
	gateway   *Gateway
	client    *kgo.Client // producer: forwarder, senders, memory outbox
	outcomes  *kgo.Client // the processors' outcomes (no linger)
	orders    *producers.Sender
	orderRepo *aggregates.Repository[Order]
	payRepo   *aggregates.Repository[Payment]
	workers   []service.Worker
}

// Group names of a context.
func groupOf(t Topics, what string) string { return t.Context + "-" + what }

// topicSpecs returns every topic the example needs (created at start in
// the self-check, by `serve --init` or `orchestrix topics create`).
func topicSpecs(t Topics, partitions int32, rf int16) []topics.Spec {
	spec := func(name string, n int32) topics.Spec {
		return topics.Spec{Name: name, Partitions: n, ReplicationFactor: rf}
	}
	// The commands, events and outcomes topics get the configs of
	// topics.ForContext (max.message.bytes that fits the stores' largest
	// event with its headers; outcomes kept a day).
	ctxSpecs := topics.ForContext(t.Context, partitions, rf)
	big := ctxSpecs[0].Configs
	specs := []topics.Spec{ctxSpecs[1], ctxSpecs[2], spec(sagas.InboxTopic(t.SagaType), partitions)}
	for _, name := range []string{t.Orders, t.Payments, t.Inventory} {
		s := spec(name, partitions)
		s.Configs = big
		specs = append(specs, s)
	}
	specs = append(specs,
		spec(consumers.DeadLetterTopic(t.Orders, groupOf(t, "orders")), 1),
		spec(consumers.DeadLetterTopic(t.Payments, groupOf(t, "payments")), 1),
		spec(consumers.DeadLetterTopic(t.Inventory, groupOf(t, "inventory")), 1),
		spec(consumers.DeadLetterTopic(t.Outcomes, groupOf(t, "saga-forwarder")), 1),
		spec(consumers.DeadLetterTopic(t.Events, groupOf(t, "saga-forwarder")), 1),
	)
	for _, name := range sagas.InboxFailurePolicy().Topics(sagas.InboxTopic(t.SagaType), groupOf(t, "order-sagas")) {
		specs = append(specs, spec(name, partitions))
	}
	return specs
}

// deadLetterTopics returns the dead-letter topics of the example's groups.
func deadLetterTopics(t Topics) []string {
	return []string{consumers.DeadLetterTopic(t.Orders, groupOf(t, "orders")),
		consumers.DeadLetterTopic(t.Payments, groupOf(t, "payments")),
		consumers.DeadLetterTopic(t.Inventory, groupOf(t, "inventory")),
		consumers.DeadLetterTopic(t.Outcomes, groupOf(t, "saga-forwarder")),
		consumers.DeadLetterTopic(t.Events, groupOf(t, "saga-forwarder")),
		consumers.DeadLetterTopic(sagas.InboxTopic(t.SagaType), groupOf(t, "order-sagas"))}
}

// ensureTopics creates the example's topics (kept when they exist).
func ensureTopics(ctx context.Context, cl *kgo.Client, t Topics, partitions int32, rf int16) error {
	if _, err := topics.Ensure(ctx, kadm.NewClient(cl), topicSpecs(t, partitions, rf)...); err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	return nil
}

// newApp builds the workers; close releases the clients.
func newApp(ctx context.Context, cfg appConfig) (*app, error) {
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}
	a := &app{cfg: cfg, reg: codec.NewRegistry(), gateway: &Gateway{}}
	if err := Register(a.reg); err != nil {
		return nil, err
	}
	var err error
	if a.client, err = producers.NewClient(cfg.seeds, cfg.kafka...); err != nil {
		return nil, err
	}
	if a.outcomes, err = producers.NewClient(cfg.seeds, append(append([]kgo.Opt(nil), cfg.kafka...), kgo.ProducerLinger(0))...); err != nil {
		a.close()
		return nil, err
	}
	if err := a.build(ctx); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

func (a *app) close() {
	for _, c := range []*kgo.Client{a.client, a.outcomes} {
		if c != nil {
			c.Close()
		}
	}
}

func (a *app) build(ctx context.Context) error {
	cfg, t := a.cfg, a.cfg.topics
	kopts := append(append([]kgo.Opt(nil), cfg.kafka...), kgo.FetchMaxWait(cfg.fetchWait))
	if cfg.sessionTimeout > 0 {
		kopts = append(kopts, kgo.SessionTimeout(cfg.sessionTimeout), kgo.HeartbeatInterval(min(3*time.Second, cfg.sessionTimeout/3)))
	}
	copts := []consumers.Option{consumers.WithLogger(cfg.log), consumers.WithClientOpts(kopts...)}
	// Stores: memory, or PostgreSQL (the events, the outbox of the saga's
	// commands, the saga instances, inbox, timers and history).
	var timerOpts []sagas.RuntimeOption
	if cfg.pool == nil {
		a.events = memory.New()
		a.memSagas = sagas.NewMemoryStore()
		a.sagaStore = a.memSagas
	} else {
		pg, err := postgres.New(ctx, cfg.pool, postgres.WithSchema(cfg.schema))
		if err != nil {
			return err
		}
		a.pgStore, a.events = pg, pg
		if a.sagaStore, err = sagas.NewPostgresStore(cfg.pool, cfg.schema); err != nil {
			return err
		}
		el, err := pg.Elector(stores.ElectorConfig{Role: sagas.TimerRole(t.SagaType), Lease: 10 * time.Second, Logger: cfg.log})
		if err != nil {
			return err
		}
		timerOpts = append(timerOpts, sagas.WithElector(el))
	}

	// The three aggregates and their command processors.
	add := func(name string, w func(context.Context) error) {
		a.workers = append(a.workers, service.Named(name, service.WorkerFunc(w)))
	}
	procOpts := []aggregates.ProcessorOption{aggregates.WithOutcomes(a.outcomes, t.Outcomes), aggregates.WithProcessorLogger(cfg.log)}
	orderAgg, err := aggregates.New("order", DecideOrder, EvolveOrder)
	if err != nil {
		return err
	}
	orderRepo, err := aggregates.NewRepository(orderAgg, a.events, a.reg, "/"+t.Context+"/orders")
	if err != nil {
		return err
	}
	a.orderRepo = orderRepo
	orderProc, err := aggregates.NewProcessor(orderRepo, procOpts...)
	if err != nil {
		return err
	}
	payAgg, err := aggregates.New("payment", DecidePayment(a.gateway), EvolvePayment)
	if err != nil {
		return err
	}
	payRepo, err := aggregates.NewRepository(payAgg, a.events, a.reg, "/"+t.Context+"/payments")
	if err != nil {
		return err
	}
	a.payRepo = payRepo
	payProc, err := aggregates.NewProcessor(payRepo, procOpts...)
	if err != nil {
		return err
	}
	stockAgg, err := aggregates.New("stock", DecideStock, EvolveStock)
	if err != nil {
		return err
	}
	stockRepo, err := aggregates.NewRepository(stockAgg, a.events, a.reg, "/"+t.Context+"/inventory")
	if err != nil {
		return err
	}
	stockProc, err := aggregates.NewProcessor(stockRepo, procOpts...)
	if err != nil {
		return err
	}
	for _, p := range []struct {
		name, topic string
		h           consumers.Handler
		gate        <-chan struct{}
	}{{"orders", t.Orders, orderProc, nil}, {"payments", t.Payments, payProc, cfg.paymentsGate}, {"inventory", t.Inventory, stockProc, nil}} {
		g, err := consumers.New(cfg.seeds, groupOf(t, p.name), []string{p.topic}, p.h, copts...)
		if err != nil {
			return err
		}
		gate := p.gate
		add(p.name+" processor", func(ctx context.Context) error {
			if gate != nil {
				select {
				case <-ctx.Done():
					return nil
				case <-gate:
				}
			}
			return g.Run(ctx)
		})
	}

	// The relay: every event to <context>.events; with PostgreSQL also
	// the outbox table (the saga's commands and fired timers).
	relay, err := outbox.NewRelay(a.events, cfg.seeds, outbox.ToTopic(t.Events), outbox.WithLogger(cfg.log), outbox.WithClientOpts(cfg.kafka...),
		outbox.CheckpointReplication(cfg.replication))
	if err != nil {
		return err
	}
	if !cfg.noRelay {
		add("relay", relay.Run)
	}
	if a.memSagas != nil {
		add("saga outbox", func(ctx context.Context) error { return a.memSagas.Publish(ctx, a.client) })
	}

	// The order saga: forwarder, inbox group, timers.
	def, err := DefineOrderSaga(t, cfg.timing)
	if err != nil {
		return err
	}
	sagaLog := cfg.sagaLog
	if sagaLog == nil {
		sagaLog = cfg.log
	}
	ropts := append([]sagas.RuntimeOption{sagas.WithLogger(sagaLog), sagas.TimerPoll(100*time.Millisecond, 1000)}, timerOpts...)
	if cfg.onTransition != nil {
		ropts = append(ropts, sagas.OnTransition(cfg.onTransition))
	}
	if a.rt, err = sagas.NewRuntime(a.sagaStore, a.reg, []sagas.Saga{def}, ropts...); err != nil {
		return err
	}
	fwd, err := sagas.NewForwarder(a.client, t.Outcomes, t.Events, a.rt)
	if err != nil {
		return err
	}
	fwdGroup, err := consumers.New(cfg.seeds, groupOf(t, "saga-forwarder"), fwd.Topics(), fwd, copts...)
	if err != nil {
		return err
	}
	add("saga forwarder", fwdGroup.Run)
	inbox, err := consumers.New(cfg.seeds, groupOf(t, "order-sagas"), []string{a.rt.Inbox()}, a.rt,
		append(copts, consumers.WithFailurePolicy(sagas.InboxFailurePolicy()))...)
	if err != nil {
		return err
	}
	add("saga inbox", inbox.Run)
	add("saga timers", a.rt.RunTimers)

	if a.orders, err = producers.NewSender(a.client, a.reg, t.Orders, "/"+t.Context+"/ecommerce"); err != nil {
		return err
	}
	add("failed-order marker", a.markFailed)
	return nil
}

// failedNS names the IDs of MarkOrderFailed commands.
var failedNS = uuid.MustParse("0b6f3c1e-5d2a-4c8e-9f7b-3a1d2e4c5b60")

// markFailed moves the order of every saga in compensation_failed to
// Failed, so the order itself shows it waits for an operator. It polls
// the saga store; the command's ID is derived from the saga and its
// version, so a repeat (after a restart) is answered as a duplicate.
func (a *app) markFailed(ctx context.Context) error {
	sent := map[string]bool{}
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		list, err := a.sagaStore.List(ctx, sagas.Filter{Type: a.cfg.topics.SagaType, Status: sagas.StatusCompensationFailed, Limit: 1000})
		if err != nil {
			if ctx.Err() == nil {
				a.cfg.log.Warn("list failed sagas", "err", err)
			}
			continue
		}
		for _, i := range list {
			k := fmt.Sprintf("%s@%d", i.ID, i.Version)
			if sent[k] {
				continue
			}
			c, err := a.orders.Command(i.ID, MarkOrderFailed{Reason: i.Reason})
			if err != nil {
				return err
			}
			c.ID = uuid.NewSHA1(failedNS, []byte(k)).String()
			if err := a.orders.Send(ctx, c); err != nil {
				if ctx.Err() != nil || errors.Is(err, context.Canceled) {
					return nil
				}
				a.cfg.log.Warn("mark order failed", "order", i.ID, "err", err)
				continue
			}
			sent[k] = true
		}
	}
}
