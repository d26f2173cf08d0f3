package sagas_test

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestTimeoutAfterRestartIntegration: a credit command goes to a topic
// nobody reads, with a 2s timeout. Every process (relay, processor,
// forwarder, inbox group, timer poller) stops right after, stays down
// 5s, and a new set starts: the timer fires exactly once, the credit
// (maybe done) is compensated from where it was, the debit is refunded.
func TestTimeoutAfterRestartIntegration(t *testing.T) {
	e := newEnv(t)
	d := e.definition(t, 2*time.Second)
	rt := e.runtime(t, d)
	p := e.start(t, rt, nil)
	ctx := t.Context()
	startLateTransfer(t, e, rt)
	p.stop()
	p.check(t)
	stopped := time.Now()
	time.Sleep(5 * time.Second)
	if i, err := rt.Store().Get(ctx, rt.Type(), "late"); err != nil || i.Status != sagas.StatusRunning || i.Step != 1 {
		t.Fatalf("while everything was down: %+v %v", i, err)
	}
	rt2 := e.runtime(t, e.definition(t, 2*time.Second))
	p2 := e.start(t, rt2, nil)
	i := wait(t, rt2, "late", 30*time.Second, sagas.StatusCompensated, sagas.StatusCompleted, sagas.StatusCompensationFailed)
	if i.Status != sagas.StatusCompensated {
		t.Fatalf("late: %+v", i)
	}
	t.Logf("compensated %s after the processes stopped", time.Since(stopped).Round(time.Millisecond))
	e.waitBalance(t, map[string]int64{"a": 100, "b": 100, "fee": 100}, 10*time.Second)
	var fired, timedOut int
	q := "SELECT count(*) FROM " + pgx.Identifier{e.store.Schema(), "outbox"}.Sanitize() + " WHERE topic = $1 AND headers::text LIKE '%timer%'"
	if err := e.pool.QueryRow(ctx, q, rt.Inbox()).Scan(&fired); err != nil {
		t.Fatal(err)
	}
	h, err := rt2.Store().History(ctx, rt.Type(), "late")
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range h {
		if tr.InputKind == sagas.KindTimer {
			timedOut++
			if !strings.Contains(tr.Note, "timed out") || tr.Step != 0 {
				t.Fatalf("timer transition %+v", tr)
			}
		}
	}
	if fired != 1 || timedOut != 1 {
		t.Fatalf("timer fired %d times, %d timer transitions; want 1 and 1", fired, timedOut)
	}
	p2.check(t)
}

// TestTimeoutAfterKillNineIntegration: one process runs everything (the
// relay, the banking processor, the forwarder, the inbox group, the timer
// poller). A credit command goes to a topic nobody reads, with a 2s
// timeout; the process is killed with SIGKILL as soon as the timer is
// stored, nothing runs for 5s, then a new process starts: the timer fires
// exactly once and the debit is refunded.
func TestTimeoutAfterKillNineIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 test")
	}
	e := newEnv(t)
	ctx := t.Context()
	rt := e.runtime(t, e.definition(t, 2*time.Second)) // starts the saga and reads the store; runs nothing
	child := func() *exec.Cmd {
		c := exec.Command(os.Args[0], "-test.run=^$")
		c.Env = append(os.Environ(), "SAGAS_CHILD=1", "SAGAS_ALL=1", "SAGAS_CREDIT_TIMEOUT=2s", "SAGAS_BC="+e.bc, "SAGAS_TYPE="+e.typ,
			"SAGAS_SCHEMA="+e.store.Schema())
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := child()
	startLateTransfer(t, e, rt)
	if err := c.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = c.Wait()
	time.Sleep(5 * time.Second)
	if i, err := rt.Store().Get(ctx, rt.Type(), "late"); err != nil || i.Status != sagas.StatusRunning || i.Step != 1 {
		t.Fatalf("while nothing ran: %+v %v", i, err)
	}
	c = child()
	defer func() {
		_ = c.Process.Signal(syscall.SIGTERM)
		_ = c.Wait()
	}()
	if i := wait(t, rt, "late", 60*time.Second, sagas.StatusCompensated, sagas.StatusCompleted, sagas.StatusCompensationFailed); i.Status != sagas.StatusCompensated {
		t.Fatalf("late: %+v", i)
	}
	e.waitBalance(t, map[string]int64{"a": 100, "b": 100, "fee": 100}, 30*time.Second)
	var fired int
	q := "SELECT count(*) FROM " + pgx.Identifier{e.store.Schema(), "outbox"}.Sanitize() + " WHERE topic = $1 AND headers::text LIKE '%timer%'"
	if err := e.pool.QueryRow(ctx, q, rt.Inbox()).Scan(&fired); err != nil {
		t.Fatal(err)
	}
	timedOut := 0
	h, err := rt.Store().History(ctx, rt.Type(), "late")
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range h {
		if tr.InputKind == sagas.KindTimer {
			timedOut++
		}
	}
	if fired != 1 || timedOut != 1 {
		t.Fatalf("timer fired %d times, %d timer transitions; want 1 and 1", fired, timedOut)
	}
}

// TestBadInputIntegration: inputs that can never apply are dead-lettered
// with their reason and everything else flows: a reply naming an unknown
// saga, an input of an unknown kind, a malformed outcome, an event the
// saga has no reaction to; the transfer started after them completes.
func TestBadInputIntegration(t *testing.T) {
	e := newEnv(t)
	rt := e.runtime(t, e.definition(t, 0))
	p := e.start(t, rt, nil)
	ctx := t.Context()
	var setup []orchestrix.Command
	for _, a := range []string{"a", "b", "fee"} {
		setup = append(setup, open(a, 100)...)
	}
	e.send(t, setup...)
	e.waitBalance(t, map[string]int64{"a": 100, "b": 100, "fee": 100}, 30*time.Second)
	if err := rt.Start(ctx, "first", Transfer{From: "a", To: "b", Fee: "fee", UndoFrom: "b", Amount: 10}); err != nil {
		t.Fatal(err)
	}
	wait(t, rt, "first", 30*time.Second, sagas.StatusCompleted)
	cl := e.client(t)
	hdr := func(kind, id string) []kgo.RecordHeader {
		return []kgo.RecordHeader{{Key: sagas.HeaderKind, Value: []byte(kind)}, {Key: sagas.HeaderInput, Value: []byte(id)}}
	}
	ev := []kgo.RecordHeader{{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_id", Value: []byte("e1")}, {Key: "ce_source", Value: []byte("/x")},
		{Key: "ce_type", Value: []byte("banking.Unheard")}, {Key: "ce_time", Value: []byte("2026-01-01T00:00:00Z")}, {Key: "ce_aggregateid", Value: []byte("a")},
		{Key: "content-type", Value: []byte("application/json")}}
	bad := []*kgo.Record{
		{Key: []byte("ghost"), Value: []byte(`{"commandId":"c1","correlationId":"saga:` + rt.Type() + `:ghost","status":"accepted"}`), Headers: hdr("outcome", "outcome:c1")},
		{Key: []byte("first"), Value: []byte(`{}`), Headers: hdr("bogus", "x1")},
		{Key: []byte("first"), Value: []byte(`{"commandId":`), Headers: hdr("outcome", "outcome:c2")},
		{Key: []byte("first"), Value: []byte(`{}`), Headers: append(ev, hdr("event", "event:e1")...)},
	}
	for _, r := range bad {
		r.Topic = rt.Inbox()
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rt.Start(ctx, "next", Transfer{From: "a", To: "b", Fee: "fee", UndoFrom: "b", Amount: 10}); err != nil {
		t.Fatal(err)
	}
	wait(t, rt, "next", 30*time.Second, sagas.StatusCompleted)
	dl := e.readAll(t, consumers.DeadLetterTopic(rt.Inbox(), e.bc+"-sagas"), len(bad))
	want := []struct{ reason, err string }{
		{consumers.ReasonPermanent, "unknown saga instance"},
		{consumers.ReasonUnknownType, `kind "bogus"`},
		{consumers.ReasonInvalid, "outcome: unexpected end of JSON"},
		{consumers.ReasonUnknownType, `no event of type "banking.Unheard"`},
	}
	for i, r := range dl {
		reason, msg := header(r, consumers.HeaderReason), header(r, consumers.HeaderError)
		if reason != want[i].reason || !strings.Contains(msg, want[i].err) {
			t.Errorf("dead letter %d: reason %q, error %q; want %q, %q", i, reason, msg, want[i].reason, want[i].err)
		}
	}
	p.check(t)
}

func header(r *kgo.Record, k string) string {
	for _, h := range r.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}

func (e *env) client(t *testing.T) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.seeds...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// readAll reads n records of topic from the start.
func (e *env) readAll(t *testing.T, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.seeds...), kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	deadline := time.Now().Add(30 * time.Second)
	for len(out) < n && time.Now().Before(deadline) {
		ctx, cancel := contextWithDeadline(t, time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r) })
	}
	if len(out) != n {
		t.Fatalf("%d records in %s, want %d", len(out), topic, n)
	}
	return out
}

// startLateTransfer opens the accounts and starts the saga "late", whose
// credit goes to a topic nobody reads, and returns once its credit step's
// timer is stored.
func startLateTransfer(t *testing.T, e *env, rt *sagas.Runtime) {
	t.Helper()
	ctx := t.Context()
	var setup []orchestrix.Command
	for _, a := range []string{"a", "b", "fee"} {
		setup = append(setup, open(a, 100)...)
	}
	e.send(t, setup...)
	e.waitBalance(t, map[string]int64{"a": 100, "b": 100, "fee": 100}, 30*time.Second)
	if err := rt.Start(ctx, "late", Transfer{From: "a", To: "b", Fee: "fee", UndoFrom: "b", Amount: 10, CreditTopic: e.bc + ".nowhere"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ts, err := rt.Store().Timers(ctx, rt.Type(), 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) == 1 && ts[0].Fired.Step == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no credit timer: %+v", ts)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
