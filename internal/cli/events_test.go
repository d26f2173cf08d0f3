package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/twmb/franz-go/pkg/kadm"
)

func TestEventsUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no sub", []string{"events"}, "events export|tail"},
		{"bad from", []string{"events", "export", "--from", "file"}, `--from "file"`},
		{"no url", []string{"events", "export", "--database-url", ""}, "DATABASE_URL is required"},
		{"bad cursor", []string{"events", "export", "--database-url", "postgres://x", "--after", "12"}, "--after"},
		{"topic without topic", []string{"events", "export", "--from", "topic", "--brokers", "b:9092"}, "--topic is required"},
		{"import without brokers", []string{"events", "import", "--topic", "t", "--brokers", ""}, "KAFKA_BROKERS is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 mentioning %q", code, stderr, tc.want)
			}
		})
	}
}

// TestEventsRoundTripIntegration: the store's log exported as NDJSON,
// validated (a plan writes nothing), imported into a topic, and exported
// from the topic gives the same events; an invalid line is exit 2 and
// nothing is imported; tail prints an event appended after it started.
func TestEventsRoundTripIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	seeds := testenv.Brokers(t)
	store := pgtest.Store(t, pool)
	url := testenv.DatabaseURL(t)
	for i := range 30 {
		data := []byte(fmt.Sprintf(`{"n":%d}`, i))
		ct := "application/json"
		if i%5 == 0 {
			data, ct = []byte{0, 1, 2, byte(i)}, "application/octet-stream"
		}
		ev := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "Counted", Source: "/test", Time: time.Now().UTC(), CorrelationID: "c" + fmt.Sprint(i)}, ContentType: ct, Data: data}
		if _, err := store.Append(t.Context(), fmt.Sprintf("s-%d", i%4), stores.Any, []orchestrix.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}
	code, exported, errs := run(t, "events", "export", "--database-url", url, "--schema", store.Schema())
	if code != 0 || strings.Count(exported, "\n") != 30 {
		t.Fatalf("export: exit %d, %d lines: %s", code, strings.Count(exported, "\n"), errs)
	}
	file := filepath.Join(t.TempDir(), "events.ndjson")
	if err := os.WriteFile(file, []byte(exported), 0o600); err != nil {
		t.Fatal(err)
	}
	topic := testenv.Topic(t, seeds, 3, nil)
	brokers := strings.Join(seeds, ",")
	if code, out, errs := run(t, "events", "import", "--brokers", brokers, "--topic", topic, "--file", file); code != 0 || !strings.Contains(out, "30 valid events") {
		t.Fatalf("import plan: exit %d: %s %s", code, out, errs)
	}
	ends := func() int64 {
		o, err := kadm.NewClient(testenv.Client(t, seeds)).ListEndOffsets(t.Context(), topic)
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		o.Each(func(l kadm.ListedOffset) { n += l.Offset })
		return n
	}
	if ends() != 0 {
		t.Fatal("the plan wrote")
	}
	bad := filepath.Join(t.TempDir(), "bad.ndjson")
	if err := os.WriteFile(bad, []byte(exported+`{"specversion":"1.0","type":"X"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := run(t, "events", "import", "--brokers", brokers, "--topic", topic, "--file", bad, "--execute"); code != 2 || !strings.Contains(errs, "line 31") || ends() != 0 {
		t.Fatalf("bad line: exit %d, %d written: %s", code, ends(), errs)
	}
	if code, out, errs := run(t, "events", "import", "--brokers", brokers, "--topic", topic, "--file", file, "--execute"); code != 0 || !strings.Contains(out, "imported 30") {
		t.Fatalf("import: exit %d: %s %s", code, out, errs)
	}
	code, back, errs := run(t, "events", "export", "--from", "topic", "--brokers", brokers, "--topic", topic)
	if code != 0 {
		t.Fatalf("export topic: %d %s", code, errs)
	}
	norm := func(ndjson string) map[string]string {
		out := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(ndjson))
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Fatal(err)
			}
			delete(m, "orchestrixcursor")
			delete(m, "orchestrixpartition")
			delete(m, "orchestrixoffset")
			b, _ := json.Marshal(m)
			out[m["id"].(string)] = string(b)
		}
		return out
	}
	a, b := norm(exported), norm(back)
	if len(a) != 30 || len(b) != 30 {
		t.Fatalf("%d vs %d events", len(a), len(b))
	}
	for id, v := range a {
		if b[id] != v {
			t.Fatalf("event %s:\nstore %s\ntopic %s", id, v, b[id])
		}
	}
	// tail: an event appended after it started.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var out, errb strings.Builder
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"events", "tail", "--database-url", url, "--schema", store.Schema(), "--limit", "1"}, &out, &errb)
	}()
	time.Sleep(500 * time.Millisecond)
	ev := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "Tailed", Source: "/test", Time: time.Now()}, Data: []byte(`{}`)}
	if _, err := store.Append(t.Context(), "tail-1", stores.NoStream, []orchestrix.Event{ev}); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 0 || !strings.Contains(out.String(), `"type":"Tailed"`) || strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("tail: exit %d: %s %s", code, out.String(), errb.String())
	}
}
