package sagas

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
)

type xfer struct {
	From, To string
	Amount   int64
	Note     string
}

type debit struct {
	Transfer string
	Amount   int64
}
type credit struct {
	Transfer string
	Amount   int64
}
type refund struct {
	Transfer string
	Amount   int64
}
type uncredit struct {
	Transfer string
	Amount   int64
}
type notify struct{ Transfer string }

func cmd(topic, agg string, p any) func(xfer) (Command, error) {
	return func(x xfer) (Command, error) { return Command{Topic: topic, AggregateID: agg, Payload: p}, nil }
}

func testDef(t testing.TB, opts ...Option[xfer]) *Definition[xfer] {
	t.Helper()
	d, err := Define("transfer", 1, []Step[xfer]{
		{Name: "debit", Action: cmd("acc.commands", "a", debit{"t", 10}), Compensation: cmd("acc.commands", "a", refund{"t", 10}),
			Timeout: time.Second, Policy: Retry(100*time.Millisecond, 3)},
		{Name: "credit", Action: cmd("acc.commands", "b", credit{"t", 10}), Compensation: cmd("acc.commands", "b", uncredit{"t", 10}),
			Timeout: time.Second},
		{Name: "notify", Action: cmd("notes.commands", "n", notify{"t"}), Timeout: time.Second, Policy: Retry(time.Second, 2)},
	}, append([]Option[xfer]{CompensationPolicy[xfer](Retry(time.Second, 2), 5*time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// run applies inputs in order to a fresh instance and returns every
// decision.
type runner struct {
	t    *testing.T
	d    *Definition[xfer]
	inst *Instance
	now  time.Time
	sent []Outgoing
}

func newRunner(t *testing.T, d *Definition[xfer]) *runner {
	r := &runner{t: t, d: d, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	st, _ := json.Marshal(xfer{From: "a", To: "b", Amount: 10})
	dec := r.apply(Input{SagaID: "s1", ID: "start:s1", Kind: KindStart, State: st})
	if dec.Instance.Status != StatusRunning || len(dec.Commands) != 1 {
		t.Fatalf("start: %+v", dec)
	}
	return r
}

func (r *runner) apply(in Input) Decision {
	r.t.Helper()
	dec, err := r.d.Transition(r.inst, in, r.now)
	if err != nil {
		r.t.Fatalf("%s: %v", in.ID, err)
	}
	if !dec.Ignored {
		r.inst = &dec.Instance
		r.sent = append(r.sent, dec.Commands...)
	}
	return dec
}

// reply answers the last command sent.
func (r *runner) reply(status string) Decision {
	r.t.Helper()
	last := r.sent[len(r.sent)-1].Command
	return r.apply(Input{ID: "outcome:" + last.ID, Kind: KindOutcome, Outcome: orchestrix.Outcome{CommandID: last.ID, Status: status, CorrelationID: last.CorrelationID}})
}

func (r *runner) fire(kind string) Decision {
	r.t.Helper()
	f := TimerFired{Phase: r.inst.Phase(), Step: r.inst.Step, Try: r.inst.Tries, Kind: kind}
	return r.apply(Input{ID: f.ID(), Kind: KindTimer, Timer: f})
}

func kinds(out []Outgoing) []string {
	var k []string
	for _, o := range out {
		switch o.Command.Payload.(type) {
		case debit:
			k = append(k, "debit")
		case credit:
			k = append(k, "credit")
		case refund:
			k = append(k, "refund")
		case uncredit:
			k = append(k, "uncredit")
		case notify:
			k = append(k, "notify")
		}
	}
	return k
}

func TestHappyPath(t *testing.T) {
	r := newRunner(t, testDef(t))
	r.reply(orchestrix.OutcomeAccepted)
	r.reply(orchestrix.OutcomeDuplicate) // a duplicate outcome is a success too
	dec := r.reply(orchestrix.OutcomeAccepted)
	if dec.Instance.Status != StatusCompleted || dec.Timer != nil {
		t.Fatalf("want completed without timer, got %+v", dec)
	}
	if got := strings.Join(kinds(r.sent), ","); got != "debit,credit,notify" {
		t.Fatalf("sent %s", got)
	}
	for _, o := range r.sent {
		if o.Command.CorrelationID != "saga:transfer:s1" {
			t.Fatalf("correlation %q", o.Command.CorrelationID)
		}
	}
	if r.inst.Version != 4 {
		t.Fatalf("version %d, want 4", r.inst.Version)
	}
	// Anything later is ignored.
	if dec := r.reply(orchestrix.OutcomeAccepted); !dec.Ignored {
		t.Fatalf("late reply applied: %+v", dec)
	}
}

func TestRejectionCompensatesInReverse(t *testing.T) {
	r := newRunner(t, testDef(t))
	r.reply(orchestrix.OutcomeAccepted) // debit
	r.reply(orchestrix.OutcomeAccepted) // credit
	// notify: 2 tries, each rejection waits for a retry timer.
	dec := r.reply(orchestrix.OutcomeRejected)
	if dec.Instance.Wait != waitRetry || dec.Timer == nil || dec.Timer.Fired.Kind != waitRetry || len(dec.Commands) != 0 {
		t.Fatalf("want a retry timer, got %+v", dec)
	}
	dec = r.fire(waitRetry)
	if len(dec.Commands) != 1 || dec.Instance.Attempt != 2 || dec.Instance.Tries != 2 {
		t.Fatalf("retry: %+v", dec)
	}
	if dec.Commands[0].Command.ID == r.sent[2].Command.ID {
		t.Fatal("a try after a rejection must be a new command ID")
	}
	dec = r.reply(orchestrix.OutcomeRejected)
	if dec.Instance.Status != StatusCompensating {
		t.Fatalf("want compensating, got %s", dec.Instance.Status)
	}
	r.reply(orchestrix.OutcomeAccepted) // uncredit
	dec = r.reply(orchestrix.OutcomeAccepted)
	if dec.Instance.Status != StatusCompensated {
		t.Fatalf("want compensated, got %s", dec.Instance.Status)
	}
	if got := strings.Join(kinds(r.sent), ","); got != "debit,credit,notify,notify,uncredit,refund" {
		t.Fatalf("sent %s", got)
	}
}

func TestCompensationFailed(t *testing.T) {
	r := newRunner(t, testDef(t))
	r.reply(orchestrix.OutcomeAccepted) // debit
	dec := r.reply(orchestrix.OutcomeRejected)
	if dec.Instance.Status != StatusCompensating || kinds(dec.Commands)[0] != "refund" {
		t.Fatalf("credit rejected (no retries): %+v", dec)
	}
	r.reply(orchestrix.OutcomeRejected)
	r.fire(waitRetry)
	dec = r.reply(orchestrix.OutcomeRejected)
	if dec.Instance.Status != StatusCompensationFailed || dec.Timer != nil || dec.Instance.Reason == "" {
		t.Fatalf("want compensation_failed, got %+v", dec)
	}
	// Replies and timers do nothing now; an operator does.
	if dec := r.fire(waitRetry); !dec.Ignored {
		t.Fatalf("timer after the end applied: %+v", dec)
	}
	dec = r.apply(Input{ID: "op:1", Kind: KindRetry, Note: "refund service fixed"})
	if dec.Instance.Status != StatusCompensating || kinds(dec.Commands)[0] != "refund" || dec.Instance.Attempt != 3 {
		t.Fatalf("retry: %+v", dec)
	}
	dec = r.reply(orchestrix.OutcomeAccepted)
	if dec.Instance.Status != StatusCompensated {
		t.Fatalf("want compensated, got %+v", dec)
	}
	if _, err := r.d.Transition(r.inst, Input{ID: "op:2", Kind: KindResolve}, r.now); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("resolve of a compensated instance: %v", err)
	}
}

func TestResolveSkipsTheFailedCompensation(t *testing.T) {
	r := newRunner(t, testDef(t))
	r.reply(orchestrix.OutcomeAccepted) // debit
	r.reply(orchestrix.OutcomeAccepted) // credit
	r.reply(orchestrix.OutcomeRejected) // notify try 1
	r.fire(waitRetry)
	r.reply(orchestrix.OutcomeRejected) // notify try 2: compensate, uncredit
	r.reply(orchestrix.OutcomeRejected)
	r.fire(waitRetry)
	dec := r.reply(orchestrix.OutcomeRejected)
	if dec.Instance.Status != StatusCompensationFailed || dec.Instance.Step != 1 {
		t.Fatalf("want uncredit failed: %+v", dec)
	}
	dec = r.apply(Input{ID: "op:1", Kind: KindResolve, Note: "uncredited by hand"})
	if dec.Instance.Status != StatusCompensating || kinds(dec.Commands)[0] != "refund" || !strings.Contains(dec.Note, "by hand") {
		t.Fatalf("resolve: %+v", dec)
	}
	if dec := r.reply(orchestrix.OutcomeAccepted); dec.Instance.Status != StatusCompensated {
		t.Fatalf("want compensated: %+v", dec)
	}
}

func TestTimeouts(t *testing.T) {
	r := newRunner(t, testDef(t))
	first := r.sent[0].Command.ID
	// A timeout re-sends the same command (same ID: the aggregate's
	// dedup answers it if the first copy arrived).
	dec := r.fire(waitOutcome)
	if len(dec.Commands) != 1 || dec.Commands[0].Command.ID != first || dec.Instance.Tries != 2 || dec.Timer.Fired.Try != 2 {
		t.Fatalf("timeout: %+v", dec)
	}
	// The first try's timer again (a race): ignored.
	stale := TimerFired{Phase: PhaseAction, Step: 0, Try: 1, Kind: waitOutcome}
	if dec := r.apply(Input{ID: stale.ID() + "x", Kind: KindTimer, Timer: stale}); !dec.Ignored {
		t.Fatalf("stale timer applied: %+v", dec)
	}
	r.fire(waitOutcome) // try 3
	// The third timeout exhausts debit's tries: it may have happened, so
	// it is compensated too.
	dec = r.fire(waitOutcome)
	if dec.Instance.Status != StatusCompensating || kinds(dec.Commands)[0] != "refund" {
		t.Fatalf("want the refund of a maybe-done debit: %+v", dec)
	}
	// A late accepted debit outcome is ignored now.
	late := Input{ID: "outcome:" + first, Kind: KindOutcome, Outcome: orchestrix.Outcome{CommandID: first, Status: orchestrix.OutcomeAccepted}}
	if dec := r.apply(late); !dec.Ignored {
		t.Fatalf("late outcome applied: %+v", dec)
	}
	if dec := r.reply(orchestrix.OutcomeAccepted); dec.Instance.Status != StatusCompensated {
		t.Fatalf("want compensated: %+v", dec)
	}
}

func TestCreditTimeoutCompensatesBoth(t *testing.T) {
	r := newRunner(t, testDef(t))
	r.reply(orchestrix.OutcomeAccepted)
	r.fire(waitOutcome) // credit has one try
	r.reply(orchestrix.OutcomeAccepted)
	r.reply(orchestrix.OutcomeAccepted)
	if got := strings.Join(kinds(r.sent), ","); got != "debit,credit,uncredit,refund" || r.inst.Status != StatusCompensated {
		t.Fatalf("sent %s, status %s", got, r.inst.Status)
	}
}

func TestEventsFoldIntoState(t *testing.T) {
	d := testDef(t, OnEvent("bank.Debited", func(x xfer, e orchestrix.Event) (xfer, error) {
		x.Note = "debited " + e.ID
		return x, nil
	}))
	r := newRunner(t, d)
	dec := r.apply(Input{ID: "event:e1", Kind: KindEvent, Event: orchestrix.Event{Metadata: orchestrix.Metadata{ID: "e1", Type: "bank.Debited"}}})
	if !dec.KeepTimer || len(dec.Commands) != 0 || !strings.Contains(string(dec.Instance.State), "debited e1") {
		t.Fatalf("event: %+v", dec)
	}
	_, err := d.Transition(r.inst, Input{ID: "event:e2", Kind: KindEvent, Event: orchestrix.Event{Metadata: orchestrix.Metadata{ID: "e2", Type: "other"}}}, r.now)
	if !errors.Is(err, orchestrix.ErrUnknownType) {
		t.Fatalf("unknown event type: %v", err)
	}
}

func TestBadInputs(t *testing.T) {
	d := testDef(t)
	now := time.Now()
	if _, err := d.Transition(nil, Input{ID: "x", Kind: KindOutcome}, now); !errors.Is(err, ErrUnknownSaga) {
		t.Fatalf("reply to no instance: %v", err)
	}
	if _, err := d.Transition(nil, Input{ID: "x", Kind: KindStart, State: []byte("{")}, now); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Fatalf("malformed state: %v", err)
	}
	r := newRunner(t, d)
	if _, err := d.Transition(r.inst, Input{ID: "x", Kind: "bogus"}, now); !errors.Is(err, orchestrix.ErrUnknownType) {
		t.Fatalf("unknown kind: %v", err)
	}
	if dec := r.apply(Input{ID: "start:s1", Kind: KindStart, State: []byte(`{}`)}); !dec.Ignored {
		t.Fatalf("second start applied: %+v", dec)
	}
	v2 := *r.inst
	v2.DefinitionVersion = 2
	if _, err := d.Transition(&v2, Input{ID: "y", Kind: KindTimer}, now); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Fatalf("wrong definition version: %v", err)
	}
}

func TestDefineChecks(t *testing.T) {
	act := cmd("t", "a", debit{})
	cases := []struct {
		name  string
		typ   string
		steps []Step[xfer]
	}{
		{"bad type", "a b", []Step[xfer]{{Name: "s", Action: act}}},
		{"no steps", "t", nil},
		{"no action", "t", []Step[xfer]{{Name: "s"}}},
		{"no name", "t", []Step[xfer]{{Action: act}}},
		{"step after pivot", "t", []Step[xfer]{{Name: "p", Action: act, Policy: Pivot(time.Second, time.Minute)}, {Name: "s", Action: act}}},
		{"compensated pivot", "t", []Step[xfer]{{Name: "p", Action: act, Compensation: act, Policy: Pivot(time.Second, time.Minute)}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Define(c.typ, 1, c.steps); !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("want ErrInvalid, got %v", err)
			}
		})
	}
}

func TestPivotRetriesForever(t *testing.T) {
	act := cmd("t", "a", debit{})
	d, err := Define("p", 1, []Step[xfer]{{Name: "s", Action: act, Compensation: act}, {Name: "p", Action: act, Policy: Pivot(time.Second, 4*time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
	r := newRunner(t, d)
	r.reply(orchestrix.OutcomeAccepted)
	for i := 1; i <= 20; i++ {
		dec := r.reply(orchestrix.OutcomeRejected)
		if dec.Instance.Status != StatusRunning || dec.Timer == nil {
			t.Fatalf("try %d: %+v", i, dec)
		}
		if w := dec.Timer.Due.Sub(r.now); w > 4*time.Second {
			t.Fatalf("backoff %s above its cap", w)
		}
		r.fire(waitRetry)
	}
	if dec := r.reply(orchestrix.OutcomeAccepted); dec.Instance.Status != StatusCompleted {
		t.Fatalf("want completed: %+v", dec)
	}
}

func TestCorrelation(t *testing.T) {
	typ, id, ok := ParseCorrelation(Correlation("transfer", "a:b"))
	if !ok || typ != "transfer" || id != "a:b" {
		t.Fatalf("got %q %q %v", typ, id, ok)
	}
	for _, c := range []string{"", "saga:", "saga:x", "saga::y", "order-1"} {
		if _, _, ok := ParseCorrelation(c); ok {
			t.Fatalf("%q parsed", c)
		}
	}
	if CommandID("t", "s", PhaseAction, 0, 1) != CommandID("t", "s", PhaseAction, 0, 1) ||
		CommandID("t", "s", PhaseAction, 0, 1) == CommandID("t", "s", PhaseCompensation, 0, 1) {
		t.Fatal("command IDs must be deterministic and distinct per phase")
	}
}
