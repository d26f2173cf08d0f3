// Command notifications is the notifications example: a users service
// publishes UserRegistered events, and one consumer group per channel
// (email over SMTP, a webhook over HTTP, SMS and push behind a recording
// fake) sends each user a welcome. Failures are injected per channel;
// failed calls go through retry topics (1 s, 2 s, 4 s) and then the
// channel's dead-letter topic; once the failures stop, `orchestrix dlq
// redrive` brings the dead letters home. It ends with a verdict table of
// its invariants and exits 1 when one does not hold:
//
//   - each notification is delivered exactly once per channel (receivers
//     keep one per idempotency key: the event ID and the channel), none is
//     lost;
//   - every retry came after its level's delay.
//
// Run it on the embedded default (kfake, no services):
//
//	go run ./examples/notifications
//	go run ./examples/notifications --scenario outage --watch
//
// or against a real broker with --brokers (or KAFKA_BROKERS). The SMTP
// and HTTP receivers run in the process, on 127.0.0.1.
//
// It also runs as a long-running service, with a driver that sends it
// work:
//
//	go run ./examples/notifications serve --brokers B --listen :8080 [--init] [--fail sms=0.3]
//	go run ./examples/notifications drive --brokers B --rate 50 --count 200
//
// serve runs the four channel groups under service.Run until SIGTERM and
// publishes each acknowledged notification on <context>.deliveries; drive
// publishes UserRegistered events and reports what was delivered and
// what was dead-lettered. Bad flags exit 2. See README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/internal/flagenv"
)

func main() { exampleapp.Main(realMain) }

// realMain runs a mode and returns the exit code: 0 fine, 1 failed (an
// invariant violated, the service stopped with an error), 2 bad flags.
var realMain = exampleapp.Modes(checkMain, map[string]exampleapp.RunFunc{"serve": serveMain, "drive": driveMain})

// checkMain runs the self-check: the scenario, then the verdict table.
func checkMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("notifications", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	brokers := fs.String("brokers", os.Getenv("KAFKA_BROKERS"), "Kafka seed brokers (env KAFKA_BROKERS); empty: an embedded in-process broker (kfake)")
	fs.StringVar(&c.context, "context", "", "topics <context>.events and its groups' retry and dead-letter topics (default notifications-<run>, a fresh one per run)")
	fs.IntVar(&c.users, "users", 200, "users registered (one notification per user and channel)")
	fs.StringVar(&c.scenario, "scenario", "flaky", "failures to inject: calm, flaky or outage")
	seed := fs.Uint64("seed", 0, "seed of the injected failures (0: from the clock; the run prints it)")
	delays := fs.String("retry-delays", "1s,2s,4s", "the retry ladder: one retry topic per delay, then the DLQ")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "give up when the notifications are not all delivered by then")
	fs.BoolVar(&c.watch, "watch", false, "print a timeline of every delivery attempt, retry and dead letter")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var errs exampleapp.Problems
	if fs.NArg() > 0 {
		errs.Addf("unexpected arguments %q (modes: serve, drive; no mode runs the self-check)", fs.Args())
	}
	errs.Int("--users", c.users, 1, 100_000)
	if _, ok := scenarios[c.scenario]; !ok {
		errs.Addf("--scenario %q: want calm, flaky or outage", c.scenario)
	}
	var err error
	if c.delays, err = parseDelays(*delays); err != nil {
		errs.Add(err)
	}
	if c.timeout <= 0 {
		errs.Addf("--timeout: want a positive duration")
	}
	if len(errs) > 0 {
		return errs.Report(stderr, "notifications")
	}
	c.brokers = flagenv.List(*brokers)
	c.seed = exampleapp.Seed(*seed)
	if c.context == "" {
		c.context = "notifications-" + exampleapp.RunID()
	}
	c.stdout, c.stderr = stdout, stderr
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(stderr, "notifications:", err)
		return 1
	}
	return 0
}
