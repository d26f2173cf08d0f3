package outbox_test

import (
	"context"
	"iter"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
)

// pushSource is a memory store that also pushes (outbox.Observer): its
// stream ends after every `every` entries, and repeats its last entry
// when repeat is set, as a faulty source might.
type pushSource struct {
	*memory.Store
	every    atomic.Int64
	repeat   atomic.Bool
	observes atomic.Int64
}

func (s *pushSource) Observe(ctx context.Context, after stores.Cursor) iter.Seq2[stores.Entry, error] {
	s.observes.Add(1)
	return func(yield func(stores.Entry, error) bool) {
		n := 0
		for {
			appended := s.Appended()
			var last *stores.Entry
			for e, err := range s.ReadAll(ctx, after, 0) {
				if err != nil {
					yield(stores.Entry{}, err)
					return
				}
				if !yield(e, nil) {
					return
				}
				after, last = e.Cursor, &e
				if n++; int64(n) == s.every.Load() {
					return // the stream ends: the relay starts a new term
				}
			}
			if last != nil && s.repeat.Load() && !yield(*last, nil) {
				return
			}
			select {
			case <-ctx.Done():
				yield(stores.Entry{}, ctx.Err())
				return
			case <-appended:
			}
		}
	}
}

// TestRelayObserver: a source with Observe is followed, not polled (the
// poll interval is far longer than the test); a stream that ends starts a
// new term from the Kafka checkpoint; a stream that repeats an entry is
// refused rather than published twice.
func TestRelayObserver(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	createTopic(t, seeds, "push.events", 3)
	src := &pushSource{Store: memory.New()}
	src.every.Store(150)
	var errs atomic.Int64
	r, err := outbox.NewRelay(src, seeds, outbox.ToTopic("push.events"), outbox.BatchSize(16),
		outbox.PollInterval(10*time.Minute, 10*time.Minute), outbox.WithLogger(testLogger(t)),
		outbox.OnError(func(error) { errs.Add(1) }))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]expected{}
	appendEvents(t, src, "a", 7, 400, want) // a backlog, 25 batches
	stop := runRelay(t, r)
	waitFor(t, time.Minute, "400 events published", func() bool { return r.Stats().Events == 400 })
	appendEvents(t, src, "b", 5, 100, want) // live
	waitFor(t, time.Minute, "500 events published", func() bool { return r.Stats().Events == 500 })
	if n := src.observes.Load(); n < 4 {
		t.Errorf("observed %d times, want a new observation after every 150 events", n)
	}
	if errs.Load() < 3 {
		t.Errorf("OnError saw %d errors, want the ended streams", errs.Load())
	}

	src.every.Store(0)
	src.repeat.Store(true)
	errs.Store(0)
	appendEvents(t, src, "c", 3, 10, want)
	waitFor(t, time.Minute, "510 events published", func() bool { return r.Stats().Events == 510 })
	waitFor(t, time.Minute, "a repeated entry refused", func() bool { return errs.Load() > 0 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	verify(t, readTopic(t, seeds, "push.events"), want)
}
