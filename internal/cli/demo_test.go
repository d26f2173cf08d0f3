package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestDemoProcessorStops: a processor that stops ends the demo at once
// with its reason, instead of the demo waiting out --timeout for outcomes
// that cannot come.
func TestDemoProcessorStops(t *testing.T) {
	boom := errors.New("boom: the store is gone")
	c := demoConfig{commands: 2000, accounts: 10, partitions: 2, context: "stop-" + strings.ReplaceAll(t.Name(), "/", "-"),
		timeout: time.Minute, quiet: true, runProcessor: func(ctx context.Context) error { return boom }}
	var out, errb bytes.Buffer
	start := time.Now()
	err := demo(t.Context(), c, &out, &errb)
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("demo took %s to notice its processor stopped (timeout %s)", took, c.timeout)
	}
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "processor stopped") {
		t.Fatalf("demo = %v, want the processor's reason", err)
	}
}
