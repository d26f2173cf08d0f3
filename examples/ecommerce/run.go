package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/internal/cli"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/service"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
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

// scenarios and what each shows.
var scenarios = map[string]string{
	"happy":            "every order is paid, reserved and confirmed (and one order over the quantity limit is placed as Rejected: no saga)",
	"payment-declined": "a third of the cards are declined: those orders are cancelled, nothing to refund",
	"out-of-stock":     "the SKU has stock for half the orders: the others are refunded and cancelled",
	"payment-timeout":  "the payment service is down for the first orders: their durable timeouts fire, the late captures are refunded and the orders cancelled; orders placed once it is back are confirmed",
	"refund-down":      "out of stock for half the orders while the gateway refuses refunds: those sagas end compensation_failed (orders Failed); the gateway comes back, an operator retry (the code of `orchestrix sagas retry`) finishes them",
}

var scenarioNames = []string{"happy", "payment-declined", "out-of-stock", "payment-timeout", "refund-down"}

// expect is what one order must end as.
type expect struct {
	saga  []sagas.Status // acceptable final saga statuses (none: no saga)
	order []string       // acceptable final order states
	// interim are order states also accepted before the operator's
	// retry (refund-down: Failed).
	interim []string
}

// planned is one order the run places.
type planned struct {
	id     string
	cmd    PlaceOrder
	batch  int // 0: at once; 1: after the first batch ended
	expect expect
}

// outcome of a run, for the verdict.
type verdictRow struct {
	name   string
	detail string
	ok     bool
}

// run runs one self-check and returns an error when an invariant does
// not hold (after printing the verdict).
func run(ctx context.Context, c config) error {
	if _, ok := scenarios[c.scenario]; !ok {
		return fmt.Errorf("unknown scenario %q (have: %s)", c.scenario, strings.Join(scenarioNames, ", "))
	}
	start := time.Now()
	tl := &timeline{w: c.stdout, start: start, on: c.watch}
	seeds, where := c.brokers, "Kafka at "+strings.Join(c.brokers, ",")
	if len(seeds) == 0 {
		fake, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			return fmt.Errorf("start embedded broker: %w", err)
		}
		defer fake.Close()
		seeds, where, c.kafka = fake.ListenAddrs(), "embedded Kafka (kfake)", nil
	}
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
	paymentsAfter := time.Duration(0)
	if c.scenario == "payment-timeout" {
		paymentsAfter = 3 * c.timing.Step
	}
	logger := slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	a, err := newApp(ctx, appConfig{seeds: seeds, kafka: c.kafka, pool: pool, schema: c.schema, topics: t, timing: c.timing,
		partitions: int32(c.partitions), replication: 1, log: logger, sagaLog: slog.New(slog.DiscardHandler), onTransition: tl.transition, paymentsAfter: paymentsAfter, fetchWait: 100 * time.Millisecond})
	if err != nil {
		return err
	}
	defer a.close()
	if c.scenario == "refund-down" {
		a.gateway.SetRefundsDown(true)
		tl.note("the payment gateway refuses refunds")
	}
	if paymentsAfter > 0 {
		tl.note("the payment service is down for %s", paymentsAfter)
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
		tl.note("second batch placed, the payment service is back")
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

// planOrders returns the run's orders and the stock per SKU.
func planOrders(c config) ([]planned, map[string]int) {
	rng := rand.New(rand.NewPCG(c.seed, c.seed^0x9e3779b97f4a7c15))
	tag := tagOf(c.context)
	widget, limited := "widget-"+tag, "limited-"+tag
	stock := map[string]int{widget: 10 * c.orders * MaxQuantity}
	confirmed := expect{saga: []sagas.Status{sagas.StatusCompleted}, order: []string{StateConfirmed}}
	cancelled := expect{saga: []sagas.Status{sagas.StatusCompensated}, order: []string{StateCancelled}}
	var plan []planned
	add := func(i, batch int, sku string, qty int, card string, e expect) {
		id := fmt.Sprintf("o-%s-%04d", tag, i)
		plan = append(plan, planned{id: id, batch: batch, expect: e, cmd: PlaceOrder{Customer: fmt.Sprintf("customer-%d", rng.IntN(1000)),
			SKU: sku, Quantity: qty, Amount: int64(qty) * (500 + rng.Int64N(9500)), Card: card}})
	}
	good := "4242-4242-4242-4242"
	n := c.orders
	switch c.scenario {
	case "happy":
		for i := range n {
			add(i, 0, widget, 1+rng.IntN(3), good, confirmed)
		}
	case "payment-declined":
		declined := 0
		for i := range n {
			if rng.IntN(3) == 0 || (i == n-1 && declined == 0) {
				declined++
				add(i, 0, widget, 1+rng.IntN(3), DeclinedCard, cancelled)
				continue
			}
			add(i, 0, widget, 1+rng.IntN(3), good, confirmed)
		}
	case "out-of-stock", "refund-down":
		// Which orders get the stock is decided by the order the
		// reservations arrive in: any may be confirmed or cancelled; the
		// verdict checks that exactly the stock was sold.
		stock[limited] = n / 2
		either := expect{saga: []sagas.Status{sagas.StatusCompleted, sagas.StatusCompensated}, order: []string{StateConfirmed, StateCancelled}}
		if c.scenario == "refund-down" {
			either.interim = []string{StateFailed}
		}
		for i := range n {
			add(i, 0, limited, 1, good, either)
		}
	case "payment-timeout":
		half := max(1, n/2)
		for i := range n {
			if i < half {
				add(i, 0, widget, 1+rng.IntN(3), good, cancelled)
			} else {
				add(i, 1, widget, 1+rng.IntN(3), good, confirmed)
			}
		}
	}
	// Every run also places one order over the quantity limit: it is
	// placed as Rejected and starts no saga.
	add(n, 0, widget, MaxQuantity+1, good, expect{order: []string{StateRejected}})
	return plan, stock
}

// verdict checks the invariants against the stores.
func verdict(ctx context.Context, a *app, c config, plan []planned, stock map[string]int, retries int) ([]verdictRow, error) {
	var rows []verdictRow
	// Fold every event of the run from the event store, in log order.
	type payment struct{ captured, refunded int64 }
	level := map[string]int{}    // stock per SKU stream
	minLevel := map[string]int{} // lowest seen
	reserved := map[string]int{} // net reserved per order
	pays := map[string]*payment{}
	stockEvents, payEvents := 0, 0
	var cur stores.Cursor
	for {
		n := 0
		for e, err := range a.events.ReadAll(ctx, cur, 1000) {
			if err != nil {
				return nil, fmt.Errorf("read events: %w", err)
			}
			n++
			cur = e.Cursor
			ev := e.Event
			if err := a.reg.DecodeEvent(&ev); err != nil {
				return nil, err
			}
			switch p := ev.Payload.(type) {
			case StockAdded:
				level[ev.StreamID] += p.Quantity
				stockEvents++
			case StockReserved:
				level[ev.StreamID] -= p.Quantity
				reserved[p.OrderID] += p.Quantity
				stockEvents++
			case StockReleased:
				level[ev.StreamID] += p.Quantity
				reserved[p.OrderID] -= p.Quantity
				stockEvents++
			case PaymentCaptured:
				if pays[p.OrderID] == nil {
					pays[p.OrderID] = &payment{}
				}
				pays[p.OrderID].captured += p.Amount
				payEvents++
			case PaymentRefunded:
				if pays[p.OrderID] == nil {
					pays[p.OrderID] = &payment{}
				}
				pays[p.OrderID].refunded += p.Amount
				payEvents++
			}
			if l, ok := level[ev.StreamID]; ok && l < minLevel[ev.StreamID] {
				minLevel[ev.StreamID] = l
			}
		}
		if n < 1000 {
			break
		}
	}
	negative := []string{}
	for s, l := range minLevel {
		if l < 0 {
			negative = append(negative, fmt.Sprintf("%s went to %d", s, l))
		}
	}
	rows = append(rows, verdictRow{name: "stock never negative", ok: len(negative) == 0,
		detail: orDetail(negative, fmt.Sprintf("%d SKUs, %d stock events folded in log order", len(level), stockEvents))})

	// Orders and sagas.
	states := map[string]string{}
	var wrongOrder, wrongSaga, wrongPay, wrongStock []string
	counts := map[string]int{}
	sagaCounts := map[sagas.Status]int{}
	for _, p := range plan {
		o, err := a.orderRepo.Load(ctx, p.id)
		if err != nil {
			return nil, err
		}
		st := o.State.Status
		states[p.id] = st
		counts[st]++
		if !slices.Contains(p.expect.order, st) {
			wrongOrder = append(wrongOrder, fmt.Sprintf("%s is %s, want %v", p.id, stateName(st), p.expect.order))
		}
		inst, err := a.sagaStore.Get(ctx, a.cfg.topics.SagaType, p.id)
		switch {
		case len(p.expect.saga) == 0:
			if err == nil {
				wrongSaga = append(wrongSaga, fmt.Sprintf("%s started a saga", p.id))
			}
		case err != nil:
			wrongSaga = append(wrongSaga, fmt.Sprintf("%s: %v", p.id, err))
		default:
			sagaCounts[inst.Status]++
			if !slices.Contains(p.expect.saga, inst.Status) {
				wrongSaga = append(wrongSaga, fmt.Sprintf("%s is %s, want %v", p.id, inst.Status, p.expect.saga))
			}
			if c.scenario == "refund-down" && inst.Status == sagas.StatusCompensated {
				h, err := a.sagaStore.History(ctx, a.cfg.topics.SagaType, p.id)
				if err != nil {
					return nil, err
				}
				if !slices.ContainsFunc(h, func(t sagas.Transition) bool { return t.To == sagas.StatusCompensationFailed }) ||
					!slices.ContainsFunc(h, func(t sagas.Transition) bool { return t.InputKind == sagas.KindRetry }) {
					wrongSaga = append(wrongSaga, fmt.Sprintf("%s compensated without passing compensation_failed and a retry", p.id))
				}
			}
		}
		// Money: a confirmed order keeps its payment; any other order
		// was never charged or was refunded in full.
		pay := pays[p.id]
		if pay == nil {
			pay = &payment{}
		}
		switch {
		case st == StateConfirmed && (pay.captured != p.cmd.Amount || pay.refunded != 0):
			wrongPay = append(wrongPay, fmt.Sprintf("confirmed %s: captured %d, refunded %d, amount %d", p.id, pay.captured, pay.refunded, p.cmd.Amount))
		case st != StateConfirmed && pay.captured != pay.refunded:
			wrongPay = append(wrongPay, fmt.Sprintf("%s %s: captured %d, refunded %d", stateName(st), p.id, pay.captured, pay.refunded))
		}
		// Stock: a confirmed order holds its reservation; any other none.
		want := 0
		if st == StateConfirmed {
			want = p.cmd.Quantity
		}
		if reserved[p.id] != want {
			wrongStock = append(wrongStock, fmt.Sprintf("%s %s holds %d items", stateName(st), p.id, reserved[p.id]))
		}
	}
	captured, refundedN := 0, 0
	for _, p := range pays {
		if p.captured > 0 {
			captured++
		}
		if p.refunded > 0 {
			refundedN++
		}
	}
	rows = append(rows, verdictRow{name: "every captured payment: confirmed order or refunded", ok: len(wrongPay) == 0,
		detail: orDetail(wrongPay, fmt.Sprintf("%d captured, %d refunded, %d orders confirmed", captured, refundedN, counts[StateConfirmed]))})
	rows = append(rows, verdictRow{name: "reservations held by confirmed orders only", ok: len(wrongStock) == 0,
		detail: orDetail(wrongStock, "every other reservation released")})
	var sagaSummary []string
	for _, s := range []sagas.Status{sagas.StatusCompleted, sagas.StatusCompensated, sagas.StatusCompensationFailed, sagas.StatusCompensating, sagas.StatusRunning} {
		if sagaCounts[s] > 0 {
			sagaSummary = append(sagaSummary, fmt.Sprintf("%d %s", sagaCounts[s], s))
		}
	}
	if retries > 0 {
		sagaSummary = append(sagaSummary, fmt.Sprintf("%d retried by the operator", retries))
	}
	rows = append(rows, verdictRow{name: "every saga ended in an expected status", ok: len(wrongSaga) == 0,
		detail: orDetail(wrongSaga, strings.Join(sagaSummary, ", "))})
	var orderSummary []string
	for _, s := range []string{StateConfirmed, StateCancelled, StateRejected, StateFailed} {
		if counts[s] > 0 {
			orderSummary = append(orderSummary, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	rows = append(rows, verdictRow{name: "every order ended in an expected state", ok: len(wrongOrder) == 0,
		detail: orDetail(wrongOrder, strings.Join(orderSummary, ", "))})
	if c.scenario == "out-of-stock" || c.scenario == "refund-down" {
		limited := "limited-" + tagOf(c.context)
		rows = append(rows, verdictRow{name: "the limited stock sold out exactly", ok: counts[StateConfirmed] == stock[limited],
			detail: fmt.Sprintf("%d confirmed for a stock of %d", counts[StateConfirmed], stock[limited])})
	}
	if c.scenario == "refund-down" {
		rows = append(rows, verdictRow{name: "the refunds that failed were retried and finished", ok: retries == len(plan)-1-stock["limited-"+tagOf(c.context)],
			detail: fmt.Sprintf("%d sagas in compensation_failed retried", retries)})
	}
	// Dead letters: none expected.
	// Dead letters: exactly the poison record, in the orders group's.
	dlqs := deadLetterTopics(a.cfg.topics)
	poison, err := countRecords(ctx, a.client, dlqs[:1])
	if err != nil {
		return nil, err
	}
	others, err := countRecords(ctx, a.client, dlqs[1:])
	if err != nil {
		return nil, err
	}
	rows = append(rows, verdictRow{name: "only the bad record dead-lettered", ok: poison == 1 && others == 0,
		detail: fmt.Sprintf("%d in %s (want 1), %d in the other dead-letter topics", poison, dlqs[0], others)})
	return rows, nil
}

func orDetail(problems []string, fine string) string {
	if len(problems) == 0 {
		return fine
	}
	sort.Strings(problems)
	if len(problems) > 5 {
		problems = append(problems[:5], fmt.Sprintf("and %d more", len(problems)-5))
	}
	return strings.Join(problems, "; ")
}

// countRecords sums the records in topics (end minus start offsets).
func countRecords(ctx context.Context, cl *kgo.Client, names []string) (int64, error) {
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, names...)
	if err != nil {
		return 0, err
	}
	starts, err := adm.ListStartOffsets(ctx, names...)
	if err != nil {
		return 0, err
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) {
		if s, ok := starts.Lookup(o.Topic, o.Partition); ok {
			n += o.Offset - s.Offset
		}
	})
	return n, nil
}

// printVerdict prints the table and returns an error when a row failed.
func printVerdict(w io.Writer, rows []verdictRow, elapsed time.Duration) error {
	fmt.Fprintf(w, "\nverdict (%.1fs)\n", elapsed.Seconds())
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  INVARIANT\tRESULT\tDETAIL")
	bad := 0
	for _, r := range rows {
		res := "ok"
		if !r.ok {
			res, bad = "VIOLATED", bad+1
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", r.name, res, r.detail)
	}
	_ = tw.Flush()
	if bad > 0 {
		return fmt.Errorf("%d of %d invariants violated", bad, len(rows))
	}
	fmt.Fprintf(w, "all %d invariants hold\n", len(rows))
	return nil
}
