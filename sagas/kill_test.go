package sagas_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/sagas"
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
	if err := banking.Register(reg); err != nil {
		return 1
	}
	bc, typ := os.Getenv("SAGAS_BC"), os.Getenv("SAGAS_TYPE")
	d, err := transferDef(typ, topics.Commands(bc), 0)
	if err != nil {
		log.Error("definition", "err", err)
		return 1
	}
	rt, err := newRuntime(pool, os.Getenv("SAGAS_SCHEMA"), reg, d, log)
	if err != nil {
		log.Error("runtime", "err", err)
		return 1
	}
	p := newProcess()
	if err := startSaga(p, strings.Split(os.Getenv("KAFKA_BROKERS"), ","), bc, rt, nil, log); err != nil {
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
	e := newEnv(t)
	infra := e.startInfra(t)
	ctx := t.Context()
	var setup []orchestrix.Command
	for _, a := range []string{"a", "b", "fee"} {
		setup = append(setup, open(a, 1_000_000)...)
	}
	e.send(t, setup...)
	e.waitBalance(t, map[string]int64{"a": 1_000_000, "b": 1_000_000, "fee": 1_000_000}, 30*time.Second)

	child := func() *exec.Cmd {
		c := exec.Command(os.Args[0], "-test.run=^$")
		c.Env = append(os.Environ(), "SAGAS_CHILD=1", "SAGAS_BC="+e.bc, "SAGAS_TYPE="+e.typ, "SAGAS_SCHEMA="+e.store.Schema())
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	rt := e.runtime(t, e.definition(t, 0)) // starts sagas and reads the store; runs nothing
	want := map[string]int64{"a": 1_000_000, "b": 1_000_000, "fee": 1_000_000}
	fails := map[string]bool{}
	n := 0
	startOne := func() {
		id := fmt.Sprintf("k%d", n)
		tr := Transfer{From: "a", To: "b", Fee: "fee", UndoFrom: "b", Amount: int64(10 + n%50)}
		if n%5 == 4 {
			tr.Fee, fails[id] = "missing", true
		} else {
			want["a"] -= tr.Amount
			want["b"] += tr.Amount - 1
			want["fee"]++
		}
		if err := rt.Start(ctx, id, tr); err != nil {
			t.Fatal(err)
		}
		n++
	}
	transitions := func() int {
		var done int
		if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{e.store.Schema(), "saga_transitions"}.Sanitize()+" WHERE input_kind <> 'start'").Scan(&done); err != nil {
			t.Fatal(err)
		}
		return done
	}
	// Sagas start all along (20/s) while the saga process is killed four
	// times, each time a random moment after it made progress again (a
	// restarted member waits for the killed one's session, 6s, to expire).
	c := child()
	for k := range 4 {
		before := transitions()
		for transitions() == before {
			startOne()
			time.Sleep(50 * time.Millisecond)
		}
		for end := time.Now().Add(time.Duration(rand.IntN(1500)) * time.Millisecond); time.Now().Before(end); {
			startOne()
			time.Sleep(50 * time.Millisecond)
		}
		if err := c.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = c.Wait()
		t.Logf("kill %d: %d transitions, %d sagas started", k+1, transitions(), n)
		c = child()
	}
	defer func() {
		_ = c.Process.Signal(syscall.SIGTERM)
		_ = c.Wait()
	}()
	for i := range n {
		id := fmt.Sprintf("k%d", i)
		st := wait(t, rt, id, 90*time.Second, sagas.StatusCompleted, sagas.StatusCompensated, sagas.StatusCompensationFailed)
		if wantSt := map[bool]sagas.Status{false: sagas.StatusCompleted, true: sagas.StatusCompensated}[fails[id]]; st.Status != wantSt {
			t.Fatalf("%s: %s, want %s (%s)", id, st.Status, wantSt, st.Reason)
		}
	}
	e.waitBalance(t, want, 30*time.Second)
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
	for i := range n {
		id := fmt.Sprintf("k%d", i)
		h, err := rt.Store().History(ctx, rt.Type(), id)
		if err != nil {
			t.Fatal(err)
		}
		notes := 0
		for k, tr := range h {
			if tr.Version != int64(k+1) {
				t.Fatalf("%s: history version %d at %d", id, tr.Version, k)
			}
			notes += strings.Count(tr.Note, "sent ")
		}
		if sent[id] != notes {
			b, _ := json.Marshal(h)
			t.Fatalf("%s: %d commands in the outbox, history sent %d: %s", id, sent[id], notes, b)
		}
	}
	infra.check(t)
}
