package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/exampleapp/exampletest"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestMain(m *testing.M) {
	testenv.ChildMain(main)
	os.Exit(m.Run())
}

func testConfig(t *testing.T, scenario string) config {
	seed := testenv.Seed(t)
	return config{scenario: scenario, orders: 12, seed: seed, partitions: 2, timeout: time.Minute, watch: true,
		context: testenv.Name("ecommerce-t"),
		timing:  Timing{Step: time.Second, Compensation: 2 * time.Second, Backoff: 200 * time.Millisecond}}
}

func runCheck(t *testing.T, c config) string {
	t.Helper()
	var out testenv.SyncBuffer
	c.stdout, c.stderr = &out, &out
	err := run(t.Context(), c)
	if err != nil || !strings.Contains(out.String(), "invariants hold") {
		t.Fatalf("scenario %s (seed %d): %v\n%s", c.scenario, c.seed, err, out.String())
	}
	return out.String()
}

// Every scenario on the embedded default: kfake and the memory stores.
func TestScenarios(t *testing.T) {
	for _, s := range scenarioNames {
		t.Run(s, func(t *testing.T) {
			out := runCheck(t, testConfig(t, s))
			for _, want := range map[string][]string{
				"happy":            {"12 completed", "1 Rejected"},
				"payment-declined": {"card_declined", "compensated"},
				"out-of-stock":     {"out_of_stock", "6 confirmed for a stock of 6", "RefundPayment"},
				"payment-timeout":  {"timer: running", "duplicate CapturePayment", "12 captured, 6 refunded", "6 Confirmed, 6 Cancelled"},
				"refund-down":      {"compensation_failed", "gateway_down", "6 sagas in compensation_failed retried", "OrderFailed", "retry: compensation_failed → compensating"},
			}[s] {
				if !strings.Contains(out, want) {
					t.Errorf("scenario %s: output lacks %q\n%s", s, want, out)
				}
			}
		})
	}
}

// The default and refund-down scenarios against real Kafka and
// PostgreSQL (refund-down through `orchestrix sagas retry`'s code path).
func TestScenariosIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	url := testenv.DatabaseURL(t)
	pool := testenv.Pool(t)
	for _, s := range []string{"happy", "refund-down"} {
		t.Run(s, func(t *testing.T) {
			c := testConfig(t, s)
			c.brokers, c.databaseURL, c.schema = seeds, url, testenv.Schema(t, pool)
			testenv.DropTopicsAtEnd(t, seeds, c.context)
			out := runCheck(t, c)
			if s == "refund-down" && !strings.Contains(out, "6 sagas in compensation_failed retried") {
				t.Errorf("refund-down: no retry\n%s", out)
			}
		})
	}
}

func TestBadFlags(t *testing.T) {
	t.Setenv("KAFKA_BROKERS", "")
	t.Setenv("DATABASE_URL", "")
	exampletest.BadFlags(t, realMain, [][]string{
		{"--scenario", "nope"},
		{"--orders", "0"},
		{"--partitions", "-1"},
		{"--step-timeout", "1ms"},
		{"--no-such-flag"},
		{"extra"},
		{"serve", "--partitions", "0"},
		{"serve", "--listen", ""},
		{"serve", "--step-timeout", "-1s"},
		{"serve", "--bogus"},
		{"serve", "--session-timeout", "10ms"},
		{"drive"}, // no brokers
		{"drive", "--brokers", "127.0.0.1:1", "--rate", "0"},
		{"drive", "--brokers", "127.0.0.1:1", "--count", "-3"},
		{"drive", "--brokers", "127.0.0.1:1", "--declined", "2"},
	})
}

// serveLines are the status lines of serve.
var serveLines = testenv.ServerLines{
	Listen:  regexp.MustCompile(`^listening on (\S+)`),
	Brokers: regexp.MustCompile(`^embedded Kafka at (\S+)`),
}

// startServe runs `serve args...` as a child process (the test binary
// re-executed) and waits until it listens.
func startServe(t *testing.T, args ...string) *testenv.Server {
	t.Helper()
	return testenv.StartServer(t, serveLines, 90*time.Second, nil, append([]string{"serve", "--listen", "127.0.0.1:0", "--step-timeout", "2s"}, args...)...)
}

// serveAndDrive starts serve, waits until it is ready, drives orders at
// it, stops it with SIGTERM and checks every order was confirmed and the
// stop was clean.
func serveAndDrive(t *testing.T, brokers string, serveArgs, driveArgs []string) {
	c := startServe(t, serveArgs...)
	if brokers == "" {
		brokers = c.Brokers
	}
	c.Ready(t, 60*time.Second)
	const n = 30
	var out, errOut testenv.SyncBuffer
	code := realMain(t.Context(), append([]string{"drive", "--brokers", brokers, "--count", fmt.Sprint(n), "--rate", "50", "--timeout", "90s"}, driveArgs...), &out, &errOut)
	if code != 0 || !strings.Contains(out.String(), fmt.Sprintf("%d orders: %d Confirmed;", n, n)) {
		t.Fatalf("drive exit %d\n%s%s\nserve:\n%s", code, out.String(), errOut.String(), c.Out.String())
	}
	t.Log(strings.TrimSpace(out.String()[strings.LastIndex(strings.TrimSpace(out.String()), "\n")+1:]))
	pokeByHand(t, brokers, driveArgs)
	c.StopClean(t, 45*time.Second, "stopped cleanly")
}

// pokeByHand sends what the README's kcat lines send — records with
// hand-written CloudEvents headers — and waits for the order's
// OrderConfirmed on the events topic.
func pokeByHand(t *testing.T, brokers string, driveArgs []string) {
	t.Helper()
	name := "ecommerce"
	if len(driveArgs) == 2 && driveArgs[0] == "--context" {
		name = driveArgs[1]
	}
	tp := NewTopics(name)
	cl := testenv.Client(t, strings.Split(brokers, ","))
	ends, err := kadm.NewClient(cl).ListEndOffsets(t.Context(), tp.Events)
	if err != nil {
		t.Fatal(err)
	}
	from := map[string]map[int32]kgo.Offset{tp.Events: {}}
	ends.Each(func(o kadm.ListedOffset) { from[o.Topic][o.Partition] = kgo.NewOffset().At(o.Offset) })
	events := testenv.Client(t, strings.Split(brokers, ","), kgo.ConsumePartitions(from))
	id := testenv.Name("order-kcat")
	raw := func(topic, key, typ, value string) *kgo.Record {
		h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
		return &kgo.Record{Topic: topic, Key: []byte(key), Value: []byte(value), Headers: []kgo.RecordHeader{
			h("ce_specversion", "1.0"), h("ce_id", testenv.Name("id")), h("ce_source", "/kcat"), h("ce_type", typ),
			h("ce_time", time.Now().UTC().Format("2006-01-02T15:04:05Z")), h("ce_aggregateid", key), h("content-type", "application/json")}}
	}
	if err := cl.ProduceSync(t.Context(), raw(tp.Inventory, "sku-kcat", "ecommerce.AddStock", `{"quantity":1}`),
		raw(tp.Orders, id, "ecommerce.PlaceOrder", `{"customer":"ann","sku":"kcat","quantity":1,"amount":1999,"card":"4242-4242-4242-4242"}`)).FirstErr(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		fs := events.PollFetches(ctx)
		cancel()
		found := false
		fs.EachRecord(func(r *kgo.Record) {
			for _, h := range r.Headers {
				if string(r.Key) == id && h.Key == "ce_type" && string(h.Value) == TypeOrderConfirmed {
					found = true
				}
			}
		})
		if found {
			return
		}
	}
	t.Fatalf("the order placed by hand (%s) was not confirmed", id)
}

// serve on the embedded broker and memory stores; drive from this
// process.
func TestServeDrive(t *testing.T) {
	t.Setenv("KAFKA_BROKERS", "")
	t.Setenv("DATABASE_URL", "")
	serveAndDrive(t, "", nil, nil)
}

// serve --init against real Kafka and PostgreSQL; drive; SIGTERM.
func TestServeDriveIntegration(t *testing.T) {
	e := exampletest.Postgres(t, "ecommerce-s")
	serveAndDrive(t, e.Brokers, []string{"--init", "--brokers", e.Brokers, "--database-url", e.DatabaseURL, "--schema", e.Schema, "--context", e.Context, "--partitions", "2"},
		[]string{"--context", e.Context})
}

// kill -9 of serve while orders are in flight (real Kafka and
// PostgreSQL): a new serve takes over (its consumer groups once the dead
// member's session ends, its relay and timer poller once their leases
// do) and every order is confirmed.
func TestServeKillNineIntegration(t *testing.T) {
	e := exampletest.Postgres(t, "ecommerce-k")
	args := []string{"--brokers", e.Brokers, "--database-url", e.DatabaseURL, "--schema", e.Schema, "--context", e.Context, "--partitions", "2", "--session-timeout", "6s"}
	first := startServe(t, append([]string{"--init"}, args...)...)
	const n = 80
	var out, errOut testenv.SyncBuffer
	code := make(chan int, 1)
	go func() {
		code <- realMain(t.Context(), []string{"drive", "--brokers", e.Brokers, "--context", e.Context, "--count", fmt.Sprint(n), "--rate", "20", "--timeout", "2m"}, &out, &errOut)
	}()
	// Kill once some orders are through and more are in flight.
	out.Await(t, "Confirmed", 10, 60*time.Second)
	first.Kill(t)
	before := strings.Count(out.String(), "Confirmed")
	second := startServe(t, args...)
	select {
	case c := <-code:
		if c != 0 || !strings.Contains(out.String(), fmt.Sprintf("%d orders: %d Confirmed;", n, n)) {
			t.Fatalf("drive exit %d\n%s%s\nafter the kill:\n%s", c, out.String(), errOut.String(), second.Out.String())
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("drive did not end\n%s", out.String())
	}
	t.Logf("killed with %d of %d confirmed; after the restart all %d", before, n, n)
	second.StopClean(t, 45*time.Second, "stopped cleanly")
}
