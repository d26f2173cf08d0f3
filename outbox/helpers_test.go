package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// published is one record read back from a topic.
type published struct {
	orchestrix.Event
	Partition int32
	Offset    int64
	Instance  string
	Topic     string
}

// readTopic reads every committed record of topic, read_committed, up to
// the partitions' current end offsets. Call it when no relay is in a
// transaction (stopped, or idle): it reads exactly to the end, with no
// timing guess, by keeping control records (commit/abort markers) so that
// the last offset of every partition is seen.
func readTopic(t testing.TB, seeds []string, topic string) []published {
	t.Helper()
	return readTopicIsolation(t, seeds, topic, kgo.ReadCommitted())
}

// readTopicIsolation is readTopic with the given isolation level:
// read_uncommitted also returns the records of aborted transactions.
func readTopicIsolation(t testing.TB, seeds []string, topic string, isolation kgo.IsolationLevel) []published {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	adm := kadm.NewClient(testenv.Client(t, seeds))
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatalf("end offsets of %s: %v", topic, err)
	}
	want := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil && o.Offset > 0 {
			want[o.Partition] = o.Offset
		}
	})
	if len(want) == 0 {
		return nil
	}
	parts := map[int32]kgo.Offset{}
	for p := range want {
		parts[p] = kgo.NewOffset().AtStart()
	}
	cl := testenv.Client(t, seeds,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: parts}),
		kgo.FetchIsolationLevel(isolation),
		kgo.KeepControlRecords(),
		kgo.FetchMaxWait(200*time.Millisecond),
	)
	var out []published
	for len(want) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %s: timed out with partitions %v unfinished", topic, want)
		}
		fs.EachError(func(_ string, p int32, err error) { t.Fatalf("read %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			if end, ok := want[r.Partition]; ok && r.Offset >= end-1 {
				delete(want, r.Partition)
			}
			if r.Attrs.IsControl() {
				return
			}
			e, err := codec.RecordToEvent(r)
			if err != nil {
				e = orchestrix.Event{StreamID: string(r.Key)}
				e.ID = "undecodable:" + err.Error()
			}
			p := published{Event: e, Partition: r.Partition, Offset: r.Offset, Topic: r.Topic}
			for _, h := range r.Headers {
				if h.Key == outbox.InstanceHeader {
					p.Instance = string(h.Value)
				}
			}
			out = append(out, p)
		})
	}
	slices.SortFunc(out, func(a, b published) int {
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})
	return out
}

// createTopic creates a topic on seeds (kfake or real), returning once
// it is listed with its leaders (a relay started at once would otherwise
// find it missing on a busy broker, and stop), and deletes it at the end
// with its checkpoint and dead-letter topics.
func createTopic(t testing.TB, seeds []string, name string, partitions int32) {
	t.Helper()
	testenv.TopicNamed(t, seeds, name, partitions, nil)
	adm := kadm.NewClient(testenv.Client(t, seeds))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = adm.DeleteTopics(ctx, name+outbox.CheckpointSuffix, name+outbox.DeadLetterSuffix)
	})
}

// expected is an event the test committed.
type expected struct {
	stream  string
	version uint64
}

// verify checks that got holds every event of want exactly once, nothing
// else, and each stream's versions in increasing order within each topic
// (with exactly once and complete, that is the stream's whole order).
func verify(t testing.TB, got []published, want map[string]expected) {
	t.Helper()
	seen := map[string]int{}
	var problems []string
	next := map[string]uint64{} // topic and stream -> last version seen
	for _, p := range got {
		seen[p.ID]++
		w, ok := want[p.ID]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("unexpected record %s (stream %s v%d) at %d/%d: never committed", p.ID, p.StreamID, p.Version, p.Partition, p.Offset))
			continue
		case seen[p.ID] > 1:
			problems = append(problems, fmt.Sprintf("duplicate %s (stream %s v%d) at %d/%d", p.ID, p.StreamID, p.Version, p.Partition, p.Offset))
			continue
		case w.stream != p.StreamID || w.version != p.Version:
			problems = append(problems, fmt.Sprintf("record %s is stream %s v%d, committed as %s v%d", p.ID, p.StreamID, p.Version, w.stream, w.version))
		}
		k := p.Topic + "\x00" + p.StreamID
		if last := next[k]; p.Version <= last {
			problems = append(problems, fmt.Sprintf("stream %s: v%d after v%d at %s/%d/%d", p.StreamID, p.Version, last, p.Topic, p.Partition, p.Offset))
		}
		next[k] = p.Version
	}
	missing := 0
	for id, w := range want {
		if seen[id] == 0 {
			if missing < 5 {
				problems = append(problems, fmt.Sprintf("missing %s (stream %s v%d)", id, w.stream, w.version))
			}
			missing++
		}
	}
	if missing > 0 || len(problems) > 0 {
		t.Fatalf("%d records read, %d committed, %d missing; first problems:\n%s", len(got), len(want), missing, strings.Join(problems[:min(len(problems), 20)], "\n"))
	}
}

// testLogger logs to the test at level (ORCHESTRIX_TEST_LOG=debug for more;
// ORCHESTRIX_TEST_LOG_FILE=path writes to a file instead, untruncated).
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("ORCHESTRIX_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	if path := os.Getenv("ORCHESTRIX_TEST_LOG_FILE"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: level}))
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runRelay runs r in the background; the returned stop cancels it and
// returns Run's error.
func runRelay(t testing.TB, r *outbox.Relay) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once bool
	var err error
	stop = func() error {
		if !once {
			once = true
			cancel()
			select {
			case err = <-done:
			case <-time.After(2 * time.Minute):
				err = errors.New("relay did not stop within 2 minutes")
			}
		}
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
