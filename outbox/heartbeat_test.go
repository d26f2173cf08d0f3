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
	get := testenv.Livez(t, r, liveTimeout)
	defer close(src.release)
	appendEvents(t, src.Store, "a", 3, 10, map[string]expected{})
	waitFor(t, time.Minute, "10 events published", func() bool { return r.Stats().Events == 10 })

	for end := time.Now().Add(2 * liveTimeout); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if code, body := get(); code != http.StatusOK {
			t.Fatalf("idle relay: /livez = %d %s, want 200", code, body)
		}
	}
	if age := time.Since(r.Heartbeat()); age > outbox.HeartbeatInterval+500*time.Millisecond {
		t.Fatalf("idle relay: heartbeat %s old, want at most HeartbeatInterval", age)
	}

	src.hang.Store(true)
	select {
	case <-src.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no read after hang was set")
	}
	stuckAt := time.Now()
	deadline := stuckAt.Add(liveTimeout + 3*time.Second)
	for {
		code, body := get()
		if code == http.StatusServiceUnavailable {
			t.Logf("stuck reported %s after the read hung: %s", time.Since(stuckAt).Round(time.Millisecond), body)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("read hung for %s: /livez = %d %s, want 503", time.Since(stuckAt), code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	src.hang.Store(false)
	src.release <- struct{}{}
	waitUntilLive := time.Now().Add(5 * time.Second)
	for code, body := get(); code != http.StatusOK; code, body = get() {
		if time.Now().After(waitUntilLive) {
			t.Fatalf("read returned: /livez = %d %s, want 200", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	get := testenv.Livez(t, r, liveTimeout)
	appendEvents(t, store, "a", 3, 10, map[string]expected{})
	waitFor(t, time.Minute, "10 events published", func() bool { return r.Stats().Events == 10 })
	c.Close()
	var oldest time.Duration
	for end := time.Now().Add(2 * liveTimeout); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if code, body := get(); code != http.StatusOK {
			t.Fatalf("broker down: /livez = %d %s, want 200", code, body)
		}
		oldest = max(oldest, time.Since(r.Heartbeat()))
	}
	t.Logf("broker down for %s: oldest heartbeat seen %s", 2*liveTimeout, oldest.Round(time.Millisecond))
}
