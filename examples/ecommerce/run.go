package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/internal/cli"
	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/service"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/twmb/franz-go/pkg/kgo"
)

// config is one self-check run.
type config struct {
	brokers     []string // empty: an embedded kfake cluster
	kafka       []kgo.Opt
	databaseURL string // empty: the memory stores
	schema      string // empty: a fresh one per run
	context     string
	scenario    string
	orders      int
	seed        uint64
	partitions  int
	timing      Timing
	timeout     time.Duration
	watch       bool
	stdout      io.Writer
	stderr      io.Writer
}

// run runs one self-check and returns an error when an invariant does
// not hold (after printing the verdict).
func run(ctx context.Context, c config) error {
	if _, ok := scenarios[c.scenario]; !ok {
		return fmt.Errorf("unknown scenario %q (have: %s)", c.scenario, strings.Join(scenarioNames, ", "))
	}
	start := time.Now()
	tl := &timeline{w: c.stdout, start: start, on: c.watch}
	kb, err := exampleapp.OpenBroker(c.brokers, 0)
	if err != nil {
		return err
	}
	defer kb.Close()
	seeds, where := kb.Seeds, kb.Where
	c.kafka = kb.ClientOpts(c.kafka)
	storeName := "memory stores"
	var pool *pgxpool.Pool
	if c.databaseURL != "" {
		var err error
		if pool, err = pgxpool.New(ctx, c.databaseURL); err != nil {
			return fmt.Errorf("database: %w", err)
		}
		defer pool.Close()
		if c.schema == "" {
			c.schema = "ecommerce_" + tagOf(c.context)
		}
		if _, err := postgres.Migrate(ctx, pool, c.schema); err != nil {
			return fmt.Errorf("migrate schema %s: %w", c.schema, err)
		}
		storeName = "PostgreSQL schema " + c.schema
	}
	fmt.Fprintf(c.stdout, "ecommerce: scenario %q — %s\n  %d orders, seed %d, %s, %s, context %s\n",
		c.scenario, scenarios[c.scenario], c.orders, c.seed, where, storeName, c.context)
	if pool != nil {
		tl.note("schema %s migrated", c.schema)
	}

	t := NewTopics(c.context)
	adminCl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(seeds...)}, c.kafka...)...)
	if err != nil {
		return err
	}
	defer adminCl.Close()
	if err := ensureTopics(ctx, adminCl, t, int32(c.partitions), 1); err != nil {
		return err
	}
	tl.note("%d topics ready", len(topicSpecs(t, 1, 1)))
	plan, stock := planOrders(c)
	var paymentsGate chan struct{}
	if c.scenario == "payment-timeout" {
		paymentsGate = make(chan struct{})
	}
	logger := slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	a, err := newApp(ctx, appConfig{seeds: seeds, kafka: c.kafka, pool: pool, schema: c.schema, topics: t, timing: c.timing,
		partitions: int32(c.partitions), replication: 1, log: logger, sagaLog: slog.New(slog.DiscardHandler), onTransition: tl.transition, paymentsGate: paymentsGate, fetchWait: 100 * time.Millisecond})
	if err != nil {
		return err
	}
	defer a.close()
	if c.scenario == "refund-down" {
		a.gateway.SetRefundsDown(true)
		tl.note("the payment gateway refuses refunds")
	}
	if paymentsGate != nil {
		tl.note("the payment service is down until every saga of the first batch timed out waiting for it")
	}

	// Everything runs under service.Run, as in `serve`.
	wctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	runErr := make(chan error, 1)
	go func() { runErr <- service.Run(wctx, service.Options{ShutdownTimeout: 30 * time.Second}, a.workers...) }()
	var tapWG sync.WaitGroup
	if c.watch {
		tapWG.Go(func() { tl.tap(wctx, seeds, c.kafka, t) })
	}
	defer tapWG.Wait()
	defer stopWorkers()
	failed := func() error {
		select {
		case err := <-runErr:
			if err == nil {
				err = errors.New("workers stopped")
			}
			return fmt.Errorf("workers: %w", err)
		default:
			return nil
		}
	}

	// Stock, then the orders.
	stockSender, err := producers.NewSender(a.client, a.reg, t.Inventory, "/"+t.Context+"/warehouse")
	if err != nil {
		return err
	}
	for _, sku := range slices.Sorted(mapsKeys(stock)) {
		cmd, err := stockSender.Command(StockID(sku), AddStock{Quantity: stock[sku]})
		if err != nil {
			return err
		}
		if err := stockSender.Send(ctx, cmd); err != nil {
			return err
		}
		tl.note("stock of %s: %d", sku, stock[sku])
	}
	place := func(batch int) error {
		for _, p := range plan {
			if p.batch != batch {
				continue
			}
			cmd, err := a.orders.Command(p.id, p.cmd)
			if err != nil {
				return err
			}
			if err := a.orders.Send(ctx, cmd); err != nil {
				return err
			}
		}
		return nil
	}
	if err := place(0); err != nil {
		return err
	}
	// Bad input: a record that is not a CloudEvent. The orders group
	// dead-letters it with the reason and goes on.
	if err := a.client.ProduceSync(ctx, &kgo.Record{Topic: t.Orders, Key: []byte("poison"), Value: []byte("{not a command")}).FirstErr(); err != nil {
		return err
	}
	tl.note("sent a record that is not a CloudEvent to %s", t.Orders)
	deadline := time.Now().Add(c.timeout)
	if paymentsGate != nil {
		go func() {
			defer close(paymentsGate)
			for ctx.Err() == nil && time.Now().Before(deadline) {
				if timedOut(ctx, a, plan) {
					tl.note("every saga of the first batch timed out and compensates; the payment service is back")
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	settled := func(batch int, retried bool) (bool, error) {
		for _, p := range plan {
			if p.batch > batch {
				continue
			}
			o, err := a.orderRepo.Load(ctx, p.id)
			if err != nil {
				return false, err
			}
			want := p.expect.order
			if !retried {
				want = append(slices.Clone(want), p.expect.interim...)
			}
			if !slices.Contains(want, o.State.Status) {
				return false, nil
			}
			if len(p.expect.saga) > 0 {
				i, err := a.sagaStore.Get(ctx, t.SagaType, p.id)
				if err != nil || !i.Status.Terminal() {
					return false, nil
				}
			}
		}
		return true, nil
	}
	wait := func(what string, batch int, retried bool) error {
		for {
			if err := failed(); err != nil {
				return err
			}
			ok, err := settled(batch, retried)
			if err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
				tl.note("reading the orders: %v", err)
			}
			if ok {
				tl.note("%s", what)
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if time.Now().After(deadline) {
				tl.note("timed out waiting: %s", what)
				return nil // the verdict shows what is missing
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err := wait("every order of the first batch settled", 0, false); err != nil {
		return err
	}
	retries := 0
	switch c.scenario {
	case "payment-timeout":
		if err := place(1); err != nil {
			return err
		}
		tl.note("second batch placed")
		if err := wait("every order of the second batch settled", 1, false); err != nil {
			return err
		}
	case "refund-down":
		list, err := a.sagaStore.List(ctx, sagas.Filter{Type: t.SagaType, Status: sagas.StatusCompensationFailed, Limit: 10_000})
		if err != nil {
			return err
		}
		tl.note("%d sagas in compensation_failed, their orders Failed; every other order settled", len(list))
		a.gateway.SetRefundsDown(false)
		tl.note("the payment gateway refunds again; the operator retries each of them")
		for _, i := range list {
			if err := retry(ctx, a, c, i.ID); err != nil {
				return fmt.Errorf("retry %s: %w", i.ID, err)
			}
			retries++
		}
		if err := wait("every retried saga finished", 1, true); err != nil {
			return err
		}
	}
	elapsed := time.Since(start)
	rows, err := verdict(ctx, a, c, plan, stock, retries)
	if err != nil {
		return err
	}
	stopWorkers()
	if err := <-runErr; err != nil {
		rows = append(rows, verdictRow{name: "clean stop", detail: err.Error()})
	} else {
		rows = append(rows, verdictRow{name: "clean stop", detail: "every worker stopped on the shutdown", ok: true})
	}
	tapWG.Wait()
	return printVerdict(c.stdout, rows, elapsed)
}

// timedOut reports whether every saga of the first batch compensates
// (its payment timed out).
func timedOut(ctx context.Context, a *app, plan []planned) bool {
	for _, p := range plan {
		if p.batch != 0 || len(p.expect.saga) == 0 {
			continue
		}
		i, err := a.sagaStore.Get(ctx, a.cfg.topics.SagaType, p.id)
		if err != nil || i.Status != sagas.StatusCompensating {
			return false
		}
	}
	return true
}

// retry runs an operator's retry of a compensation_failed saga: with
// PostgreSQL through `orchestrix sagas retry` itself (internal/cli: an
// inbox record in the outbox, published by the relay), with the memory
// store through the runtime's admin call (Runtime.Retry).
func retry(ctx context.Context, a *app, c config, id string) error {
	if c.databaseURL == "" {
		return a.rt.Retry(ctx, id, uuid.NewString(), "gateway back: retry the refund")
	}
	var out, errOut strings.Builder
	code := cli.Run(ctx, []string{"sagas", "retry", id, "--type", a.cfg.topics.SagaType, "--database-url", c.databaseURL,
		"--schema", c.schema, "--note", "gateway back: retry the refund"}, &out, &errOut)
	if code != 0 {
		return fmt.Errorf("orchestrix sagas retry exited %d: %s", code, strings.TrimSpace(errOut.String()))
	}
	return nil
}

// tagOf returns the part of a run's context that names its orders, SKUs
// and schema: lower-case letters, digits and underscores.
func tagOf(context string) string {
	t := strings.ToLower(strings.TrimPrefix(context, "ecommerce-"))
	return strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '_'
	}, t)
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
