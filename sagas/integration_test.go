package sagas_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Transfer is the state of the money-transfer saga of these tests: debit
// From, credit To with Amount-1, credit Fee with 1; compensations refund
// From and take the credit back from UndoFrom (normally To).
type Transfer struct {
	From, To, Fee, UndoFrom string
	Amount                  int64
	CreditTopic             string
}

// env is one test's services: a schema, a context's topics, a saga type.
type env struct {
	seeds []string
	pool  *pgxpool.Pool
	store *postgres.Store
	bc    string
	typ   string
	reg   *codec.Registry
	adm   *kadm.Client
}

func newEnv(t *testing.T) *env { return newEnvN(t, 1) }

// newEnvN is newEnv with an inbox of the given partitions.
func newEnvN(t testing.TB, inboxPartitions int32) *env {
	t.Helper()
	seeds := testenv.Brokers(t)
	pool := testenv.Pool(t)
	e := &env{seeds: seeds, pool: pool, store: pgtest.Store(t, pool), bc: testenv.Name("sg"), reg: testdomain.Registry(t)}
	e.typ = e.bc + "-transfer"
	e.adm = kadm.NewClient(testenv.Client(t, seeds))
	inbox := sagas.InboxTopic(e.typ)
	specs := append(topics.ForContext(e.bc, 4, 1),
		topics.Spec{Name: inbox, Partitions: inboxPartitions, ReplicationFactor: 1}, // newEnv: one partition, every saga shares it
		topics.Spec{Name: e.bc + ".nowhere", Partitions: 1, ReplicationFactor: 1},
		topics.Spec{Name: consumers.DeadLetterTopic(topics.Commands(e.bc), e.bc+"-aggregates"), Partitions: 1, ReplicationFactor: 1},

		topics.Spec{Name: consumers.DeadLetterTopic(topics.Outcomes(e.bc), e.bc+"-saga-fwd"), Partitions: 1, ReplicationFactor: 1},
		topics.Spec{Name: consumers.DeadLetterTopic(topics.Events(e.bc), e.bc+"-saga-fwd"), Partitions: 1, ReplicationFactor: 1},
	)
	for _, name := range sagas.InboxFailurePolicy().Topics(inbox, e.bc+"-sagas") {
		specs = append(specs, topics.Spec{Name: name, Partitions: inboxPartitions, ReplicationFactor: 1})
	}
	if _, err := topics.Ensure(t.Context(), e.adm, specs...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var names []string
		for _, s := range specs {
			names = append(names, s.Name)
		}
		names = append(names, topics.Events(e.bc)+outbox.CheckpointSuffix, topics.Events(e.bc)+outbox.DeadLetterSuffix)
		_, _ = e.adm.DeleteTopics(context.Background(), names...)
	})
	return e
}

func cmd(topic, agg string, p any) sagas.Command {
	return sagas.Command{Topic: topic, AggregateID: agg, Payload: p}
}

// definition returns the transfer saga; creditTimeout > 0 gives the
// credit step a timeout and no compensation (a maybe-done credit cannot
// be taken back with a debit of the ledger).
func (e *env) definition(t testing.TB, creditTimeout time.Duration) *sagas.Definition[Transfer] {
	d, err := transferDef(e.typ, topics.Commands(e.bc), creditTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func transferDef(typ, commands string, creditTimeout time.Duration) (*sagas.Definition[Transfer], error) {
	credit := sagas.Step[Transfer]{Name: "credit",
		Action: func(s Transfer) (sagas.Command, error) {
			topic := commands
			if s.CreditTopic != "" {
				topic = s.CreditTopic
			}
			return cmd(topic, s.To, testdomain.Post{Amount: s.Amount - 1}), nil
		},
		Compensation: func(s Transfer) (sagas.Command, error) {
			return cmd(commands, s.UndoFrom, testdomain.Post{Amount: 1 - s.Amount}), nil
		}}
	if creditTimeout > 0 {
		credit.Compensation, credit.Timeout = nil, creditTimeout
	}
	return sagas.Define(typ, 1, []sagas.Step[Transfer]{
		{Name: "debit", Action: func(s Transfer) (sagas.Command, error) {
			return cmd(commands, s.From, testdomain.Post{Amount: -s.Amount}), nil
		},
			Compensation: func(s Transfer) (sagas.Command, error) {
				return cmd(commands, s.From, testdomain.Post{Amount: s.Amount}), nil
			}},
		credit,
		{Name: "fee", Action: func(s Transfer) (sagas.Command, error) { return cmd(commands, s.Fee, testdomain.Post{Amount: 1}), nil },
			Policy: sagas.Retry(50*time.Millisecond, 2)},
	}, sagas.CompensationPolicy[Transfer](sagas.Retry(50*time.Millisecond, 3), 10*time.Second))
}

func (e *env) runtime(t testing.TB, d *sagas.Definition[Transfer]) *sagas.Runtime {
	t.Helper()
	rt, err := newRuntime(e.pool, e.store.Schema(), e.reg, d, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func newRuntime(pool *pgxpool.Pool, schema string, reg *codec.Registry, d *sagas.Definition[Transfer], log *slog.Logger, opts ...sagas.RuntimeOption) (*sagas.Runtime, error) {
	st, err := sagas.NewPostgresStore(pool, schema)
	if err != nil {
		return nil, err
	}
	el, err := postgres.NewElector(pool, stores.ElectorConfig{Role: sagas.TimerRole(d.Type()) + schema, Lease: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	return sagas.NewRuntime(st, reg, []sagas.Saga{d}, append([]sagas.RuntimeOption{sagas.WithElector(el), sagas.TimerPoll(100*time.Millisecond, 1000),
		sagas.WithLogger(log)}, opts...)...)
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("SAGAS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// process runs everything a deployment runs: the relay, the ledger
// processor, the forwarder, the saga inbox group and the timer poller.
// dup, if set, says how many times the forwarder forwards each record.
type process struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
}

func (e *env) start(t *testing.T, rt *sagas.Runtime, dup func() int) *process {
	t.Helper()
	p := e.startInfra(t)
	if err := startSaga(p, e.seeds, e.bc, rt, dup, nil, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	return p
}

func newProcess() *process {
	ctx, cancel := context.WithCancel(context.Background())
	return &process{ctx: ctx, cancel: cancel}
}

func (p *process) run(name string, f func(context.Context) error) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := f(p.ctx); err != nil && p.ctx.Err() == nil {
			p.mu.Lock()
			p.errs = append(p.errs, fmt.Errorf("%s: %w", name, err))
			p.mu.Unlock()
		}
	}()
}

// startInfra runs the relay and the ledger processor.
func (e *env) startInfra(t *testing.T) *process {
	t.Helper()
	p := newProcess()
	if err := startInfra(p, e.seeds, e.bc, e.store, e.reg, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p
}

func startInfra(p *process, seeds []string, bc string, store *postgres.Store, reg *codec.Registry, log *slog.Logger) error {
	relay, err := outbox.NewRelay(store, seeds, outbox.ToTopic(topics.Events(bc)), outbox.Lease(2*time.Second), outbox.WithLogger(log),
		outbox.TransactionalID("orchestrix-relay."+bc))
	if err != nil {
		return err
	}
	p.run("relay", relay.Run)
	agg, err := testdomain.NewAggregate()
	if err != nil {
		return err
	}
	repo, err := aggregates.NewRepository(agg, store, reg, "/"+bc)
	if err != nil {
		return err
	}
	cl, err := producers.NewClient(seeds)
	if err != nil {
		return err
	}
	proc, err := aggregates.NewProcessor(repo, aggregates.WithOutcomes(cl, topics.Outcomes(bc)))
	if err != nil {
		return err
	}
	procGroup, err := consumers.New(seeds, bc+"-aggregates", []string{topics.Commands(bc)}, proc, fast, consumers.WithLogger(log))
	if err != nil {
		return err
	}
	p.run("processor", func(ctx context.Context) error { defer cl.Close(); return procGroup.Run(ctx) })
	return nil
}

var fast = consumers.WithClientOpts(kgo.SessionTimeout(6*time.Second), kgo.HeartbeatInterval(500*time.Millisecond), kgo.FetchMaxWait(50*time.Millisecond))

// startSaga runs what a saga service runs: the forwarder, the inbox
// group and the timer poller. dup, if set, says how many times the
// forwarder forwards each record; forwarded, if set, is called after
// each record is forwarded (acknowledged by Kafka), before the
// forwarder group commits its offset.
func startSaga(p *process, seeds []string, bc string, rt *sagas.Runtime, dup func() int, forwarded func(), log *slog.Logger) error {
	fcl, err := producers.NewClient(seeds)
	if err != nil {
		return err
	}
	fwd, err := sagas.NewForwarder(fcl, topics.Outcomes(bc), topics.Events(bc), rt)
	if err != nil {
		return err
	}
	var h consumers.Handler = fwd
	if dup != nil || forwarded != nil {
		h = consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
			n := 1
			if dup != nil {
				n = dup()
			}
			for range n {
				if err := fwd.Handle(ctx, r); err != nil {
					return err
				}
			}
			if forwarded != nil {
				forwarded()
			}
			return nil
		})
	}
	fwdGroup, err := consumers.New(seeds, bc+"-saga-fwd", fwd.Topics(), h, fast, consumers.WithLogger(log))
	if err != nil {
		return err
	}
	p.run("forwarder", func(ctx context.Context) error { defer fcl.Close(); return fwdGroup.Run(ctx) })
	inboxGroup, err := consumers.New(seeds, bc+"-sagas", []string{rt.Inbox()}, rt, fast, consumers.WithLogger(log),
		consumers.WithFailurePolicy(sagas.InboxFailurePolicy()))
	if err != nil {
		return err
	}
	p.run("inbox", inboxGroup.Run)
	p.run("timers", rt.RunTimers)
	return nil
}

func (p *process) stop() {
	p.cancel()
	p.wg.Wait()
}

func (p *process) check(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := errors.Join(p.errs...); err != nil {
		t.Fatal(err)
	}
}

// send sends commands straight to the context's command topic and waits
// for their acks (account setup).
func (e *env) send(t testing.TB, cmds ...orchestrix.Command) {
	t.Helper()
	cl := testenv.Client(t, e.seeds)
	for _, c := range cmds {
		c.Source, c.Time = "/test", time.Now()
		if c.ID == "" {
			c.ID = testenv.Name("c")
		}
		if err := e.reg.EncodeCommand(&c); err != nil {
			t.Fatal(err)
		}
		r, err := codec.CommandToRecord(topics.Commands(e.bc), c)
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.ProduceSync(t.Context(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

func open(id string, deposit int64) []orchestrix.Command {
	out := []orchestrix.Command{{AggregateID: id, Payload: testdomain.Open{Name: id}}}
	if deposit > 0 {
		out = append(out, orchestrix.Command{AggregateID: id, Payload: testdomain.Post{Amount: deposit}})
	}
	return out
}

// balances sums the stored postings per account.
func (e *env) balances(t testing.TB) map[string]int64 {
	t.Helper()
	rows, err := e.pool.Query(t.Context(), "SELECT stream_id, type, data FROM "+pgx.Identifier{e.store.Schema(), "events"}.Sanitize())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for rows.Next() {
		var id, typ string
		var data []byte
		if err := rows.Scan(&id, &typ, &data); err != nil {
			t.Fatal(err)
		}
		if typ == testdomain.TypePosted {
			var p testdomain.Posted
			if err := json.Unmarshal(data, &p); err != nil {
				t.Fatal(err)
			}
			out[id] += p.Amount
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// wait waits until instance id has a status in want.
func wait(t *testing.T, rt *sagas.Runtime, id string, d time.Duration, want ...sagas.Status) sagas.Instance {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		i, err := rt.Store().Get(t.Context(), rt.Type(), id)
		if err == nil {
			for _, w := range want {
				if i.Status == w {
					return i
				}
			}
		}
		if time.Now().After(deadline) {
			h, _ := rt.Store().History(t.Context(), rt.Type(), id)
			for _, tr := range h {
				t.Logf("  %d %s→%s %s (%s)", tr.Version, tr.From, tr.To, tr.Note, tr.InputID)
			}
			t.Fatalf("saga %s: status %q (err %v) after %s, want %v", id, i.Status, err, d, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) waitBalance(t testing.TB, want map[string]int64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := e.balances(t)
		ok := true
		for k, v := range want {
			ok = ok && got[k] == v
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("balances %v, want %v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTransferIntegration: on real Kafka and PostgreSQL with the real
// ledger processor and relay, each reply forwarded 1-5 times:
// a happy 3-step transfer makes one transition per step; a failing fee
// step compensates credit then debit in reverse; a compensation that
// always fails leaves compensation_failed while the next saga on the same
// inbox partition completes, and an operator retry finishes it once the
// participant recovers.
func TestTransferIntegration(t *testing.T) {
	e := newEnv(t)
	rt := e.runtime(t, e.definition(t, 0))
	p := e.start(t, rt, func() int { return 1 + rand.IntN(5) })
	ctx := t.Context()
	var setup []orchestrix.Command
	for _, a := range []string{"a", "b", "fee"} {
		setup = append(setup, open(a, 100)...)
	}
	setup = append(setup, open("undo-later", 0)...)
	e.send(t, setup...)
	e.waitBalance(t, map[string]int64{"a": 100, "b": 100, "fee": 100}, 30*time.Second)

	// 1. Happy path.
	if err := rt.Start(ctx, "happy", Transfer{From: "a", To: "b", Fee: "fee", UndoFrom: "b", Amount: 10}); err != nil {
		t.Fatal(err)
	}
	i := wait(t, rt, "happy", 30*time.Second, sagas.StatusCompleted, sagas.StatusCompensated, sagas.StatusCompensationFailed)
	if i.Status != sagas.StatusCompleted || i.Version != 4 {
		t.Fatalf("happy: %+v", i)
	}
	e.waitBalance(t, map[string]int64{"a": 90, "b": 109, "fee": 101}, 10*time.Second)

	// 2. The fee account does not exist: fee is rejected twice, credit and
	// debit are compensated in that order.
	if err := rt.Start(ctx, "nofee", Transfer{From: "a", To: "b", Fee: "missing", UndoFrom: "b", Amount: 10}); err != nil {
		t.Fatal(err)
	}
	i = wait(t, rt, "nofee", 30*time.Second, sagas.StatusCompleted, sagas.StatusCompensated, sagas.StatusCompensationFailed)
	if i.Status != sagas.StatusCompensated {
		t.Fatalf("nofee: %+v", i)
	}
	h, err := rt.Store().History(ctx, rt.Type(), "nofee")
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, tr := range h {
		steps = append(steps, fmt.Sprintf("%s/%d", tr.To, tr.Step))
	}
	// start, debit ok, credit ok, fee rejected (retry timer), fee try 2,
	// fee rejected → compensate credit (step 1), then debit (step 0).
	want := "running/0 running/1 running/2 running/2 running/2 compensating/1 compensating/0 compensated/0"
	if got := fmt.Sprint(steps); got != "["+want+"]" {
		t.Fatalf("nofee history %v, want [%s]", got, want)
	}
	e.waitBalance(t, map[string]int64{"a": 90, "b": 109, "fee": 101}, 10*time.Second)

	// 3. The credit's compensation always fails (it withdraws from an
	// empty account); the next saga on the same partition completes.
	if err := rt.Start(ctx, "stuck", Transfer{From: "a", To: "b", Fee: "missing", UndoFrom: "undo-later", Amount: 10}); err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, "after", Transfer{From: "a", To: "b", Fee: "fee", UndoFrom: "b", Amount: 20}); err != nil {
		t.Fatal(err)
	}
	i = wait(t, rt, "stuck", 30*time.Second, sagas.StatusCompleted, sagas.StatusCompensated, sagas.StatusCompensationFailed)
	if i.Status != sagas.StatusCompensationFailed || i.Step != 1 || i.Reason == "" {
		t.Fatalf("stuck: %+v", i)
	}
	if i := wait(t, rt, "after", 30*time.Second, sagas.StatusCompleted); i.Version != 4 {
		t.Fatalf("after: %+v", i)
	}
	failed, err := rt.Store().List(ctx, sagas.Filter{Type: rt.Type(), Status: sagas.StatusCompensationFailed})
	if err != nil || len(failed) != 1 || failed[0].ID != "stuck" {
		t.Fatalf("list compensation_failed: %+v %v", failed, err)
	}
	// The participant recovers (the account gets the money), the operator
	// retries through the inbox, as `orchestrix sagas retry` does.
	e.send(t, orchestrix.Command{AggregateID: "undo-later", Payload: testdomain.Post{Amount: 9}})
	e.waitBalance(t, map[string]int64{"undo-later": 9}, 10*time.Second)
	w, _ := outbox.NewWriter(e.store.Schema())
	if err := w.Write(ctx, e.pool, sagas.OperatorMessage(rt.Type(), "stuck", sagas.KindRetry, "op-1", "refilled undo-later")); err != nil {
		t.Fatal(err)
	}
	if i := wait(t, rt, "stuck", 30*time.Second, sagas.StatusCompensated); i.Status != sagas.StatusCompensated {
		t.Fatal(i)
	}
	// Money: a 100-10 (happy) -20 (after); b +9 +19; fee +1 +1; stuck's
	// debit refunded, its credit to b (9) taken back from undo-later.
	e.waitBalance(t, map[string]int64{"a": 70, "b": 137, "fee": 102, "undo-later": 0}, 10*time.Second)
	// One transition per reply, however often forwarded: every command the
	// saga sent is in the outbox once.
	var n int
	if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{e.store.Schema(), "outbox"}.Sanitize()+" WHERE topic = $1", topics.Commands(e.bc)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	// happy 3, nofee 3+1+2, stuck 3+1 + credit comp 3 tries + retry 1 + debit comp 1, after 3
	if want := 3 + 6 + 4 + 3 + 1 + 1 + 3; n != want {
		t.Fatalf("%d commands in the outbox, want %d", n, want)
	}
	// The duplicates did reach the inbox topic, and the inbox table holds
	// each distinct input once.
	var inputs int
	if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{e.store.Schema(), "saga_inbox"}.Sanitize()).Scan(&inputs); err != nil {
		t.Fatal(err)
	}
	ends, err := e.adm.ListEndOffsets(ctx, rt.Inbox())
	if err != nil {
		t.Fatal(err)
	}
	var records int64
	ends.Each(func(o kadm.ListedOffset) { records += o.Offset })
	if records <= int64(inputs) {
		t.Fatalf("%d inbox records for %d distinct inputs: the replies were not duplicated", records, inputs)
	}
	t.Logf("%d inbox records, %d distinct inputs, %d commands", records, inputs, n)
	p.check(t)
}

func contextWithDeadline(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}
