// Package exampletest holds what the examples' tests share beyond
// internal/testenv: the bad-flags table every program runs, and a
// separate `orchestrix relay` for the serve --relay=false tests.
package exampletest

import (
	"context"
	"strings"
	"testing"

	"github.com/orchestrix/orchestrix/internal/cli"
	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/internal/testenv"
)

// BadFlags runs run with each argument list in a subtest of its own: each
// must be a usage error (see [UsageError]).
func BadFlags(t *testing.T, run exampleapp.RunFunc, cases [][]string) {
	t.Helper()
	for _, args := range cases {
		t.Run(strings.Join(args, " "), func(t *testing.T) { UsageError(t, run, args, "") })
	}
}

// UsageError runs run with args and fails the test unless it exits with
// [exampleapp.UsageExit] and says why on stderr (with want in it, when
// want is not empty).
func UsageError(t *testing.T, run exampleapp.RunFunc, args []string, want string) {
	t.Helper()
	var out, errOut strings.Builder
	code := run(t.Context(), args, &out, &errOut)
	if code != exampleapp.UsageExit || errOut.Len() == 0 || !strings.Contains(errOut.String(), want) {
		t.Errorf("%q: exit %d, want %d and a reason on stderr naming %q\n%s%s", args, code, exampleapp.UsageExit, want, out.String(), errOut.String())
	}
}

// Relay is an `orchestrix relay` running in the test's process, as the
// chart and the compose stack run it beside serve --relay=false.
type Relay struct {
	// Out is what it printed.
	Out  *testenv.SyncBuffer
	stop context.CancelFunc
	done chan int
}

// StartRelay starts `orchestrix relay` with args (--brokers,
// --database-url, --schema, --context ...) at log level warn. Stop it
// with [Relay.Stop]; the test's end stops it too.
func StartRelay(t *testing.T, args ...string) *Relay {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{Out: &testenv.SyncBuffer{}, stop: cancel, done: make(chan int, 1)}
	go func() {
		r.done <- cli.Run(ctx, append(append([]string{"relay"}, args...), "--log-level", "warn"), r.Out, r.Out)
	}()
	t.Cleanup(cancel)
	return r
}

// Stop stops the relay as SIGTERM would and fails the test unless it
// exits 0 saying "relay stopped"; it logs what the relay printed.
func (r *Relay) Stop(t *testing.T) {
	t.Helper()
	r.stop()
	if code := <-r.done; code != 0 || !strings.Contains(r.Out.String(), "relay stopped") {
		t.Fatalf("orchestrix relay: exit %d\n%s", code, r.Out.String())
	}
	t.Log(strings.TrimSpace(r.Out.String()))
}
