package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// checkHeaders checks that rec has each header of want with its value.
func checkHeaders(t testing.TB, rec *kgo.Record, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, h := range rec.Headers {
		got[h.Key] = string(h.Value)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("dead letter header %s = %q, want %q (headers %v)", k, got[k], v, got)
		}
	}
}

// runUntil runs r until cond holds, failing the test if Run returns
// before (the relay must not stop), then stops it.
func runUntil(t testing.TB, r *outbox.Relay, d time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(d)
	for !cond() {
		select {
		case err := <-done:
			t.Fatalf("Run returned %v before %s; stats %+v", err, what, r.Stats())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; stats %+v", d, what, r.Stats())
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// jsonOf returns an event whose data is a JSON string of n bytes.
func jsonOf(id string, n int) orchestrix.Event {
	data := make([]byte, n)
	for i := range data {
		data[i] = 'x'
	}
	data[0], data[n-1] = '"', '"'
	e := event(id)
	e.Data = data
	return e
}

// noisyJSON returns an event whose data is a JSON string of n bytes that
// compresses poorly (random letters and digits), so that a broker's limit
// applies to about that size even after compression.
func noisyJSON(id string, n int) orchestrix.Event {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
	e := jsonOf(id, n)
	for i := 1; i < n-1; i++ {
		e.Data[i] = alphabet[rand.IntN(len(alphabet))]
	}
	return e
}

// TestTooLargeEventIntegration: the store accepts events of up to 1 MiB of
// data. One of 1,010,000 bytes is larger than franz-go's default batch
// limit (1,000,012 bytes) but within the topic's max.message.bytes
// (Kafka's default, 1,048,588): it is published. One of 1 MiB does not
// fit the topic with its key and headers: it goes to the dead-letter
// topic with its position, stream, type and reason, in the transaction
// whose checkpoint passes it, and the events after it are published. Run
// never returns.
func TestTooLargeEventIntegration(t *testing.T) {
	e := newEnv(t, 2)
	ctx := t.Context()
	want := map[string]expected{}
	var hugePos uint64
	for _, a := range []struct {
		stream string
		ev     orchestrix.Event
	}{
		{"s1", event("ok-1")},
		{"s1", jsonOf("big", 1_010_000)},
		{"s2", event("ok-2")},
		{"s1", jsonOf("huge", stores.DefaultMaxEventSize)},
		{"s1", event("ok-3")},
		{"s2", event("ok-4")},
	} {
		res, err := e.store.Append(ctx, a.stream, stores.Any, []orchestrix.Event{a.ev})
		if err != nil {
			t.Fatalf("append %s: %v", a.ev.ID, err)
		}
		if a.ev.ID == "huge" {
			for en, err := range e.store.ReadStream(ctx, "s1", res.FromVersion-1) {
				if err != nil {
					t.Fatal(err)
				}
				hugePos = en.Position
				break
			}
			continue
		}
		want[a.ev.ID] = expected{a.stream, res.FromVersion}
	}

	r := e.relay(t, "big")
	runUntil(t, r, time.Minute, "5 events and 1 dead letter", func() bool {
		st := r.Stats()
		return st.Events == 5 && st.DeadLettered == 1 && st.Checkpoint.Events == e.lastCursor(t)
	})
	verify(t, readTopic(t, e.seeds, e.topic), want)

	dl := readTopicRaw(t, e.seeds, e.topic+outbox.DeadLetterSuffix)
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	checkHeaders(t, dl[0], map[string]string{
		outbox.HeaderReason: outbox.ReasonTooLarge, outbox.HeaderOrigin: "event", outbox.HeaderTopic: e.topic,
		outbox.HeaderStream: "s1", outbox.HeaderVersion: "3", outbox.HeaderType: "Happened", outbox.HeaderID: "huge",
		outbox.HeaderPosition: strconv.FormatUint(hugePos, 10), outbox.InstanceHeader: "big",
	})
	if len(dl[0].Value) != 0 || string(dl[0].Key) != "s1" {
		t.Errorf("dead letter key %q, value of %d bytes; want s1 and no value", dl[0].Key, len(dl[0].Value))
	}
	for _, h := range dl[0].Headers {
		if h.Key == outbox.HeaderSize {
			if n, _ := strconv.Atoi(string(h.Value)); n <= stores.DefaultMaxEventSize {
				t.Errorf("size header %s, want the record's size, over %d", h.Value, stores.DefaultMaxEventSize)
			}
		}
	}
}

// TestMissingTopicIntegration: an outbox message whose topic does not
// exist, and an event RouteFunc sends to a topic that does not exist, go
// to the dead-letter topic (reason topic-missing, with the message's key,
// value and headers); the messages and events after them are published,
// Run never returns.
func TestMissingTopicIntegration(t *testing.T) {
	e := newEnv(t, 2)
	ctx := t.Context()
	msgTopic := testenv.Topic(t, e.seeds, 1, nil)
	missing := msgTopic + "-missing"
	w, err := outbox.NewWriter(e.schema)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]expected{}
	appendOne := func(stream string, ev orchestrix.Event) {
		t.Helper()
		res, err := e.store.Append(ctx, stream, stores.Any, []orchestrix.Event{ev})
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type != "Lost" {
			want[ev.ID] = expected{stream, res.FromVersion}
		}
	}
	write := func(topic, key string) {
		t.Helper()
		if err := w.Write(ctx, e.pool, outbox.Message{Topic: topic, Key: []byte(key), Value: []byte("v-" + key),
			Headers: []kgo.RecordHeader{{Key: "h", Value: []byte("x-" + key)}}}); err != nil {
			t.Fatal(err)
		}
	}
	appendOne("s1", event("e-1"))
	write(msgTopic, "m1")
	write(missing, "m2")
	lost := event("lost")
	lost.Type = "Lost"
	appendOne("s2", lost)
	appendOne("s1", event("e-2"))
	write(msgTopic, "m3")
	appendOne("s2", event("e-3"))

	r := e.relay(t, "miss", outbox.RouteFunc(func(ev orchestrix.Event) string {
		if ev.Type == "Lost" {
			return missing
		}
		return ""
	}))
	runUntil(t, r, time.Minute, "3 events, 2 messages and 2 dead letters", func() bool {
		st := r.Stats()
		return st.Events == 3 && st.Messages == 2 && st.DeadLettered == 2
	})
	verify(t, readTopic(t, e.seeds, e.topic), want)
	msgs := readTopicRaw(t, e.seeds, msgTopic)
	if len(msgs) != 2 || string(msgs[0].Key) != "m1" || string(msgs[1].Key) != "m3" {
		t.Fatalf("message topic holds %d records, want m1 and m3", len(msgs))
	}
	dl := readTopicRaw(t, e.seeds, e.topic+outbox.DeadLetterSuffix)
	if len(dl) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dl))
	}
	byOrigin := map[string]*kgo.Record{}
	for _, rec := range dl {
		for _, h := range rec.Headers {
			if h.Key == outbox.HeaderOrigin {
				byOrigin[string(h.Value)] = rec
			}
		}
	}
	if m := byOrigin["outbox"]; m == nil {
		t.Error("no dead letter of the outbox message")
	} else {
		checkHeaders(t, m, map[string]string{outbox.HeaderReason: outbox.ReasonTopicMissing, outbox.HeaderTopic: missing, "h": "x-m2"})
		if string(m.Key) != "m2" || string(m.Value) != "v-m2" {
			t.Errorf("outbox dead letter key %q value %q, want the message's", m.Key, m.Value)
		}
	}
	if ev := byOrigin["event"]; ev == nil {
		t.Error("no dead letter of the routed event")
	} else {
		checkHeaders(t, ev, map[string]string{outbox.HeaderReason: outbox.ReasonTopicMissing, outbox.HeaderTopic: missing,
			outbox.HeaderStream: "s2", outbox.HeaderType: "Lost", outbox.HeaderID: "lost", outbox.HeaderVersion: "1"})
	}
}

// TestRelayTopicLimit (kfake): a topic whose max.message.bytes is 100,000
// is reported at start (LimitMismatchError, to OnError); the relay sizes
// its batches to it, so 2,000 small events in one read (~900 KB with
// their headers) are published, and an event of 150,000 bytes is
// dead-lettered. The data compresses poorly: the broker's limit applies
// to compressed batches, franz-go's and the relay's to uncompressed ones.
func TestRelayTopicLimit(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	adm := kadm.NewClient(testenv.Client(t, seeds))
	small := "100000"
	if _, err := adm.CreateTopic(t.Context(), 1, 1, map[string]*string{"max.message.bytes": &small}, "small.events"); err != nil {
		t.Fatal(err)
	}
	store := memory.New()
	want := map[string]expected{}
	for i := range 2000 {
		ev := noisyJSON(fmt.Sprintf("e%04d", i), 200)
		if i == 1000 {
			ev = noisyJSON("big", 150_000)
		}
		res, err := store.Append(t.Context(), fmt.Sprintf("s%d", i%10), stores.Any, []orchestrix.Event{ev})
		if err != nil {
			t.Fatal(err)
		}
		if ev.ID != "big" {
			want[ev.ID] = expected{fmt.Sprintf("s%d", i%10), res.FromVersion}
		}
	}
	var mismatch []*outbox.LimitMismatchError
	r, err := outbox.NewRelay(store, seeds, outbox.ToTopic("small.events"), outbox.BatchSize(5000), outbox.WithLogger(testLogger(t)),
		outbox.MaxEventSize(200_000),
		outbox.OnError(func(err error) {
			var m *outbox.LimitMismatchError
			if errors.As(err, &m) {
				mismatch = append(mismatch, m)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	runUntil(t, r, time.Minute, "1999 events and a dead letter", func() bool {
		st := r.Stats()
		return st.Events == 1999 && st.DeadLettered == 1
	})
	verify(t, readTopic(t, seeds, "small.events"), want)
	if len(mismatch) != 1 || mismatch[0].Topic != "small.events" || mismatch[0].TopicMaxBytes != 100_000 || mismatch[0].MaxEventSize != 200_000 {
		t.Errorf("limit mismatches reported: %+v, want one for small.events (100000 < 200000)", mismatch)
	}
	dl := readTopicRaw(t, seeds, "small.events"+outbox.DeadLetterSuffix)
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	checkHeaders(t, dl[0], map[string]string{outbox.HeaderReason: outbox.ReasonTooLarge, outbox.HeaderID: "big"})
	if st := r.Stats(); st.Errors != 0 {
		t.Errorf("the relay recovered from %d errors, want none (stats %+v)", st.Errors, st)
	}
}

// TestDeadLetterKillNineIntegration kills relay processes with SIGKILL
// (10+ times) while writers append events of which a fifth the codec
// refuses and one in 2,000 is larger than the topic takes:
// in the end every committed event is either in the events topic or in
// the dead-letter topic, exactly once, never both, in stream order; no
// rolled-back one anywhere. The dead letters commit and abort with the
// checkpoint that passes them.
func TestDeadLetterKillNineIntegration(t *testing.T) {
	e := newEnv(t, 4)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	n, over := 20_000, 15*time.Second
	var (
		seq       atomic.Int64
		committed atomic.Int64
		mu        sync.Mutex
		bad       = map[string]bool{} // committed events that must be dead-lettered
		wg        sync.WaitGroup
	)
	start := time.Now()
	for w := range 2 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for ctx.Err() == nil && committed.Load() < int64(n) {
				evs := make([]orchestrix.Event, 1+rng.IntN(20))
				var mine []string
				for i := range evs {
					id := fmt.Sprintf("d-%d", seq.Add(1))
					evs[i] = event(id)
					switch k := rng.IntN(2000); {
					case k < 400:
						evs[i].Extensions = map[string]string{"Not-Valid": "x"} // the codec refuses it
						mine = append(mine, id)
					case k == 400:
						evs[i] = noisyJSON(id, stores.DefaultMaxEventSize) // larger than the topic takes
						mine = append(mine, id)
					}
				}
				stream := fmt.Sprintf("d-s%03d", rng.IntN(50))
				rollback := rng.IntN(10) == 0
				err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
					if _, err := e.store.AppendTx(ctx, tx, []stores.AppendRequest{{StreamID: stream, Expected: stores.Any, Events: evs}}); err != nil {
						return err
					}
					if rollback {
						return errRollback
					}
					return nil
				})
				switch {
				case errors.Is(err, errRollback), errors.Is(err, stores.ErrConflict), ctx.Err() != nil:
				case err == nil:
					committed.Add(int64(len(evs)))
					mu.Lock()
					for _, id := range mine {
						bad[id] = true
					}
					mu.Unlock()
				default:
					var pe interface{ SQLState() string }
					if errors.As(err, &pe) && pe.SQLState() == "23505" {
						continue
					}
					t.Errorf("load: %v", err)
					return
				}
				due := start.Add(time.Duration(float64(committed.Load()) / float64(n) * float64(over)))
				time.Sleep(time.Until(due))
			}
		})
	}
	loadDone := make(chan struct{})
	go func() { wg.Wait(); close(loadDone) }()
	rng := rand.New(rand.NewPCG(2, uint64(time.Now().UnixNano())))
	kills := 0
	for done := false; !done || kills < 10; kills++ {
		c := startChild(t, e.schema, e.topic, fmt.Sprintf("d%02d", kills), 2*time.Second)
		time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		c.signal(t, syscall.SIGKILL)
		<-c.done
		select {
		case <-loadDone:
			done = true
		default:
		}
	}
	if t.Failed() {
		return
	}
	r := e.relay(t, "final")
	stop := runRelay(t, r)
	e.waitCaughtUp(t, r, 2*time.Minute)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	all := e.committed(t)
	want := map[string]expected{}
	for id, x := range all {
		if !bad[id] {
			want[id] = x
		}
	}
	verify(t, readTopic(t, e.seeds, e.topic), want)
	seen, reasons := map[string]int{}, map[string]int{}
	dl := readTopicRaw(t, e.seeds, e.topic+outbox.DeadLetterSuffix)
	for _, rec := range dl {
		for _, h := range rec.Headers {
			switch h.Key {
			case outbox.HeaderID:
				seen[string(h.Value)]++
			case outbox.HeaderReason:
				reasons[string(h.Value)]++
			}
		}
	}
	for id := range bad {
		if seen[id] != 1 {
			t.Errorf("event %s is in the dead-letter topic %d times, want once", id, seen[id])
		}
	}
	for id, c := range seen {
		if !bad[id] {
			t.Errorf("event %s is in the dead-letter topic (%d times) but was not to be", id, c)
		}
	}
	t.Logf("%d kills; %d events committed, %d of them dead-lettered %v; dead letters read_committed %d, read_uncommitted %d; events read_uncommitted %d (the difference: records of transactions a kill cut off, aborted)",
		kills, len(all), len(bad), reasons, len(dl), len(readTopicIsolation(t, e.seeds, e.topic+outbox.DeadLetterSuffix, kgo.ReadUncommitted())),
		len(readTopicIsolation(t, e.seeds, e.topic, kgo.ReadUncommitted())))
}
