package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/service"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// appConfig is what the banking service runs on.
type appConfig struct {
	seeds   []string
	kafka   []kgo.Opt // TLS and SASL (kafkaconn.FromEnv); none on kfake
	pool    *pgxpool.Pool
	schema  string // PostgreSQL schema of every table (store, sagas, projections)
	context string // topics <context>.*, groups <context>-*
	log     *slog.Logger
	// onTransition and onEvents feed the timeline (--watch); nil: none.
	onTransition func(sagas.Transition)
	onEvents     func(projections.Commit)
	onStats      func(group string, s consumers.Stats)
	// fast shortens the polls and scans for the self-check.
	fast bool
	// sessionTimeout, if set, is the consumer groups' session timeout.
	sessionTimeout time.Duration
	// noRelay leaves the outbox relay out of the workers: a separate
	// `orchestrix relay` publishes the schema (PostgreSQL only).
	noRelay bool
}

// statementRunner is the statement projection's runner on either backend.
type statementRunner interface {
	Run(ctx context.Context) error
	WaitForNonStale(ctx context.Context) error
}

// app is the banking service: an account processor, the transfer saga
// (forwarder, inbox group, timers) and the statement projection, with the
// outbox relay — every worker one deployment runs.
type app struct {
	cfg       appConfig
	reg       *codec.Registry
	store     stores.EventStore
	repo      *aggregates.Repository[banking.Account]
	saga      *sagas.Definition[banking.Transfer]
	rt        *sagas.Runtime
	memSagas  *sagas.MemoryStore    // nil on PostgreSQL
	memProj   *projections.Memory   // nil on PostgreSQL
	pgProj    *projections.Postgres // nil in memory
	statement statementRunner
	client    *kgo.Client
	workers   []service.Worker
}

// group names, one per consumer group of the service.
func (c appConfig) aggregatesGroup() string { return c.context + "-aggregates" }
func (c appConfig) forwarderGroup() string  { return c.context + "-saga-fwd" }
func (c appConfig) sagasGroup() string      { return c.context + "-sagas" }
func (c appConfig) sagaType() string        { return banking.TransferSagaType(c.context) }

// topicSpecs returns every topic the service reads or writes but the
// relay's own (checkpoint, dead letters), which the relay creates.
func (c appConfig) topicSpecs(partitions int32, replication int16) []topics.Spec {
	specs := topics.ForContext(c.context, partitions, replication)
	add := func(names ...string) {
		for _, n := range names {
			specs = append(specs, topics.Spec{Name: n, Partitions: partitions, ReplicationFactor: replication})
		}
	}
	inbox := sagas.InboxTopic(c.sagaType())
	add(inbox)
	add(sagas.InboxFailurePolicy().Topics(inbox, c.sagasGroup())...)
	def := consumers.DefaultFailurePolicy()
	add(def.Topics(topics.Commands(c.context), c.aggregatesGroup())...)
	add(def.Topics(topics.Outcomes(c.context), c.forwarderGroup())...)
	add(def.Topics(topics.Events(c.context), c.forwarderGroup())...)
	return specs
}

// deadLetterTopics are the service's dead-letter topics (the self-check
// counts what they hold).
func (c appConfig) deadLetterTopics() []string {
	return []string{
		consumers.DeadLetterTopic(topics.Commands(c.context), c.aggregatesGroup()),
		consumers.DeadLetterTopic(topics.Outcomes(c.context), c.forwarderGroup()),
		consumers.DeadLetterTopic(topics.Events(c.context), c.forwarderGroup()),
		consumers.DeadLetterTopic(sagas.InboxTopic(c.sagaType()), c.sagasGroup()),
		topics.Events(c.context) + outbox.DeadLetterSuffix,
	}
}

// createTopics creates the service's topics (what `orchestrix topics
// create` does in production).
func createTopics(ctx context.Context, c appConfig, partitions int32, replication int16) error {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.seeds...)}, c.kafka...)...)
	if err != nil {
		return err
	}
	defer cl.Close()
	if _, err := topics.Ensure(ctx, kadm.NewClient(cl), c.topicSpecs(partitions, replication)...); err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	return nil
}

// deleteContextTopics deletes every topic named "<context>.*" (a
// self-check's, at its end).
func deleteContextTopics(ctx context.Context, c appConfig) error {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.seeds...)}, c.kafka...)...)
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	td, err := adm.ListTopics(ctx)
	if err != nil {
		return err
	}
	var mine []string
	for _, name := range td.Names() {
		if strings.HasPrefix(name, c.context+".") {
			mine = append(mine, name)
		}
	}
	_, err = adm.DeleteTopics(ctx, mine...)
	return err
}

// newApp wires the service. With a pool, everything lives in PostgreSQL
// (the schema must be migrated); without, in memory.
func newApp(ctx context.Context, c appConfig) (*app, error) {
	a := &app{cfg: c, reg: codec.NewRegistry()}
	if err := banking.Register(a.reg); err != nil {
		return nil, err
	}
	var err error
	a.client, err = producers.NewClient(c.seeds, c.kafka...)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			a.client.Close()
		}
	}()
	poll, scan := projections.DefaultPollInterval, projections.DefaultVersionScan
	if c.fast {
		poll, scan = 5*time.Millisecond, 100*time.Millisecond
	}
	var sagaStore sagas.Store
	rtOpts := []sagas.RuntimeOption{sagas.WithLogger(c.log), sagas.WithSource("/" + c.context)}
	projOpts := []projections.Option{projections.Shards(2), projections.PollInterval(poll), projections.VersionScan(scan),
		projections.WithLogger(c.log), projections.Instance(instanceName())}
	if c.onTransition != nil {
		rtOpts = append(rtOpts, sagas.OnTransition(c.onTransition))
	}
	if c.onEvents != nil {
		projOpts = append(projOpts, projections.OnCommit(c.onEvents))
	}
	if c.fast {
		rtOpts = append(rtOpts, sagas.TimerPoll(20*time.Millisecond, 1000))
	}
	if c.pool == nil {
		mem := memory.New()
		a.store, a.memSagas, a.memProj = mem, sagas.NewMemoryStore(), projections.NewMemory(banking.StatementTable)
		sagaStore = a.memSagas
		a.statement, err = projections.New(banking.StatementProjection, a.memProj, projections.FromStore(mem),
			banking.ApplyStatementMemory, projOpts...)
	} else {
		pg, err := postgres.New(ctx, c.pool, postgres.WithSchema(c.schema))
		if err != nil {
			return nil, fmt.Errorf("event store: %w", err)
		}
		a.store = pg
		if sagaStore, err = sagas.NewPostgresStore(c.pool, c.schema); err != nil {
			return nil, err
		}
		el, err := postgres.NewElector(c.pool, stores.ElectorConfig{Role: sagas.TimerRole(c.sagaType()) + ":" + c.schema, Lease: 5 * time.Second})
		if err != nil {
			return nil, err
		}
		rtOpts = append(rtOpts, sagas.WithElector(el))
		if a.pgProj, err = projections.NewPostgres(c.pool, c.schema, projections.Views(banking.StatementTable)); err != nil {
			return nil, err
		}
		a.statement, err = projections.New(banking.StatementProjection, a.pgProj, projections.FromStore(pg),
			banking.ApplyStatementPostgres(c.schema), append(projOpts, projections.Setup(banking.SetupStatementPostgres(c.schema)))...)
		if err != nil {
			return nil, err
		}
	}
	if err != nil {
		return nil, err
	}

	// The account processor: commands in, events stored, outcomes out.
	accounts, err := banking.NewAggregate(aggregates.SnapshotEvery(100))
	if err != nil {
		return nil, err
	}
	if a.repo, err = aggregates.NewRepository(accounts, a.store, a.reg, "/"+c.context); err != nil {
		return nil, err
	}
	proc, err := aggregates.NewProcessor(a.repo, aggregates.WithOutcomes(a.client, topics.Outcomes(c.context)), aggregates.WithProcessorLogger(c.log))
	if err != nil {
		return nil, err
	}
	groupOpts := []consumers.Option{consumers.WithLogger(c.log), consumers.WithClientOpts(c.kafka...)}
	if c.fast {
		groupOpts = append(groupOpts, consumers.WithClientOpts(kgo.FetchMaxWait(50*time.Millisecond)))
	}
	if c.sessionTimeout > 0 {
		groupOpts = append(groupOpts, consumers.WithClientOpts(kgo.SessionTimeout(c.sessionTimeout), kgo.HeartbeatInterval(c.sessionTimeout/10)))
	}
	withStats := func(group string) []consumers.Option {
		if c.onStats == nil {
			return slices.Clip(groupOpts)
		}
		return append(slices.Clip(groupOpts), consumers.WithStats(func(s consumers.Stats) { c.onStats(group, s) }))
	}
	processor, err := consumers.New(c.seeds, c.aggregatesGroup(), []string{topics.Commands(c.context)}, proc, withStats(c.aggregatesGroup())...)
	if err != nil {
		return nil, err
	}

	// The relay: stored events to <context>.events, and on PostgreSQL the
	// saga's commands from the outbox table.
	// The default transactional ID (outbox.DefaultTransactionalID of the
	// topic) is also the `orchestrix relay` CLI's: the two then share one
	// leader lock, and only one publishes.
	relayOpts := []outbox.Option{outbox.ToTopic(topics.Events(c.context)), outbox.WithLogger(c.log),
		outbox.WithClientOpts(c.kafka...)}
	if c.fast {
		relayOpts = append(relayOpts, outbox.PollInterval(5*time.Millisecond, 50*time.Millisecond))
	}
	relay, err := outbox.NewRelay(a.store, c.seeds, relayOpts...)
	if err != nil {
		return nil, err
	}

	// The transfer saga.
	if a.saga, err = banking.NewTransferSaga(c.sagaType(), topics.Commands(c.context)); err != nil {
		return nil, err
	}
	if a.rt, err = sagas.NewRuntime(sagaStore, a.reg, []sagas.Saga{a.saga}, rtOpts...); err != nil {
		return nil, err
	}
	fwd, err := sagas.NewForwarder(a.client, topics.Outcomes(c.context), topics.Events(c.context), a.rt)
	if err != nil {
		return nil, err
	}
	forwarder, err := consumers.New(c.seeds, c.forwarderGroup(), fwd.Topics(), fwd, withStats(c.forwarderGroup())...)
	if err != nil {
		return nil, err
	}
	inbox, err := consumers.New(c.seeds, c.sagasGroup(), []string{a.rt.Inbox()}, a.rt,
		append(withStats(c.sagasGroup()), consumers.WithFailurePolicy(sagas.InboxFailurePolicy()))...)
	if err != nil {
		return nil, err
	}

	a.workers = []service.Worker{
		service.Named("processor", processor),
		service.Named("saga-forwarder", forwarder),
		service.Named("saga-inbox", inbox),
		service.Named("saga-timers", service.WorkerFunc(a.rt.RunTimers)),
		service.Named("statements", a.statement),
	}
	if !c.noRelay {
		a.workers = slices.Insert(a.workers, 1, service.Worker(service.Named("relay", relay)))
	}
	if a.memSagas != nil {
		// In memory the saga's outbox is published by the store itself.
		a.workers = append(a.workers, service.Named("saga-outbox", service.WorkerFunc(func(ctx context.Context) error {
			return a.memSagas.Publish(ctx, a.client)
		})))
	}
	ok = true
	return a, nil
}

// instanceName names this process in the projection's checkpoints and
// sessions: host and process ID.
func instanceName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("banking-%s-%d", host, os.Getpid())
}

// readiness returns the service's readiness checks: the brokers answer,
// and the database when there is one.
func (a *app) readiness() []service.Check {
	checks := []service.Check{{Name: "kafka", Check: func(ctx context.Context) error { return a.client.Ping(ctx) }}}
	if a.cfg.pool != nil {
		checks = append(checks, service.Check{Name: "postgres", Check: func(ctx context.Context) error { return a.cfg.pool.Ping(ctx) }})
	}
	return checks
}

// close releases what newApp opened (not the pool).
func (a *app) close() { a.client.Close() }

// transfer returns a transfer saga instance and its result.
func (a *app) transfer(ctx context.Context, id string) (sagas.Instance, banking.Transfer, error) {
	inst, err := a.rt.Store().Get(ctx, a.rt.Type(), id)
	if err != nil {
		return inst, banking.Transfer{}, err
	}
	var t banking.Transfer
	if err := jsonUnmarshal(inst.State, &t); err != nil {
		return inst, t, fmt.Errorf("transfer %s: state: %w", id, err)
	}
	return inst, t, nil
}

// statements reads every statement through the view (version 0) or
// from one version's table.
func (a *app) statements(ctx context.Context, version int) (map[string][]banking.StatementLine, error) {
	if a.memProj != nil {
		return banking.MemoryStatements(a.memProj, version), nil
	}
	return banking.PostgresStatements(ctx, a.cfg.pool, a.cfg.schema, version)
}

// rebuild registers the next version of the statement projection; the
// running runner builds it beside the active one.
func (a *app) rebuild(ctx context.Context) (int, error) {
	if a.memProj != nil {
		return a.memProj.Rebuild(ctx, banking.StatementProjection, 0)
	}
	return a.pgProj.Rebuild(ctx, banking.StatementProjection, 0)
}

// cutover makes version active once it has caught up with the active
// version: when every shard's checkpoint of version equals the active
// version's (the same events applied), so that a reader moved from one to
// the other sees the same lines. On PostgreSQL the backend checks the lag
// again (0 events behind the log) in the cut-over's transaction. Neither
// backend can stop the active version's runner between that check and the
// switch: in that window (microseconds in memory, the cut-over's
// transaction on PostgreSQL) it could commit one more batch, and a
// reader would see that batch's lines disappear until v2 applies it a
// poll later; the self-check's verdict counts such reads.
func (a *app) cutover(ctx context.Context, version int) error {
	for {
		if err := a.statement.WaitForNonStale(ctx); err != nil {
			return err
		}
		if even, err := a.even(ctx, version); err != nil || !even {
			if err != nil {
				return err
			}
			continue
		}
		if a.memProj != nil {
			return a.memProj.Cutover(ctx, banking.StatementProjection, version)
		}
		err := a.pgProj.Cutover(ctx, banking.StatementProjection, version, 0)
		if !errors.Is(err, projections.ErrLagging) {
			return err
		}
	}
}

// even reports whether every shard of version has the checkpoint of the
// active version's shard of the same number.
func (a *app) even(ctx context.Context, version int) (bool, error) {
	var st []projections.ShardStatus
	var err error
	if a.memProj != nil {
		st, err = a.memProj.Status(ctx, banking.StatementProjection)
	} else {
		st, err = a.pgProj.Status(ctx, banking.StatementProjection)
	}
	if err != nil {
		return false, err
	}
	active, next := map[int]string{}, map[int]string{}
	for _, s := range st {
		switch {
		case s.Version == version:
			next[s.Shard] = s.Cursor
		case s.VersionStatus == "active":
			active[s.Shard] = s.Cursor
		}
	}
	if len(next) == 0 || len(next) != len(active) {
		return false, nil
	}
	for shard, cur := range next {
		if active[shard] != cur {
			return false, nil
		}
	}
	return true, nil
}

// migrate applies the embedded migrations to schema.
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	if _, err := postgres.Migrate(ctx, pool, schema); err != nil {
		return fmt.Errorf("migrate schema %s: %w", schema, err)
	}
	return nil
}

// dropSchema removes a self-check's schema.
func dropSchema(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	_, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	return err
}
