// Package exampletest holds what the examples' tests share beyond
// internal/testenv: the bad-flags table every program runs, and a
// separate `orchestrix relay` for the serve --relay=false tests.
package exampletest

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
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

// Env is what an example's integration test runs on: the real broker, a
// fresh context whose topics are dropped when the test ends, and, from
// [Postgres], a fresh schema.
type Env struct {
	// Seeds are the broker's addresses, Brokers the same for --brokers.
	Seeds   []string
	Brokers string
	// Context is a fresh context name: lower-case letters, digits and '-'.
	Context string
	// DatabaseURL, Pool and Schema are PostgreSQL's (Postgres only): the
	// schema is fresh, dropped when the test ends, not created.
	DatabaseURL string
	Pool        *pgxpool.Pool
	Schema      string
}

// Kafka returns the real broker (testenv.Brokers: the test is skipped
// without it) and a fresh context named after prefix.
func Kafka(t *testing.T, prefix string) Env {
	t.Helper()
	seeds := testenv.Brokers(t)
	e := Env{Seeds: seeds, Brokers: strings.Join(seeds, ","), Context: strings.ReplaceAll(testenv.Name(prefix), "_", "-")}
	testenv.DropTopicsAtEnd(t, seeds, e.Context)
	return e
}

// Postgres is [Kafka] plus PostgreSQL and a fresh schema.
func Postgres(t *testing.T, prefix string) Env {
	t.Helper()
	e := Kafka(t, prefix)
	e.DatabaseURL, e.Pool = testenv.DatabaseURL(t), testenv.Pool(t)
	e.Schema = testenv.Schema(t, e.Pool)
	return e
}
