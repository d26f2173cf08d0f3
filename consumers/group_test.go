package consumers_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

func produce(t *testing.T, seeds []string, topic string, keys, perKey int) {
	t.Helper()
	cl := testenv.Client(t, seeds)
	var recs []*kgo.Record
	for i := range perKey {
		for k := range keys {
			recs = append(recs, &kgo.Record{Topic: topic, Key: []byte("k" + strconv.Itoa(k)), Value: []byte(strconv.Itoa(i))})
		}
	}
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// runGroup runs g until stop returns true (checked every 20ms) or 60s.
func runGroup(t *testing.T, g *consumers.Group, stop func() bool) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			if stop() {
				cancel()
				return <-done
			}
		}
	}
}

func committed(t testing.TB, seeds []string, group, topic string) int64 {
	t.Helper()
	adm := kadm.NewClient(testenv.Client(t, seeds))
	offs, err := adm.FetchOffsets(t.Context(), group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return 0
	}
	if err != nil {
		t.Fatalf("fetch offsets: %v", err)
	}
	var sum int64
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic {
			sum += o.At
		}
	})
	return sum
}

// drained reports whether group has committed every record of topics: the
// committed offsets are read before the end offsets, so a record produced
// into one of them (a retry record) before its source was committed is
// seen.
func drained(t testing.TB, adm *kadm.Client, group string, topics ...string) bool {
	t.Helper()
	offs, err := adm.FetchOffsets(t.Context(), group)
	if err != nil {
		return false
	}
	ends, err := adm.ListEndOffsets(t.Context(), topics...)
	if err != nil {
		return false
	}
	done := true
	ends.Each(func(e kadm.ListedOffset) {
		if e.Offset == 0 {
			return
		}
		if c, ok := offs.Lookup(e.Topic, e.Partition); !ok || c.At < e.Offset {
			done = false
		}
	})
	return done
}

func TestGroup(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			seeds := b.Seeds(t)
			t.Run("OrderAndCommit", func(t *testing.T) { testOrderAndCommit(t, seeds) })
			t.Run("DeadLetter", func(t *testing.T) { testDeadLetter(t, seeds) })
			t.Run("StopWithoutDeadLetter", func(t *testing.T) { testStop(t, seeds) })
		})
	}
}

func testOrderAndCommit(t *testing.T, seeds []string) {
	topic := testenv.Topic(t, seeds, 4, nil)
	const keys, perKey = 20, 50
	produce(t, seeds, topic, keys, perKey)
	var mu sync.Mutex
	last := map[string]int{}
	total := 0
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		n, _ := strconv.Atoi(string(r.Value))
		mu.Lock()
		defer mu.Unlock()
		if prev, ok := last[string(r.Key)]; ok && n != prev+1 {
			t.Errorf("key %s: %d after %d", r.Key, n, prev)
		}
		last[string(r.Key)] = n
		total++
		return nil
	})
	group := testenv.Name("g")
	// The default policy dead-letters: Run checks that its topic exists.
	createTopics(t, seeds, 1, consumers.DeadLetterTopic(topic, group))
	g, err := consumers.New(seeds, group, []string{topic}, h, consumers.KeyConcurrency(4), consumers.MaxPollRecords(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := runGroup(t, g, func() bool { mu.Lock(); defer mu.Unlock(); return total == keys*perKey }); err != nil {
		t.Fatalf("run: %v", err)
	}
	if got := committed(t, seeds, group, topic); got != keys*perKey {
		t.Fatalf("committed %d offsets, want %d", got, keys*perKey)
	}
}

func testDeadLetter(t *testing.T, seeds []string) {
	topic := testenv.Topic(t, seeds, 2, nil)
	group := testenv.Name("g")
	dlq := consumers.DeadLetterTopic(topic, group)
	adm := kadm.NewClient(testenv.Client(t, seeds))
	if _, err := adm.CreateTopic(t.Context(), 1, 1, nil, dlq); err != nil {
		t.Fatal(err)
	}
	produce(t, seeds, topic, 4, 10)
	var mu sync.Mutex
	seen := 0
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		mu.Lock()
		defer mu.Unlock()
		seen++
		if string(r.Key) == "k1" && string(r.Value) == "3" {
			return consumers.Permanent(errors.New("cannot handle k1/3"))
		}
		if string(r.Key) == "k2" && string(r.Value) == "5" {
			return errors.New("always failing k2/5")
		}
		return nil
	})
	policy := consumers.DefaultFailurePolicy()
	policy.Backoff, policy.MaxBackoff = time.Millisecond, 2*time.Millisecond
	g, err := consumers.New(seeds, group, []string{topic}, h, consumers.WithFailurePolicy(policy))
	if err != nil {
		t.Fatal(err)
	}
	if err := runGroup(t, g, func() bool { return committed(t, seeds, group, topic) == 40 }); err != nil {
		t.Fatalf("run: %v", err)
	}
	// 40 records + 3 retries of the transient one.
	if seen != 43 {
		t.Errorf("handler called %d times, want 43", seen)
	}
	cl := testenv.Client(t, seeds, kgo.ConsumeTopics(dlq), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	var got []*kgo.Record
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for len(got) < 2 && ctx.Err() == nil {
		got = append(got, cl.PollFetches(ctx).Records()...)
	}
	if len(got) != 2 {
		t.Fatalf("dead letters: %d, want 2", len(got))
	}
	for _, r := range got {
		h := map[string]string{}
		for _, x := range r.Headers {
			h[x.Key] = string(x.Value)
		}
		want := map[string]string{"k1": "1", "k2": "4"}[string(r.Key)]
		if h[consumers.HeaderTopic] != topic || h[consumers.HeaderGroup] != group || h[consumers.HeaderAttempts] != want || h[consumers.HeaderError] == "" {
			t.Errorf("dead letter %s headers: %v", r.Key, h)
		}
	}
}

func testStop(t *testing.T, seeds []string) {
	topic := testenv.Topic(t, seeds, 1, nil)
	produce(t, seeds, topic, 1, 10)
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		if string(r.Value) == "6" {
			return errors.New("boom")
		}
		return nil
	})
	policy := consumers.FailurePolicy{Retries: 1, Backoff: time.Millisecond, MaxBackoff: time.Millisecond}
	group := testenv.Name("g")
	g, err := consumers.New(seeds, group, []string{topic}, h, consumers.WithFailurePolicy(policy))
	if err != nil {
		t.Fatal(err)
	}
	err = runGroup(t, g, func() bool { return false })
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("run = %v, want the handler error", err)
	}
	if got := committed(t, seeds, group, topic); got != 6 {
		t.Fatalf("committed %d, want 6 (everything before the failed record)", got)
	}
}
