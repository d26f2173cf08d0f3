package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
)

// appendEvents appends n events spread over streams to store and records
// them in want.
func appendEvents(t testing.TB, store stores.EventStore, prefix string, streams, n int, want map[string]expected) {
	t.Helper()
	for i := range n {
		stream := fmt.Sprintf("%s-%03d", prefix, i%streams)
		typ := "Happened"
		if i%7 == 0 {
			typ = "Special"
		}
		res, err := store.Append(t.Context(), stream, stores.Any, []orchestrix.Event{{
			Metadata: orchestrix.Metadata{ID: fmt.Sprintf("%s-e%06d", prefix, i), Type: typ, Source: "/test"},
			Data:     []byte(`{}`), ContentType: "application/json",
		}})
		if err != nil {
			t.Fatalf("append: %v", err)
		}
		want[fmt.Sprintf("%s-e%06d", prefix, i)] = expected{stream, res.FromVersion}
	}
}

// TestRelay runs the relay on kfake and the memory store: everything is
// published once, in stream order, with CloudEvents headers and routes,
// and a restarted relay resumes from its Kafka checkpoint.
func TestRelay(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	store := memory.New()
	createTopic(t, seeds, "unit.events", 4)
	createTopic(t, seeds, "unit.special", 2)

	newRelay := func(instance string) *outbox.Relay {
		r, err := outbox.NewRelay(store, seeds, outbox.ToTopic("unit.events"), outbox.Route("Special", "unit.special"),
			outbox.BatchSize(64), outbox.Instance(instance), outbox.PollInterval(time.Millisecond, 20*time.Millisecond),
			outbox.WithLogger(testLogger(t)))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	want := map[string]expected{}
	appendEvents(t, store, "a", 17, 500, want)

	r1 := newRelay("one")
	stop := runRelay(t, r1)
	waitFor(t, time.Minute, "500 events published", func() bool { return r1.Stats().Events == 500 })
	appendEvents(t, store, "b", 5, 100, want) // while running: woken by Appended
	waitFor(t, time.Minute, "600 events published", func() bool { return r1.Stats().Events == 600 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	appendEvents(t, store, "c", 9, 300, want)
	r2 := newRelay("two")
	stop = runRelay(t, r2)
	waitFor(t, time.Minute, "300 more events published", func() bool { return r2.Stats().Events == 300 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st := r2.Stats(); st.Checkpoint.Events.Position != 900 || st.Leader {
		t.Errorf("stats after stop = %+v, want checkpoint at position 900 and not leader", st)
	}

	got := append(readTopic(t, seeds, "unit.events"), readTopic(t, seeds, "unit.special")...)
	verify(t, got, want)
	for _, p := range got {
		if (p.Type == "Special") != (p.Topic == "unit.special") {
			t.Fatalf("event of type %s published to %s", p.Type, p.Topic)
		}
		if p.Position == 0 || p.Source != "/test" || p.StreamID == "" {
			t.Fatalf("record lacks CloudEvents attributes: %+v", p.Event)
		}
		if wantInst := map[byte]string{'a': "one", 'b': "one", 'c': "two"}[p.ID[0]]; p.Instance != wantInst {
			t.Fatalf("event %s published by %q, want %q", p.ID, p.Instance, wantInst)
		}
	}
}

// TestRelayInvalidEvent: an event the codec refuses goes to the
// dead-letter topic and the events after it are published; OnInvalid can
// skip it instead, or stop the relay with an error.
func TestRelayInvalidEvent(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	createTopic(t, seeds, "bad.events", 1)
	createTopic(t, seeds, "bad2.events", 1)
	store := memory.New()
	ev := func(id string, ext map[string]string) []orchestrix.Event {
		return []orchestrix.Event{{Metadata: orchestrix.Metadata{ID: id, Type: "T", Source: "/s", Extensions: ext}, Data: []byte(`{}`)}}
	}
	for _, e := range [][]orchestrix.Event{ev("ok-1", nil), ev("bad", map[string]string{"Not-Valid": "x"}), ev("ok-2", nil)} {
		if _, err := store.Append(t.Context(), "s", stores.Any, e); err != nil {
			t.Fatal(err)
		}
	}
	r, err := outbox.NewRelay(store, seeds, outbox.ToTopic("bad.events"), outbox.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	stop := runRelay(t, r)
	waitFor(t, time.Minute, "2 events and a dead letter", func() bool { st := r.Stats(); return st.Events == 2 && st.DeadLettered == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := readTopic(t, seeds, "bad.events"); len(got) != 2 || got[0].ID != "ok-1" || got[1].ID != "ok-2" {
		t.Fatalf("published %v", got)
	}
	dl := readTopicRaw(t, seeds, "bad.events"+outbox.DeadLetterSuffix)
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	checkHeaders(t, dl[0], map[string]string{outbox.HeaderReason: outbox.ReasonInvalid, outbox.HeaderOrigin: "event",
		outbox.HeaderID: "bad", outbox.HeaderStream: "s", outbox.HeaderVersion: "2", outbox.HeaderPosition: "2", outbox.HeaderType: "T"})
	if string(dl[0].Value) != `{}` || string(dl[0].Key) != "s" {
		t.Errorf("dead letter key %q value %q, want the event's stream and data", dl[0].Key, dl[0].Value)
	}

	// OnInvalid decides instead: an error stops the relay with it...
	r, err = outbox.NewRelay(store, seeds, outbox.ToTopic("bad2.events"), outbox.WithLogger(testLogger(t)),
		outbox.OnInvalid(func(_ context.Context, e stores.Entry, err error) error {
			return fmt.Errorf("refused %s: %w", e.ID, err)
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := r.Run(ctx); !errors.Is(err, orchestrix.ErrInvalid) || !strings.Contains(err.Error(), "refused bad") {
		t.Fatalf("Run = %v, want OnInvalid's error", err)
	}
	// ... nil skips the event.
	var skipped []string
	r, err = outbox.NewRelay(store, seeds, outbox.ToTopic("bad2.events"), outbox.WithLogger(testLogger(t)),
		outbox.OnInvalid(func(_ context.Context, e stores.Entry, err error) error {
			skipped = append(skipped, e.ID)
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	stop = runRelay(t, r)
	waitFor(t, time.Minute, "2 events", func() bool { return r.Stats().Events == 2 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	got := readTopic(t, seeds, "bad2.events")
	if len(got) != 2 || got[0].ID != "ok-1" || got[1].ID != "ok-2" || len(skipped) != 1 || skipped[0] != "bad" || r.Stats().Skipped != 1 {
		t.Fatalf("published %v, skipped %v", got, skipped)
	}
}

// TestRelayMissingTopic: Run fails at once, naming the topic.
func TestRelayMissingTopic(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	r, err := outbox.NewRelay(memory.New(), seeds, outbox.ToTopic("nope.events"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := r.Run(ctx); !errors.Is(err, outbox.ErrTopicMissing) {
		t.Fatalf("Run = %v, want ErrTopicMissing", err)
	}
}

func TestNewRelayConfig(t *testing.T) {
	store := memory.New()
	seeds := []string{"127.0.0.1:1"}
	tests := []struct {
		name  string
		src   outbox.Source
		seeds []string
		opts  []outbox.Option
		ok    bool
	}{
		{"valid", store, seeds, []outbox.Option{outbox.ToTopic("x.events")}, true},
		{"no topic", store, seeds, nil, false},
		{"bad topic", store, seeds, []outbox.Option{outbox.ToTopic("a topic")}, false},
		{"no seeds", store, nil, []outbox.Option{outbox.ToTopic("x.events")}, false},
		{"nil source", nil, seeds, []outbox.Option{outbox.ToTopic("x.events")}, false},
		{"bad route", store, seeds, []outbox.Option{outbox.ToTopic("x.events"), outbox.Route("T", "bad/topic")}, false},
		{"batch too big", store, seeds, []outbox.Option{outbox.ToTopic("x.events"), outbox.BatchSize(1 << 20)}, false},
		{"poll inverted", store, seeds, []outbox.Option{outbox.ToTopic("x.events"), outbox.PollInterval(time.Second, time.Millisecond)}, false},
		{"short lease", store, seeds, []outbox.Option{outbox.ToTopic("x.events"), outbox.Lease(time.Millisecond)}, false},
		{"long linger", store, seeds, []outbox.Option{outbox.ToTopic("x.events"), outbox.Linger(2 * time.Second)}, false},
		{"negative max event size", store, seeds, []outbox.Option{outbox.ToTopic("x.events"), outbox.MaxEventSize(-1)}, false},
		{"dead letters to the events topic", store, seeds, []outbox.Option{outbox.ToTopic("x.events"), outbox.DeadLetterTopic("x.events")}, false},
		{"bad dead-letter topic", store, seeds, []outbox.Option{outbox.ToTopic("x.events"), outbox.DeadLetterTopic("no/such")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := outbox.NewRelay(tt.src, tt.seeds, tt.opts...)
			if tt.ok && err != nil {
				t.Fatalf("NewRelay: %v", err)
			}
			if !tt.ok && !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("NewRelay = %v, want ErrInvalid", err)
			}
		})
	}
	// Every problem at once.
	_, err := outbox.NewRelay(nil, nil, outbox.BatchSize(0))
	for _, part := range []string{"nil source", "no seed brokers", "no topic", "batch size"} {
		if err == nil || !strings.Contains(err.Error(), part) {
			t.Errorf("error %v does not mention %q", err, part)
		}
	}
}
