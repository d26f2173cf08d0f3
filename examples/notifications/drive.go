package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// driveConfig is one drive run.
type driveConfig struct {
	seeds   []string
	kafka   []kgo.Opt
	context string
	count   int
	rate    float64
	invalid float64 // share of users with an email address no server takes
	timeout time.Duration
	watch   bool
}

// driveMain publishes --count UserRegistered events at --rate to a
// running serve and reports, per channel, what came back: deliveries
// (read from <context>.deliveries) and dead letters (read from each
// group's dead-letter topic), then each dead-letter topic's depth. It
// exits 0 when every notification was delivered or dead-lettered as
// expected, 1 when some were not within --timeout or a check failed, 2
// on bad flags.
func driveMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("notifications drive", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c driveConfig
	brokers := fs.String("brokers", os.Getenv("KAFKA_BROKERS"), "Kafka seed brokers of the running service (env KAFKA_BROKERS; required)")
	fs.StringVar(&c.context, "context", flagenv.Or("ORCHESTRIX_CONTEXT", "notifications"), "the service's context (env ORCHESTRIX_CONTEXT)")
	fs.IntVar(&c.count, "count", 100, "users to register (one notification per user and channel)")
	fs.Float64Var(&c.rate, "rate", 50, "UserRegistered events per second")
	fs.Float64Var(&c.invalid, "invalid", 0, "share of the users (0 to 1) with an email address no server takes: their email is dead-lettered at once")
	fs.DurationVar(&c.timeout, "timeout", time.Minute, "give up waiting for the notifications this long after the last event")
	fs.BoolVar(&c.watch, "watch", false, "print every delivery and dead letter as it comes back")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var errs exampleapp.Problems
	if c.seeds = flagenv.List(*brokers); len(c.seeds) == 0 {
		errs.Addf("--brokers (or KAFKA_BROKERS) is required: the brokers of the running service")
	}
	if fs.NArg() > 0 {
		errs.Addf("unexpected arguments %q", fs.Args())
	}
	if err := checkContext(c.context); err != nil {
		errs.Add(err)
	}
	errs.Int("--count", c.count, 1, 1_000_000)
	if !(c.rate > 0 && c.rate <= 100_000) {
		errs.Addf("--rate %g: want more than 0, at most 100000", c.rate)
	}
	if !(c.invalid >= 0 && c.invalid <= 1) {
		errs.Addf("--invalid %g: want 0 to 1", c.invalid)
	}
	if c.timeout <= 0 {
		errs.Addf("--timeout: want a positive duration")
	}
	var err error
	if c.kafka, err = exampleapp.KafkaOptions(); err != nil {
		errs.Add(err)
	}
	if len(errs) > 0 {
		return errs.Report(stderr, "notifications drive")
	}
	res, err := drive(ctx, c, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "notifications drive:", err)
		return 1
	}
	if len(res.failures) > 0 {
		for _, f := range res.failures {
			fmt.Fprintln(stderr, "violation:", f)
		}
		return 1
	}
	return 0
}

// channelResult is what came back for one channel.
type channelResult struct {
	delivered map[string]int    // by event ID: delivery records seen
	retried   int               // delivered after at least one retry
	dead      map[string]string // by event ID: the dead letter's reason
	reasons   map[string]int    // dead letters by reason
	latency   []time.Duration   // event sent → first delivery record
}

// driveResult is a drive's outcome.
type driveResult struct {
	channels map[string]*channelResult
	failures []string
}

func drive(ctx context.Context, c driveConfig, stdout io.Writer) (driveResult, error) {
	res := driveResult{channels: map[string]*channelResult{}}
	reg, err := newRegistry()
	if err != nil {
		return res, err
	}
	cl, err := producers.NewClient(c.seeds, c.kafka...)
	if err != nil {
		return res, err
	}
	defer cl.Close()
	events, deliveries := topics.Events(c.context), DeliveriesTopic(c.context)
	dlqs := map[string]string{} // dead-letter topic → channel
	watched := []string{deliveries}
	for _, ch := range channelNames {
		t := consumers.DeadLetterTopic(events, groupName(c.context, ch))
		dlqs[t] = ch
		watched = append(watched, t)
		res.channels[ch] = &channelResult{delivered: map[string]int{}, dead: map[string]string{}, reasons: map[string]int{}}
	}
	// Follow the deliveries and dead letters from their current ends:
	// what this drive causes comes after them.
	desc, err := topics.Describe(ctx, kadm.NewClient(cl), append([]string{events}, watched...)...)
	if err != nil {
		return res, fmt.Errorf("%w (is `notifications serve --context %s` running against these brokers? serve --init creates the topics)", err, c.context)
	}
	from := map[string]map[int32]kgo.Offset{}
	startDepth := map[string]int64{}
	for _, d := range desc {
		if d.Name == events {
			continue // only checked: the service's input
		}
		from[d.Name] = map[int32]kgo.Offset{}
		for p, o := range d.EndOffsets {
			from[d.Name][p] = kgo.NewOffset().At(o)
			startDepth[d.Name] += o
		}
	}
	follow, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.seeds...), kgo.ConsumePartitions(from), kgo.FetchMaxWait(200 * time.Millisecond)}, c.kafka...)...)
	if err != nil {
		return res, err
	}
	defer follow.Close()

	// The users: user i has an invalid email address when the share
	// c.invalid steps past an integer at i (floor(count*invalid) in all).
	run := exampleapp.RunID()
	type user struct {
		u       UserRegistered
		invalid bool
		sent    time.Time
	}
	users := map[string]*user{} // by event ID
	ids := make([]string, c.count)
	invalid := 0
	for i := range c.count {
		u := &user{u: UserRegistered{UserID: fmt.Sprintf("d-%s-%05d", run, i), Phone: fmt.Sprintf("+1555%07d", i), Name: fmt.Sprintf("User %d", i)}}
		u.u.Email = fmt.Sprintf("user%d@example.com", i)
		if int(float64(i+1)*c.invalid) > int(float64(i)*c.invalid) {
			u.u.Email, u.invalid = fmt.Sprintf("user %d at example dot com", i), true
			invalid++
		}
		ids[i] = uuid.Must(uuid.NewV7()).String()
		users[ids[i]] = u
	}
	fmt.Fprintf(stdout, "driving %d UserRegistered (%d with an invalid email address) at %g/s to %s\n", c.count, invalid, c.rate, events)

	sentAt := make(chan [2]any, c.count) // event ID, time: handed to the reading loop
	sending := exampleapp.Pace(ctx, c.rate, len(ids), c.timeout, func(ctx context.Context, i int) error {
		u := users[ids[i]].u
		e := orchestrix.Event{Metadata: orchestrix.Metadata{ID: ids[i], Source: "/users/drive", Subject: u.UserID, Time: time.Now().UTC()}, StreamID: u.UserID, Payload: u}
		if err := reg.EncodeEvent(&e); err != nil {
			return err
		}
		rec, err := codec.EventToRecord(events, e)
		if err != nil {
			return err
		}
		sentAt <- [2]any{ids[i], time.Now()}
		return cl.ProduceSync(ctx, rec).FirstErr()
	})

	settled := func() int {
		n := 0
		for _, r := range res.channels {
			for _, id := range ids {
				if r.delivered[id] > 0 || r.dead[id] != "" {
					n++
				}
			}
		}
		return n
	}
	start := time.Now()
	for settled() < c.count*len(channelNames) {
	drain:
		for {
			select {
			case s := <-sentAt:
				users[s[0].(string)].sent = s[1].(time.Time)
			default:
				break drain
			}
		}
		fs, err := exampleapp.Poll(ctx, follow, 250*time.Millisecond)
		if err != nil {
			return res, err
		}
		fs.EachRecord(func(r *kgo.Record) {
			if r.Topic == deliveries {
				e, err := codec.RecordToEvent(r)
				if err != nil || e.Type != TypeNotificationDelivered {
					return
				}
				var d NotificationDelivered
				if json.Unmarshal(e.Data, &d) != nil {
					return
				}
				u, ours := users[d.EventID]
				cr, known := res.channels[d.Channel]
				if !ours || !known {
					return
				}
				if cr.delivered[d.EventID] == 0 {
					if !u.sent.IsZero() {
						cr.latency = append(cr.latency, time.Since(u.sent))
					}
					if d.Level > 0 || d.Redriven {
						cr.retried++
					}
				}
				cr.delivered[d.EventID]++
				if c.watch {
					where := "first try"
					if d.Level > 0 {
						where = "retry level " + strconv.Itoa(d.Level)
					}
					if d.Redriven {
						where = "redriven"
					}
					fmt.Fprintf(stdout, "%7.3fs  %-7s %s  delivered (%s)\n", time.Since(start).Seconds(), d.Channel, u.u.UserID, where)
				}
				return
			}
			ch := dlqs[r.Topic]
			var id, reason, msg string
			for _, h := range r.Headers {
				switch h.Key {
				case "ce_id":
					id = string(h.Value)
				case consumers.HeaderReason:
					reason = string(h.Value)
				case consumers.HeaderError:
					msg = string(h.Value)
				}
			}
			u, ours := users[id]
			if !ours {
				return
			}
			cr := res.channels[ch]
			if reason == "" {
				reason = "unknown"
			}
			if cr.dead[id] == "" {
				cr.reasons[reason]++
			}
			cr.dead[id] = reason
			if c.watch {
				fmt.Fprintf(stdout, "%7.3fs  %-7s %s  dead-lettered (%s): %s\n", time.Since(start).Seconds(), ch, u.u.UserID, reason, msg)
			}
		})
		if over, err := sending.Over(); err != nil {
			return res, fmt.Errorf("publish: %w", err)
		} else if over {
			break
		}
	}

	// The report: per channel, then each dead-letter topic's depth.
	fmt.Fprintf(stdout, "\n%-8s %6s %9s %8s %13s %9s %8s %8s  %s\n", "channel", "sent", "delivered", "retried", "dead-lettered", "no result", "p50", "p99", "resent (kept once by key)")
	for _, ch := range channelNames {
		cr := res.channels[ch]
		delivered, dead, missing, resent := 0, 0, 0, 0
		for _, id := range ids {
			n := cr.delivered[id]
			switch {
			case n > 0:
				delivered++
				resent += n - 1
			case cr.dead[id] != "":
				dead++
			default:
				missing++
			}
			u := users[id]
			if ch == "email" && u.invalid && n > 0 {
				res.failures = append(res.failures, fmt.Sprintf("email to the invalid address of %s delivered", u.u.UserID))
			}
			if r := cr.dead[id]; r != "" && n == 0 && (r == consumers.ReasonPermanent) != (ch == "email" && u.invalid) {
				res.failures = append(res.failures, fmt.Sprintf("%s to %s dead-lettered as %s (invalid address: %t)", ch, u.u.UserID, r, u.invalid))
			}
		}
		slices.Sort(cr.latency)
		pct := func(p float64) string {
			if len(cr.latency) == 0 {
				return "-"
			}
			return cr.latency[min(len(cr.latency)-1, int(p*float64(len(cr.latency))))].Round(time.Millisecond).String()
		}
		fmt.Fprintf(stdout, "%-8s %6d %9d %8d %13d %9d %8s %8s  %d\n", ch, c.count, delivered, cr.retried, dead, missing, pct(0.5), pct(0.99), resent)
		if missing > 0 {
			res.failures = append(res.failures, fmt.Sprintf("%s: %d of %d notifications neither delivered nor dead-lettered %s after the last event", ch, missing, c.count, c.timeout))
		}
	}
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, watched[1:]...)
	if err == nil {
		fmt.Fprintln(stdout)
		for _, t := range watched[1:] {
			var depth int64
			ends.Each(func(o kadm.ListedOffset) {
				if o.Topic == t {
					depth += o.Offset
				}
			})
			var reasons []string
			for r, n := range res.channels[dlqs[t]].reasons {
				reasons = append(reasons, fmt.Sprintf("%s %d", r, n))
			}
			slices.Sort(reasons)
			if len(reasons) == 0 {
				reasons = []string{"none of its notifications"}
			}
			fmt.Fprintf(stdout, "dead letters in %s: %d, +%d during this drive (%s)\n", t, depth, depth-startDepth[t], strings.Join(reasons, ", "))
		}
	}
	total := settled()
	fmt.Fprintf(stdout, "%d of %d notifications settled (delivered or dead-lettered)", total, c.count*len(channelNames))
	if len(res.failures) == 0 {
		fmt.Fprintln(stdout, "; ok")
	} else {
		fmt.Fprintf(stdout, "; %d violations\n", len(res.failures))
	}
	return res, nil
}
