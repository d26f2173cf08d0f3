package consumers_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// createTopics creates names with partitions, waits until the broker's
// metadata shows them with a leader for every partition, and deletes them
// at the end. Without the wait a group started at once could find a topic
// missing: a busy broker showed one created a moment ago only seconds
// later (TestHungHandler/kafka failed its start check so, 1 run in 3
// under load).
func createTopics(t testing.TB, seeds []string, partitions int32, names ...string) {
	t.Helper()
	adm := kadm.NewClient(testenv.Client(t, seeds))
	resp, err := adm.CreateTopics(t.Context(), partitions, 1, nil, names...)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("create topics %v: %v", names, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = adm.DeleteTopics(ctx, names...)
	})
	visible := func() bool {
		td, err := adm.ListTopics(t.Context(), names...)
		if err != nil {
			return false
		}
		for _, n := range names {
			d, ok := td[n]
			if !ok || d.Err != nil || len(d.Partitions) != int(partitions) {
				return false
			}
			for _, p := range d.Partitions {
				if p.Err != nil || p.Leader < 0 {
					return false
				}
			}
		}
		return true
	}
	for deadline := time.Now().Add(30 * time.Second); !visible(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("topics %v created but not all in the broker's metadata after 30s", names)
		}
	}
}

// readAll reads every record of topic up to its end offsets.
func readAll(t testing.TB, seeds []string, topic string) []*kgo.Record {
	t.Helper()
	adm := kadm.NewClient(testenv.Client(t, seeds))
	ends, err := adm.ListEndOffsets(t.Context(), topic)
	if err != nil {
		t.Fatalf("end offsets: %v", err)
	}
	var total int64
	ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
	if total == 0 {
		return nil
	}
	cl := testenv.Client(t, seeds, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var out []*kgo.Record
	for int64(len(out)) < total && ctx.Err() == nil {
		out = append(out, cl.PollFetches(ctx).Records()...)
	}
	return out
}

func header(r *kgo.Record, k string) string {
	for _, h := range r.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}

// loadCase is one load run: n records over keys, a share of handler
// calls failing transiently, every 1000th record failing always.
type loadCase struct {
	n, keys    int
	failRate   float64
	ordering   consumers.Ordering
	restartAt  bool // stop the group once the origin is consumed, start another
	partitions int32
	firstDelay time.Duration
	twoMembers bool // a second member joins midway, then the first leaves
}

// seeded returns a random source for seed (not safe for concurrent use).
func seeded(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }

func runLoad(t *testing.T, seeds []string, c loadCase) {
	topic := testenv.Topic(t, seeds, c.partitions, nil)
	group := testenv.Name("g")
	if c.firstDelay == 0 {
		c.firstDelay = 20 * time.Millisecond
	}
	policy := consumers.RetryTopics(c.firstDelay, 50*time.Millisecond, 100*time.Millisecond).
		InPlace(1, time.Millisecond, 2*time.Millisecond).KeepKeyOrder(c.ordering).ThenDLQ()
	createTopics(t, seeds, c.partitions, policy.Topics(topic, group)...)

	cl := testenv.Client(t, seeds, kgo.ProducerBatchMaxBytes(1<<20))
	recs := make([]*kgo.Record, 0, c.n)
	for i := range c.n {
		k := i % c.keys
		seq := i / c.keys
		recs = append(recs, &kgo.Record{Topic: topic, Key: []byte("k" + strconv.Itoa(k)), Value: []byte(strconv.Itoa(k) + ":" + strconv.Itoa(seq))})
	}
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}

	var (
		mu       sync.Mutex
		rng      = seeded(testenv.Seed(t)) // under mu
		calls    = map[string]int{}
		failed   = map[string]int{} // failed calls per record
		handled  = map[string]bool{}
		maxSeq   = map[string]int{}
		disorder int
		dead     atomic.Int64
	)
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		id := string(r.Value)
		key, seqS, _ := strings.Cut(id, ":")
		seq, _ := strconv.Atoi(seqS)
		mu.Lock()
		defer mu.Unlock()
		calls[id]++
		if seq%100 == 99 && key == "3" {
			failed[id]++
			return errors.New("always failing " + id)
		}
		if rng.Float64() < c.failRate {
			failed[id]++
			return fmt.Errorf("transient failure of %s, call %d", id, calls[id])
		}
		if !handled[id] {
			if m, ok := maxSeq[key]; ok && seq < m && c.ordering != consumers.Unordered {
				disorder++
				if disorder < 10 {
					t.Errorf("key %s: first handling of seq %d after seq %d", key, seq, m)
				}
			}
			handled[id] = true
			if seq > maxSeq[key] {
				maxSeq[key] = seq
			}
		}
		return nil
	})
	done := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled)+int(dead.Load()) >= c.n
	}
	newGroup := func() *consumers.Group {
		g, err := consumers.New(seeds, group, []string{topic}, h, consumers.WithFailurePolicy(policy),
			consumers.KeyConcurrency(4), consumers.MaxPollRecords(2000),
			consumers.WithStats(func(s consumers.Stats) { dead.Add(int64(s.DeadLettered)) }))
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	start := time.Now()
	if c.restartAt {
		parkedAtStop := 0
		err := runGroup(t, newGroup(), func() bool {
			if committed(t, seeds, group, topic) < int64(c.n) {
				return false
			}
			mu.Lock()
			defer mu.Unlock()
			parkedAtStop = c.n - len(handled) - int(dead.Load())
			return true
		})
		if err != nil {
			t.Fatalf("first run: %v", err)
		}
		t.Logf("restarting with %d records in the retry chain", parkedAtStop)
	}
	if c.twoMembers {
		ctxA, cancelA := context.WithCancel(t.Context())
		errA := make(chan error, 1)
		go func() { errA <- newGroup().Run(ctxA) }()
		progress := func(share float64) func() bool {
			return func() bool {
				mu.Lock()
				defer mu.Unlock()
				return float64(len(handled)) >= share*float64(c.n)
			}
		}
		for !progress(0.2)() {
			time.Sleep(5 * time.Millisecond)
		}
		errB := make(chan error, 1)
		ctxB, cancelB := context.WithCancel(t.Context())
		defer cancelB()
		go func() { errB <- newGroup().Run(ctxB) }()
		for !progress(0.6)() {
			time.Sleep(5 * time.Millisecond)
		}
		cancelA()
		if err := <-errA; err != nil {
			t.Fatalf("member A: %v", err)
		}
		deadline := time.Now().Add(60 * time.Second)
		for !done() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		cancelB()
		if err := <-errB; err != nil {
			t.Fatalf("member B: %v", err)
		}
	} else if err := runGroup(t, newGroup(), done); err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Logf("%d records, %.0f%% failing calls, %s: %s", c.n, c.failRate*100, c.ordering, time.Since(start))
	dlq := readAll(t, seeds, consumers.DeadLetterTopic(topic, group))
	parked, retried := 0, 0
	for l := 1; l <= 3; l++ {
		for _, r := range readAll(t, seeds, consumers.RetryTopic(topic, group, l)) {
			if header(r, consumers.HeaderParked) == "true" {
				parked++
			} else {
				retried++
			}
		}
	}
	t.Logf("retry topics: %d failed records, %d parked records; %d dead letters", retried, parked, len(dlq))
	mu.Lock()
	defer mu.Unlock()
	inDLQ := map[string]bool{}
	for _, r := range dlq {
		inDLQ[string(r.Value)] = true
		if header(r, consumers.HeaderTopic) != topic || header(r, consumers.HeaderReason) == "" || header(r, consumers.HeaderAttempts) == "" {
			t.Errorf("dead letter %s: headers %v", r.Value, r.Headers)
		}
	}
	lost := 0
	for _, r := range recs {
		if !handled[string(r.Value)] && !inDLQ[string(r.Value)] {
			lost++
			if lost < 5 {
				t.Errorf("record %s neither handled nor dead-lettered", r.Value)
			}
		}
	}
	if lost > 0 || disorder > 0 {
		t.Fatalf("%d lost, %d out of order", lost, disorder)
	}
	// Every record gets the full ladder, released from parking or not: the
	// dead letters are exactly the records that failed on every call, and
	// each of those was called the whole ladder. The always failing records
	// are among them; a transient one is too, rarely (all its calls failed).
	ladder := (1 + policy.Retries) * (1 + len(policy.RetryDelays))
	var wantDead, unlucky []string
	for _, r := range recs {
		id := string(r.Value)
		if n := calls[id]; n > 0 && failed[id] == n {
			wantDead = append(wantDead, id)
			if key, seq, _ := strings.Cut(id, ":"); key != "3" || !strings.HasSuffix(seq, "99") {
				unlucky = append(unlucky, id)
			}
		}
	}
	if len(unlucky) > 0 {
		t.Logf("transient records that failed on every call (dead letters by chance): %v", unlucky)
	}
	for _, r := range dlq {
		id := string(r.Value)
		if calls[id] != failed[id] || calls[id] < ladder || header(r, consumers.HeaderAttempts) != strconv.Itoa(ladder) {
			t.Errorf("dead letter %s: %d calls, %d failed, want %d failed calls and attempts (the ladder); attempts %s, retries %s, level %s, hop %s, partition %d, offset %d",
				id, calls[id], failed[id], ladder, header(r, consumers.HeaderAttempts), header(r, consumers.HeaderRetries),
				header(r, consumers.HeaderLevel), header(r, consumers.HeaderHop), r.Partition, r.Offset)
		}
	}
	if len(inDLQ) != len(wantDead) {
		t.Errorf("%d dead letters, want %d (the records that failed on every call)", len(inDLQ), len(wantDead))
	}
}

func loadSize() int {
	if testing.Short() {
		return 20_000
	}
	return 100_000
}

func TestRetryTopics(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			seeds := b.Seeds(t)
			n := loadSize()
			t.Run("Load1pct", func(t *testing.T) { runLoad(t, seeds, loadCase{n: n, keys: 50, failRate: 0.01, partitions: 4}) })
			t.Run("Load10pct", func(t *testing.T) { runLoad(t, seeds, loadCase{n: n, keys: 50, failRate: 0.10, partitions: 4}) })
			t.Run("Ordered1pct", func(t *testing.T) {
				runLoad(t, seeds, loadCase{n: n, keys: 50, failRate: 0.01, partitions: 4, ordering: consumers.OrderedResume})
			})
			t.Run("Ordered10pct", func(t *testing.T) {
				runLoad(t, seeds, loadCase{n: n, keys: 50, failRate: 0.10, partitions: 4, ordering: consumers.OrderedResume})
			})
			t.Run("OrderedRestart", func(t *testing.T) {
				runLoad(t, seeds, loadCase{n: n / 5, keys: 50, failRate: 0.05, partitions: 4, ordering: consumers.OrderedResume, restartAt: true, firstDelay: 2 * time.Second})
			})
			t.Run("OrderedTwoMembers", func(t *testing.T) {
				runLoad(t, seeds, loadCase{n: n / 2, keys: 200, failRate: 0.10, partitions: 4, ordering: consumers.OrderedResume, twoMembers: true})
			})
			t.Run("OrderedAfterDeadLetter", func(t *testing.T) { testAfterDeadLetter(t, seeds) })
			t.Run("ReleasedFullLadder", func(t *testing.T) { testReleasedFullLadder(t, seeds) })
			t.Run("DeadRestRestart", func(t *testing.T) { testDeadRestRestart(t, seeds) })
			t.Run("Poison", func(t *testing.T) { testPoison(t, seeds) })
			t.Run("MissingRetryTopic", func(t *testing.T) { testMissingRetryTopic(t, seeds) })
			t.Run("LadderLength", func(t *testing.T) { testLadderLength(t, seeds) })
		})
	}
}

// testLadderLength pins the length of runLoad's ladder: with one in-place
// retry and three retry levels a record gets 8 calls. A record whose first
// 8 calls fail is a dead letter (retries-exhausted, attempts 8) however
// transient its failure (it would have succeeded on a 9th call); one whose
// first 7 calls fail is handled on its 8th. This is how a record failing
// 10% of its calls at random ends in Load10pct's dead letters, with a
// chance of 1e-8 per record.
func testLadderLength(t *testing.T, seeds []string) {
	topic := testenv.Topic(t, seeds, 1, nil)
	group := testenv.Name("g")
	policy := consumers.RetryTopics(10*time.Millisecond, 10*time.Millisecond, 10*time.Millisecond).
		InPlace(1, time.Millisecond, 2*time.Millisecond).ThenDLQ()
	createTopics(t, seeds, 1, policy.Topics(topic, group)...)
	failFirst := map[string]int{"f7": 7, "f8": 8, "ok": 0}
	var recs []*kgo.Record
	for v := range failFirst {
		recs = append(recs, &kgo.Record{Topic: topic, Key: []byte(v), Value: []byte(v)})
	}
	if err := testenv.Client(t, seeds).ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		calls   = map[string]int{}
		handled = map[string]bool{}
		dead    atomic.Int64
	)
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		mu.Lock()
		defer mu.Unlock()
		v := string(r.Value)
		calls[v]++
		if calls[v] <= failFirst[v] {
			return fmt.Errorf("%s: transient failure, call %d", v, calls[v])
		}
		handled[v] = true
		return nil
	})
	g, err := consumers.New(seeds, group, []string{topic}, h, consumers.WithFailurePolicy(policy),
		consumers.WithStats(func(s consumers.Stats) { dead.Add(int64(s.DeadLettered)) }))
	if err != nil {
		t.Fatal(err)
	}
	if err := runGroup(t, g, func() bool { mu.Lock(); defer mu.Unlock(); return len(handled) == 2 && dead.Load() == 1 }); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !handled["ok"] || !handled["f7"] || handled["f8"] || calls["ok"] != 1 || calls["f7"] != 8 || calls["f8"] != 8 {
		t.Fatalf("handled %v, calls %v; want ok and f7 handled (1 and 8 calls), f8 not (8 calls)", handled, calls)
	}
	dlq := readAll(t, seeds, consumers.DeadLetterTopic(topic, group))
	if len(dlq) != 1 || string(dlq[0].Value) != "f8" || header(dlq[0], consumers.HeaderAttempts) != "8" ||
		header(dlq[0], consumers.HeaderReason) != consumers.ReasonExhausted {
		var got []string
		for _, r := range dlq {
			got = append(got, string(r.Value)+" attempts "+header(r, consumers.HeaderAttempts)+" "+header(r, consumers.HeaderReason))
		}
		t.Fatalf("dead letters %v, want f8 only, attempts 8, %s", got, consumers.ReasonExhausted)
	}
}

func testPoison(t *testing.T, seeds []string) {
	topic := testenv.Topic(t, seeds, 4, nil)
	group := testenv.Name("g")
	policy := consumers.RetryTopics(10*time.Millisecond).InPlace(1, time.Millisecond, time.Millisecond).ThenDLQ()
	createTopics(t, seeds, 4, policy.Topics(topic, group)...)
	const good, bad = 10_000, 10_000
	var recs []*kgo.Record
	for i := range good + bad {
		if i%2 == 1 {
			recs = append(recs, &kgo.Record{Topic: topic, Key: []byte("p" + strconv.Itoa(i%97)), Value: []byte("garbage " + strconv.Itoa(i))})
			continue
		}
		r, err := codec.EventToRecord(topic, orchestrix.Event{
			Metadata: orchestrix.Metadata{ID: "e" + strconv.Itoa(i), Type: "test.Happened", Source: "test", Time: time.Now()},
			StreamID: "s" + strconv.Itoa(i%97), Version: uint64(i + 1), ContentType: "application/json", Data: []byte(`{}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	if err := testenv.Client(t, seeds).ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var ok, dead atomic.Int64
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		if _, err := codec.RecordToEvent(r); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		ok.Add(1)
		return nil
	})
	g, err := consumers.New(seeds, group, []string{topic}, h, consumers.WithFailurePolicy(policy),
		consumers.WithStats(func(s consumers.Stats) { dead.Add(int64(s.DeadLettered)) }))
	if err != nil {
		t.Fatal(err)
	}
	if err := runGroup(t, g, func() bool { return ok.Load() >= good && dead.Load() >= bad }); err != nil {
		t.Fatal(err)
	}
	dlq := readAll(t, seeds, consumers.DeadLetterTopic(topic, group))
	if len(dlq) != bad {
		t.Fatalf("%d dead letters, want %d", len(dlq), bad)
	}
	for _, r := range dlq {
		if got := header(r, consumers.HeaderReason); !strings.HasPrefix(got, "poison:") || header(r, consumers.HeaderAttempts) != "1" || header(r, consumers.HeaderErrorClass) != "permanent" {
			t.Fatalf("dead letter %s: reason %q attempts %q class %q", r.Value, got, header(r, consumers.HeaderAttempts), header(r, consumers.HeaderErrorClass))
		}
	}
	if n := len(readAll(t, seeds, consumers.RetryTopic(topic, group, 1))); n != 0 {
		t.Errorf("%d poison records went through the retry topic", n)
	}
}

func testMissingRetryTopic(t *testing.T, seeds []string) {
	topic := testenv.Topic(t, seeds, 1, nil)
	g, err := consumers.New(seeds, testenv.Name("g"), []string{topic}, consumers.HandlerFunc(func(context.Context, *kgo.Record) error { return nil }),
		consumers.WithFailurePolicy(consumers.RetryTopics(time.Second).ThenDLQ()))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "retry topic") {
		t.Fatalf("Run = %v, want a missing retry topic error", err)
	}
}

// testAfterDeadLetter checks both choices of what happens to the records
// parked behind a record that is dead-lettered.
func testAfterDeadLetter(t *testing.T, seeds []string) {
	for _, mode := range []consumers.Ordering{consumers.OrderedDeadLetterRest, consumers.OrderedResume} {
		t.Run(mode.String(), func(t *testing.T) {
			topic := testenv.Topic(t, seeds, 1, nil)
			group := testenv.Name("g")
			policy := consumers.RetryTopics(10*time.Millisecond, 10*time.Millisecond).InPlace(0, 0, 0).KeepKeyOrder(mode).ThenDLQ()
			createTopics(t, seeds, 1, policy.Topics(topic, group)...)
			var recs []*kgo.Record
			for i := range 5 {
				for _, k := range []string{"a", "b"} {
					recs = append(recs, &kgo.Record{Topic: topic, Key: []byte(k), Value: []byte(k + strconv.Itoa(i))})
				}
			}
			if err := testenv.Client(t, seeds).ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var got []string
			var dead atomic.Int64
			h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
				if string(r.Value) == "a1" {
					return errors.New("a1 always fails")
				}
				mu.Lock()
				defer mu.Unlock()
				got = append(got, string(r.Value))
				return nil
			})
			g, err := consumers.New(seeds, group, []string{topic}, h, consumers.WithFailurePolicy(policy),
				consumers.WithStats(func(s consumers.Stats) { dead.Add(int64(s.DeadLettered)) }))
			if err != nil {
				t.Fatal(err)
			}
			wantDead, wantA := 4, "[a0]"
			if mode == consumers.OrderedResume {
				wantDead, wantA = 1, "[a0 a2 a3 a4]"
			}
			if err := runGroup(t, g, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(got)+int(dead.Load()) >= 10
			}); err != nil {
				t.Fatal(err)
			}
			var as, bs []string
			for _, v := range got {
				if v[0] == 'a' {
					as = append(as, v)
				} else {
					bs = append(bs, v)
				}
			}
			if fmt.Sprint(as) != wantA || fmt.Sprint(bs) != "[b0 b1 b2 b3 b4]" {
				t.Fatalf("handled %v, want %s and b0..b4 in order", got, wantA)
			}
			dlq := readAll(t, seeds, consumers.DeadLetterTopic(topic, group))
			if len(dlq) != wantDead {
				t.Fatalf("%d dead letters, want %d", len(dlq), wantDead)
			}
			for i, r := range dlq {
				want := consumers.ReasonExhausted
				if i > 0 {
					want = consumers.ReasonParkedDead
				}
				if header(r, consumers.HeaderReason) != want {
					t.Errorf("dead letter %s: reason %q, want %q", r.Value, header(r, consumers.HeaderReason), want)
				}
			}
		})
	}
}

// testReleasedFullLadder checks that a record released from parking gets
// every delayed retry, like a record that failed first: a1, parked behind
// the always failing a0 up to the last level, fails three more times
// after a0 is dead-lettered (retried in place, with the ladder's delays)
// and is handled on its fourth call.
func testReleasedFullLadder(t *testing.T, seeds []string) {
	topic := testenv.Topic(t, seeds, 1, nil)
	group := testenv.Name("g")
	policy := consumers.RetryTopics(10*time.Millisecond, 10*time.Millisecond, 10*time.Millisecond).KeepKeyOrder(consumers.OrderedResume).ThenDLQ()
	createTopics(t, seeds, 1, policy.Topics(topic, group)...)
	var recs []*kgo.Record
	for _, v := range []string{"a0", "a1", "a2"} {
		recs = append(recs, &kgo.Record{Topic: topic, Key: []byte("a"), Value: []byte(v)})
	}
	if err := testenv.Client(t, seeds).ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		calls = map[string]int{}
		got   []string
	)
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		mu.Lock()
		defer mu.Unlock()
		v := string(r.Value)
		calls[v]++
		if v == "a0" || (v == "a1" && calls[v] <= 3) {
			return fmt.Errorf("%s fails (call %d)", v, calls[v])
		}
		got = append(got, v)
		return nil
	})
	g, err := consumers.New(seeds, group, []string{topic}, h, consumers.WithFailurePolicy(policy))
	if err != nil {
		t.Fatal(err)
	}
	if err := runGroup(t, g, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 2 }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[a1 a2]" || calls["a0"] != 4 || calls["a1"] != 4 {
		t.Fatalf("handled %v, calls %v; want [a1 a2] and 4 calls each of a0 and a1", got, calls)
	}
	if dlq := readAll(t, seeds, consumers.DeadLetterTopic(topic, group)); len(dlq) != 1 || string(dlq[0].Value) != "a0" {
		t.Fatalf("dead letters %d, want a0 only", len(dlq))
	}
	// a1 was retried in place at level 3 (its key's records wait behind
	// it, not parked again): no retry record of its own.
	for l := 1; l <= 3; l++ {
		for _, r := range readAll(t, seeds, consumers.RetryTopic(topic, group, l)) {
			if string(r.Value) == "a1" && header(r, consumers.HeaderParked) != "true" {
				t.Errorf("a1 retry record at level %d (retries %s), want none", l, header(r, consumers.HeaderRetries))
			}
		}
	}
}

// testDeadRestRestart checks that OrderedDeadLetterRest's decision
// survives a restart: a0 is dead-lettered while a1 and a2, parked behind
// it, wait at retry level 1 behind b0 (not due yet); the group stops right
// then, and a new member dead-letters a1 and a2 instead of handling them.
func testDeadRestRestart(t *testing.T, seeds []string) {
	topic := testenv.Topic(t, seeds, 1, nil)
	group := testenv.Name("g")
	policy := consumers.RetryTopics(2*time.Second, 10*time.Millisecond).KeepKeyOrder(consumers.OrderedDeadLetterRest).ThenDLQ()
	createTopics(t, seeds, 1, policy.Topics(topic, group)...)
	cl := testenv.Client(t, seeds)
	send := func(vs ...string) {
		t.Helper()
		var recs []*kgo.Record
		for _, v := range vs {
			recs = append(recs, &kgo.Record{Topic: topic, Key: []byte(v[:1]), Value: []byte(v)})
		}
		if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu      sync.Mutex
		calls   = map[string]int{}
		handled []string
		dead    atomic.Int64
		sent    = make(chan struct{})
		started bool
	)
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		mu.Lock()
		defer mu.Unlock()
		v := string(r.Value)
		calls[v]++
		if v == "a0" || (v == "b0" && calls[v] == 1) {
			return fmt.Errorf("%s fails", v)
		}
		handled = append(handled, v)
		return nil
	})
	newGroup := func() *consumers.Group {
		g, err := consumers.New(seeds, group, []string{topic}, h, consumers.WithFailurePolicy(policy),
			consumers.WithStats(func(s consumers.Stats) { dead.Add(int64(s.DeadLettered)) }))
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	send("a0")
	err := runGroup(t, newGroup(), func() bool {
		mu.Lock()
		defer mu.Unlock()
		if calls["a0"] == 1 && !started {
			// a0 is at level 1 (due in 2s): b0 and a1, a2 follow it there,
			// b0 due a second after a0.
			started = true
			go func() {
				defer close(sent)
				time.Sleep(time.Second)
				send("b0", "a1", "a2")
			}()
		}
		return dead.Load() > 0
	})
	if started {
		<-sent
	}
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(handled) != 0 {
		mu.Unlock()
		t.Fatalf("handled %v before the restart, want nothing (a1, a2 wait behind b0)", handled)
	}
	mu.Unlock()
	t.Log("restarting after a0 was dead-lettered")
	if err := runGroup(t, newGroup(), func() bool { mu.Lock(); defer mu.Unlock(); return len(handled) > 0 && dead.Load() >= 3 }); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var dlq []string
	for _, r := range readAll(t, seeds, consumers.DeadLetterTopic(topic, group)) {
		dlq = append(dlq, string(r.Value)+":"+header(r, consumers.HeaderReason))
	}
	if fmt.Sprint(handled) != "[b0]" || fmt.Sprint(dlq) != "[a0:retries-exhausted a1:parked-behind-dead-letter a2:parked-behind-dead-letter]" {
		t.Fatalf("handled %v, dead letters %v; want b0 handled, a0 exhausted, a1 and a2 dead-lettered behind it", handled, dlq)
	}
}
