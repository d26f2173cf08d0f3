package consumers_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestHeartbeatStuckHandler: an idle group keeps /livez up for longer
// than its live timeout (its poll loop goes round every
// HeartbeatInterval); a handler call that never returns (no attempt
// timeout) stops the heartbeat, and /livez fails within the live timeout
// plus a poll; once the call returns, the group beats again.
func TestHeartbeatStuckHandler(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", consumers.DeadLetterTopic("orders", "g")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seeds := c.ListenAddrs()
	release, entered := make(chan struct{}), make(chan struct{}, 1)
	policy := consumers.DefaultFailurePolicy()
	policy.AttemptTimeout = 0
	g, err := consumers.New(seeds, "g", []string{"orders"}, consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release
		return nil
	}), consumers.WithFailurePolicy(policy), consumers.ConnectTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	const liveTimeout = 1500 * time.Millisecond
	get := testenv.Livez(t, g, liveTimeout)
	defer close(release)

	// Idle for twice the live timeout: still live.
	for end := time.Now().Add(2 * liveTimeout); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if code, body := get(); code != http.StatusOK {
			t.Fatalf("idle group: /livez = %d %s, want 200", code, body)
		}
	}
	if age := time.Since(g.Heartbeat()); age > consumers.HeartbeatInterval+500*time.Millisecond {
		t.Fatalf("idle group: heartbeat %s old, want at most HeartbeatInterval", age)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Key: []byte("k"), Value: []byte("v")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("handler not called")
	}
	stuckAt := time.Now()
	deadline := stuckAt.Add(liveTimeout + 3*time.Second)
	for {
		code, body := get()
		if code == http.StatusServiceUnavailable {
			t.Logf("stuck reported %s after the handler blocked: %s", time.Since(stuckAt).Round(time.Millisecond), body)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handler blocked for %s: /livez = %d %s, want 503", time.Since(stuckAt), code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if age := time.Since(g.Heartbeat()); age < liveTimeout {
		t.Fatalf("stuck group: heartbeat only %s old", age)
	}
	release <- struct{}{}
	waitUntil(t, 5*time.Second, func() bool { code, _ := get(); return code == http.StatusOK })
}

// TestHeartbeatBrokerDown: an idle group whose broker goes away keeps
// beating (it polls and probes on a bounded wait), so /livez stays up
// through the outage: liveness never follows broker reachability.
func TestHeartbeatBrokerDown(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", consumers.DeadLetterTopic("orders", "g")))
	if err != nil {
		t.Fatal(err)
	}
	seeds := c.ListenAddrs()
	handled := make(chan struct{}, 1)
	g, err := consumers.New(seeds, "g", []string{"orders"}, consumers.HandlerFunc(func(context.Context, *kgo.Record) error {
		select {
		case handled <- struct{}{}:
		default:
		}
		return nil
	}), consumers.ConnectTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	const liveTimeout = 4 * time.Second
	get := testenv.Livez(t, g, liveTimeout)
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	err = cl.ProduceSync(t.Context(), &kgo.Record{Topic: "orders", Value: []byte("v")}).FirstErr()
	cl.Close()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("handler not called")
	}
	c.Close()
	var oldest time.Duration
	for end := time.Now().Add(2 * liveTimeout); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if code, body := get(); code != http.StatusOK {
			t.Fatalf("broker down: /livez = %d %s, want 200", code, body)
		}
		oldest = max(oldest, time.Since(g.Heartbeat()))
	}
	t.Logf("broker down for %s: oldest heartbeat seen %s", 2*liveTimeout, oldest.Round(time.Millisecond))
}
