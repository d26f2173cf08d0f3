package main

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/internal/exampleapp/exampletest"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/sagas"
)

// TestServeKillNineIntegration: the service is killed with SIGKILL while
// a driver's transfers run, and a new one is started on the same schema
// and topics. Every transfer still ends (completed, declined or
// refunded, none twice), money is conserved, and every statement equals
// its account's events.
func TestServeKillNineIntegration(t *testing.T) {
	e := exampletest.Postgres(t, "bank")
	args := []string{"--brokers", e.Brokers, "--database-url", e.DatabaseURL, "--schema", e.Schema,
		"--context", e.Context, "--listen", "127.0.0.1:0", "--session-timeout", "6s"}
	s := startServe(t, append(args, "--init")...)
	s.Ready(t, time.Minute)

	const count = 150
	var out string
	var wg sync.WaitGroup
	wg.Go(func() {
		var o, errOut testenv.SyncBuffer
		code := realMain(t.Context(), []string{"drive", "--brokers", e.Brokers, "--context", e.Context, "--count", fmt.Sprint(count), "--rate", "50",
			"--missing", "0.2", "--seed", "11", "--timeout", "2m"}, &o, &errOut)
		out = fmt.Sprintf("exit %d\n%s%s", code, o.String(), errOut.String())
	})
	time.Sleep(1500 * time.Millisecond) // a quarter of the transfers under way
	s.Kill(t)
	t.Log("killed serve with SIGKILL; starting a new one")
	s = startServe(t, args...)
	wg.Wait()
	if !strings.HasPrefix(out, "exit 0") {
		t.Fatalf("drive:\n%s\nserve:\n%s", out, s.Out)
	}
	checkDriven(t, out, count)

	// The state, read back from the schema.
	a, err := newApp(t.Context(), appConfig{seeds: e.Seeds, pool: e.Pool, schema: e.Schema, context: e.Context, log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	// Drive saw each transfer's last outcome; the saga records it a moment
	// later.
	var results map[string]int
	deadline := time.Now().Add(time.Minute)
	for {
		insts, err := a.rt.Store().List(t.Context(), sagas.Filter{Type: a.rt.Type(), Limit: 10 * count})
		if err != nil {
			t.Fatal(err)
		}
		results = map[string]int{}
		for _, i := range insts {
			var tr banking.Transfer
			if err := jsonUnmarshal(i.State, &tr); err != nil {
				t.Fatal(err)
			}
			results[banking.TransferResult(i.Status, tr)]++
		}
		if len(insts) == count && results[banking.ResultRunning] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d instances, results %v", len(insts), results)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if results[banking.ResultCompensationFailed] > 0 {
		t.Fatalf("results %v", results)
	}
	var total int64
	for i := range 10 {
		root, err := a.repo.Load(t.Context(), fmt.Sprintf("acct-%03d", i))
		if err != nil {
			t.Fatal(err)
		}
		total += root.State.Balance
	}
	if total != 10*initialBalance {
		t.Fatalf("balances sum to %d, want %d (results %v)", total, 10*initialBalance, results)
	}
	// The new service's projection catches up with every account.
	deadline = time.Now().Add(time.Minute)
	for {
		bad := statementsOff(t, a)
		if bad == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(bad)
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.StopClean(t, 30*time.Second, "")
	t.Logf("results %v", results)
}

// statementsOff returns how a statement differs from its account's
// events, or "".
func statementsOff(t *testing.T, a *app) string {
	st, err := a.statements(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		acc := fmt.Sprintf("acct-%03d", i)
		want, err := banking.StreamStatement(t.Context(), a.store, acc)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(st[acc], want) {
			return fmt.Sprintf("%s: %d lines, want %d", acc, len(st[acc]), len(want))
		}
	}
	return ""
}
