// Package cli implements the orchestrix command line: it parses flags
// (with environment fallbacks) and calls the packages that do the work.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/orchestrix/orchestrix/internal/redact"
)

// command is one subcommand.
type command struct {
	name, usage string
	run         func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"demo", "run the banking demo through the real pipeline (embedded Kafka and store by default)", runDemo},
		{"migrate", "apply the PostgreSQL store's schema migrations", runMigrate},
		{"topics", "create or describe a context's topics (topics create|describe)", runTopics},
		{"relay", "publish the store's committed events (and outbox table) to Kafka until SIGTERM", runRelay},
		{"dlq", "inspect, redrive or purge a dead-letter topic (dlq list|show|redrive|purge)", runDLQ},
		{"events", "the store's log or a topic as NDJSON CloudEvents, and back to a topic (events export|tail|import)", runEvents},
		{"groups", "describe a consumer group or reset its offsets (groups describe|reset; a plan unless --execute, refused on an active group)", runGroups},
		{"projections", "inspect and operate projections (projections list|status|rebuild|cutover|rollback|parked list|retry|skip)", runProjections},
		{"replay", "copy a slice of a topic to another topic exactly once, resumable (plan by default, --dry-run, --execute)", runReplay},
		{"sagas", "inspect saga instances; retry or resolve a failed compensation (sagas list|show|retry|resolve|timers)", runSagas},
	}
}

// errUsage marks bad command-line input (exit code 2).
var errUsage = errors.New("usage")

// Run runs the CLI with args (without the program name) and returns the
// process exit code: 0 success, 1 failure, 2 bad usage.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout, stderr)
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			}
			// Errors may quote a connection string (--database-url):
			// never print its password.
			fmt.Fprintf(stderr, "orchestrix %s: %s\n", c.name, redact.Text(err.Error()))
			if errors.Is(err, errUsage) {
				return 2
			}
			return 1
		}
	}
	fmt.Fprintf(stderr, "orchestrix: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: orchestrix <command> [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.usage)
	}
	fmt.Fprintln(w, "\nRun `orchestrix <command> -h` for a command's flags.")
}

// flags returns a flag set that reports errors instead of exiting.
func flags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("orchestrix "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses args and wraps errors as usage errors.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	return nil
}

// urlFlag defines a string flag for a connection URL, like fs.String but
// shown redacted in the flag set's usage.
func urlFlag(fs *flag.FlagSet, name, value, usage string) *string {
	p := new(string)
	*p = value
	fs.Var(redact.FlagValue(p), name, usage)
	return p
}
