package main

import (
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/exampleapp/exampletest"
	"github.com/orchestrix/orchestrix/internal/testenv"
)

func testConfig(t *testing.T, scenario string, delays ...time.Duration) (config, *strings.Builder) {
	var out strings.Builder
	return config{
		context: strings.ReplaceAll(testenv.Name("notifications"), "_", "-"), users: 100, scenario: scenario, seed: 42,
		delays: delays, timeout: time.Minute, watch: true, stdout: &out, stderr: &out,
	}, &out
}

// TestNotificationsEmbedded runs the example on kfake: every scenario ends
// with each notification delivered once per channel and the verdict
// holding. The outage scenario dead-letters every webhook and redrives it.
func TestNotificationsEmbedded(t *testing.T) {
	for _, sc := range []string{"calm", "flaky", "outage"} {
		t.Run(sc, func(t *testing.T) {
			c, out := testConfig(t, sc, 200*time.Millisecond, 400*time.Millisecond, 800*time.Millisecond)
			if err := run(t.Context(), c); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if strings.Contains(out.String(), "FAIL") {
				t.Fatalf("verdict failed:\n%s", out)
			}
			if sc == "outage" && !strings.Contains(out.String(), "dlq redrive") {
				t.Fatalf("the outage scenario redrove nothing:\n%s", out)
			}
		})
	}
}

// TestNotificationsIntegration runs the README's default (the flaky
// scenario, retries 1 s, 2 s, 4 s) against the real broker.
func TestNotificationsIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	c, out := testConfig(t, "flaky", time.Second, 2*time.Second, 4*time.Second)
	c.brokers = seeds
	testenv.DropTopicsAtEnd(t, seeds, c.context)
	if err := run(t.Context(), c); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if strings.Contains(out.String(), "FAIL") {
		t.Fatalf("verdict failed:\n%s", out)
	}
}

// TestBadFlags: bad flags are usage errors (exit 2), named.
func TestBadFlags(t *testing.T) {
	exampletest.BadFlags(t, realMain, [][]string{
		{"--users", "0"},
		{"--users", "1000000"},
		{"--scenario", "nope"},
		{"--retry-delays", "1s,x"},
		{"--retry-delays", "1ns"},
		{"--timeout", "-1s"},
		{"--unknown"},
	})
}
