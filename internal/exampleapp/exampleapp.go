// Package exampleapp is the program plumbing the runnable examples
// (examples/banking, examples/ecommerce, examples/notifications) share:
// main's signal handling, its modes and exit code, usage problems
// reported at once (exit 2), the Kafka TLS and
// SASL options of the environment, the embedded broker (kfake) a program
// runs on when it is given none, and the drivers' paced sending and
// polling. It is not API: the examples' domains and wiring stay in the
// examples, where users read them. Their tests share
// internal/exampleapp/exampletest and internal/testenv's Child; flags
// with environment fallbacks use internal/flagenv, as the CLI does.
package exampleapp

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/orchestrix/orchestrix/kafkaconn"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// UsageExit is the exit code of bad flags.
const UsageExit = 2

// RunFunc is a program, or one of its modes: it runs with args (the
// mode's name taken off) and returns the exit code: 0 fine, 1 failed,
// [UsageExit] on bad flags.
type RunFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) int

// Modes returns a program of several modes: when the first argument names
// one of modes (such as serve or drive), that mode runs with the rest;
// otherwise def runs with all the arguments (the self-check).
func Modes(def RunFunc, modes map[string]RunFunc) RunFunc {
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
		if len(args) > 0 {
			if mode, ok := modes[args[0]]; ok {
				return mode(ctx, args[1:], stdout, stderr)
			}
		}
		return def(ctx, args, stdout, stderr)
	}
}

// Main runs a program's realMain with the command-line arguments, stdout
// and stderr, under a context that SIGTERM and SIGINT cancel, and exits
// with the code it returns.
func Main(realMain RunFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := realMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Seed returns seed, or one from the clock when seed is 0: the seed of a
// run's random choices (--seed 0), which the run prints so that it can be
// replayed.
func Seed(seed uint64) uint64 {
	if seed == 0 {
		return uint64(time.Now().UnixNano())
	}
	return seed
}

// RunID returns a short name for one run, the milliseconds of the clock
// in base 36: part of the names (contexts, IDs) a run makes fresh.
func RunID() string { return strconv.FormatInt(time.Now().UnixMilli(), 36) }

// KafkaOptions returns the TLS and SASL client options of the environment
// (kafkaconn.FromEnv: KAFKA_TLS*, KAFKA_SASL_*); an error names the
// variable that is wrong.
func KafkaOptions() ([]kgo.Opt, error) {
	return kafkaconn.FromEnv(os.Getenv).Options()
}

// Problems collects what is wrong with a command's flags, so that one
// run reports every problem at once.
type Problems []string

// Addf adds a problem.
func (p *Problems) Addf(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

// Add adds err's message, if err is not nil.
func (p *Problems) Add(err error) {
	if err != nil {
		*p = append(*p, err.Error())
	}
}

// Int adds a problem when the value v of flag name (with its dashes) is
// not within lo..hi: "--count 0: want 1 to 1000".
func (p *Problems) Int(name string, v, lo, hi int) {
	if v < lo || v > hi {
		p.Addf("%s %d: want %d to %d", name, v, lo, hi)
	}
}

// Report prints the problems on one line, "cmd: first; second", and
// returns [UsageExit].
func (p Problems) Report(stderr io.Writer, cmd string) int {
	fmt.Fprintf(stderr, "%s: %s\n", cmd, strings.Join(p, "; "))
	return UsageExit
}

// ParseLevel parses --log-level: debug, info, warn or error.
func ParseLevel(s string) (slog.Level, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return lvl, nil
}

// Logger returns a text logger on w at level.
func Logger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// Broker is the Kafka a run uses: the seed brokers it was given, or an
// embedded one-broker kfake cluster in the process.
type Broker struct {
	// Seeds are the brokers to connect to.
	Seeds []string
	// Embedded says the broker is the in-process kfake cluster: nothing
	// on it outlives the process, and it takes no TLS or SASL options.
	Embedded bool
	// Where names it for a status line: "Kafka at host:port,..." or
	// "embedded Kafka (kfake)".
	Where string

	fake *kfake.Cluster
}

// OpenBroker returns seeds as a [Broker] or, when seeds is empty, starts
// an embedded broker on port (0: any free port). Close stops it.
func OpenBroker(seeds []string, port int) (*Broker, error) {
	if len(seeds) > 0 {
		return &Broker{Seeds: seeds, Where: "Kafka at " + strings.Join(seeds, ",")}, nil
	}
	opts := []kfake.Opt{kfake.NumBrokers(1)}
	if port > 0 {
		opts = append(opts, kfake.Ports(port))
	}
	fake, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("start the embedded broker: %w", err)
	}
	return &Broker{Seeds: fake.ListenAddrs(), Embedded: true, Where: "embedded Kafka (kfake)", fake: fake}, nil
}

// ClientOpts returns the client options (TLS, SASL) for this broker:
// opts for a broker given by seeds, none for the embedded one, which
// takes none.
func (b *Broker) ClientOpts(opts []kgo.Opt) []kgo.Opt {
	if b.Embedded {
		return nil
	}
	return opts
}

// Close stops the embedded broker, if there is one.
func (b *Broker) Close() {
	if b.fake != nil {
		b.fake.Close()
	}
}
