package consumers_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/service"
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
	probe := testenv.Livez(t, g, liveTimeout)
	defer close(release)

	// Idle for twice the live timeout: still live.
	probe.Holds(http.StatusOK, 2*liveTimeout, "idle group")
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
	took, body := probe.Await(http.StatusServiceUnavailable, liveTimeout+3*time.Second, "handler blocked")
	t.Logf("stuck reported %s after the handler blocked: %s", took.Round(time.Millisecond), body)
	if age := time.Since(g.Heartbeat()); age < liveTimeout {
		t.Fatalf("stuck group: heartbeat only %s old", age)
	}
	release <- struct{}{}
	probe.Await(http.StatusOK, 5*time.Second, "handler returned")
}

// TestHeartbeatBrokerDown: an idle group whose broker goes away keeps
// beating (it polls and probes on a bounded wait), so /livez stays up
// through the outage: liveness never follows broker reachability, while
// /readyz (a broker ping, as the examples' serve checks) goes down.
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
	pinger, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer pinger.Close()
	probe := testenv.Livez(t, g, liveTimeout, service.Check{Name: "kafka", Check: pinger.Ping})
	if code, body := probe.Ready(); code != http.StatusOK {
		t.Fatalf("/readyz with the broker up = %d %s", code, body)
	}
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
	if code, body := probe.Ready(); code != http.StatusServiceUnavailable || !strings.Contains(body, "kafka") {
		t.Fatalf("/readyz with the broker down = %d %s, want 503 naming kafka", code, body)
	}
	probe.Holds(http.StatusOK, 2*liveTimeout, "broker down")
}
