package cli

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(t.Context(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no command", nil, 2, "usage"},
		{"help", []string{"help"}, 0, "commands:"},
		{"unknown", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"bad flag", []string{"demo", "--commands", "many"}, 2, "invalid value"},
		{"impossible demo", []string{"demo", "--commands", "5", "--accounts", "10"}, 2, "commands ≥ accounts"},
		{"extra args", []string{"demo", "now"}, 2, "unexpected arguments"},
		{"migrate without url", []string{"migrate", "--database-url", ""}, 2, "DATABASE_URL is required"},
		{"migrate bad url", []string{"migrate", "--database-url", "::not a url"}, 2, "database url"},
		{"topics without sub", []string{"topics"}, 2, "topics create|describe"},
		{"topics without brokers", []string{"topics", "create", "--context", "x", "--brokers", ""}, 2, "KAFKA_BROKERS is required"},
		{"relay without url", []string{"relay", "--database-url", "", "--brokers", "b:9092", "--topic", "t"}, 2, "DATABASE_URL is required"},
		{"relay without brokers", []string{"relay", "--database-url", "postgres://x", "--brokers", "", "--topic", "t"}, 2, "KAFKA_BROKERS is required"},
		{"relay without topic", []string{"relay", "--database-url", "postgres://x", "--brokers", "b:9092", "--topic", "", "--context", ""}, 2, "--topic or --context"},
		{"relay bad gogc", []string{"relay", "--database-url", "postgres://x", "--brokers", "b:9092", "--topic", "t", "--gogc", "lots"}, 2, `--gogc (or GOGC) "lots"`},
		{"relay bad log level", []string{"relay", "--database-url", "postgres://x", "--brokers", "b:9092", "--topic", "t", "--log-level", "loud"}, 2, "--log-level"},
	}
	// Every numeric flag of every command is range-checked before it is
	// used: out of range is a usage error naming the flag.
	relay := []string{"relay", "--database-url", "postgres://x", "--brokers", "b:9092", "--topic", "t"}
	dlq := []string{"dlq", "redrive", "--brokers", "b:9092", "--topic", "t", "--group", "g"}
	topicsCreate := []string{"topics", "create", "--brokers", "b:9092", "--context", "c"}
	for _, r := range []struct {
		args []string
		want string
	}{
		{append(topicsCreate, "--replication", "65537"), "--replication 65537 is out of range: want 1 to 32767"},
		{append(topicsCreate, "--replication", "0"), "--replication 0 is out of range"},
		{append(topicsCreate, "--partitions", "2147483648"), "--partitions 2147483648 is out of range: want 1 to 2147483647"},
		{append(topicsCreate, "--partitions", "-3", "--replication", "-1"), "--partitions -3 is out of range: want 1 to 2147483647; --replication -1"},
		{append(topicsCreate, "--group", "g", "--retry-levels", "-1"), "--retry-levels -1"},
		{append(topicsCreate, "--group", "g", "--retry-levels", "101"), "--retry-levels 101 is out of range: want 0 to 100"},
		{append(topicsCreate, "--group", "g", "--retry-levels", "1000000"), "--retry-levels 1000000 is out of range"},
		{[]string{"topics", "describe", "--brokers", "b:9092", "--context", "c", "--partitions", "0"}, "--partitions 0 is out of range"},
		{[]string{"demo", "--commands", "0"}, "--commands 0 is out of range: want 1 to 10000000"},
		{[]string{"demo", "--commands", "10000001"}, "--commands 10000001 is out of range"},
		{[]string{"demo", "--accounts", "-1"}, "--accounts -1 is out of range"},
		{[]string{"demo", "--partitions", "1001"}, "--partitions 1001 is out of range: want 1 to 1000"},
		{[]string{"demo", "--timeout", "0s"}, "--timeout 0s is out of range: want at least 1ms"},
		{append(dlq, "--rate", "-1"), "--rate -1 is out of range: want 0.001 to 1e+06 (or 0: unlimited)"},
		{append(dlq, "--rate", "NaN"), "--rate NaN is out of range"},
		{append(dlq, "--rate", "1e-12"), "--rate 1e-12 is out of range"},
		{append(dlq, "--rate", "+Inf"), "--rate +Inf is out of range"},
		{append(dlq, "--max-redrives", "-1"), "--max-redrives -1 is out of range: want at least 0"},
		{append(dlq, "--to-level", "101"), "--to-level 101 is out of range: want 0 to 100"},
		{[]string{"dlq", "list", "--brokers", "b:9092", "--topic", "t", "--group", "g", "--limit", "-1"}, "--limit -1 is out of range"},
		{append(relay, "--batch-size", "0"), "batch size 0"},
		{append(relay, "--batch-size", "20001"), "batch size 20001"},
		{append(relay, "--lease", "0s"), "lease 0s"},
		{append(relay, "--poll-min", "0s"), "poll interval min 0s"},
		{append(relay, "--poll-min", "2s", "--poll-max", "1s"), "poll interval min 2s, max 1s"},
		{append(relay, "--stats-interval", "-1s"), "stats interval -1s"},
		{append(relay, "--gogc", "-5"), `--gogc (or GOGC) "-5"`},
		{append(relay, "--max-event-size", "0"), `--max-event-size (or ORCHESTRIX_MAX_EVENT_SIZE) "0"`},
		{[]string{"demo", "--commands", "99999999999999999999"}, "value out of range"},
	} {
		tests = append(tests, struct {
			name string
			args []string
			code int
			want string
		}{strings.Join(r.args[:min(2, len(r.args))], " ") + " " + strings.Join(r.args[len(r.args)-2:], " "), r.args, 2, r.want})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}

func TestDemoEmbedded(t *testing.T) {
	// Empty flags override KAFKA_BROKERS and DATABASE_URL: the embedded
	// broker and the memory store.
	code, out, stderr := run(t, "demo", "--commands", "2000", "--accounts", "50", "--quiet", "--brokers=", "--database-url=")
	if code != 0 || !strings.Contains(out, "consistent: every balance matches") || !strings.Contains(out, "embedded Kafka (kfake), in-memory store") {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
}

// TestDemoIntegration runs the demo twice on one schema and context, its
// services given only by the environment (it ignored KAFKA_BROKERS and
// DATABASE_URL and ran embedded); the second run's accounts are its own.
// It prints the relay command that publishes what it stored.
func TestDemoIntegration(t *testing.T) {
	brokers := strings.Join(testenv.Brokers(t), ",")
	url := testenv.DatabaseURL(t)
	schema := testenv.Schema(t, testenv.Pool(t))
	bc := strings.ReplaceAll(testenv.Name("demo"), "_", "-")
	t.Setenv("KAFKA_BROKERS", brokers)
	t.Setenv("DATABASE_URL", url)
	t.Setenv("ORCHESTRIX_SCHEMA", schema)
	t.Setenv("ORCHESTRIX_CONTEXT", bc)
	deleteTopics(t, bc)
	for range 2 {
		code, out, stderr := run(t, "demo", "--commands", "3000", "--accounts", "100", "--quiet")
		if code != 0 || !strings.Contains(out, "consistent") || !strings.Contains(out, "Kafka at "+brokers) || !strings.Contains(out, "PostgreSQL schema "+schema) {
			t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
		}
		want := `orchestrix relay --database-url "$DATABASE_URL" --brokers "$KAFKA_BROKERS" --context ` + bc + " --schema " + schema
		if !strings.Contains(out, want) {
			t.Fatalf("demo does not print the relay command %q:\n%s", want, out)
		}
	}
}

// deleteTopics deletes a context's topics (as the demo creates them) when
// the test ends.
func deleteTopics(t *testing.T, bc string) {
	t.Helper()
	adm := kadm.NewClient(testenv.Client(t, testenv.Brokers(t)))
	t.Cleanup(func() {
		_, _ = adm.DeleteTopics(context.Background(), bc+".commands", bc+".events", bc+".outcomes", bc+".commands."+bc+"-aggregates.dlq",
			bc+".events"+outbox.CheckpointSuffix)
	})
}

// TestReadmeSequenceIntegration follows the README's "Running against
// your own Kafka and PostgreSQL" commands as written (the context from
// ORCHESTRIX_CONTEXT so that runs do not share one): migrate, demo, relay
// --context, dlq list. The relay publishes every event the demo stored
// (it published nothing: the demo wrote to another schema and context).
func TestReadmeSequenceIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	brokers := strings.Join(seeds, ",")
	url := testenv.DatabaseURL(t)
	schema := testenv.Schema(t, testenv.Pool(t))
	bc := strings.ReplaceAll(testenv.Name("readme"), "_", "-")
	t.Setenv("ORCHESTRIX_SCHEMA", schema)
	t.Setenv("ORCHESTRIX_CONTEXT", bc)
	deleteTopics(t, bc)

	if code, out, stderr := run(t, "migrate", "--database-url", url); code != 0 || !strings.Contains(out, schema) {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, stderr)
	}
	code, out, stderr := run(t, "demo", "--brokers", brokers, "--database-url", url, "--commands", "500", "--accounts", "20", "--quiet")
	if code != 0 || !strings.Contains(out, "consistent") {
		t.Fatalf("demo: exit %d\n%s%s", code, out, stderr)
	}
	var events int
	if _, err := fmt.Sscanf(out[strings.Index(out, "events     "):], "events     %d stored", &events); err != nil || events == 0 {
		t.Fatalf("demo output has no event count (%v):\n%s", err, out)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var rout, rerr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"relay", "--database-url", url, "--brokers", brokers, "--context", bc, "--stats-interval", "100ms"}, &rout, &rerr)
	}()
	cl := testenv.Client(t, seeds, kgo.ConsumeTopics(bc+".events"), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	seen := 0
	for deadline := time.Now().Add(time.Minute); seen < events && time.Now().Before(deadline); {
		select {
		case code := <-done:
			t.Fatalf("relay exited with %d after %d of %d events\n%s%s", code, seen, events, rout.String(), rerr.String())
		default:
		}
		pctx, pcancel := context.WithTimeout(t.Context(), time.Second)
		seen += len(cl.PollFetches(pctx).Records())
		pcancel()
	}
	cancel()
	if code := <-done; code != 0 || seen != events {
		t.Fatalf("relay exit %d published %d of the demo's %d events\n%s%s", code, seen, events, rout.String(), rerr.String())
	}

	code, out, stderr = run(t, "dlq", "list", "--brokers", brokers, "--topic", bc+".commands", "--group", bc+"-aggregates")
	if code != 0 || !strings.Contains(out, "0 dead letters") {
		t.Fatalf("dlq list: exit %d\n%s%s", code, out, stderr)
	}
}

func TestTopicsIntegration(t *testing.T) {
	brokers := strings.Join(testenv.Brokers(t), ",")
	ctx := testenv.Name("ctx")
	if code, out, stderr := run(t, "topics", "create", "--brokers", brokers, "--context", ctx, "--partitions", "3"); code != 0 || strings.Count(out, "created") != 3 {
		t.Fatalf("create: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, _ := run(t, "topics", "create", "--brokers", brokers, "--context", ctx, "--partitions", "3"); code != 0 || strings.Count(out, "exists") != 3 {
		t.Fatalf("second create: exit %d\n%s", code, out)
	}
	if code, _, stderr := run(t, "topics", "create", "--brokers", brokers, "--context", ctx, "--partitions", "5"); code != 1 || !strings.Contains(stderr, "spec wants 5") {
		t.Fatalf("create with other partitions: exit %d, %s", code, stderr)
	}
	if code, out, stderr := run(t, "topics", "describe", "--brokers", brokers, "--context", ctx); code != 0 || !strings.Contains(out, "partitions=3") {
		t.Fatalf("describe: exit %d\n%s%s", code, out, stderr)
	}
}

func TestMigrateIntegration(t *testing.T) {
	url := testenv.DatabaseURL(t)
	schema := testenv.Schema(t, testenv.Pool(t))
	if code, out, stderr := run(t, "migrate", "--database-url", url, "--schema", schema); code != 0 || !strings.Contains(out, "applied") {
		t.Fatalf("migrate: exit %d %s %s", code, out, stderr)
	}
	if code, out, _ := run(t, "migrate", "--database-url", url, "--schema", schema); code != 0 || !strings.Contains(out, "up to date") {
		t.Fatalf("second migrate: exit %d %s", code, out)
	}
	if code, _, stderr := run(t, "migrate", "--database-url", url, "--schema", "Bad-Name"); code != 1 || !strings.Contains(stderr, "schema name") {
		t.Fatalf("bad schema: exit %d %s", code, stderr)
	}
}

// TestRelayIntegration runs `orchestrix relay` until its context ends:
// it publishes the store's events, then stops cleanly with exit 0.
func TestRelayIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	store := pgtest.Store(t, testenv.Pool(t))
	schema := store.Schema()
	topic := testenv.Topic(t, seeds, 3, nil)
	adm := kadm.NewClient(testenv.Client(t, seeds))
	t.Cleanup(func() { _, _ = adm.DeleteTopics(context.Background(), topic+outbox.CheckpointSuffix) })
	// The relay refuses to start on a topic the broker does not know
	// yet; a new topic's metadata may lag its creation.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		md, err := adm.Metadata(t.Context(), topic)
		if err == nil && md.Topics[topic].Err == nil && len(md.Topics[topic].Partitions) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("topic %s not in the broker's metadata after 30s: %v", topic, err)
		}
	}
	const n = 50
	for i := range n {
		ev := orchestrix.Event{Metadata: orchestrix.Metadata{ID: fmt.Sprintf("e-%d", i), Type: "cli.Tested", Source: "/cli", Time: time.Now()},
			ContentType: "application/json", Data: []byte(`{}`)}
		if _, err := store.Append(t.Context(), fmt.Sprintf("s-%d", i%7), stores.Any, []orchestrix.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errb bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"relay", "--database-url", testenv.DatabaseURL(t), "--brokers", strings.Join(seeds, ","),
			"--schema", schema, "--topic", topic, "--outbox=false", "--stats-interval", "100ms"}, &out, &errb)
	}()
	cl := testenv.Client(t, seeds, kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	seen := map[string]bool{}
	deadline := time.Now().Add(time.Minute)
	for len(seen) < n && time.Now().Before(deadline) {
		select {
		case code := <-done:
			t.Fatalf("relay exited with %d before publishing (%d of %d events seen)\nstdout:\n%s\nstderr:\n%s", code, len(seen), n, out.String(), errb.String())
		default:
		}
		pctx, pcancel := context.WithTimeout(t.Context(), time.Second)
		fetches := cl.PollFetches(pctx)
		pcancel()
		fetches.EachRecord(func(r *kgo.Record) {
			for _, h := range r.Headers {
				if h.Key == "ce_id" {
					seen[string(h.Value)] = true
				}
			}
		})
	}
	cancel()
	code := <-done
	if len(seen) != n {
		t.Fatalf("topic holds %d of %d events; relay stderr:\n%s", len(seen), n, errb.String())
	}
	if code != 0 || !strings.Contains(out.String(), fmt.Sprintf("published %d events", n)) {
		t.Fatalf("relay exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
}

// TestHelpRedactsDatabaseURL: -h and a usage error print the flags'
// defaults, DATABASE_URL's among them, without its password.
func TestHelpRedactsDatabaseURL(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://orchestrix:s3cret@db.example:5432/orchestrix")
	for _, args := range [][]string{{"migrate", "-h"}, {"relay", "-h"}, {"demo", "-h"}, {"migrate", "--no-such-flag"}, {"relay", "--batch-size", "x"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			_, out, stderr := run(t, args...)
			if strings.Contains(out+stderr, "s3cret") || !strings.Contains(stderr, "postgres://orchestrix:xxxxx@db.example:5432/orchestrix") {
				t.Fatalf("stderr:\n%s", stderr)
			}
		})
	}
}
