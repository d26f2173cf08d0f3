package banking_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// childEnv selects the processor-process mode of the test binary.
const childEnv = "BANKING_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "processor" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

// runChild runs one aggregate processor on the real services until
// SIGTERM (or SIGKILL, which is the point).
func runChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Error("pool", "err", err)
		return 1
	}
	defer pool.Close()
	store, err := postgres.New(ctx, pool, postgres.WithSchema(os.Getenv("BANKING_SCHEMA")))
	if err != nil {
		log.Error("store", "err", err)
		return 1
	}
	seeds := []string{os.Getenv("KAFKA_BROKERS")}
	bc := os.Getenv("BANKING_CONTEXT")
	if err := runProcessor(ctx, seeds, bc, store, log, kgo.SessionTimeout(6*time.Second), kgo.HeartbeatInterval(500*time.Millisecond)); err != nil {
		log.Error("processor", "err", err)
		return 1
	}
	return 0
}

func runProcessor(ctx context.Context, seeds []string, bc string, store stores.EventStore, log *slog.Logger, opts ...kgo.Opt) error {
	reg := codec.NewRegistry()
	if err := banking.Register(reg); err != nil {
		return err
	}
	agg, err := banking.NewAggregate(aggregates.SnapshotEvery(50))
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
	defer cl.Close()
	proc, err := aggregates.NewProcessor(repo, aggregates.WithOutcomes(cl, topics.Outcomes(bc)), aggregates.WithProcessorLogger(log))
	if err != nil {
		return err
	}
	g, err := consumers.New(seeds, bc+"-aggregates", []string{topics.Commands(bc)}, proc, consumers.WithLogger(log), consumers.WithClientOpts(opts...))
	if err != nil {
		return err
	}
	return g.Run(ctx)
}

func setupTopics(t *testing.T, seeds []string, bc string, partitions int32) {
	t.Helper()
	adm := kadm.NewClient(testenv.Client(t, seeds))
	specs := append(topics.ForContext(bc, partitions, 1), topics.Spec{Name: consumers.DeadLetterTopic(topics.Commands(bc), bc+"-aggregates"), Partitions: 1, ReplicationFactor: 1})
	if _, err := topics.Ensure(t.Context(), adm, specs...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var names []string
		for _, s := range specs {
			names = append(names, s.Name)
		}
		_, _ = adm.DeleteTopics(context.Background(), names...)
	})
}

// workload returns, per aggregate, an open command followed by deposits
// whose amounts are their sequence numbers 1, 2, 3, ... so that the
// stored events reveal order, gaps and duplicates.
func workload(t *testing.T, sender *producers.Sender, aggregates, total int) [][]orchestrix.Command {
	t.Helper()
	out := make([][]orchestrix.Command, 0, total/aggregates)
	var round []orchestrix.Command
	for i := range total {
		id := fmt.Sprintf("acct-%04d", i%aggregates)
		seq := i / aggregates
		var payload any = banking.Deposit{Amount: int64(seq)}
		if seq == 0 {
			payload = banking.OpenAccount{Owner: id}
		}
		c, err := sender.Command(id, payload)
		if err != nil {
			t.Fatal(err)
		}
		round = append(round, c)
		if len(round) == aggregates {
			out = append(out, round)
			round = nil
		}
	}
	return out
}

func send(t *testing.T, sender *producers.Sender, cl *kgo.Client, cmds []orchestrix.Command) {
	t.Helper()
	var mu sync.Mutex
	var first error
	for _, c := range cmds {
		sender.SendAsync(t.Context(), c, func(err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil && first == nil {
				first = err
			}
		})
	}
	if err := cl.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if first != nil {
		t.Fatal(first)
	}
}

// checkStreams verifies every aggregate: versions 1..n, an open first,
// then deposits 1, 2, ... n-1 (order kept, none twice, none missing).
func checkStreams(t *testing.T, store stores.EventStore, reg *codec.Registry, aggregates, perAggregate int) {
	t.Helper()
	for a := range aggregates {
		id := fmt.Sprintf("acct-%04d", a)
		n := 0
		for e, err := range store.ReadStream(t.Context(), id, 0) {
			if err != nil {
				t.Fatal(err)
			}
			if err := reg.DecodeEvent(&e); err != nil {
				t.Fatal(err)
			}
			n++
			switch p := e.Payload.(type) {
			case banking.AccountOpened:
				if n != 1 {
					t.Fatalf("%s: opened at version %d", id, n)
				}
			case banking.Deposited:
				if p.Amount != int64(n-1) {
					t.Fatalf("%s: version %d is deposit %d, want %d (order broken or duplicate)", id, n, p.Amount, n-1)
				}
			}
		}
		if n != perAggregate {
			t.Fatalf("%s: %d events, want %d", id, n, perAggregate)
		}
	}
}

// TestPipeline runs the pipeline in process on kfake and the memory store,
// with poison records mixed in.
func TestPipeline(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	bc := "bank"
	setupTopics(t, seeds, bc, 4)
	store := memory.New()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- runProcessor(ctx, seeds, bc, store, slog.New(slog.DiscardHandler)) }()

	cl := testenv.Client(t, seeds)
	reg := codec.NewRegistry()
	if err := banking.Register(reg); err != nil {
		t.Fatal(err)
	}
	sender, err := producers.NewSender(cl, reg, topics.Commands(bc), "/test")
	if err != nil {
		t.Fatal(err)
	}
	const aggs, total = 50, 1000
	for _, round := range workload(t, sender, aggs, total) {
		send(t, sender, cl, round)
	}
	// Poison: no CloudEvents headers, an unknown type, an undecodable payload.
	good, _ := sender.Command("acct-0000", banking.Deposit{Amount: 1})
	unknown := good
	unknown.ID, unknown.Type = "poison-unknown", "banking.Mystery"
	bad := good
	bad.ID, bad.Data = "poison-bad-json", []byte("{not json")
	var poison []*kgo.Record
	poison = append(poison, &kgo.Record{Topic: topics.Commands(bc), Key: []byte("acct-0001"), Value: []byte("raw")})
	for _, c := range []orchestrix.Command{unknown, bad} {
		r, err := codec.CommandToRecord(topics.Commands(bc), c)
		if err != nil {
			t.Fatal(err)
		}
		poison = append(poison, r)
	}
	if err := cl.ProduceSync(t.Context(), poison...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() bool { return countAll(t, store) >= total })
	dl := readDeadLetters(t, seeds, consumers.DeadLetterTopic(topics.Commands(bc), bc+"-aggregates"), 3)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("processor: %v", err)
	}
	checkStreams(t, store, reg, aggs, total/aggs)
	for _, r := range dl {
		var class, msg string
		for _, h := range r.Headers {
			switch h.Key {
			case consumers.HeaderErrorClass:
				class = string(h.Value)
			case consumers.HeaderError:
				msg = string(h.Value)
			}
		}
		if class != "permanent" || msg == "" {
			t.Errorf("dead letter %s: class %q error %q", r.Key, class, msg)
		}
		t.Logf("dead letter %s: %s", r.Key, msg)
	}
}

func countAll(t *testing.T, s stores.EventStore) int {
	n := 0
	for _, err := range s.ReadAll(t.Context(), stores.Cursor{}, 0) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	return n
}

func waitFor(t *testing.T, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readDeadLetters(t *testing.T, seeds []string, topic string, n int) []*kgo.Record {
	t.Helper()
	cl := testenv.Client(t, seeds, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n && ctx.Err() == nil {
		out = append(out, cl.PollFetches(ctx).Records()...)
	}
	if len(out) != n {
		t.Fatalf("dead letters: %d, want %d", len(out), n)
	}
	return out
}

// TestProcessorKillIntegration: 3 processor processes in one group over
// 10k commands on 1k aggregates; one is killed with SIGKILL mid-stream and
// a fourth joins. Every aggregate must end at the version its commands
// imply, with its deposits in order, none applied twice.
func TestProcessorKillIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	pool, schema, store := pgStore(t)
	bc := testenv.Name("bank")
	setupTopics(t, seeds, bc, 6)

	start := func() *exec.Cmd {
		c := exec.Command(os.Args[0], "-test.run=^$")
		c.Env = append(os.Environ(), childEnv+"=processor", "BANKING_SCHEMA="+schema, "BANKING_CONTEXT="+bc, "KAFKA_BROKERS="+seeds[0])
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.Process.Signal(syscall.SIGTERM)
			_ = c.Wait()
		})
		return c
	}
	procs := []*exec.Cmd{start(), start(), start()}

	cl := testenv.Client(t, seeds)
	reg := codec.NewRegistry()
	if err := banking.Register(reg); err != nil {
		t.Fatal(err)
	}
	sender, err := producers.NewSender(cl, reg, topics.Commands(bc), "/test")
	if err != nil {
		t.Fatal(err)
	}
	const aggs, total = 1000, 10000
	rounds := workload(t, sender, aggs, total)
	for i, round := range rounds {
		send(t, sender, cl, round)
		time.Sleep(300 * time.Millisecond)
		switch i {
		case 3:
			if err := procs[0].Process.Kill(); err != nil {
				t.Fatal(err)
			}
			t.Log("killed processor 0 with SIGKILL")
		case 5:
			procs = append(procs, start())
			t.Log("started processor 3")
		}
	}
	var events int
	waitFor(t, 3*time.Minute, func() bool {
		if err := pool.QueryRow(t.Context(), "SELECT count(*) FROM "+pgx.Identifier{schema, "events"}.Sanitize()).Scan(&events); err != nil {
			t.Fatal(err)
		}
		return events >= total
	})
	checkStreams(t, store, reg, aggs, total/aggs)
	var dup int
	if err := pool.QueryRow(t.Context(), "SELECT count(*) FROM (SELECT command_id FROM "+pgx.Identifier{schema, "events"}.Sanitize()+" GROUP BY command_id HAVING count(*) > 1) d").Scan(&dup); err != nil {
		t.Fatal(err)
	}
	if dup != 0 || events != total {
		rows, _ := pool.Query(t.Context(), "SELECT command_id, count(*) FROM "+pgx.Identifier{schema, "events"}.Sanitize()+" GROUP BY command_id HAVING count(*) > 1 LIMIT 5")
		for rows.Next() {
			var id string
			var n int
			_ = rows.Scan(&id, &n)
			t.Logf("command %q: %d events", id, n)
		}
		rows.Close()
		t.Fatalf("%d commands applied twice; %d events, want %d", dup, events, total)
	}
	for _, p := range procs[1:] {
		if err := p.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := p.Wait(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("processor exit after SIGTERM: %v", err)
		}
	}
}

// TestShutdownUnderLoadIntegration stops a processor (context cancelled,
// graceful drain) while commands stream in, starts another, and checks
// that every command was applied exactly once, in order.
func TestShutdownUnderLoadIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	_, _, store := pgStore(t)
	bc := testenv.Name("bank")
	setupTopics(t, seeds, bc, 4)
	log := slog.New(slog.DiscardHandler)
	startProc := func() (context.CancelFunc, chan error) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- runProcessor(ctx, seeds, bc, store, log) }()
		return cancel, done
	}
	stop1, done1 := startProc()

	cl := testenv.Client(t, seeds)
	reg := codec.NewRegistry()
	if err := banking.Register(reg); err != nil {
		t.Fatal(err)
	}
	sender, err := producers.NewSender(cl, reg, topics.Commands(bc), "/test")
	if err != nil {
		t.Fatal(err)
	}
	const aggs, total = 200, 4000
	for i, round := range workload(t, sender, aggs, total) {
		send(t, sender, cl, round)
		time.Sleep(50 * time.Millisecond)
		if i == 8 {
			stop1() // mid-stream: drains the batch in flight, commits, leaves
			if err := <-done1; err != nil {
				t.Fatalf("first processor: %v", err)
			}
			t.Log("first processor stopped under load")
		}
	}
	stop2, done2 := startProc()
	waitFor(t, 2*time.Minute, func() bool { return countAll(t, store) >= total })
	stop2()
	if err := <-done2; err != nil {
		t.Fatalf("second processor: %v", err)
	}
	checkStreams(t, store, reg, aggs, total/aggs)
	if n := countAll(t, store); n != total {
		t.Fatalf("%d events, want %d", n, total)
	}
}

// pgStore returns a PostgreSQL store on a fresh, migrated schema.
func pgStore(t *testing.T) (*pgxpool.Pool, string, *postgres.Store) {
	t.Helper()
	pool := testenv.Pool(t)
	store := pgtest.Store(t, pool)
	return pool, store.Schema(), store
}
