package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/cli"
	"github.com/orchestrix/orchestrix/internal/testenv"
)

// TestServeRelayNeedsDatabase: --relay=false on the memory store is a
// usage error (nothing but this process can publish its events).
func TestServeRelayNeedsDatabase(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	var out, errOut testenv.SyncBuffer
	if code := realMain(t.Context(), []string{"serve", "--relay=false"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "--relay=false needs --database-url") {
		t.Fatalf("exit %d, want 2 naming --relay=false\n%s%s", code, out.String(), errOut.String())
	}
}

// TestServeWithoutRelayIntegration runs serve --relay=false as the chart
// and the compose stack do: its /livez has no relay worker, and with a
// separate `orchestrix relay` on the same schema every transfer reaches
// its final outcome (the relay publishes the events and the saga's
// commands from the outbox table).
func TestServeWithoutRelayIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	url := testenv.DatabaseURL(t)
	bc := strings.ReplaceAll(testenv.Name("bankr"), "_", "-")
	brokers := strings.Join(seeds, ",")
	testenv.DropTopicsAtEnd(t, seeds, bc)
	s := startServe(t, "--init", "--relay=false", "--brokers", brokers, "--database-url", url, "--schema", schema, "--context", bc,
		"--listen", "127.0.0.1:0", "--shutdown-timeout", "20s")
	s.waitReady(t)
	resp, err := http.Get(s.health + "/livez")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), `"relay"`) || !strings.Contains(string(body), `"processor"`) {
		t.Fatalf("/livez of serve --relay=false: %s", body)
	}

	// The separate relay, as `orchestrix relay` runs in the chart.
	relayCtx, stopRelay := context.WithCancel(context.Background())
	defer stopRelay()
	var relayOut testenv.SyncBuffer
	relayDone := make(chan int, 1)
	go func() {
		relayDone <- cli.Run(relayCtx, []string{"relay", "--brokers", brokers, "--database-url", url, "--schema", schema, "--context", bc,
			"--log-level", "warn"}, &relayOut, &relayOut)
	}()
	out := driveOnce(t, "--brokers", brokers, "--context", bc, "--count", "40", "--rate", "100", "--missing", "0.2", "--seed", "7")
	checkDriven(t, out, 40)
	s.StopClean(t, 30*time.Second, "")
	stopRelay()
	if code := <-relayDone; code != 0 || !strings.Contains(relayOut.String(), "relay stopped") {
		t.Fatalf("orchestrix relay: exit %d\n%s", code, relayOut.String())
	}
	t.Log(strings.TrimSpace(relayOut.String()))
}
