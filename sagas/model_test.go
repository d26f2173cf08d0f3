package sagas

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/twmb/franz-go/pkg/kgo"
	"pgregory.net/rapid"
)

// Commands of the model bank. Refund and Uncredit are compensations with
// a barrier (dtm's idea): they undo their transfer's debit or credit once,
// and do nothing if it never happened.
type (
	mDebit struct {
		Tr     string
		Amount int64
	}
	mCredit struct {
		Tr     string
		Amount int64
	}
	mRefund struct {
		Tr     string
		Amount int64
	}
	mUncredit struct {
		Tr     string
		Amount int64
	}
	mConfirm struct{ Tr string }
)

type mTransfer struct {
	ID, From, To string
	Amount       int64
}

func modelDef(t testing.TB, typ string) *Definition[mTransfer] {
	c := func(agg func(mTransfer) string, p func(mTransfer) any) func(mTransfer) (Command, error) {
		return func(s mTransfer) (Command, error) {
			return Command{Topic: "bank.commands", AggregateID: agg(s), Payload: p(s)}, nil
		}
	}
	from := func(s mTransfer) string { return s.From }
	to := func(s mTransfer) string { return s.To }
	d, err := Define(typ, 1, []Step[mTransfer]{
		{Name: "debit", Action: c(from, func(s mTransfer) any { return mDebit{s.ID, s.Amount} }),
			Compensation: c(from, func(s mTransfer) any { return mRefund{s.ID, s.Amount} }), Timeout: 5 * time.Second, Policy: Retry(time.Second, 3)},
		{Name: "credit", Action: c(to, func(s mTransfer) any { return mCredit{s.ID, s.Amount} }),
			Compensation: c(to, func(s mTransfer) any { return mUncredit{s.ID, s.Amount} }), Timeout: 5 * time.Second, Policy: Retry(time.Second, 2)},
		{Name: "confirm", Action: c(func(mTransfer) string { return "notes" }, func(s mTransfer) any { return mConfirm{s.ID} }),
			Timeout: 5 * time.Second, Policy: Retry(time.Second, 2)},
	}, CompensationPolicy[mTransfer](Retry(time.Second, 3), 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// bank is the participant: it decides each command ID once (a repeated
// ID gets its first answer, as the aggregate processor does) and
// processes each aggregate's commands in order (the command topic's key
// order).
type bank struct {
	balance  map[string]int64
	answered map[string]orchestrix.Outcome
	debited  map[string]bool // transfer -> debit in effect
	credited map[string]bool
	failP    int // percent of decisions rejected as a failure
	compP    int // percent of compensations rejected
}

func (b *bank) handle(c orchestrix.Command, rt *rapid.T, calm bool) orchestrix.Outcome {
	if o, ok := b.answered[c.ID]; ok {
		if o.Status == orchestrix.OutcomeAccepted {
			o.Status = orchestrix.OutcomeDuplicate
		}
		return o
	}
	o := orchestrix.Outcome{CommandID: c.ID, AggregateID: c.AggregateID, CommandType: c.Type, CorrelationID: c.CorrelationID, Status: orchestrix.OutcomeAccepted}
	reject := func(p int) bool { return !calm && rapid.IntRange(0, 99).Draw(rt, "fail") < p }
	switch p := c.Payload.(type) {
	case mDebit:
		if reject(b.failP) || b.balance[c.AggregateID] < p.Amount {
			o.Status = orchestrix.OutcomeRejected
		} else {
			b.balance[c.AggregateID] -= p.Amount
			b.debited[p.Tr] = true
		}
	case mCredit:
		if reject(b.failP) {
			o.Status = orchestrix.OutcomeRejected
		} else {
			b.balance[c.AggregateID] += p.Amount
			b.credited[p.Tr] = true
		}
	case mConfirm:
		if reject(b.failP) {
			o.Status = orchestrix.OutcomeRejected
		}
	case mRefund:
		if reject(b.compP) {
			o.Status = orchestrix.OutcomeRejected
		} else if b.debited[p.Tr] {
			b.balance[c.AggregateID] += p.Amount
			b.debited[p.Tr] = false
		}
	case mUncredit:
		if reject(b.compP) {
			o.Status = orchestrix.OutcomeRejected
		} else if b.credited[p.Tr] {
			b.balance[c.AggregateID] -= p.Amount
			b.credited[p.Tr] = false
		}
	}
	b.answered[c.ID] = o
	return o
}

// TestSagaModel: random step failures, failed compensations, delayed
// commands (timeouts, then late replies), duplicate and reordered inputs,
// timers fired early, late and twice, and runtime restarts, on both
// stores. Every instance must end completed, compensated or
// compensation_failed; after the participant recovers and an operator
// retries every compensation_failed one, each ends completed or
// compensated, and the bank's total is what it was, each completed
// transfer moved its amount once, each compensated one nothing.
func TestSagaModel(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		rapid.Check(t, func(rt *rapid.T) {
			m := NewMemoryStore()
			seen := 0
			runSagaModel(t, rt, m, "xfer", func() []outbox.Message {
				p := m.Pending()
				out := p[seen:]
				seen = len(p)
				return out
			})
		})
	})
	t.Run("postgres", func(t *testing.T) {
		pool := testenv.Pool(t)
		pg := pgtest.Store(t, pool)
		s, err := NewPostgresStore(pool, pg.Schema())
		if err != nil {
			t.Fatal(err)
		}
		var n atomic.Int64
		var last int64
		rapid.Check(t, func(rt *rapid.T) {
			runSagaModel(t, rt, s, fmt.Sprintf("xfer%d", n.Add(1)), func() []outbox.Message {
				rows, err := pool.Query(t.Context(), "SELECT position, topic, key, value, headers FROM "+
					pgx.Identifier{pg.Schema(), "outbox"}.Sanitize()+" WHERE position > $1 ORDER BY position", last)
				if err != nil {
					t.Fatal(err)
				}
				var out []outbox.Message
				for rows.Next() {
					var m outbox.Message
					var hs []struct {
						K string `json:"k"`
						V string `json:"v"`
					}
					if err := rows.Scan(&last, &m.Topic, &m.Key, &m.Value, &hs); err != nil {
						t.Fatal(err)
					}
					for _, h := range hs {
						m.Headers = append(m.Headers, kgo.RecordHeader{Key: h.K, Value: []byte(h.V)})
					}
					out = append(out, m)
				}
				if err := rows.Err(); err != nil {
					t.Fatal(err)
				}
				return out
			})
		})
	})
}

func runSagaModel(t *testing.T, rt *rapid.T, store Store, typ string, drain func() []outbox.Message) {
	ctx := t.Context()
	reg := codec.NewRegistry()
	for name, err := range map[string]error{
		"debit": codec.RegisterJSON[mDebit](reg, "m.Debit"), "credit": codec.RegisterJSON[mCredit](reg, "m.Credit"),
		"refund": codec.RegisterJSON[mRefund](reg, "m.Refund"), "uncredit": codec.RegisterJSON[mUncredit](reg, "m.Uncredit"),
		"confirm": codec.RegisterJSON[mConfirm](reg, "m.Confirm")} {
		if err != nil {
			t.Fatal(name, err)
		}
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	def := modelDef(t, typ)
	newRuntime := func() *Runtime {
		r, err := NewRuntime(store, reg, []Saga{def}, WithClock(func() time.Time { return now }))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	run := newRuntime()
	accounts := []string{"a0", "a1", "a2"}
	b := &bank{balance: map[string]int64{}, answered: map[string]orchestrix.Outcome{}, debited: map[string]bool{}, credited: map[string]bool{},
		failP: rapid.IntRange(0, 60).Draw(rt, "failP"), compP: rapid.IntRange(0, 60).Draw(rt, "compP")}
	for _, a := range accounts {
		b.balance[a] = 1000
	}
	n := rapid.IntRange(1, 6).Draw(rt, "transfers")
	transfers := map[string]mTransfer{}
	for i := range n {
		from := rapid.IntRange(0, 2).Draw(rt, "from")
		tr := mTransfer{ID: fmt.Sprintf("t%d", i), From: accounts[from], To: accounts[(from+1+rapid.IntRange(0, 1).Draw(rt, "to"))%3],
			Amount: int64(rapid.IntRange(1, 10).Draw(rt, "amount"))}
		transfers[tr.ID] = tr
		if err := run.Start(ctx, tr.ID, tr); err != nil {
			t.Fatal(err)
		}
	}
	queues := map[string][]orchestrix.Command{} // per aggregate, in order
	var inbox, delivered []*kgo.Record
	collect := func() {
		for _, m := range drain() {
			r := &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: m.Headers}
			if m.Topic == run.Inbox() {
				inbox = append(inbox, r)
				continue
			}
			c, err := codec.RecordToCommand(r)
			if err != nil {
				t.Fatal(err)
			}
			if err := reg.DecodeCommand(&c); err != nil {
				t.Fatal(err)
			}
			queues[c.AggregateID] = append(queues[c.AggregateID], c)
		}
	}
	handle := func(r *kgo.Record) {
		if err := run.Handle(ctx, r); err != nil {
			t.Fatalf("handle %s: %v", header(r, HeaderInput), err)
		}
	}
	reply := func(c orchestrix.Command, calm bool) {
		o := b.handle(c, rt, calm)
		v, _ := json.Marshal(o)
		m := InboxMessage(run.Inbox(), c.CorrelationID[len(CorrelationPrefix)+len(typ)+1:], KindOutcome, "outcome:"+o.CommandID, v)
		inbox = append(inbox, &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: m.Headers})
	}
	fire := func() {
		if _, err := run.FireTimers(ctx); err != nil {
			t.Fatal(err)
		}
	}
	collect()
	steps := rapid.IntRange(0, 150).Draw(rt, "steps")
	for range steps {
		switch rapid.IntRange(0, 10).Draw(rt, "action") {
		case 0, 1, 2: // an aggregate decides its oldest command
			var aggs []string
			for a, q := range queues {
				if len(q) > 0 {
					aggs = append(aggs, a)
				}
			}
			if len(aggs) == 0 {
				continue
			}
			slices.Sort(aggs)
			a := rapid.SampledFrom(aggs).Draw(rt, "agg")
			c := queues[a][0]
			queues[a] = queues[a][1:]
			reply(c, false)
		case 3, 4, 5: // any pending input, in any order
			if len(inbox) == 0 {
				continue
			}
			i := rapid.IntRange(0, len(inbox)-1).Draw(rt, "input")
			r := inbox[i]
			inbox = slices.Delete(inbox, i, i+1)
			handle(r)
			delivered = append(delivered, r)
		case 10: // a batch of pending inputs, in any order, one transaction
			k := min(len(inbox), rapid.IntRange(1, 6).Draw(rt, "batch"))
			var batch []*kgo.Record
			for range k {
				i := rapid.IntRange(0, len(inbox)-1).Draw(rt, "input")
				batch = append(batch, inbox[i])
				inbox = slices.Delete(inbox, i, i+1)
			}
			for i, err := range run.HandleBatch(ctx, batch) {
				if err != nil {
					t.Fatalf("batch input %s: %v", header(batch[i], HeaderInput), err)
				}
			}
			delivered = append(delivered, batch...)
		case 6: // an input again
			if len(delivered) == 0 {
				continue
			}
			handle(delivered[rapid.IntRange(0, len(delivered)-1).Draw(rt, "again")])
		case 7: // time passes, timers fire
			now = now.Add(time.Duration(rapid.IntRange(0, 3000).Draw(rt, "ms")) * time.Millisecond)
			fire()
		case 8: // timers fire again at once
			fire()
		case 9: // the runtime restarts
			run = newRuntime()
		}
		collect()
	}
	settle := func() {
		for round := 0; ; round++ {
			if round > 500 {
				t.Fatal("the sagas do not settle")
			}
			for a := range queues {
				for _, c := range queues[a] {
					reply(c, true)
				}
				queues[a] = nil
			}
			for len(inbox) > 0 {
				r := inbox[0]
				inbox = inbox[1:]
				handle(r)
			}
			collect()
			ts, err := store.Timers(ctx, typ, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(ts) == 0 && len(inbox) == 0 && !slices.ContainsFunc(slices.Collect(mapValues(queues)), func(q []orchestrix.Command) bool { return len(q) > 0 }) {
				return
			}
			now = now.Add(6 * time.Second)
			fire()
			collect()
		}
	}
	b.failP, b.compP = 0, 0
	settle()
	list, err := store.List(ctx, Filter{Type: typ, Limit: 1000})
	if err != nil || len(list) != n {
		t.Fatalf("%d instances of %d: %v", len(list), n, err)
	}
	for _, i := range list {
		if !i.Status.Terminal() {
			t.Fatalf("instance %s ended %s", i.ID, i.Status)
		}
		if i.Status == StatusCompensationFailed {
			if err := run.Retry(ctx, i.ID, "op-"+i.ID, "participant recovered"); err != nil {
				t.Fatal(err)
			}
		}
	}
	collect()
	settle()
	if list, err = store.List(ctx, Filter{Type: typ, Limit: 1000}); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, a := range accounts {
		total += b.balance[a]
	}
	if total != 3000 {
		t.Fatalf("total balance %d, want 3000", total)
	}
	for _, i := range list {
		switch i.Status {
		case StatusCompleted:
			if !b.debited[i.ID] || !b.credited[i.ID] {
				t.Fatalf("%s completed: debited %v credited %v", i.ID, b.debited[i.ID], b.credited[i.ID])
			}
		case StatusCompensated:
			if b.debited[i.ID] || b.credited[i.ID] {
				t.Fatalf("%s compensated: debited %v credited %v", i.ID, b.debited[i.ID], b.credited[i.ID])
			}
		default:
			t.Fatalf("%s ended %s after the operator's retry", i.ID, i.Status)
		}
	}
	// Per account, the balance is what the completed transfers moved.
	want := map[string]int64{"a0": 1000, "a1": 1000, "a2": 1000}
	for _, i := range list {
		if i.Status == StatusCompleted {
			tr := transfers[i.ID]
			want[tr.From] -= tr.Amount
			want[tr.To] += tr.Amount
		}
	}
	for _, a := range accounts {
		if b.balance[a] != want[a] {
			t.Fatalf("%s: balance %d, want %d", a, b.balance[a], want[a])
		}
	}
}

func mapValues[K comparable, V any](m map[K]V) func(func(V) bool) {
	return func(yield func(V) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

func header(r *kgo.Record, k string) string {
	for _, h := range r.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}
