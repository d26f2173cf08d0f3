package esdb_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/esdb"
	"github.com/orchestrix/orchestrix/stores/esdb/esdbtest"
	"github.com/orchestrix/orchestrix/stores/storetest"
)

// fastObserve reconnects quickly and detects a stall after 1 s; the
// double sends heartbeats every 20 ms in these tests, so a loaded machine
// does not fake a stall.
func fastObserve(hook func(error, int)) esdb.ObserveOptions {
	return esdb.ObserveOptions{Recursive: true, StallTimeout: time.Second, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, OnReconnect: hook}
}

// collect observes until n events arrived or the deadline passes.
func collect(t *testing.T, c *esdb.Client, opts esdb.ObserveOptions, n int) ([]esdb.Event, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var got []esdb.Event
	for e, err := range c.ObserveEvents(ctx, "/", opts) {
		if err != nil {
			return got, err
		}
		got = append(got, e)
		if len(got) == n {
			break
		}
	}
	return got, nil
}

func checkOnceInOrder(t *testing.T, got []esdb.Event, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("observed %d events, want %d", len(got), n)
	}
	for i, e := range got {
		if want := fmt.Sprint(i); e.ID != want {
			t.Fatalf("event %d has ID %s: lost or repeated", i, e.ID)
		}
	}
}

func TestObserveResumesAfterFaults(t *testing.T) {
	tests := []struct {
		name   string
		faults []esdbtest.Fault
	}{
		{"dropped connection", []esdbtest.Fault{{Kind: esdbtest.FaultDropConnection, After: 3}}},
		{"dropped twice", []esdbtest.Fault{{Kind: esdbtest.FaultDropConnection, After: 2}, {Kind: esdbtest.FaultDropConnection, After: 4}}},
		{"drop before the first event", []esdbtest.Fault{{Kind: esdbtest.FaultDropConnection, After: 0}}},
		{"stall without heartbeats", []esdbtest.Fault{{Kind: esdbtest.FaultStall, After: 5}}},
		{"error line after a 200", []esdbtest.Fault{{Kind: esdbtest.FaultErrorLine, After: 4, Message: "shutting down"}}},
		{"unavailable", []esdbtest.Fault{{Kind: esdbtest.FaultStatus, Status: 503, Body: "busy"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := esdbtest.NewServer(token, esdbtest.WithHeartbeatInterval(20*time.Millisecond))
			defer srv.Close()
			c, _ := esdb.NewClient(srv.URL, token)
			if _, err := c.WriteEvents(t.Context(), candidates("/a", 6)); err != nil {
				t.Fatal(err)
			}
			for _, f := range tc.faults {
				f.Endpoint = "observe-events"
				srv.InjectFault(f)
			}
			var mu sync.Mutex
			var reconnects []error
			hook := func(err error, attempt int) {
				mu.Lock()
				defer mu.Unlock()
				reconnects = append(reconnects, err)
			}
			// More events arrive while the observer runs.
			go func() {
				time.Sleep(50 * time.Millisecond)
				_, _ = c.WriteEvents(context.Background(), candidates("/b", 4))
			}()
			got, err := collect(t, c, fastObserve(hook), 10)
			if err != nil {
				t.Fatalf("observe: %v", err)
			}
			checkOnceInOrder(t, got, 10)
			mu.Lock()
			defer mu.Unlock()
			// Every fault struck (a loaded machine may add a reconnect).
			if len(reconnects) < len(tc.faults) {
				t.Fatalf("OnReconnect saw %d errors (%v), want %d", len(reconnects), reconnects, len(tc.faults))
			}
			for _, err := range reconnects {
				if !esdb.IsRetryable(err) {
					t.Errorf("reconnected after a non-retryable error %v", err)
				}
			}
		})
	}
}

func TestObserveHeartbeatsKeepAnIdleConnection(t *testing.T) {
	srv := esdbtest.NewServer(token, esdbtest.WithHeartbeatInterval(20*time.Millisecond))
	defer srv.Close()
	c, _ := esdb.NewClient(srv.URL, token)
	go func() {
		time.Sleep(1200 * time.Millisecond) // longer than the stall timeout
		_, _ = c.WriteEvents(context.Background(), candidates("/a", 1))
	}()
	opts := fastObserve(func(err error, _ int) { t.Errorf("reconnected: %v", err) })
	got, err := collect(t, c, opts, 1)
	if err != nil || len(got) != 1 {
		t.Fatalf("observe: %d events, %v", len(got), err)
	}
	if n := srv.Requests("observe-events"); n != 1 {
		t.Fatalf("%d observe requests, want 1", n)
	}
}

func TestObserveGivesUp(t *testing.T) {
	t.Run("unauthorized is final", func(t *testing.T) {
		srv := esdbtest.NewServer(token)
		defer srv.Close()
		c, _ := esdb.NewClient(srv.URL, "wrong")
		_, err := collect(t, c, fastObserve(func(err error, _ int) { t.Errorf("reconnected after %v", err) }), 1)
		if !errors.Is(err, esdb.ErrUnauthorized) {
			t.Fatalf("err = %v, want ErrUnauthorized", err)
		}
	})
	t.Run("malformed line is final", func(t *testing.T) {
		srv := esdbtest.NewServer(token)
		defer srv.Close()
		c, _ := esdb.NewClient(srv.URL, token)
		srv.InjectFault(esdbtest.Fault{Endpoint: "observe-events", Kind: esdbtest.FaultMalformedLine})
		_, err := collect(t, c, fastObserve(nil), 1)
		if !errors.Is(err, esdb.ErrMalformedResponse) {
			t.Fatalf("err = %v, want ErrMalformedResponse", err)
		}
	})
	t.Run("max attempts", func(t *testing.T) {
		srv := esdbtest.NewServer(token)
		c, _ := esdb.NewClient(srv.URL, token)
		srv.Close()
		attempts := 0
		opts := fastObserve(func(error, int) { attempts++ })
		opts.MaxAttempts = 3
		_, err := collect(t, c, opts, 1)
		if err == nil || attempts != 2 {
			t.Fatalf("err = %v after %d reconnects, want an error after 2", err, attempts)
		}
	})
}

func TestObserveFromLowerBoundAndLatest(t *testing.T) {
	srv := esdbtest.NewServer(token)
	defer srv.Close()
	c, _ := esdb.NewClient(srv.URL, token)
	if _, err := c.WriteEvents(t.Context(), candidates("/a", 5)); err != nil {
		t.Fatal(err)
	}
	opts := fastObserve(nil)
	opts.LowerBound = &esdb.Bound{ID: 3, Type: esdb.Inclusive}
	got, err := collect(t, c, opts, 2)
	if err != nil || len(got) != 2 || got[0].ID != "3" {
		t.Fatalf("lower bound: %+v, %v", got, err)
	}
	opts = fastObserve(nil)
	opts.FromLatestEvent = &esdb.FromLatestEvent{Subject: "/a", Type: "io.example.thing-happened", IfEventIsMissing: esdb.WaitForEvent}
	got, err = collect(t, c, opts, 1)
	if err != nil || len(got) != 1 || got[0].ID != "4" {
		t.Fatalf("from latest: %+v, %v", got, err)
	}
}

// TestStoreObserveRelaySource is the relay's view: every stream event once,
// in log order, across dropped connections, resuming from a checkpoint.
func TestStoreObserveRelaySource(t *testing.T) {
	b := newBackend(t, esdbtest.WithHeartbeatInterval(20*time.Millisecond))
	s, err := esdb.New(b.client, esdb.WithSubjectPrefix(b.prefix), esdb.WithObserveOptions(fastObserve(nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	const total = 40
	writeDone := make(chan error, 1)
	go func() {
		for i := range total / 2 {
			evs := storetest.Events("Relayed", 2)
			evs[0].CommandID, evs[1].CommandID = fmt.Sprintf("cmd-%d", i), fmt.Sprintf("cmd-%d", i)
			if _, err := s.Append(ctx, fmt.Sprintf("s%d", i%3), stores.Any, evs); err != nil {
				writeDone <- err
				return
			}
			if i == 5 && b.srv != nil {
				b.srv.CloseClientConnections()    // a network failure mid-stream
				time.Sleep(20 * time.Millisecond) // let the writer's pool notice
			}
			if i == 12 && b.srv != nil {
				b.srv.InjectFault(esdbtest.Fault{Endpoint: "observe-events", Kind: esdbtest.FaultDropConnection, After: 1})
				b.srv.CloseClientConnections()
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(5 * time.Millisecond)
		}
		writeDone <- nil
	}()

	// A relay publishes the first 15 events and checkpoints, then crashes.
	var published []stores.Entry
	var checkpoint stores.Cursor
	for e, err := range s.Observe(ctx, stores.Cursor{}) {
		if err != nil {
			t.Fatalf("observe: %v", err)
		}
		published = append(published, e)
		checkpoint = e.Cursor
		if len(published) == 15 {
			break
		}
	}
	// Its successor resumes from the checkpoint.
	for e, err := range s.Observe(ctx, checkpoint) {
		if err != nil {
			t.Fatalf("observe after restart: %v", err)
		}
		published = append(published, e)
		if len(published) == total {
			break
		}
	}
	if err := <-writeDone; err != nil {
		t.Fatalf("append: %v", err)
	}
	all := storetest.ReadAll(t, s, stores.Cursor{})
	if len(all) != total || len(published) != total {
		t.Fatalf("published %d, log has %d, want %d", len(published), len(all), total)
	}
	for i := range all {
		if published[i].Position != all[i].Position || published[i].ID != all[i].ID || published[i].Version != all[i].Version {
			t.Fatalf("entry %d: published %s v%d @%d, log has %s v%d @%d", i,
				published[i].StreamID, published[i].Version, published[i].Position, all[i].StreamID, all[i].Version, all[i].Position)
		}
	}
}
