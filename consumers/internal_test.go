package consumers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/twmb/franz-go/pkg/kgo"
)

// testGroup is a Group without a client: enough for code paths that do
// not produce.
func testGroup(p FailurePolicy, h Handler) *Group {
	p.jitter = func() float64 { return 1 }
	g := &Group{cfg: config{policy: p, keyConcurrency: 1}, group: "g", h: h, log: slog.New(slog.DiscardHandler),
		chain: map[string]chainPos{"t": {origin: "t"}}, states: map[tp]*chainState{}, held: map[tp]*heldRecs{}, pending: map[tp][]pendingCommit{}}
	for l := 1; l <= len(p.RetryDelays); l++ {
		g.chain[RetryTopic("t", "g", l)] = chainPos{origin: "t", level: l}
	}
	return g
}

func TestInPlaceBackoffVirtualTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var at []time.Duration
		h := HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
			at = append(at, time.Since(start))
			if len(at) < 4 {
				return errors.New("flaky")
			}
			return nil
		})
		g := testGroup(DefaultFailurePolicy(), h)
		var st Stats
		if err := g.settle(t.Context(), chainPos{origin: "t"}, &kgo.Record{Topic: "t"}, nil, &st); err != nil {
			t.Fatal(err)
		}
		want := []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond, 700 * time.Millisecond}
		if fmt.Sprint(at) != fmt.Sprint(want) {
			t.Fatalf("calls at %v, want %v", at, want)
		}
		if st.Failed != 1 || st.DeadLettered != 0 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestBackoffCap(t *testing.T) {
	p := DefaultFailurePolicy()
	p.jitter = func() float64 { return 1 }
	for attempt, want := range map[int]time.Duration{1: 100 * time.Millisecond, 5: 1600 * time.Millisecond, 7: 5 * time.Second, 70: 5 * time.Second} {
		if got := p.backoff(attempt); got != want {
			t.Errorf("backoff(%d) = %s, want %s", attempt, got, want)
		}
	}
}

func TestAttemptTimeoutVirtualTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var calls int
		h := HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
			calls++
			<-ctx.Done()
			return fmt.Errorf("slow: %w", ctx.Err())
		})
		p := FailurePolicy{AttemptTimeout: 2 * time.Second, Retries: 1, Backoff: time.Second, MaxBackoff: time.Second}
		g := testGroup(p, h)
		err := g.settle(t.Context(), chainPos{origin: "t"}, &kgo.Record{Topic: "t"}, nil, &Stats{})
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || ErrorReason(err) != ReasonTimeout {
			t.Fatalf("err %v (reason %s), want a timeout", err, ErrorReason(err))
		}
		if calls != 2 || time.Since(start) != 5*time.Second {
			t.Fatalf("%d calls in %s, want 2 in 5s", calls, time.Since(start))
		}
	})
}

// retryRecord is a record of retry level 1 due at due.
func retryRecord(off int64, key string, due time.Time, parked bool) *kgo.Record {
	hs := []kgo.RecordHeader{
		{Key: HeaderTopic, Value: []byte("t")}, {Key: HeaderPartition, Value: []byte("0")},
		{Key: HeaderOffset, Value: []byte(strconv.FormatInt(100+off, 10))},
		{Key: HeaderDue, Value: []byte(due.UTC().Format(time.RFC3339Nano))},
	}
	if parked {
		hs = append(hs, kgo.RecordHeader{Key: HeaderParked, Value: []byte("true")})
	}
	return &kgo.Record{Topic: RetryTopic("t", "g", 1), Offset: off, Key: []byte(key), Headers: hs}
}

func TestRetryPartitionWaitsForDue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		var seen []string
		h := HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
			seen = append(seen, fmt.Sprintf("%s@%d", r.Topic, r.Offset))
			return nil
		})
		g := testGroup(RetryTopics(time.Second), h)
		recs := []*kgo.Record{
			retryRecord(0, "a", now.Add(-time.Second), false),
			retryRecord(1, "b", now, false),
			retryRecord(2, "c", now.Add(time.Second), false),
			retryRecord(3, "d", now, true),
		}
		done, wait, st, _, err := g.partition(t.Context(), RetryTopic("t", "g", 1), 0, recs)
		if err != nil {
			t.Fatal(err)
		}
		if done != recs[1] || wait == nil || len(wait.recs) != 2 || wait.recs[0] != recs[2] || !wait.due.Equal(now.Add(time.Second)) || st.Records != 2 {
			t.Fatalf("done %v, wait %+v, stats %+v", done, wait, st)
		}
		// The handler sees the origin coordinates.
		if fmt.Sprint(seen) != "[t@100 t@101]" {
			t.Fatalf("handled %v", seen)
		}
	})
}

func TestChainStateRoutes(t *testing.T) {
	s := &chainState{levels: 3, keys: map[string]*keyState{}}
	check := func(name, key string, level int, want route) {
		t.Helper()
		if got := s.route(key, level); got != want {
			t.Errorf("%s: route(%s, %d) = %d, want %d", name, key, level, got, want)
		}
	}
	check("free key at origin", "k", 0, routeHandle)
	s.move("k", 0, 1) // k's head fails into level 1
	check("origin behind level 1", "k", 0, routePark)
	check("other key", "x", 0, routeHandle)
	s.move("k", 0, 1) // a follower parked at level 1
	s.move("k", 1, 2) // the head moves to level 2
	check("follower at level 1 behind level 2", "k", 1, routePark)
	s.move("k", 1, 2) // the follower follows
	check("head at level 2", "k", 2, routeHandle)
	s.move("k", 2, 0) // head dead-lettered
	s.markDead("k")
	check("follower after dead head", "k", 2, routeDead)
	s.move("k", 2, 0)
	if s.inChain("k") {
		t.Fatal("key still in chain after its last record left")
	}
	check("free again", "k", 0, routeHandle)
}

func TestErrorReason(t *testing.T) {
	_, perr := codec.RecordToEvent(&kgo.Record{})
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"poison", fmt.Errorf("decode: %w", perr), "poison:missing-header"},
		{"invalid", fmt.Errorf("x: %w", orchestrix.ErrInvalid), ReasonInvalid},
		{"unknown type", fmt.Errorf("x: %w", orchestrix.ErrUnknownType), ReasonUnknownType},
		{"permanent", Permanent(errors.New("no")), ReasonPermanent},
		{"timeout", fmt.Errorf("x: %w", context.DeadlineExceeded), ReasonTimeout},
		{"transient", errors.New("flaky"), ReasonExhausted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ErrorReason(tc.err); got != tc.want {
				t.Fatalf("ErrorReason = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestTruncate(t *testing.T) {
	if got := truncate("héllo", 2); got != "h" {
		t.Fatalf("truncate = %q", got)
	}
	if got := truncate("abc", 5); got != "abc" {
		t.Fatalf("truncate = %q", got)
	}
}

func TestValidate(t *testing.T) {
	bad := []FailurePolicy{
		{Retries: -1},
		{Backoff: time.Second},
		RetryTopics(-time.Second),
		RetryTopics(time.Second).KeepKeyOrder(Ordering(9)),
		DefaultFailurePolicy().WithAttemptTimeout(-1),
	}
	for i, p := range bad {
		if p.validate() == nil {
			t.Errorf("policy %d (%+v) validated", i, p)
		}
	}
	if _, err := New([]string{"x:1"}, "g", []string{"t"}, HandlerFunc(nil), WithFailurePolicy(RetryTopics(-1))); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Fatalf("New = %v, want ErrInvalid", err)
	}
}
