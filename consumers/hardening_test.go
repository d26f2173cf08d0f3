package consumers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestMissingPolicyTopics: with a topic the failure policy writes to
// missing, Run fails before consuming anything, with an error that names
// the missing topics and the command that creates them; after running
// that command (here: creating the topics it names), the group
// dead-letters a poison record and keeps going.
// (Before, with the default policy, nothing checked the dead-letter topic:
// the first poison record stopped the group, again after every restart.)
func TestMissingPolicyTopics(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			seeds := b.Seeds(t)
			// Parallel: Run looks again at missing topics for 10s before
			// it fails.
			t.Run("DefaultPolicy", func(t *testing.T) {
				t.Parallel()
				testMissingPolicyTopics(t, seeds, consumers.DefaultFailurePolicy(), nil)
			})
			t.Run("RetryTopics", func(t *testing.T) {
				t.Parallel()
				policy := consumers.RetryTopics(10*time.Millisecond, 20*time.Millisecond).KeepKeyOrder(consumers.OrderedResume).ThenDLQ()
				// Level 1 exists, level 2 and the dead-letter topic do not.
				testMissingPolicyTopics(t, seeds, policy, []int{1})
			})
		})
	}
}

func testMissingPolicyTopics(t *testing.T, seeds []string, policy consumers.FailurePolicy, existing []int) {
	topic := testenv.Topic(t, seeds, 3, nil)
	group := testenv.Name("g")
	adm := kadm.NewClient(testenv.Client(t, seeds))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = adm.DeleteTopics(ctx, policy.Topics(topic, group)...)
	})
	var want []string
	for l := range policy.RetryDelays {
		name := consumers.RetryTopic(topic, group, l+1)
		if len(existing) > 0 && existing[0] == l+1 {
			existing = existing[1:]
			if _, err := adm.CreateTopic(t.Context(), 3, 1, nil, name); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want = append(want, name)
	}
	want = append(want, consumers.DeadLetterTopic(topic, group))

	cl := testenv.Client(t, seeds)
	recs := []*kgo.Record{
		{Topic: topic, Key: []byte("a"), Value: []byte("poison")},
		{Topic: topic, Key: []byte("b"), Value: []byte("fine")},
	}
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		handled []string
	)
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		mu.Lock()
		defer mu.Unlock()
		handled = append(handled, string(r.Value))
		if string(r.Value) == "poison" {
			return consumers.Permanent(errors.New("undecodable"))
		}
		return nil
	})
	newGroup := func() *consumers.Group {
		g, err := consumers.New(seeds, group, []string{topic}, h, consumers.WithFailurePolicy(policy))
		if err != nil {
			t.Fatal(err)
		}
		return g
	}

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	err := newGroup().Run(ctx)
	var missing *consumers.MissingTopicsError
	if !errors.As(err, &missing) || !errors.Is(err, topics.ErrNotFound) {
		t.Fatalf("Run = %v, want a *MissingTopicsError matching topics.ErrNotFound", err)
	}
	if strings.Join(missing.Topics, " ") != strings.Join(want, " ") || len(missing.Commands) != 1 {
		t.Fatalf("missing %v, commands %q; want %v and one command", missing.Topics, missing.Commands, want)
	}
	for _, name := range want {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
	if !strings.Contains(err.Error(), missing.Commands[0]) {
		t.Errorf("error %q does not name the command %q", err, missing.Commands[0])
	}
	mu.Lock()
	if len(handled) > 0 {
		t.Errorf("handled %v before failing, want nothing consumed", handled)
	}
	mu.Unlock()
	if got := committed(t, seeds, group, topic); got != 0 {
		t.Errorf("committed %d, want 0", got)
	}

	wantCmd := "orchestrix topics create --topics " + topic + " --group " + group
	if n := len(policy.RetryDelays); n > 0 {
		wantCmd += " --retry-levels " + strconv.Itoa(n)
	}
	if wantCmd += " --partitions 3"; missing.Commands[0] != wantCmd {
		t.Errorf("command %q, want %q (internal/cli tests that it creates them)", missing.Commands[0], wantCmd)
	}
	createTopics(t, seeds, 3, missing.Topics...)
	err = runGroup(t, newGroup(), func() bool { return committed(t, seeds, group, topic) == 2 })
	if err != nil {
		t.Fatalf("Run after creating the topics: %v", err)
	}
	dlq := readAll(t, seeds, consumers.DeadLetterTopic(topic, group))
	if len(dlq) != 1 || string(dlq[0].Value) != "poison" {
		t.Fatalf("dead letters %d, want the poison record", len(dlq))
	}
}

// batchOf makes a BatchHandler of a HandlerFunc: HandleBatch calls it on
// each record in turn (a panic escapes HandleBatch).
type batchOf struct {
	consumers.HandlerFunc
	batches *atomic.Int64
}

func (b batchOf) HandleBatch(ctx context.Context, recs []*kgo.Record) []error {
	b.batches.Add(1)
	errs := make([]error, len(recs))
	for i, r := range recs {
		errs[i] = b.HandlerFunc(ctx, r)
	}
	return errs
}

// TestHandlerPanics: a handler that panics on two records (a panic value,
// a runtime error) does not kill the process: every other record is
// handled, each key in order, and the two records are in the dead-letter
// topic with reason "panic", the panic in the error header and the
// panicking frame in the stack header. With a BatchHandler, the batch
// that panicked is handled again one record at a time, so only the
// panicking records are dead-lettered. (Before, the panic killed the
// process: the test binary.)
func TestHandlerPanics(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			seeds := b.Seeds(t)
			t.Run("Handle", func(t *testing.T) { testHandlerPanics(t, seeds, false) })
			t.Run("HandleBatch", func(t *testing.T) { testHandlerPanics(t, seeds, true) })
		})
	}
}

func testHandlerPanics(t *testing.T, seeds []string, batch bool) {
	const keys, perKey = 6, 5
	topic := testenv.Topic(t, seeds, 2, nil)
	group := testenv.Name("g")
	createTopics(t, seeds, 2, consumers.DeadLetterTopic(topic, group))
	produce(t, seeds, topic, keys, perKey) // key kN, values 0..perKey-1
	var (
		mu      sync.Mutex
		handled = map[string]bool{}
		last    = map[string]int{}
		calls   = map[string]int{}
		batches atomic.Int64
	)
	var m map[string]int // nil: writing to it panics
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		id := string(r.Key) + ":" + string(r.Value)
		mu.Lock()
		calls[id]++
		mu.Unlock()
		switch id {
		case "k3:2":
			panic("boom " + id)
		case "k4:1":
			m[id]++ // assignment to entry in nil map
		}
		mu.Lock()
		defer mu.Unlock()
		n, _ := strconv.Atoi(string(r.Value))
		if !handled[id] {
			if prev, ok := last[string(r.Key)]; ok && n < prev {
				t.Errorf("key %s: %d handled for the first time after %d", r.Key, n, prev)
			}
			last[string(r.Key)] = n
		}
		handled[id] = true
		return nil
	})
	var handler consumers.Handler = h
	if batch {
		handler = batchOf{h, &batches}
	}
	g, err := consumers.New(seeds, group, []string{topic}, handler, consumers.KeyConcurrency(2))
	if err != nil {
		t.Fatal(err)
	}
	if err := runGroup(t, g, func() bool { return committed(t, seeds, group, topic) == keys*perKey }); err != nil {
		t.Fatalf("run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != keys*perKey-2 {
		t.Errorf("handled %d records, want %d", len(handled), keys*perKey-2)
	}
	// Permanent: no in-place retry (with a batch, one call alone after
	// at most one in the batch: a batch stops at its first panic).
	lo, hi := 1, 1
	if batch {
		hi = 2
		if batches.Load() == 0 {
			t.Error("HandleBatch never called")
		}
	}
	for _, id := range []string{"k3:2", "k4:1"} {
		if calls[id] < lo || calls[id] > hi {
			t.Errorf("%s called %d times, want %d to %d", id, calls[id], lo, hi)
		}
	}
	dlq := readAll(t, seeds, consumers.DeadLetterTopic(topic, group))
	if len(dlq) != 2 {
		t.Fatalf("dead letters %d, want 2", len(dlq))
	}
	for _, r := range dlq {
		id := string(r.Key) + ":" + string(r.Value)
		wantErr := map[string]string{"k3:2": "boom k3:2", "k4:1": "assignment to entry in nil map"}[id]
		stack := header(r, consumers.HeaderStack)
		if header(r, consumers.HeaderReason) != consumers.ReasonPanic || header(r, consumers.HeaderErrorClass) != "permanent" ||
			wantErr == "" || !strings.Contains(header(r, consumers.HeaderError), wantErr) {
			t.Errorf("dead letter %s: reason %q, class %q, error %q; want panic, permanent, %q", id,
				header(r, consumers.HeaderReason), header(r, consumers.HeaderErrorClass), header(r, consumers.HeaderError), wantErr)
		}
		if !strings.Contains(stack, "hardening_test.go") || strings.Contains(stack, "runtime/debug.Stack") || len(stack) > consumers.MaxStackLength+len("…") {
			t.Errorf("dead letter %s: stack header (%d bytes) lacks the panicking frame or keeps the recovering ones:\n%s", id, len(stack), stack)
		}
	}
}

// TestHungHandler: a handler that hangs on one key (partition 0) holds up
// the member's other partition for at most the attempt timeout: records
// produced to partition 1 while it hangs are handled within the timeout
// plus slack, and the hung record is dead-lettered (reason timeout, one
// attempt: a timed-out call is not retried in place). A handler that
// ignores its context cannot be stopped: the group says so at error level
// until it returns. (Before, the default policy had no deadline: one hung
// call stopped every partition of the member for good.)
func TestHungHandler(t *testing.T) {
	if consumers.DefaultAttemptTimeout != 10*time.Second {
		t.Fatalf("DefaultAttemptTimeout = %s, documented as 10s", consumers.DefaultAttemptTimeout)
	}
	if d := consumers.DefaultFailurePolicy().AttemptTimeout; d != consumers.DefaultAttemptTimeout {
		t.Fatalf("DefaultFailurePolicy().AttemptTimeout = %s, want DefaultAttemptTimeout (10s)", d)
	}
	if d := consumers.RetryTopics(time.Second).AttemptTimeout; d != consumers.DefaultAttemptTimeout {
		t.Fatalf("RetryTopics(...).AttemptTimeout = %s, want DefaultAttemptTimeout", d)
	}
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			seeds := b.Seeds(t)
			t.Run("BlocksUntilCtxDone", func(t *testing.T) { testHungHandler(t, seeds, false, false) })
			t.Run("IgnoresCtx", func(t *testing.T) { testHungHandler(t, seeds, true, false) })
			t.Run("BatchBlocksUntilCtxDone", func(t *testing.T) { testHungHandler(t, seeds, false, true) })
		})
	}
}

func testHungHandler(t *testing.T, seeds []string, ignoreCtx, batch bool) {
	const timeout, slack = time.Second, 3 * time.Second
	// A BatchHandler's call has the deadline, then the record is retried
	// alone (one in-place retry) and times out again.
	calls, bound := int64(1), timeout+slack
	if batch {
		calls, bound = 2, 2*timeout+slack
	}
	topic := testenv.Topic(t, seeds, 2, nil)
	group := testenv.Name("g")
	createTopics(t, seeds, 2, consumers.DeadLetterTopic(topic, group))
	cl := testenv.Client(t, seeds, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	produceTo := func(part int32, key string, values ...string) time.Time {
		t.Helper()
		var recs []*kgo.Record
		for _, v := range values {
			recs = append(recs, &kgo.Record{Topic: topic, Partition: part, Key: []byte(key), Value: []byte(v)})
		}
		if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}
	var (
		mu      sync.Mutex
		handled = map[string]time.Time{}
		hung    = make(chan struct{})
		release = make(chan struct{})
		called  atomic.Int64
		batches atomic.Int64
	)
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		if string(r.Key) == "hung" {
			if called.Add(1) == 1 {
				close(hung)
			}
			if ignoreCtx {
				<-release
				return errors.New("gave up")
			}
			<-ctx.Done()
			return ctx.Err()
		}
		mu.Lock()
		defer mu.Unlock()
		handled[string(r.Value)] = time.Now()
		return nil
	})
	logs := &testenv.SyncBuffer{}
	var handler consumers.Handler = h
	if batch {
		handler = batchOf{h, &batches}
	}
	g, err := consumers.New(seeds, group, []string{topic}, handler, consumers.DrainTimeout(2*time.Second),
		consumers.WithFailurePolicy(consumers.DefaultFailurePolicy().WithAttemptTimeout(timeout)),
		consumers.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-release:
		default:
			close(release)
		}
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	produceTo(0, "hung", "h0")
	select {
	case <-hung:
	case <-time.After(30 * time.Second):
		t.Fatal("the hung record was not handled within 30s")
	}
	const n = 10
	var values []string
	for i := range n {
		values = append(values, "v"+strconv.Itoa(i))
	}
	sent := produceTo(1, "ok", values...)
	allHandled := func() bool { mu.Lock(); defer mu.Unlock(); return len(handled) == n }
	if ignoreCtx {
		// Held up until the handler returns, and said so meanwhile.
		waitUntil(t, 3*timeout, func() bool { return strings.Contains(logs.String(), "handler has not returned") })
		if allHandled() {
			t.Fatal("partition 1 was handled while a handler ignoring ctx ran (the batch barrier should hold it)")
		}
		t.Logf("logged: %s", firstLine(logs.String(), "handler has not returned"))
		close(release)
	}
	waitUntil(t, 20*time.Second, allHandled)
	mu.Lock()
	var last time.Time
	for _, at := range handled {
		if at.After(last) {
			last = at
		}
	}
	mu.Unlock()
	lag := last.Sub(sent)
	t.Logf("partition 1's records handled %s after they were produced (attempt timeout %s)", lag.Round(time.Millisecond), timeout)
	if !ignoreCtx && lag > bound {
		t.Errorf("partition 1 waited %s, want at most %s (attempt timeout %s)", lag, bound, timeout)
	}
	waitUntil(t, 20*time.Second, func() bool { return committed(t, seeds, group, topic) == n+1 })
	dlq := readAll(t, seeds, consumers.DeadLetterTopic(topic, group))
	if len(dlq) != 1 || string(dlq[0].Value) != "h0" || header(dlq[0], consumers.HeaderReason) != consumers.ReasonTimeout ||
		header(dlq[0], consumers.HeaderAttempts) != strconv.FormatInt(calls, 10) {
		for _, r := range dlq {
			t.Logf("dead letter %s: reason %s, attempts %s, error %s", r.Value, header(r, consumers.HeaderReason), header(r, consumers.HeaderAttempts), header(r, consumers.HeaderError))
		}
		t.Fatalf("dead letters %d, want h0 with reason timeout after %d attempts", len(dlq), calls)
	}
	if c := called.Load(); c != calls {
		t.Errorf("hung handler called %d times, want %d (no in-place retry after a timeout)", c, calls)
	}
	if batch && batches.Load() == 0 {
		t.Error("HandleBatch never called")
	}
}

func waitUntil(t *testing.T, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// originDeadConfig is what TestOriginDeadLetterCrash's helper process
// needs.
type originDeadConfig struct {
	Seeds        []string
	Topic, Group string
	Ordering     consumers.Ordering
	File         string // handled values are appended here
	Kill         bool   // SIGKILL the process when a1 is handled
}

func originDeadPolicy(o consumers.Ordering) consumers.FailurePolicy {
	return consumers.RetryTopics(50*time.Millisecond, 100*time.Millisecond).KeepKeyOrder(o).ThenDLQ()
}

// originDeadHandler appends every call's value to write; a0 fails
// permanently; with kill, the process kills itself (SIGKILL) on a1: after
// a0 was dead-lettered, before the poll's offsets are committed.
func originDeadHandler(write func(string), kill bool) consumers.Handler {
	return consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		v := string(r.Value)
		if v == "a1" && kill {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
		write(v)
		if v == "a0" {
			return consumers.Permanent(errors.New("a0 cannot be handled"))
		}
		return nil
	})
}

// TestOriginDeadHelperProcess is not a test: run by
// TestOriginDeadLetterCrash as a separate process.
func TestOriginDeadHelperProcess(t *testing.T) {
	raw := os.Getenv("ORIGIN_DEAD_HELPER")
	if raw == "" {
		t.Skip("helper process only")
	}
	var c originDeadConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		os.Exit(3)
	}
	f, err := os.OpenFile(c.File, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		os.Exit(3)
	}
	g, err := consumers.New(c.Seeds, c.Group, []string{c.Topic}, originDeadHandler(func(v string) { fmt.Fprintln(f, v) }, c.Kill),
		consumers.WithFailurePolicy(originDeadPolicy(c.Ordering)), consumers.WithClientOpts(kgo.SessionTimeout(6*time.Second)))
	if err != nil {
		os.Exit(3)
	}
	_ = g.Run(context.Background())
	os.Exit(1)
}

// TestOriginDeadLetterCrash: in ordered modes, a record failing
// permanently at the origin (a0) is dead-lettered durably before its key
// moves on — the dead letter and a marker in retry level 1 are acked — so
// when the member is killed (SIGKILL) right after, while a1 is being
// handled and before a0's offset is committed, the next member neither
// hands a0 to the handler again nor dead-letters it twice, and handles a1
// and a2. (Before, a0 was dead-lettered without a marker: the next member
// handled it again, after a1 had been reached, and dead-lettered it again.)
func TestOriginDeadLetterCrash(t *testing.T) {
	seeds := testenv.Brokers(t)
	for _, o := range []consumers.Ordering{consumers.OrderedResume, consumers.OrderedDeadLetterRest} {
		t.Run(o.String(), func(t *testing.T) { testOriginDeadLetterCrash(t, seeds, o) })
	}
}

func testOriginDeadLetterCrash(t *testing.T, seeds []string, o consumers.Ordering) {
	topic := testenv.Topic(t, seeds, 1, nil)
	group := testenv.Name("g")
	policy := originDeadPolicy(o)
	createTopics(t, seeds, 1, policy.Topics(topic, group)...)
	var recs []*kgo.Record
	for _, v := range []string{"b0", "a0", "a1", "a2", "b1"} {
		recs = append(recs, &kgo.Record{Topic: topic, Key: []byte(v[:1]), Value: []byte(v)})
	}
	if err := testenv.Client(t, seeds).ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	file := t.TempDir() + "/handled"
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(originDeadConfig{Seeds: seeds, Topic: topic, Group: group, Ordering: o, File: file, Kill: true})
	cmd := exec.Command(os.Args[0], "-test.run=^TestOriginDeadHelperProcess$")
	cmd.Env = append(os.Environ(), "ORIGIN_DEAD_HELPER="+string(raw))
	if err := cmd.Run(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("helper process: %v, want it killed", err)
	}
	before, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(before)); fmt.Sprint(got) != "[b0 a0]" {
		t.Fatalf("before the crash handled %v, want [b0 a0]", got)
	}
	if c := committed(t, seeds, group, topic); c > 1 {
		t.Fatalf("committed %d before the crash, want a0 (offset 1) uncommitted", c)
	}
	var (
		mu    sync.Mutex
		after []string
	)
	g, err := consumers.New(seeds, group, []string{topic}, originDeadHandler(func(v string) { mu.Lock(); defer mu.Unlock(); after = append(after, v) }, false),
		consumers.WithFailurePolicy(policy))
	if err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(testenv.Client(t, seeds))
	if err := runGroup(t, g, func() bool { return drained(t, adm, group, topic, consumers.RetryTopic(topic, group, 1)) }); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	// b0 may be handled again (its offset was not committed either):
	// at-least-once for records that succeeded.
	var keyA []string
	for _, v := range after {
		if strings.HasPrefix(v, "a") {
			keyA = append(keyA, v)
		}
	}
	if fmt.Sprint(keyA) != "[a1 a2]" {
		t.Errorf("after the crash key a handled %v, want [a1 a2] (a0 was dead-lettered before it)", keyA)
	}
	var dlq []string
	for _, r := range readAll(t, seeds, consumers.DeadLetterTopic(topic, group)) {
		dlq = append(dlq, string(r.Value)+":"+header(r, consumers.HeaderReason))
	}
	if fmt.Sprint(dlq) != "[a0:permanent]" {
		t.Errorf("dead letters %v, want a0 once", dlq)
	}
}

// TestCallbackPanics: a panicking WithStats callback is logged, not fatal:
// the group handles and commits every record. (Before, it ended the
// process.)
func TestCallbackPanics(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	topic := testenv.Topic(t, seeds, 2, nil)
	group := testenv.Name("g")
	createTopics(t, seeds, 1, consumers.DeadLetterTopic(topic, group))
	produce(t, seeds, topic, 4, 5)
	logs := &testenv.SyncBuffer{}
	g, err := consumers.New(seeds, group, []string{topic}, consumers.HandlerFunc(func(context.Context, *kgo.Record) error { return nil }),
		consumers.WithStats(func(consumers.Stats) { panic("stats sink broken") }),
		consumers.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelError}))))
	if err != nil {
		t.Fatal(err)
	}
	if err := runGroup(t, g, func() bool { return committed(t, seeds, group, topic) == 20 }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "WithStats callback panicked") || !strings.Contains(logs.String(), "stats sink broken") {
		t.Fatalf("logs lack the callback's panic:\n%s", logs)
	}
}
