package quickstart

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/producers"
)

// TestRun: the embedded default sends every command, sees every outcome
// and finds every balance as the model predicts.
func TestRun(t *testing.T) {
	var out, errb bytes.Buffer
	c := Config{Commands: 500, Accounts: 20, Partitions: 4, Context: "qs", Timeout: time.Minute}
	if err := Run(t.Context(), c, &out, &errb); err != nil {
		t.Fatalf("Run = %v\n%s%s", err, out.String(), errb.String())
	}
	for _, want := range []string{"embedded Kafka (kfake), in-memory store", "commands   500 sent", "consistent: every balance matches"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

// TestRunProcessorStops: a processor that stops ends the run at once
// with its reason, instead of waiting out the timeout for outcomes that
// cannot come.
func TestRunProcessorStops(t *testing.T) {
	boom := errors.New("boom: the store is gone")
	c := Config{Commands: 2000, Accounts: 10, Partitions: 2, Context: "stop", Timeout: time.Minute,
		runProcessor: func(ctx context.Context) error { return boom }}
	var out, errb bytes.Buffer
	start := time.Now()
	err := Run(t.Context(), c, &out, &errb)
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("Run took %s to notice its processor stopped (timeout %s)", took, c.Timeout)
	}
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "processor stopped") {
		t.Fatalf("Run = %v, want the processor's reason", err)
	}
}

// TestRunBadCounts: fewer commands than accounts is refused before
// anything starts.
func TestRunBadCounts(t *testing.T) {
	if err := Run(t.Context(), Config{Commands: 1, Accounts: 2}, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Fatal("Run accepted 1 command over 2 accounts")
	}
}

// TestRunTimeoutSaysWhere: outcomes that do not come (the processor
// never runs) end the run after the timeout, naming the group's lag.
func TestRunTimeoutSaysWhere(t *testing.T) {
	c := Config{Commands: 20, Accounts: 2, Partitions: 2, Context: "late", Timeout: time.Second,
		runProcessor: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}
	err := Run(t.Context(), c, &bytes.Buffer{}, &bytes.Buffer{})
	if !errors.Is(err, producers.ErrNoOutcome) || !strings.Contains(err.Error(), "20 of 20 outcomes missing") || !strings.Contains(err.Error(), "late-aggregates") {
		t.Fatalf("Run = %v, want 20 missing outcomes and the group's lag", err)
	}
	t.Log(err)
}
