package main

import (
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/exampleapp/exampletest"
)

// TestServeRelayNeedsDatabase: --relay=false on the memory store is a
// usage error (nothing but this process can publish its events).
func TestServeRelayNeedsDatabase(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	exampletest.UsageError(t, realMain, []string{"serve", "--relay=false"}, "--relay=false needs --database-url")
}

// TestServeWithoutRelayIntegration runs serve --relay=false as the chart
// and the compose stack do: its /livez has no relay worker, and with a
// separate `orchestrix relay` on the same schema every transfer reaches
// its final outcome (the relay publishes the events and the saga's
// commands from the outbox table).
func TestServeWithoutRelayIntegration(t *testing.T) {
	e := exampletest.Postgres(t, "bankr")
	s := startServe(t, "--init", "--relay=false", "--brokers", e.Brokers, "--database-url", e.DatabaseURL, "--schema", e.Schema, "--context", e.Context,
		"--listen", "127.0.0.1:0", "--shutdown-timeout", "20s")
	s.Ready(t, time.Minute)
	_, body := s.Get(t, "/livez")
	if strings.Contains(body, `"relay"`) || !strings.Contains(body, `"processor"`) {
		t.Fatalf("/livez of serve --relay=false: %s", body)
	}

	// The separate relay, as `orchestrix relay` runs in the chart.
	relay := exampletest.StartRelay(t, "--brokers", e.Brokers, "--database-url", e.DatabaseURL, "--schema", e.Schema, "--context", e.Context)
	out := driveOnce(t, "--brokers", e.Brokers, "--context", e.Context, "--count", "40", "--rate", "100", "--missing", "0.2", "--seed", "7")
	checkDriven(t, out, 40)
	s.StopClean(t, 30*time.Second, "")
	relay.Stop(t)
}
