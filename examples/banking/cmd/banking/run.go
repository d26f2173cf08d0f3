package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/service"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kgo"
)

// checkConfig is one self-check run.
type checkConfig struct {
	brokers     []string // empty: an embedded kfake cluster
	kafka       []kgo.Opt
	databaseURL string // empty: the memory stores
	context     string
	schema      string // fresh per run on PostgreSQL, dropped at the end unless keep
	keep        bool
	scenario    string
	seed        uint64
	accounts    int
	transfers   int
	rate        int // transfers started per second
	timeout     time.Duration
	watch       bool
	stdout      io.Writer
	stderr      io.Writer
}

// scenarioSpec is what a scenario injects.
type scenarioSpec struct {
	about     string
	ghosts    float64 // share of transfers to accounts that were never opened
	bluegreen bool    // rebuild the statement projection (v2) and cut over while transfers run
	poison    bool    // send bad commands (no CloudEvent, undecodable data): dead-lettered with a reason
}

var scenarios = map[string]scenarioSpec{
	"happy":        {about: "transfers between open accounts"},
	"credit-fails": {about: "a quarter of the transfers go to accounts that were never opened: the credit is rejected 3 times, then the debit is refunded", ghosts: 0.25},
	"bluegreen":    {about: "while transfers run, statement v2 is rebuilt from the log beside v1 and cut over; a reader checks the view throughout", ghosts: 0.1, bluegreen: true},
	"all": {about: "credit failures, two bad commands (dead-lettered), and a blue/green rebuild of the statements while transfers run",
		ghosts: 0.25, bluegreen: true, poison: true},
}

var scenarioNames = []string{"all", "happy", "credit-fails", "bluegreen"}

// initialBalance is each account's first deposit.
const initialBalance = 1000

// plannedTransfer is one transfer of the run.
type plannedTransfer struct {
	id    string
	t     banking.Transfer
	ghost bool // To was never opened
}

// verdict is the table of invariants the run ends with.
type verdict struct {
	rows []verdictRow
}

type verdictRow struct {
	ok          bool
	name, about string
}

func (v *verdict) check(ok bool, name, format string, args ...any) {
	v.rows = append(v.rows, verdictRow{ok: ok, name: name, about: fmt.Sprintf(format, args...)})
}

func (v *verdict) failed() bool {
	return slices.ContainsFunc(v.rows, func(r verdictRow) bool { return !r.ok })
}

func (v *verdict) print(w io.Writer) {
	width := 0
	for _, r := range v.rows {
		width = max(width, len(r.name))
	}
	fmt.Fprintln(w, "\nverdict:")
	for _, r := range v.rows {
		mark := "ok  "
		if !r.ok {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s  %-*s  %s\n", mark, width, r.name, r.about)
	}
}

// errViolation reports a run whose verdict has a failed row.
var errViolation = errors.New("an invariant does not hold")

// timeline prints the --watch lines.
type timeline struct {
	start time.Time
	mu    sync.Mutex
	w     io.Writer
	on    bool
}

func (t *timeline) logf(format string, args ...any) {
	if !t.on {
		return
	}
	line := fmt.Sprintf("%7.3fs  %s\n", time.Since(t.start).Seconds(), fmt.Sprintf(format, args...))
	t.mu.Lock()
	defer t.mu.Unlock()
	io.WriteString(t.w, line)
}

// run is the self-check: it runs the banking service, opens accounts,
// starts transfers (and, per scenario, sends some to accounts that do not
// exist, and rebuilds the statement projection blue/green while they run),
// waits until every transfer has ended, and checks the invariants. It
// returns errViolation when one does not hold.
func run(parent context.Context, c checkConfig) error {
	sc, ok := scenarios[c.scenario]
	if !ok {
		return fmt.Errorf("unknown scenario %q (have: %s)", c.scenario, strings.Join(scenarioNames, ", "))
	}
	tl := &timeline{start: time.Now(), w: c.stdout, on: c.watch}
	kb, err := exampleapp.OpenBroker(c.brokers, 0)
	if err != nil {
		return err
	}
	defer kb.Close()
	seeds, where := kb.Seeds, kb.Where
	c.kafka = kb.ClientOpts(c.kafka)
	quiet := slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	ac := appConfig{seeds: seeds, kafka: c.kafka, context: c.context, log: quiet, fast: true}
	storeAbout := "memory stores"
	if c.databaseURL != "" {
		pool, err := pgxpool.New(parent, c.databaseURL)
		if err != nil {
			return fmt.Errorf("database: %w", err)
		}
		defer pool.Close()
		if err := migrate(parent, pool, c.schema); err != nil {
			return err
		}
		if !c.keep {
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				_ = dropSchema(ctx, pool, c.schema)
			}()
		}
		ac.pool, ac.schema = pool, c.schema
		storeAbout = "PostgreSQL schema " + c.schema
	}
	fmt.Fprintf(c.stdout, "banking: %d accounts, %d transfers at %d/s on %s and %s, context %q, scenario %q (%s), seed %d\n",
		c.accounts, c.transfers, c.rate, where, storeAbout, c.context, c.scenario, sc.about, c.seed)

	if c.watch {
		ac.onTransition = func(tr sagas.Transition) {
			tl.logf("saga   %-12s %s → %s  step %d  %s", tr.SagaID, tr.From, tr.To, tr.Step, tr.Note)
		}
	}
	ac.onStats = func(group string, s consumers.Stats) {
		if s.Failed > 0 || s.DeadLettered > 0 {
			tl.logf("fail   %s %s[%d]: %d records failed, %d of them dead-lettered (the rest to the retry topics)", group, s.Topic, s.Partition, s.Failed, s.DeadLettered)
		}
	}
	var liveVersion atomic.Int64 // the version whose commits the timeline shows
	liveVersion.Store(1)
	ac.onEvents = func(cm projections.Commit) {
		if !c.watch || int64(cm.Version) != liveVersion.Load() {
			return
		}
		for _, e := range cm.Events {
			tl.logf("event  %-12s v%-3d %s %s", e.StreamID, e.Version, strings.TrimPrefix(e.Type, "banking."), e.Data)
		}
	}
	if err := createTopics(parent, ac, 4, 1); err != nil {
		return err
	}
	if len(c.brokers) > 0 && !c.keep {
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = deleteContextTopics(ctx, ac)
		}()
	}
	a, err := newApp(parent, ac)
	if err != nil {
		return err
	}
	defer a.close()

	// The service, exactly as `serve` runs it.
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	served := make(chan error, 1)
	go func() {
		served <- service.Run(ctx, service.Options{ShutdownTimeout: 30 * time.Second}, a.workers...)
	}()
	defer func() {
		cancel(nil)
		<-served
	}()
	go func() {
		// A worker that fails ends the service: end the run with it.
		select {
		case err := <-served:
			served <- err
			if err != nil {
				cancel(fmt.Errorf("service stopped: %w", err))
			}
		case <-ctx.Done():
		}
	}()

	// Accounts: open and fund them through the command topic.
	aw, err := producers.NewAwaiter(seeds, topics.Outcomes(c.context), c.kafka...)
	if err != nil {
		return err
	}
	go func() { _ = aw.Run(ctx) }()
	sender, err := producers.NewSender(a.client, a.reg, topics.Commands(c.context), "/banking-self-check")
	if err != nil {
		return err
	}
	accounts := make([]string, c.accounts)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("acct-%03d", i)
	}
	if err := openAccounts(ctx, sender, aw, accounts, tl); err != nil {
		return err
	}
	tl.logf("opened %d accounts with %d each", len(accounts), initialBalance)

	if sc.poison {
		if err := sendPoison(ctx, a, sender, accounts[0], tl); err != nil {
			return err
		}
	}

	plan := planTransfers(c, sc, accounts)

	// The reader and the blue/green rebuild.
	rd := &reader{app: a}
	var bg blueGreen
	var bgDone chan struct{}
	if sc.bluegreen {
		bgDone = make(chan struct{})
		rd.start(ctx)
		defer rd.stop(context.Background())
		go func() {
			defer close(bgDone)
			bg.run(ctx, a, &liveVersion, tl, plan)
		}()
	}

	// Transfers, at the rate.
	every := time.Second / time.Duration(c.rate)
	next := time.Now()
	for i, p := range plan {
		if wait := time.Until(next); wait > 0 {
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-time.After(wait):
			}
		}
		next = next.Add(every)
		tl.logf("start  %-12s %s → %s  %d", p.id, p.t.From, p.t.To, p.t.Amount)
		if err := a.rt.Start(ctx, p.id, p.t); err != nil {
			return fmt.Errorf("start transfer %s: %w", p.id, err)
		}
		bg.sent.Store(int64(i + 1))
	}
	sentAt := time.Now()
	tl.logf("started all %d transfers", len(plan))

	// Every transfer ends.
	results, err := waitTransfers(ctx, a, plan, c.timeout)
	if err != nil {
		return err
	}
	if bgDone != nil {
		select {
		case <-bgDone:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	if err := a.statement.WaitForNonStale(ctx); err != nil {
		return fmt.Errorf("statements: %w", err)
	}
	rd.stop(ctx)
	endedAt := time.Now()
	tl.logf("every transfer ended %s after the last start", endedAt.Sub(sentAt).Round(time.Millisecond))

	v := &verdict{}
	if err := check(ctx, c, a, seeds, plan, results, accounts, rd, &bg, endedAt, sc, v); err != nil {
		return err
	}
	v.print(c.stdout)
	if v.failed() {
		return errViolation
	}
	return nil
}

// openAccounts opens and funds accounts and waits for every outcome.
func openAccounts(ctx context.Context, s *producers.Sender, aw *producers.Awaiter, accounts []string, tl *timeline) error {
	var ids []string
	for _, acc := range accounts {
		for _, p := range []any{banking.OpenAccount{Owner: acc}, banking.Deposit{Amount: initialBalance}} {
			cmd, err := s.Command(acc, p)
			if err != nil {
				return err
			}
			tl.logf("cmd    %-12s %s", acc, cmd.Type)
			if err := s.Send(ctx, cmd); err != nil {
				return fmt.Errorf("send %s to %s: %w", cmd.Type, acc, err)
			}
			ids = append(ids, cmd.ID)
		}
	}
	for _, id := range ids {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		o, err := aw.Wait(wctx, id)
		cancel()
		if err != nil {
			return fmt.Errorf("open accounts: waiting for %s: %w", id, err)
		}
		if o.Status != orchestrix.OutcomeAccepted && o.Status != orchestrix.OutcomeDuplicate {
			return fmt.Errorf("open accounts: %s on %s: %s %s %s", o.CommandType, o.AggregateID, o.Status, o.Code, o.Message)
		}
	}
	return nil
}

// poisonCount is how many bad commands sendPoison sends.
const poisonCount = 2

// sendPoison sends bad input to the command topic, on the key of an
// account whose commands go on: a record that is no CloudEvent, and a
// Deposit whose data does not decode. Both must be dead-lettered with a
// reason, and the account's later commands must flow.
func sendPoison(ctx context.Context, a *app, s *producers.Sender, account string, tl *timeline) error {
	topic := topics.Commands(a.cfg.context)
	cmd, err := s.Command(account, banking.Deposit{Amount: 1})
	if err != nil {
		return err
	}
	bad, err := codec.CommandToRecord(topic, cmd)
	if err != nil {
		return err
	}
	bad.Value = []byte(`{"amount":"one"`)
	for _, r := range []*kgo.Record{{Topic: topic, Key: []byte(account), Value: []byte("not a CloudEvent")}, bad} {
		if err := a.client.ProduceSync(ctx, r).FirstErr(); err != nil {
			return fmt.Errorf("send bad input: %w", err)
		}
	}
	tl.logf("poison %-12s 2 bad commands: no CloudEvent headers; a Deposit whose data does not decode", account)
	return nil
}

// planTransfers draws the run's transfers from its seed.
func planTransfers(c checkConfig, sc scenarioSpec, accounts []string) []plannedTransfer {
	rng := rand.New(rand.NewPCG(c.seed, uint64(c.transfers)))
	plan := make([]plannedTransfer, c.transfers)
	for i := range plan {
		from := accounts[rng.IntN(len(accounts))]
		to := accounts[rng.IntN(len(accounts))]
		for to == from {
			to = accounts[rng.IntN(len(accounts))]
		}
		p := plannedTransfer{id: fmt.Sprintf("t%04d", i)}
		if rng.Float64() < sc.ghosts {
			to, p.ghost = fmt.Sprintf("ghost-%02d", rng.IntN(10)), true
		}
		// Amounts up to a third of the opening balance: most transfers
		// pass, and an account drained by earlier ones declines some.
		p.t = banking.Transfer{From: from, To: to, Amount: 1 + rng.Int64N(initialBalance/3)}
		plan[i] = p
	}
	return plan
}

// transferResult is how a transfer ended.
type transferResult struct {
	result string
	inst   sagas.Instance
}

// waitTransfers waits until every transfer saga is terminal.
func waitTransfers(ctx context.Context, a *app, plan []plannedTransfer, timeout time.Duration) (map[string]transferResult, error) {
	deadline := time.Now().Add(timeout)
	out := make(map[string]transferResult, len(plan))
	for {
		for _, p := range plan {
			if r, ok := out[p.id]; ok && r.result != banking.ResultRunning {
				continue
			}
			inst, t, err := a.transfer(ctx, p.id)
			if err != nil && !errors.Is(err, sagas.ErrNotFound) {
				return nil, err
			}
			out[p.id] = transferResult{result: banking.TransferResult(inst.Status, t), inst: inst}
		}
		var running []string
		for _, p := range plan {
			if out[p.id].result == banking.ResultRunning {
				running = append(running, p.id)
			}
		}
		if len(running) == 0 {
			return out, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d transfers still running after %s (first: %s)", len(running), len(plan), timeout, running[0])
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// reader reads every statement through the view, over and over, while
// the statement projection is rebuilt and cut over: what a query sees.
type reader struct {
	app    *app
	mu     sync.Mutex
	reads  []timedRead
	errs   []error
	cancel context.CancelFunc
	done   chan struct{}
}

// timedRead is one read of every statement, and when it began.
type timedRead struct {
	at time.Time
	s  map[string][]banking.StatementLine
}

func (r *reader) start(ctx context.Context) {
	ctx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		for ctx.Err() == nil {
			r.read(ctx)
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
}

func (r *reader) read(ctx context.Context) {
	at := time.Now()
	s, err := r.app.statements(ctx, 0)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		r.errs = append(r.errs, err)
	} else if err == nil {
		r.reads = append(r.reads, timedRead{at: at, s: s})
	}
}

// stop ends the loop and takes one last read.
func (r *reader) stop(ctx context.Context) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	<-r.done
	r.read(ctx)
}

// blueGreen rebuilds the statement projection as v2 while transfers run
// and cuts over to it once it caught up.
type blueGreen struct {
	sent              atomic.Int64 // transfers started so far
	version           int
	registeredAtSent  int64
	cutAtSent         int64
	cutAt, registered time.Time
	err               error
}

func (bg *blueGreen) run(ctx context.Context, a *app, live *atomic.Int64, tl *timeline, plan []plannedTransfer) {
	// Rebuild once a quarter of the transfers are under way; cut over
	// once v2 has caught up and half of them are: meanwhile v2 is kept
	// current beside v1, as while an operator watches its status.
	if err := bg.waitSent(ctx, len(plan)/4); err != nil {
		bg.err = err
		return
	}
	v, err := a.rebuild(ctx)
	if err != nil {
		bg.err = fmt.Errorf("rebuild: %w", err)
		return
	}
	bg.version, bg.registered, bg.registeredAtSent = v, time.Now(), bg.sent.Load()
	tl.logf("rebuild statements v%d registered: the runner builds it from the start of the log beside v%d", v, v-1)
	if err := bg.waitSent(ctx, len(plan)/2); err != nil {
		bg.err = err
		return
	}
	if err := a.cutover(ctx, v); err != nil {
		bg.err = fmt.Errorf("cut over to v%d: %w", v, err)
		return
	}
	bg.cutAt, bg.cutAtSent = time.Now(), bg.sent.Load()
	live.Store(int64(v))
	tl.logf("cutover statements → v%d (%d of %d transfers started); v%d retired, kept current", v, bg.cutAtSent, len(plan), v-1)
}

// waitSent waits until n transfers were started.
func (bg *blueGreen) waitSent(ctx context.Context, n int) error {
	for bg.sent.Load() < int64(n) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}
