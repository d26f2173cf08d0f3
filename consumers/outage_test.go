package consumers_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// unusedAddr returns a loopback address nothing listens on.
func unusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestUnreachableAtStart: with no broker behind the seed, Run returns a
// typed error naming the seed soon after ConnectTimeout.
func TestUnreachableAtStart(t *testing.T) {
	seed := unusedAddr(t)
	g, err := consumers.New([]string{seed}, "g", []string{"t"}, consumers.HandlerFunc(func(context.Context, *kgo.Record) error { return nil }),
		consumers.ConnectTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = g.Run(t.Context())
	if !errors.Is(err, consumers.ErrUnreachable) || !strings.Contains(err.Error(), seed) {
		t.Fatalf("Run = %v, want ErrUnreachable naming %s", err, seed)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Run took %s to report the unreachable broker", d)
	}
}

// TestBrokerOutage stops the broker (kfake persisting to disk) while the
// group is busy, restarts it on the same port with the same data after a
// few seconds, and produces more: Run keeps going, reports the outage and
// the recovery, and every record is handled (at least once).
func TestBrokerOutage(t *testing.T) {
	dir, port := t.TempDir(), 0
	start := func() *kfake.Cluster {
		opts := []kfake.Opt{kfake.NumBrokers(1), kfake.DataDir(dir)}
		if port != 0 {
			opts = append(opts, kfake.Ports(port))
		}
		c, err := kfake.NewCluster(opts...)
		if err != nil {
			t.Fatal(err)
		}
		if port == 0 {
			_, ps, _ := net.SplitHostPort(c.ListenAddrs()[0])
			port, _ = strconv.Atoi(ps)
		}
		return c
	}
	c := start()
	defer func() { c.Close() }()
	seeds := c.ListenAddrs()
	const topic, group, before, after = "orders", "g", 3000, 1000
	policy := consumers.RetryTopics(100 * time.Millisecond).ThenDLQ()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopics(t.Context(), 4, 1, nil, append([]string{topic}, policy.Topics(topic, group)...)...); err != nil {
		t.Fatal(err)
	}
	produce := func(from, to int) {
		t.Helper()
		var recs []*kgo.Record
		for i := from; i < to; i++ {
			recs = append(recs, &kgo.Record{Topic: topic, Key: []byte("k" + strconv.Itoa(i%50)), Value: []byte(strconv.Itoa(i))})
		}
		if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	produce(0, before)
	var (
		mu      sync.Mutex
		calls   = map[string]int{}
		failed  = map[string]bool{}
		events  []string
		handled atomic.Int64
	)
	h := consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		time.Sleep(200 * time.Microsecond)
		mu.Lock()
		defer mu.Unlock()
		v := string(r.Value)
		if n, _ := strconv.Atoi(v); n%100 == 7 && !failed[v] {
			failed[v] = true // through the retry topic once
			return errors.New("transient")
		}
		if calls[v]++; calls[v] == 1 {
			handled.Add(1)
		}
		return nil
	})
	g, err := consumers.New(seeds, group, []string{topic}, h, consumers.WithFailurePolicy(policy), consumers.KeyConcurrency(2),
		consumers.MaxPollRecords(200), consumers.DrainTimeout(5*time.Second),
		consumers.OnConnectivity(func(up bool, err error) {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, fmt.Sprint(up))
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	wait := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			select {
			case err := <-done:
				t.Fatalf("Run returned %v while waiting for %s", err, what)
			case <-ctx.Done():
				t.Fatalf("timed out waiting for %s (handled %d)", what, handled.Load())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	wait("a third handled", func() bool { return handled.Load() >= before/3 })
	c.Close()
	t.Logf("broker stopped after %d records handled", handled.Load())
	wait("the outage to be noticed", func() bool { mu.Lock(); defer mu.Unlock(); return len(events) > 0 })
	time.Sleep(2 * time.Second)
	c = start()
	t.Log("broker restarted")
	produce(before, before+after)
	wait("every record", func() bool { return handled.Load() >= before+after })
	adm := kadm.NewClient(cl)
	wait("everything committed", func() bool { return drained(t, adm, group, topic, consumers.RetryTopic(topic, group, 1)) })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	dups := 0
	for _, n := range calls {
		dups += n - 1
	}
	if fmt.Sprint(events) != "[false true]" {
		t.Fatalf("connectivity events %v, want [false true]", events)
	}
	t.Logf("%d records handled, %d handled again (at-least-once, replayed after the outage)", len(calls), dups)
}
