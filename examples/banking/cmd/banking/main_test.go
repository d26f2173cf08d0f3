package main

import (
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/cli"
	"github.com/orchestrix/orchestrix/internal/exampleapp/exampletest"
	"github.com/orchestrix/orchestrix/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.ChildMain(main)
	os.Exit(m.Run())
}

func testConfig(t *testing.T, scenario string) (checkConfig, *testenv.SyncBuffer) {
	out := &testenv.SyncBuffer{}
	ctxName := strings.ReplaceAll(testenv.Name("banking"), "_", "-")
	return checkConfig{
		context: ctxName, schema: strings.ReplaceAll(ctxName, "-", "_"), scenario: scenario, seed: testenv.Seed(t),
		accounts: 8, transfers: 120, rate: 150, timeout: time.Minute, watch: true, stdout: out, stderr: out,
	}, out
}

// TestScenariosEmbedded runs every scenario on kfake and the memory
// stores: each ends with its verdict holding.
func TestScenariosEmbedded(t *testing.T) {
	for _, sc := range []string{"happy", "credit-fails", "bluegreen", "all"} {
		t.Run(sc, func(t *testing.T) {
			c, out := testConfig(t, sc)
			if err := run(t.Context(), c); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			s := out.String()
			if strings.Contains(s, "FAIL") || !strings.Contains(s, "verdict:") {
				t.Fatalf("verdict failed:\n%s", s)
			}
			switch sc {
			case "credit-fails":
				if !strings.Contains(s, "compensating → compensated") || !strings.Contains(s, "retry after") {
					t.Fatalf("no refund or credit retry in the timeline:\n%s", s)
				}
			case "all":
				if !strings.Contains(s, "bad input dead-lettered") {
					t.Fatalf("no bad input:\n%s", s)
				}
			case "bluegreen":
				if !strings.Contains(s, "cutover statements → v2") || !strings.Contains(s, "readers saw nothing change") {
					t.Fatalf("no cut-over:\n%s", s)
				}
			}
		})
	}
}

// TestSelfCheckIntegration runs the default self-check (every scenario at
// once: credit failures and a blue/green rebuild while transfers run)
// against the real broker and PostgreSQL.
func TestSelfCheckIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	c, out := testConfig(t, "all")
	c.brokers, c.databaseURL = seeds, testenv.DatabaseURL(t)
	c.transfers, c.rate = 200, 100
	testenv.DropTopicsAtEnd(t, seeds, c.context)
	if err := run(t.Context(), c); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if s := out.String(); strings.Contains(s, "FAIL") || !strings.Contains(s, "v2 equals v1") {
		t.Fatalf("verdict failed:\n%s", s)
	}
}

// serveLines are the status lines of `banking serve`.
var serveLines = testenv.ServerLines{
	Listen:  regexp.MustCompile(`^health on http://(\S+)/livez`),
	Brokers: regexp.MustCompile(`^embedded Kafka \(kfake\) at (\S+);`),
}

// startServe runs `banking serve args...` in a child process (the test
// binary) and waits until its health endpoint listens.
func startServe(t *testing.T, args ...string) *testenv.Server {
	t.Helper()
	// Only the flags choose the services: an embedded serve must not find
	// the real ones in the environment.
	return testenv.StartServer(t, serveLines, time.Minute, []string{"KAFKA_BROKERS=", "DATABASE_URL="}, append([]string{"serve"}, args...)...)
}

// driveOnce runs `banking drive` in process and returns its output.
func driveOnce(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut testenv.SyncBuffer
	if code := realMain(t.Context(), append([]string{"drive"}, args...), &out, &errOut); code != 0 {
		t.Fatalf("drive exit %d:\n%s\n%s", code, out.String(), errOut.String())
	}
	return out.String()
}

// checkDriven checks drive's summary: every transfer had a final outcome,
// some completed, and the ones sent to missing accounts were refunded.
func checkDriven(t *testing.T, out string, count int) {
	t.Helper()
	m := regexp.MustCompile(`outcomes: (\d+) completed, (\d+) declined \(funds\), (\d+) refunded .*, (\d+) without`).FindStringSubmatch(out)
	if m == nil || m[4] != "0" || m[1] == "0" || m[3] == "0" {
		t.Fatalf("drive's outcomes (want all %d final, some completed, some refunded):\n%s", count, out)
	}
}

// TestServeDrive runs `serve` on its embedded broker and memory stores in
// a child process, drives it twice (the second run finds the accounts
// open), and stops it with SIGTERM: it exits 0 within the bound.
func TestServeDrive(t *testing.T) {
	s := startServe(t, "--listen", "127.0.0.1:0", "--context", "bank", "--shutdown-timeout", "20s")
	if s.Brokers == "" {
		t.Fatal("serve printed no embedded broker address")
	}
	s.Ready(t, time.Minute)
	for range 2 {
		out := driveOnce(t, "--brokers", s.Brokers, "--context", "bank", "--count", "60", "--rate", "200", "--missing", "0.2", "--seed", "7")
		checkDriven(t, out, 60)
	}
	s.StopClean(t, 30*time.Second, "")
}

// TestServeDriveIntegration: the same against the real broker and
// PostgreSQL, set up as in production (the README's recipe): `orchestrix
// migrate` and three `orchestrix topics create` make exactly what serve
// needs, and serve runs without --init. A second service on the same
// schema and topics picks up where the first left off.
func TestServeDriveIntegration(t *testing.T) {
	e := exampletest.Postgres(t, "bank")
	for _, args := range [][]string{
		{"migrate", "--database-url", e.DatabaseURL, "--schema", e.Schema},
		{"topics", "create", "--brokers", e.Brokers, "--partitions", "4", "--context", e.Context, "--group", e.Context + "-aggregates"},
		{"topics", "create", "--brokers", e.Brokers, "--partitions", "4", "--topics", e.Context + ".outcomes," + e.Context + ".events", "--group", e.Context + "-saga-fwd"},
		{"topics", "create", "--brokers", e.Brokers, "--partitions", "4", "--topics", e.Context + ".transfer.saga-inbox", "--group", e.Context + "-sagas", "--retry-levels", "3"},
	} {
		var out testenv.SyncBuffer
		if code := cli.Run(t.Context(), args, &out, &out); code != 0 {
			t.Fatalf("orchestrix %v: exit %d\n%s", args, code, out.String())
		}
	}
	serveArgs := []string{"--brokers", e.Brokers, "--database-url", e.DatabaseURL, "--schema", e.Schema, "--context", e.Context,
		"--listen", "127.0.0.1:0", "--shutdown-timeout", "20s"}
	s := startServe(t, serveArgs...)
	s.Ready(t, time.Minute)
	out := driveOnce(t, "--brokers", e.Brokers, "--context", e.Context, "--count", "60", "--rate", "100", "--missing", "0.2", "--seed", "7")
	checkDriven(t, out, 60)
	s.StopClean(t, 30*time.Second, "")

	s = startServe(t, serveArgs...)
	s.Ready(t, time.Minute)
	out = driveOnce(t, "--brokers", e.Brokers, "--context", e.Context, "--count", "30", "--rate", "100", "--missing", "0.2", "--seed", "8")
	checkDriven(t, out, 30)
	if !strings.Contains(out, "0 opened now") {
		t.Fatalf("the accounts of the first run were not found open:\n%s", out)
	}
	s.StopClean(t, 30*time.Second, "")
}

// TestBadFlags: bad flags are usage errors (exit 2) and name the flag.
func TestBadFlags(t *testing.T) {
	t.Setenv("KAFKA_BROKERS", "") // drive without --brokers
	exampletest.BadFlags(t, realMain, [][]string{
		{"--scenario", "nope"},
		{"--accounts", "1"},
		{"--transfers", "0"},
		{"--rate", "0"},
		{"--timeout", "-1s"},
		{"--context", "Has Spaces"},
		{"--unknown"},
		{"extra"},
		{"serve", "--partitions", "0"},
		{"serve", "--replication", "0"},
		{"serve", "--log-level", "loud"},
		{"serve", "--context", ""},
		{"serve", "--shutdown-timeout", "0s"},
		{"drive"}, // no brokers
		{"drive", "--brokers", "127.0.0.1:1", "--count", "0"},
		{"drive", "--brokers", "127.0.0.1:1", "--missing", "1.5"},
		{"drive", "--brokers", "127.0.0.1:1", "--rate", "-3"},
	})
}

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
