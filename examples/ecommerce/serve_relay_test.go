package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/exampleapp/exampletest"
	"github.com/orchestrix/orchestrix/internal/testenv"
)

// TestServeRelayNeedsDatabase: --relay=false on the memory store is a
// usage error (nothing but this process can publish its events).
func TestServeRelayNeedsDatabase(t *testing.T) {
	t.Setenv("KAFKA_BROKERS", "")
	t.Setenv("DATABASE_URL", "")
	exampletest.UsageError(t, realMain, []string{"serve", "--relay=false"}, "--relay=false needs --database-url")
}

// TestServeWithoutRelayIntegration runs serve --relay=false as the chart
// and the compose stack do: its /livez has no relay worker, and with a
// separate `orchestrix relay` on the same schema every driven order is
// confirmed (the relay publishes the events and the saga's commands from
// the outbox table).
func TestServeWithoutRelayIntegration(t *testing.T) {
	e := exampletest.Postgres(t, "ecommerce-r")
	c := startServe(t, "--init", "--relay=false", "--brokers", e.Brokers, "--database-url", e.DatabaseURL, "--schema", e.Schema, "--context", e.Context, "--partitions", "2")
	if !strings.Contains(c.Out.String(), "no relay in this process") {
		t.Errorf("serve --relay=false did not say it runs no relay:\n%s", c.Out.String())
	}
	_, body := c.Get(t, "/livez")
	if strings.Contains(body, `"relay"`) || !strings.Contains(body, `"orders processor"`) {
		t.Fatalf("/livez of serve --relay=false: %s", body)
	}

	// The separate relay, as `orchestrix relay` runs in the chart.
	relay := exampletest.StartRelay(t, "--brokers", e.Brokers, "--database-url", e.DatabaseURL, "--schema", e.Schema, "--context", e.Context)

	const n = 20
	var out, errOut testenv.SyncBuffer
	code := realMain(t.Context(), []string{"drive", "--brokers", e.Brokers, "--context", e.Context, "--count", fmt.Sprint(n), "--rate", "50", "--timeout", "90s"}, &out, &errOut)
	if code != 0 || !strings.Contains(out.String(), fmt.Sprintf("%d orders: %d Confirmed;", n, n)) {
		t.Fatalf("drive exit %d\n%s%s\nserve:\n%s\nrelay:\n%s", code, out.String(), errOut.String(), c.Out.String(), relay.Out.String())
	}
	c.StopClean(t, 45*time.Second, "stopped cleanly")
	relay.Stop(t)
}
