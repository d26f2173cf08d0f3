package outbox_test

import (
	"context"
	"iter"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/twmb/franz-go/pkg/kfake"
)

// hangSource is a memory store whose reads hang, once hang is set, until
// release is closed: a database call that never returns.
type hangSource struct {
	*memory.Store
	hang    atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (s *hangSource) ReadAll(ctx context.Context, after stores.Cursor, limit int) iter.Seq2[stores.Entry, error] {
	if s.hang.Load() {
		select {
		case s.entered <- struct{}{}:
		default:
		}
		<-s.release
	}
	return s.Store.ReadAll(ctx, after, limit)
}

// TestHeartbeatStuckRead: an idle relay keeps /livez up for longer than
// its live timeout; a read that never returns stops its heartbeat (the
// committer, idle, still goes round: the relay's heartbeat is the older
// of its loops'), and /livez fails; once the read returns, it beats again.
func TestHeartbeatStuckRead(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	createTopic(t, seeds, "hb.events", 1)
	src := &hangSource{Store: memory.New(), entered: make(chan struct{}, 1), release: make(chan struct{})}
	r, err := outbox.NewRelay(src, seeds, outbox.ToTopic("hb.events"), outbox.PollInterval(time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	const liveTimeout = 1500 * time.Millisecond
	probe := testenv.Livez(t, r, liveTimeout)
	defer close(src.release)
	appendEvents(t, src.Store, "a", 3, 10, map[string]expected{})
	waitFor(t, time.Minute, "10 events published", func() bool { return r.Stats().Events == 10 })

	probe.Holds(http.StatusOK, 2*liveTimeout, "idle relay")
	if age := time.Since(r.Heartbeat()); age > outbox.HeartbeatInterval+500*time.Millisecond {
		t.Fatalf("idle relay: heartbeat %s old, want at most HeartbeatInterval", age)
	}

	src.hang.Store(true)
	select {
	case <-src.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no read after hang was set")
	}
	took, body := probe.Await(http.StatusServiceUnavailable, liveTimeout+3*time.Second, "read hung")
	t.Logf("stuck reported %s after the read hung: %s", took.Round(time.Millisecond), body)
	src.hang.Store(false)
	src.release <- struct{}{}
	probe.Await(http.StatusOK, 5*time.Second, "read returned")
}

// TestHeartbeatBrokerDown: an idle relay whose broker goes away keeps
// beating, and /livez stays up through the outage: liveness never follows
// broker reachability.
func TestHeartbeatBrokerDown(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "hb.events"))
	if err != nil {
		t.Fatal(err)
	}
	seeds := c.ListenAddrs()
	store := memory.New()
	r, err := outbox.NewRelay(store, seeds, outbox.ToTopic("hb.events"), outbox.PollInterval(time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	const liveTimeout = 4 * time.Second
	probe := testenv.Livez(t, r, liveTimeout)
	appendEvents(t, store, "a", 3, 10, map[string]expected{})
	waitFor(t, time.Minute, "10 events published", func() bool { return r.Stats().Events == 10 })
	c.Close()
	probe.Holds(http.StatusOK, 2*liveTimeout, "broker down")
}
