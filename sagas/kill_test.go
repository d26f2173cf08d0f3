package sagas_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/topics"
)

// TestMain runs the saga process of TestKillNineIntegration when the
// test binary is started as its child.
func TestMain(m *testing.M) {
	if os.Getenv("SAGAS_CHILD") == "1" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

// runChild runs the forwarder, the inbox group and the timer poller of
// one saga type until killed or signalled.
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
	reg := codec.NewRegistry()
	if err := testdomain.Register(reg); err != nil {
		return 1
	}
	bc, typ := os.Getenv("SAGAS_BC"), os.Getenv("SAGAS_TYPE")
	creditTimeout, _ := time.ParseDuration(os.Getenv("SAGAS_CREDIT_TIMEOUT"))
	d, err := transferDef(typ, topics.Commands(bc), creditTimeout)
	if err != nil {
		log.Error("definition", "err", err)
		return 1
	}
	// SAGAS_KILL_AT names a commit point; the child SIGKILLs itself the
	// SAGAS_KILL_AFTER-th time it gets there (TestCommitPointKillsIntegration).
	killAt := os.Getenv("SAGAS_KILL_AT")
	killAfter, _ := strconv.ParseInt(os.Getenv("SAGAS_KILL_AFTER"), 10, 64)
	var hits atomic.Int64
	hit := func(point string) {
		if point == killAt && hits.Add(1) == killAfter {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			time.Sleep(time.Hour)
		}
	}
	rt, err := newRuntime(pool, os.Getenv("SAGAS_SCHEMA"), reg, d, log, sagas.OnTransition(func(sagas.Transition) { hit("committed") }))
	if err != nil {
		log.Error("runtime", "err", err)
		return 1
	}
	if pg, ok := rt.Store().(*sagas.PostgresStore); ok && killAt != "committed" && killAt != "forwarded" {
		// Only for the store's own points: with a crash hook the store
		// commits in a round trip of its own, after the "written" point.
		sagas.SetCrashAt(pg, func(point string) error { hit(point); return nil })
	}
	p := newProcess()
	seeds := strings.Split(os.Getenv("KAFKA_BROKERS"), ",")
	if os.Getenv("SAGAS_ALL") == "1" { // the relay and the ledger processor too
		store, err := postgres.New(ctx, pool, postgres.WithSchema(os.Getenv("SAGAS_SCHEMA")))
		if err == nil {
			err = startInfra(p, seeds, bc, store, reg, log)
		}
		if err != nil {
			log.Error("infra", "err", err)
			return 1
		}
	}
	if err := startSaga(p, seeds, bc, rt, nil, func() { hit("forwarded") }, log); err != nil {
		log.Error("start", "err", err)
		return 1
	}
	<-ctx.Done()
	p.stop()
	return 0
}

// TestKillNineIntegration: transfers start at 20/s (a fifth with a
// missing fee account, so they compensate) while the saga process
// (forwarder, inbox group, timer poller) is killed with SIGKILL four
// times at random moments of its work and started again. Every saga ends completed or compensated;
// each instance's history is gapless, the commands in the outbox are
// exactly those its history says it sent (state and commands commit
// together), and the money adds up.
func TestKillNineIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 test")
	}
	h := newChaos(t)
	// Sagas start all along (20/s) while the saga process is killed four
	// times, each time a random moment after it made progress again (a
	// restarted member waits for the killed one's session, 6s, to expire).
	c := h.child()
	for k := range 4 {
		h.loadUntilProgress()
		h.loadFor(time.Duration(rand.IntN(1500)) * time.Millisecond)
		if err := c.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = c.Wait()
		t.Logf("kill %d: %d transitions, %d sagas started", k+1, h.transitions(), h.n)
		c = h.child()
	}
	h.stopAtEnd(c)
	h.verify()
}

// commitPoints are the points TestCommitPointKillsIntegration kills the
// saga process at:
//
//   - read: an input's transaction has inserted its inbox row and read
//     the instance, nothing else;
//   - written: the instance, timer, history and outbox rows are written,
//     not committed;
//   - committed: the transaction committed, the inbox group has not
//     committed the input's offset;
//   - forwarded: the forwarder's copy of an outcome is acknowledged by
//     Kafka, its source offset not committed;
//   - timer-written: the timer poller wrote the TimerFired rows to the
//     outbox and deleted the timers, not committed;
//   - timer-committed: that transaction committed.
var commitPoints = []string{"read", "written", "committed", "forwarded", "timer-written", "timer-committed"}

// TestCommitPointKillsIntegration: transfers start at 20/s (a fifth with
// a missing fee account: rejected, retried after a timer, compensated)
// while the saga process, a re-executed test binary, SIGKILLs itself at
// each commit point in turn, the 1st to 5th time it gets there; a new
// process is started after each death. Every death must be that SIGKILL
// (the point was reached). Then, as in TestKillNineIntegration: every
// saga ends as expected, histories are gapless, the outbox holds exactly
// the commands the histories sent, and the money adds up (each command's
// effect once).
func TestCommitPointKillsIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 test")
	}
	h := newChaos(t)
	for _, point := range commitPoints {
		n := 1 + rand.IntN(5)
		c := h.child("SAGAS_KILL_AT="+point, "SAGAS_KILL_AFTER="+strconv.Itoa(n))
		exited := make(chan error, 1)
		go func() { exited <- c.Wait() }()
		deadline := time.Now().Add(90 * time.Second)
		var err error
	load:
		for {
			select {
			case err = <-exited:
				break load
			default:
			}
			if time.Now().After(deadline) {
				_ = c.Process.Kill()
				<-exited
				t.Fatalf("the saga process did not reach %s %d times in 90s", point, n)
			}
			h.startOne()
			time.Sleep(50 * time.Millisecond)
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("the saga process killed at %s ended with %v, want SIGKILL", point, err)
		}
		t.Logf("killed at %s (its %d. time): %d transitions, %d sagas started", point, n, h.transitions(), h.n)
	}
	c := h.child()
	h.stopAtEnd(c)
	h.loadFor(time.Second)
	h.verify()
}

// TestPauseIntegration: the saga process is SIGSTOPped in the middle of
// its work; a second one takes its partitions over (after the paused
// member's session, 6s) and goes on; the paused one is resumed 12s
// later, past IdleInTransactionTimeout, with whatever it had in flight.
// Whatever it tries to commit then is fenced (its session was ended, or
// its update finds a newer version): every saga still ends as expected,
// histories are gapless, each command was written once per "sent".
func TestPauseIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("pause test")
	}
	h := newChaos(t)
	a := h.child()
	h.loadUntilProgress()
	h.loadFor(time.Duration(rand.IntN(1000)) * time.Millisecond)
	if err := a.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	before := h.transitions()
	b := h.child()
	h.loadUntilProgress()
	t.Logf("paused at %d transitions; the second member made progress after %s", before, time.Since(paused).Round(time.Millisecond))
	h.loadFor(time.Until(paused.Add(12 * time.Second)))
	if err := a.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	h.loadFor(3 * time.Second)
	t.Logf("resumed; %d transitions, %d sagas started", h.transitions(), h.n)
	h.stopAtEnd(a)
	h.stopAtEnd(b)
	h.verify()
}

// chaos is a transfer load against saga processes run as children.
type chaos struct {
	t     *testing.T
	e     *env
	rt    *sagas.Runtime
	infra *process
	want  map[string]int64
	fails map[string]bool
	n     int
}

func newChaos(t *testing.T) *chaos {
	e := newEnv(t)
	h := &chaos{t: t, e: e, infra: e.startInfra(t), fails: map[string]bool{},
		want: map[string]int64{"a": 1_000_000, "b": 1_000_000, "fee": 1_000_000}}
	var setup []orchestrix.Command
	for _, a := range []string{"a", "b", "fee"} {
		setup = append(setup, open(a, 1_000_000)...)
	}
	e.send(t, setup...)
	e.waitBalance(t, map[string]int64{"a": 1_000_000, "b": 1_000_000, "fee": 1_000_000}, 30*time.Second)
	h.rt = e.runtime(t, e.definition(t, 0)) // starts sagas and reads the store; runs nothing
	return h
}

// child starts a saga process with env added to its environment.
func (h *chaos) child(env ...string) *exec.Cmd {
	c := exec.Command(os.Args[0], "-test.run=^$")
	testenv.OwnProcessGroup(c) // stays stopped when SIGSTOPped, whatever happens to the test's own group
	c.Env = append(append(os.Environ(), "SAGAS_CHILD=1", "SAGAS_BC="+h.e.bc, "SAGAS_TYPE="+h.e.typ, "SAGAS_SCHEMA="+h.e.store.Schema()), env...)
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		h.t.Fatal(err)
	}
	return c
}

// stopAtEnd ends a child when the test ends.
func (h *chaos) stopAtEnd(c *exec.Cmd) {
	h.t.Cleanup(func() {
		_ = c.Process.Signal(syscall.SIGTERM)
		_ = c.Wait()
	})
}

// startOne starts the next transfer; every fifth has no fee account.
func (h *chaos) startOne() {
	id := fmt.Sprintf("k%d", h.n)
	tr := Transfer{From: "a", To: "b", Fee: "fee", UndoFrom: "b", Amount: int64(10 + h.n%50)}
	if h.n%5 == 4 {
		tr.Fee, h.fails[id] = "missing", true
	} else {
		h.want["a"] -= tr.Amount
		h.want["b"] += tr.Amount - 1
		h.want["fee"]++
	}
	if err := h.rt.Start(h.t.Context(), id, tr); err != nil {
		h.t.Fatal(err)
	}
	h.n++
}

// transitions counts the transitions made by a saga process (not starts).
func (h *chaos) transitions() int {
	var done int
	if err := h.e.pool.QueryRow(h.t.Context(), "SELECT count(*) FROM "+pgx.Identifier{h.e.store.Schema(), "saga_transitions"}.Sanitize()+
		" WHERE input_kind <> 'start'").Scan(&done); err != nil {
		h.t.Fatal(err)
	}
	return done
}

func (h *chaos) loadUntilProgress() {
	before := h.transitions()
	deadline := time.Now().Add(60 * time.Second)
	for h.transitions() == before {
		if time.Now().After(deadline) {
			h.t.Fatal("no progress for 60s")
		}
		h.startOne()
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *chaos) loadFor(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
		h.startOne()
		time.Sleep(50 * time.Millisecond)
	}
}

// verify waits for every saga and checks the end states, the histories,
// the outbox against them, and the money.
func (h *chaos) verify() {
	t, e, rt, ctx := h.t, h.e, h.rt, h.t.Context()
	for i := range h.n {
		id := fmt.Sprintf("k%d", i)
		st := wait(t, rt, id, 90*time.Second, sagas.StatusCompleted, sagas.StatusCompensated, sagas.StatusCompensationFailed)
		if wantSt := map[bool]sagas.Status{false: sagas.StatusCompleted, true: sagas.StatusCompensated}[h.fails[id]]; st.Status != wantSt {
			t.Fatalf("%s: %s, want %s (%s)", id, st.Status, wantSt, st.Reason)
		}
	}
	e.waitBalance(t, h.want, 30*time.Second)
	// State and commands landed together: per instance, the commands in
	// the outbox are exactly the ones its history says it sent.
	sent := map[string]int{}
	rows, err := e.pool.Query(ctx, "SELECT headers FROM "+pgx.Identifier{e.store.Schema(), "outbox"}.Sanitize()+" WHERE topic = $1", topics.Commands(e.bc))
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var hs []struct {
			K string `json:"k"`
			V string `json:"v"`
		}
		if err := rows.Scan(&hs); err != nil {
			t.Fatal(err)
		}
		for _, h := range hs {
			if h.K == "ce_correlationid" {
				_, id, _ := sagas.ParseCorrelation(h.V)
				sent[id]++
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for i := range h.n {
		id := fmt.Sprintf("k%d", i)
		hist, err := rt.Store().History(ctx, rt.Type(), id)
		if err != nil {
			t.Fatal(err)
		}
		notes := 0
		for k, tr := range hist {
			if tr.Version != int64(k+1) {
				t.Fatalf("%s: history version %d at %d", id, tr.Version, k)
			}
			notes += strings.Count(tr.Note, "sent ")
		}
		if sent[id] != notes {
			b, _ := json.Marshal(hist)
			t.Fatalf("%s: %d commands in the outbox, history sent %d: %s", id, sent[id], notes, b)
		}
	}
	h.infra.check(t)
}
