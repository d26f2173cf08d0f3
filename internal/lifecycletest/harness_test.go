package lifecycletest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// harness is one test's world: a migrated schema, the context's topics, an
// outcome reader, and the processor processes it starts.
type harness struct {
	t        *testing.T
	seeds    []string
	pool     *pgxpool.Pool
	store    *postgres.Store
	bc       string
	variant  string
	shutdown time.Duration
	reg      *codec.Registry
	outcomes *outcomeReader
}

func newHarness(t *testing.T, variant string, partitions int32, shutdown time.Duration) *harness {
	t.Helper()
	seeds := testenv.Brokers(t)
	pool := testenv.Pool(t)
	store := pgtest.Store(t, pool)
	h := &harness{t: t, seeds: seeds, pool: pool, store: store, bc: testenv.Name("lc"), variant: variant, shutdown: shutdown, reg: testdomain.Registry(t)}
	adm := kadm.NewClient(testenv.Client(t, seeds))
	specs := append(topics.ForContext(h.bc, partitions, 1),
		topics.Spec{Name: consumers.DeadLetterTopic(topics.Commands(h.bc), h.bc+"-aggregates"), Partitions: 1, ReplicationFactor: 1})
	if _, err := topics.Ensure(t.Context(), adm, specs...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var names []string
		for _, s := range specs {
			names = append(names, s.Name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = adm.DeleteTopics(ctx, names...)
		_, _ = adm.DeleteGroup(ctx, h.bc+"-aggregates")
	})
	h.outcomes = startOutcomeReader(t, seeds, topics.Outcomes(h.bc))
	return h
}

// child is one processor process.
type child struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	logFile string
	gate    string
	started time.Time

	mu      sync.Mutex
	addr    string
	readyAt time.Time // when /readyz first answered 200
	drained time.Duration
	exitErr string
	listen  chan struct{} // closed with addr set
	handled chan struct{} // closed at the first handled batch
	exited  chan struct{} // closed when the process is gone
	waitErr error
	probes  *prober
}

// start runs a processor process named name (its client and instance ID).
// With gate, its shutdown waits for the test to open the gate (see
// waitGate).
func (h *harness) start(name string, gate bool) *child {
	t := h.t
	t.Helper()
	dir := t.TempDir()
	if os.Getenv(envLog) == "debug" {
		// Kept for reading after the test.
		var err error
		if dir, err = os.MkdirTemp("", "lifecycle-"+name+"-"); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: stderr in %s", name, dir)
	}
	c := &child{t: t, name: name, logFile: dir + "/stderr", listen: make(chan struct{}), handled: make(chan struct{}), exited: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0], "-test.run=^$")
	env := append(os.Environ(), childEnv+"=processor", envSchema+"="+h.store.Schema(), envContext+"="+h.bc, envMember+"="+name,
		envVariant+"="+h.variant, envShutdown+"="+h.shutdown.String(), "KAFKA_BROKERS="+strings.Join(h.seeds, ","),
		"DATABASE_URL="+testenv.DatabaseURL(t),
		// Under -race, no second's sleep at exit (the detector's default):
		// a restart would wait for it. A race found still fails the exit
		// (status 66).
		"GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
	if gate {
		c.gate = dir + "/gate"
		env = append(env, envGate+"="+c.gate)
	}
	c.cmd.Env = env
	errf, err := os.Create(c.logFile)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd.Stderr = errf
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.started = time.Now()
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		c.read(out) // to EOF first: Wait closes the pipe
		c.waitErr = c.cmd.Wait()
		errf.Close()
		close(c.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-c.exited:
			return
		default:
		}
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(h.shutdown + 5*time.Second):
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	})
	return c
}

// read parses the child's stdout events until EOF.
func (c *child) read(out io.Reader) {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var e childEvent
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		c.mu.Lock()
		switch e.Ev {
		case "listen":
			c.addr = e.Addr
			close(c.listen)
		case "handled":
			close(c.handled)
		case "drained":
			c.drained = time.Duration(e.Us) * time.Microsecond
		case "exit":
			c.exitErr = e.Err
		}
		c.mu.Unlock()
	}
}

// fatalf fails the test with the child's log.
func (c *child) fatalf(format string, args ...any) {
	c.t.Helper()
	b, _ := os.ReadFile(c.logFile)
	c.t.Fatalf("%s: %s\nits stderr:\n%s", c.name, fmt.Sprintf(format, args...), tail(string(b), 40))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// awaitReady waits until /readyz answers 200 and starts the prober.
func (c *child) awaitReady(d time.Duration) time.Duration {
	c.t.Helper()
	deadline := time.After(d)
	select {
	case <-c.listen:
	case <-c.exited:
		c.fatalf("exited before listening: %v", c.waitErr)
	case <-deadline:
		c.fatalf("no health address within %s", d)
	}
	c.probes = startProber(c.addr, c.exited)
	for {
		if code, _ := get(c.probes.cl, "http://"+c.addr+"/readyz"); code == http.StatusOK {
			c.readyAt = time.Now()
			return time.Since(c.started)
		}
		select {
		case <-c.exited:
			c.fatalf("exited before ready: %v", c.waitErr)
		case <-deadline:
			c.fatalf("/readyz not 200 within %s", d)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// awaitHandled waits until the process handled its first batch: it is in
// the group and owns partitions.
func (c *child) awaitHandled(d time.Duration) time.Duration {
	c.t.Helper()
	select {
	case <-c.handled:
		return time.Since(c.started)
	case <-c.exited:
		c.fatalf("exited before handling records: %v", c.waitErr)
	case <-time.After(d):
		c.fatalf("no batch handled within %s", d)
	}
	return 0
}

// terminate sends SIGTERM and waits for the exit; it fails the test unless
// the process exits 0 within bound. It returns how long the exit took.
func (c *child) terminate(bound time.Duration) (time.Duration, time.Time) {
	c.t.Helper()
	sig := time.Now()
	if c.probes != nil {
		c.probes.mark(sig)
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		c.fatalf("SIGTERM: %v", err)
	}
	if c.gate != "" {
		// Open the gate once the shutdown was probed (or at once without
		// a prober).
		go func() {
			if c.probes != nil {
				c.probes.awaitShutdownSeen(bound / 2)
			}
			_ = os.WriteFile(c.gate, nil, 0o600)
		}()
	}
	select {
	case <-c.exited:
	case <-time.After(bound):
		_ = c.cmd.Process.Kill()
		<-c.exited
		c.fatalf("still running %s after SIGTERM (the bound)", bound)
	}
	took := time.Since(sig)
	if c.waitErr != nil {
		c.mu.Lock()
		e := c.exitErr
		c.mu.Unlock()
		c.fatalf("exit after SIGTERM: %v (service.Run: %s)", c.waitErr, e)
	}
	return took, sig
}

func (c *child) drainTook() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.drained
}

// sample is one probe: when the request was sent, when its answer came,
// and the answer (code 0: the request failed, nothing listens any more).
type sample struct {
	at       time.Time
	path     string
	code     int
	body     string // when not 200
	answered time.Time
}

// prober asks /readyz and /livez every 10ms until the process exits.
type prober struct {
	cl      *http.Client
	mu      sync.Mutex
	samples []sample
	sig     time.Time
	seen    chan struct{} // closed once a 503 /readyz and a 200 /livez came after sig
	once    sync.Once
	done    chan struct{}
}

func startProber(addr string, exited <-chan struct{}) *prober {
	p := &prober{cl: &http.Client{Timeout: 5 * time.Second}, seen: make(chan struct{}), done: make(chan struct{})}
	for _, path := range []string{"/readyz", "/livez"} {
		go func() {
			for {
				select {
				case <-exited:
					return
				default:
				}
				at := time.Now()
				code, body := get(p.cl, "http://"+addr+path)
				p.add(sample{at, path, code, body, time.Now()})
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	return p
}

func (p *prober) add(s sample) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.samples = append(p.samples, s)
	if p.sig.IsZero() || s.at.Before(p.sig) {
		return
	}
	var ready503, live200 bool
	for _, x := range p.samples {
		if x.at.Before(p.sig) {
			continue
		}
		ready503 = ready503 || x.path == "/readyz" && x.code == http.StatusServiceUnavailable
		live200 = live200 || x.path == "/livez" && x.code == http.StatusOK
	}
	if ready503 && live200 {
		p.once.Do(func() { close(p.seen) })
	}
}

func (p *prober) mark(sig time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sig = sig
}

func (p *prober) awaitShutdownSeen(d time.Duration) {
	select {
	case <-p.seen:
	case <-time.After(d):
	}
}

func (p *prober) snapshot() []sample {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.samples)
}

// get returns the status code (0: the request failed) and, when it is
// not 200, the body.
func get(cl *http.Client, url string) (int, string) {
	resp, err := cl.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, ""
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// outcomeRec is one outcome record as the reader received it.
type outcomeRec struct {
	o  orchestrix.Outcome
	at time.Time
}

// outcomeReader reads the whole outcome topic (no group) and keeps every
// record with its arrival time.
type outcomeReader struct {
	mu    sync.Mutex
	byCmd map[string][]outcomeRec
	all   []time.Time // arrival of every outcome record
	bad   int
}

func startOutcomeReader(t *testing.T, seeds []string, topic string) *outcomeReader {
	cl := testenv.Client(t, seeds, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	r := &outcomeReader{byCmd: map[string][]outcomeRec{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			now := time.Now()
			r.mu.Lock()
			fs.EachRecord(func(rec *kgo.Record) {
				var o orchestrix.Outcome
				if err := json.Unmarshal(rec.Value, &o); err != nil {
					r.bad++
					return
				}
				r.byCmd[o.CommandID] = append(r.byCmd[o.CommandID], outcomeRec{o, now})
				r.all = append(r.all, now)
			})
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// await waits until every command of ids has an outcome, or d passed; it
// returns how many are missing.
func (r *outcomeReader) await(ids []string, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		r.mu.Lock()
		missing := 0
		for _, id := range ids {
			if len(r.byCmd[id]) == 0 {
				missing++
			}
		}
		r.mu.Unlock()
		if missing == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sent is one command the load sent, with what the model expects of it.
type sent struct {
	id, account string
	at          time.Time
	accept      bool   // the model accepts it
	version     uint64 // of its event when accepted
}

// load sends ledger commands at a fixed rate over accounts and keeps the
// model: per account the balance and version its accepted commands imply.
type load struct {
	t      *testing.T
	sender *producers.Sender
	cl     *kgo.Client
	rate   int

	mu       sync.Mutex
	cmds     []sent
	balance  map[string]int64
	version  map[string]uint64
	opened   map[string]bool
	sendErr  error
	accounts []string

	stop chan struct{}
	done chan struct{}
}

func (h *harness) startLoad(rate, accounts int) *load {
	t := h.t
	cl, err := producers.NewClient(h.seeds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	sender, err := producers.NewSender(cl, h.reg, topics.Commands(h.bc), "/lifecycletest")
	if err != nil {
		t.Fatal(err)
	}
	l := &load{t: t, sender: sender, cl: cl, rate: rate, balance: map[string]int64{}, version: map[string]uint64{}, opened: map[string]bool{},
		stop: make(chan struct{}), done: make(chan struct{})}
	for i := range accounts {
		l.accounts = append(l.accounts, fmt.Sprintf("acct-%04d", i))
	}
	go l.run()
	return l
}

func (l *load) run() {
	defer close(l.done)
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Now()
	n := 0
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		due := int(time.Since(start).Seconds() * float64(l.rate))
		for ; n < due; n++ {
			l.sendOne(rng)
		}
	}
}

func (l *load) sendOne(rng *rand.Rand) {
	acct := l.accounts[rng.IntN(len(l.accounts))]
	var payload any
	switch {
	case !l.opened[acct]:
		payload = testdomain.Open{Name: acct}
	case rng.IntN(10) < 7:
		payload = testdomain.Post{Amount: 1 + rng.Int64N(100)}
	default:
		payload = testdomain.Post{Amount: -1 - rng.Int64N(200)}
	}
	cmd, err := l.sender.Command(acct, payload)
	if err != nil {
		l.fail(err)
		return
	}
	// The model: one account's commands are handled in the order sent.
	s := sent{id: cmd.ID, account: acct, at: time.Now(), accept: true}
	switch p := payload.(type) {
	case testdomain.Open:
		l.opened[acct] = true
	case testdomain.Post:
		if l.balance[acct]+p.Amount < 0 {
			s.accept = false
		} else {
			l.balance[acct] += p.Amount
		}
	}
	if s.accept {
		l.version[acct]++
		s.version = l.version[acct]
	}
	l.mu.Lock()
	l.cmds = append(l.cmds, s)
	l.mu.Unlock()
	l.sender.SendAsync(context.Background(), cmd, func(err error) {
		if err != nil {
			l.fail(err)
		}
	})
}

func (l *load) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sendErr == nil {
		l.sendErr = err
	}
}

// finish stops sending, flushes, and returns the commands sent.
func (l *load) finish() []sent {
	l.t.Helper()
	close(l.stop)
	<-l.done
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := l.cl.Flush(ctx); err != nil {
		l.t.Fatalf("flush commands: %v", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sendErr != nil {
		l.t.Fatalf("send: %v", l.sendErr)
	}
	return slices.Clone(l.cmds)
}

// checkEffects is the zero-lost, zero-duplicated check once every command
// has an outcome: the first outcome of each command is what the model
// says; no command has two accepted outcomes with different versions; the
// store holds each accepted command's event once, at the model's version,
// and a recorded rejection for each rejected one; balances equal the
// model. It returns the number of outcome records beyond the first per
// command (redeliveries answered from the store).
func (h *harness) checkEffects(cmds []sent, l *load) (extra int) {
	t := h.t
	t.Helper()
	ids := make([]string, len(cmds))
	for i, c := range cmds {
		ids[i] = c.id
	}
	if missing := h.outcomes.await(ids, 90*time.Second); missing > 0 {
		t.Fatalf("lost: %d of %d commands have no outcome after 90s", missing, len(cmds))
	}
	h.outcomes.mu.Lock()
	defer h.outcomes.mu.Unlock()
	if h.outcomes.bad > 0 {
		t.Errorf("%d undecodable outcome records", h.outcomes.bad)
	}
	var problems []string
	report := func(format string, args ...any) {
		if len(problems) < 10 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	accepted := 0
	for _, c := range cmds {
		recs := h.outcomes.byCmd[c.id]
		extra += len(recs) - 1
		first := recs[0].o
		want := orchestrix.OutcomeRejected
		if c.accept {
			want = orchestrix.OutcomeAccepted
			accepted++
		}
		if first.Status != want || c.accept && first.ToVersion != c.version {
			report("%s on %s: first outcome %s v%d, the model says %s v%d", c.id, c.account, first.Status, first.ToVersion, want, c.version)
		}
		var acc *orchestrix.Outcome
		for _, r := range recs {
			if r.o.Status != orchestrix.OutcomeAccepted {
				continue
			}
			if acc != nil && (acc.FromVersion != r.o.FromVersion || acc.ToVersion != r.o.ToVersion) {
				report("%s: accepted twice, v%d-%d and v%d-%d (applied twice)", c.id, acc.FromVersion, acc.ToVersion, r.o.FromVersion, r.o.ToVersion)
			}
			acc = &r.o
		}
	}
	// The store: each command's events once, at the model's version.
	type row struct {
		stream  string
		version uint64
	}
	events := map[string][]row{}
	rows, err := h.pool.Query(t.Context(), "SELECT command_id, stream_id, version FROM "+pgx.Identifier{h.store.Schema(), "events"}.Sanitize())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var id string
		var r row
		if err := rows.Scan(&id, &r.stream, &r.version); err != nil {
			t.Fatal(err)
		}
		events[id] = append(events[id], r)
		n++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rejected := map[string]bool{}
	rows, err = h.pool.Query(t.Context(), "SELECT command_id FROM "+pgx.Identifier{h.store.Schema(), "commands"}.Sanitize()+" WHERE rejection IS NOT NULL")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		rejected[id] = true
	}
	rows.Close()
	for _, c := range cmds {
		ev := events[c.id]
		switch {
		case c.accept && (len(ev) != 1 || ev[0].stream != c.account || ev[0].version != c.version):
			report("%s on %s: stored events %v, want one at v%d", c.id, c.account, ev, c.version)
		case !c.accept && len(ev) != 0:
			report("%s: rejected by the model, stored %v", c.id, ev)
		case !c.accept && !rejected[c.id]:
			report("%s: rejected without a recorded rejection", c.id)
		}
	}
	if n != accepted {
		report("%d events stored, %d commands accepted", n, accepted)
	}
	// Balances, folded from the stored events.
	for _, acct := range l.accounts {
		var a testdomain.Ledger
		for e, err := range h.store.ReadStream(t.Context(), acct, 0) {
			if err != nil {
				t.Fatal(err)
			}
			if err := h.reg.DecodeEvent(&e); err != nil {
				t.Fatal(err)
			}
			a = testdomain.Evolve(a, e)
		}
		if a.Balance != l.balance[acct] {
			report("%s: balance %d, the model says %d", acct, a.Balance, l.balance[acct])
		}
	}
	if len(problems) > 0 {
		t.Fatalf("effects differ from the model (first %d):\n%s", len(problems), strings.Join(problems, "\n"))
	}
	t.Logf("effects: %d commands, %d accepted (one event each), %d rejected (recorded), %d extra outcome records (redeliveries answered as duplicates)",
		len(cmds), accepted, len(cmds)-accepted, extra)
	return extra
}

// window is a stretch of time [from, to).
type window struct{ from, to time.Time }

func (w window) has(t time.Time) bool { return !t.Before(w.from) && t.Before(w.to) }

func total(ws []window) time.Duration {
	var d time.Duration
	for _, w := range ws {
		d += w.to.Sub(w.from)
	}
	return d
}

// latencies returns the send→first-outcome latencies of the commands sent
// in the windows, sorted.
func (h *harness) latencies(cmds []sent, ws []window) []time.Duration {
	h.outcomes.mu.Lock()
	defer h.outcomes.mu.Unlock()
	var out []time.Duration
	for _, c := range cmds {
		if !slices.ContainsFunc(ws, func(w window) bool { return w.has(c.at) }) {
			continue
		}
		if recs := h.outcomes.byCmd[c.id]; len(recs) > 0 {
			out = append(out, recs[0].at.Sub(c.at))
		}
	}
	slices.Sort(out)
	return out
}

// longestGap is the longest time within one of the windows with no
// outcome record arriving.
func (h *harness) longestGap(ws []window) time.Duration {
	h.outcomes.mu.Lock()
	all := slices.Clone(h.outcomes.all)
	h.outcomes.mu.Unlock()
	slices.SortFunc(all, func(a, b time.Time) int { return a.Compare(b) })
	var gap time.Duration
	for _, w := range ws {
		prev := w.from
		for _, at := range all {
			if w.has(at) {
				gap = max(gap, at.Sub(prev))
				prev = at
			}
		}
		gap = max(gap, w.to.Sub(prev))
	}
	return gap
}

// quantile of sorted durations (0 for none).
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(q * float64(len(d)-1))
	return d[i]
}

type latencyStats struct {
	n                  int
	p50, p99, max, gap time.Duration
}

func (s latencyStats) String() string {
	return fmt.Sprintf("n=%d p50=%s p99=%s max=%s longest-gap=%s", s.n, ms(s.p50), ms(s.p99), ms(s.max), ms(s.gap))
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

func (h *harness) stats(cmds []sent, ws ...window) latencyStats {
	l := h.latencies(cmds, ws)
	s := latencyStats{n: len(l), p50: quantile(l, 0.5), p99: quantile(l, 0.99), gap: h.longestGap(ws)}
	if len(l) > 0 {
		s.max = l[len(l)-1]
	}
	return s
}
