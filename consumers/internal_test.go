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
		chain: map[string]chainPos{"t": {origin: "t"}}, states: map[tp]*chainState{}, held: map[tp]*heldRecs{}, pending: map[tp][]pendingCommit{},
		processed: map[tp]int64{}, committed: map[tp]int64{}, inplace: map[tp]map[int64]inPlace{}}
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
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrAttemptTimeout) || ErrorReason(err) != ReasonTimeout {
			t.Fatalf("err %v (reason %s), want a timeout", err, ErrorReason(err))
		}
		// A timed-out call is not retried in place (Retries: 1): it held
		// up the poll for the whole timeout already.
		if calls != 1 || time.Since(start) != 2*time.Second {
			t.Fatalf("%d calls in %s, want 1 in 2s", calls, time.Since(start))
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
		res := g.partition(t.Context(), work{topic: RetryTopic("t", "g", 1), recs: recs})
		done, wait, st, err := res.done, res.held, res.st, res.err
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
	s := newChainState(3)
	check := func(name string, got, want route) {
		t.Helper()
		if got != want {
			t.Errorf("%s: route %d, want %d", name, got, want)
		}
	}
	check("free key at origin", s.routeOrigin("k", 10), routeHandle)
	s.enter("k", 10, 1) // k's head fails into level 1
	check("origin behind level 1", s.routeOrigin("k", 11), routePark)
	check("other key", s.routeOrigin("x", 12), routeHandle)
	s.enter("k", 11, 1) // a follower parked at level 1
	s.enter("k", 10, 2) // the head moves to level 2
	check("follower at level 1 behind the head", s.routeRetry("k", 1, 5, 11), routePark)
	s.enter("k", 11, 2) // the follower follows
	check("head at level 2", s.routeRetry("k", 2, 7, 10), routeHandle)
	check("replayed origin record", s.routeOrigin("k", 9), routeDrop)
	s.leave("k", 10) // head dead-lettered
	s.keys["k"].deadMax = 11
	check("follower after dead head", s.routeRetry("k", 2, 8, 11), routeDead)
	s.leave("k", 11)
	if s.inChain("k") {
		t.Fatal("key still in chain after its last record left")
	}
	check("replay after the key left", s.routeOrigin("k", 11), routeDrop)
	s.sweep(12)
	check("free again", s.routeOrigin("k", 12), routeHandle)
}

// TestRebuild checks the state rebuilt from a retry chain a crash left
// behind: older copies of a record are stale, a marker settles its record,
// dead marks come from markers and flagged records.
func TestRebuild(t *testing.T) {
	cp := func(key string, level int, off, o int64) loadedCopy {
		return loadedCopy{key: key, level: level, offset: off, m: meta{offset: o, retries: -1, hop: -1, deadThrough: -1}}
	}
	mk := func(key string, level int, off, o int64, kind string, through int64) loadedCopy {
		c := cp(key, level, off, o)
		c.m.marker, c.m.deadThrough = kind, through
		return c
	}
	s := rebuild(2, []loadedCopy{
		cp("a", 1, 0, 5), cp("a", 1, 1, 6), // a:5 forwarded to level 2, its level-1 copy left uncommitted
		cp("a", 2, 0, 5), cp("a", 2, 1, 6),
		cp("b", 2, 2, 7), mk("b", 2, 3, 7, markerSettled, -1), cp("b", 1, 2, 8), // b:7 dead-lettered before the crash
		cp("c", 2, 4, 9), mk("c", 2, 5, 9, markerDead, 12), cp("c", 1, 3, 12), cp("c", 1, 4, 13),
	})
	if got := s.routeRetry("a", 1, 0, 5); got != routeDrop {
		t.Errorf("stale copy: %d", got)
	}
	if got := s.routeRetry("a", 2, 0, 5); got != routeHandle {
		t.Errorf("live head: %d", got)
	}
	if got := s.routeRetry("b", 2, 2, 7); got != routeDrop {
		t.Errorf("settled copy: %d", got)
	}
	if got := s.routeRetry("b", 1, 2, 8); got != routeHandle {
		t.Errorf("b's next record: %d", got)
	}
	if got := s.routeOrigin("b", 7); got != routeDrop {
		t.Errorf("replayed settled origin record: %d", got)
	}
	if got := s.routeRetry("c", 1, 3, 12); got != routeDead {
		t.Errorf("c:12 parked behind the dead c:9: %d", got)
	}
	s.leave("c", 12)
	if got := s.routeRetry("c", 1, 4, 13); got != routeHandle {
		t.Errorf("c:13 parked after the death: %d", got)
	}
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
	for _, d := range []time.Duration{-time.Millisecond, 2 * time.Second} {
		if _, err := New([]string{"x:1"}, "g", []string{"t"}, HandlerFunc(nil), PollLinger(d)); !errors.Is(err, orchestrix.ErrInvalid) {
			t.Errorf("PollLinger(%s): New = %v, want ErrInvalid", d, err)
		}
	}
}
