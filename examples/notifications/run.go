package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/cli"
	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// UserRegistered is the event the notifications react to, published by a
// users service on <context>.events.
type UserRegistered struct {
	UserID string `json:"user_id"`
	Email  string `json:"email"`
	Phone  string `json:"phone"`
	Name   string `json:"name"`
}

// TypeUserRegistered is its CloudEvents type.
const TypeUserRegistered = "users.UserRegistered"

// config is one run of the example.
type config struct {
	brokers  []string // empty: an embedded kfake cluster
	context  string   // topics <context>.events, groups <context>-<channel>
	users    int
	scenario string
	seed     uint64
	delays   []time.Duration // the retry ladder
	timeout  time.Duration
	watch    bool
	stdout   io.Writer
	stderr   io.Writer
}

// scenario is the failure rate of each channel; down channels fail every
// call until the outage ends (before the redrive).
type scenario struct {
	rates    map[string]float64
	lostAcks map[string]float64
	down     map[string]bool
	about    string
}

var scenarios = map[string]scenario{
	"calm": {about: "no failures", rates: map[string]float64{}},
	"flaky": {about: "email 20%, sms 30%, push 10%, webhook 20% of calls fail, and 5% of email and webhook calls lose their acknowledgement; the few that fail every attempt are dead-lettered, then redriven",
		rates: map[string]float64{"email": .2, "sms": .3, "push": .1, "webhook": .2}, lostAcks: map[string]float64{"email": .05, "webhook": .05}},
	"outage": {about: "the webhook receiver is down for the whole first pass: every webhook ends in the DLQ, the other channels deliver; the outage ends and a redrive brings them home",
		rates: map[string]float64{"email": .05}, down: map[string]bool{"webhook": true}},
}

var channelNames = []string{"email", "sms", "push", "webhook"}

// attempt is one handler call, for the timeline and the delay check.
type attempt struct {
	at      time.Time
	level   int // 0: the events topic, n: retry level n
	redrive bool
	err     error
}

// channelRun is one channel's consumer group and what it saw.
type channelRun struct {
	name     string
	group    string
	ch       *flaky
	got      *receipts
	mu       sync.Mutex
	attempts map[string][]attempt // by idempotency key
}

func (c *channelRun) note(key string, a attempt) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.attempts[key] = append(c.attempts[key], a)
}

// run runs the example: publish the users' events, deliver them on four
// channels through retry topics and dead letters, redrive what was
// dead-lettered once the failures stop, and check the invariants. It
// returns an error when one does not hold.
func run(ctx context.Context, c config) error {
	sc, ok := scenarios[c.scenario]
	if !ok {
		return fmt.Errorf("unknown scenario %q (have: calm, flaky, outage)", c.scenario)
	}
	start := time.Now()
	var outMu sync.Mutex // the groups' handlers log concurrently
	logf := func(format string, args ...any) {
		line := fmt.Sprintf("%7.3fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
		outMu.Lock()
		defer outMu.Unlock()
		io.WriteString(c.stdout, line)
	}
	kb, err := exampleapp.OpenBroker(c.brokers, 0)
	if err != nil {
		return err
	}
	defer kb.Close()
	seeds, where := kb.Seeds, kb.Where
	fmt.Fprintf(c.stdout, "notifications: %d users on %s, scenario %q (%s), seed %d, retries %v then the DLQ\n",
		c.users, where, c.scenario, sc.about, c.seed, c.delays)

	smtpSrv, err := startSMTP()
	if err != nil {
		return err
	}
	defer smtpSrv.Close()
	hook, err := startWebhook()
	if err != nil {
		return err
	}
	defer hook.Close()
	base, sms, push := newChannels(smtpSrv.addr, hook.url, 5*time.Second)
	got := map[string]*receipts{"email": smtpSrv.got, "sms": sms, "push": push, "webhook": hook.got}

	admCl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		return err
	}
	defer admCl.Close()
	adm := kadm.NewClient(admCl)
	events := topics.Events(c.context)
	policy := consumers.RetryTopics(c.delays...).ThenDLQ()
	specs := []topics.Spec{{Name: events, Partitions: 4, ReplicationFactor: 1}}
	var runs []*channelRun
	for i, name := range channelNames {
		r := &channelRun{name: name, group: c.context + "-" + name, got: got[name], attempts: map[string][]attempt{}}
		r.ch = newFlaky(base[name], sc.rates[name], c.seed+uint64(i))
		r.ch.down, r.ch.lostAck = sc.down[name], sc.lostAcks[name]
		runs = append(runs, r)
		for _, t := range policy.Topics(events, r.group) {
			specs = append(specs, topics.Spec{Name: t, Partitions: 4, ReplicationFactor: 1})
		}
	}
	if _, err := topics.Ensure(ctx, adm, specs...); err != nil {
		return fmt.Errorf("create topics: %w", err)
	}

	// The consumer groups, one per channel, until the end of the run.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil)
	reg := codec.NewRegistry()
	if err := codec.RegisterJSON[UserRegistered](reg, TypeUserRegistered); err != nil {
		return err
	}
	quiet := slog.New(slog.DiscardHandler)
	for _, r := range runs {
		h := handler(r, reg, c, logf)
		g, err := consumers.New(seeds, r.group, []string{events}, h, consumers.WithFailurePolicy(policy), consumers.WithLogger(quiet))
		if err != nil {
			return err
		}
		wg.Go(func() {
			if err := g.Run(ctx); err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("%s group stopped: %w", r.name, err))
			}
		})
	}

	// The users service: one UserRegistered per user.
	prod, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		return err
	}
	defer prod.Close()
	ids := make([]string, c.users)
	for i := range c.users {
		u := UserRegistered{UserID: fmt.Sprintf("user-%05d", i), Email: fmt.Sprintf("user%d@example.com", i), Phone: fmt.Sprintf("+1555%07d", i), Name: fmt.Sprintf("User %d", i)}
		e := orchestrix.Event{Metadata: orchestrix.Metadata{ID: uuid.Must(uuid.NewV7()).String(), Source: "/users", Subject: u.UserID, Time: time.Now().UTC()}, StreamID: u.UserID, Version: 1, Payload: u}
		if err := reg.EncodeEvent(&e); err != nil {
			return err
		}
		rec, err := codec.EventToRecord(events, e)
		if err != nil {
			return err
		}
		prod.Produce(ctx, rec, func(_ *kgo.Record, err error) {
			if err != nil {
				cancel(fmt.Errorf("publish: %w", err))
			}
		})
		ids[i] = e.ID
	}
	if err := prod.Flush(ctx); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	logf("published %d UserRegistered events to %s", c.users, events)

	// First pass: every notification delivered or dead-lettered.
	settled := func(r *channelRun) (delivered, dead int, err error) {
		delivered = len(r.got.snapshot())
		ends, err := adm.ListEndOffsets(ctx, consumers.DeadLetterTopic(events, r.group))
		if err != nil {
			return 0, 0, err
		}
		ends.Each(func(o kadm.ListedOffset) { dead += int(o.Offset) })
		return delivered, dead, nil
	}
	deadline := time.Now().Add(c.timeout)
	waitAll := func(done func(r *channelRun, delivered, dead int) bool) error {
		for _, r := range runs {
			for {
				delivered, dead, err := settled(r)
				if err != nil {
					return err
				}
				if done(r, delivered, dead) {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("%s: %d of %d delivered, %d dead letters after %s", r.name, delivered, c.users, dead, c.timeout)
				}
				select {
				case <-ctx.Done():
					return context.Cause(ctx)
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
		return nil
	}
	if err := waitAll(func(_ *channelRun, delivered, dead int) bool { return delivered+dead >= c.users }); err != nil {
		return err
	}
	deadFirst := map[string]int{}
	for _, r := range runs {
		_, dead, err := settled(r)
		if err != nil {
			return err
		}
		deadFirst[r.name] = dead
	}
	logf("first pass settled: dead letters %v", deadFirst)

	// The outage ends; redrive each channel's dead letters into its first
	// retry level, as an operator would with the CLI.
	for _, r := range runs {
		r.ch.recover()
		if deadFirst[r.name] == 0 {
			continue
		}
		args := []string{"dlq", "redrive", "--brokers", strings.Join(seeds, ","), "--topic", events, "--group", r.group, "--to-level", "1"}
		logf("orchestrix %s", strings.Join(args, " "))
		var out strings.Builder
		if code := cli.Run(ctx, args, &out, &out); code != 0 {
			return fmt.Errorf("redrive %s: exit %d: %s", r.name, code, out.String())
		}
	}
	if err := waitAll(func(_ *channelRun, delivered, _ int) bool { return delivered >= c.users }); err != nil {
		return err
	}
	logf("every notification delivered")
	cancel(nil)
	wg.Wait()
	return verdict(c, runs, ids, deadFirst)
}

// handler delivers one channel's notification of each UserRegistered
// record: the record is decoded (an undecodable one fails permanently and
// is dead-lettered with the reason), the notification gets its
// idempotency key (event ID and channel), and the channel's error decides:
// an invalid address is permanent, anything else is retried through the
// retry topics.
func handler(r *channelRun, reg *codec.Registry, c config, logf func(string, ...any)) consumers.HandlerFunc {
	return func(ctx context.Context, rec *kgo.Record) error {
		e, err := codec.RecordToEvent(rec)
		if err == nil {
			err = reg.DecodeEvent(&e)
		}
		if err != nil {
			return consumers.Permanent(fmt.Errorf("undecodable event at %s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err))
		}
		u, ok := e.Payload.(UserRegistered)
		if !ok {
			return nil // not ours
		}
		n := notificationFor(e.ID, u, r.name)
		a := attempt{at: time.Now()} // level from the retry header
		a.level, a.redrive = retryInfo(rec)
		err = r.ch.Send(ctx, n)
		a.err = err
		r.note(n.Key, a)
		if c.watch {
			what := "delivered"
			switch {
			case errors.Is(err, errInvalidAddress):
				what = "failed for good → dead letter: " + err.Error()
			case err != nil && a.level == len(c.delays) && !a.redrive:
				what = "failed on the last level → dead letter: " + err.Error()
			case err != nil:
				what = "failed, will retry: " + err.Error()
			}
			where := "first try"
			if a.level > 0 {
				where = "retry level " + strconv.Itoa(a.level)
			}
			if a.redrive {
				where = "redriven"
			}
			logf("%-7s %s  %-11s %s", r.name, u.UserID, where, what)
		}
		if errors.Is(err, errInvalidAddress) {
			return consumers.Permanent(err)
		}
		return err
	}
}

// notificationFor is the welcome of user u on channel for the event with
// ID eventID. Its idempotency key is the event ID and the channel.
func notificationFor(eventID string, u UserRegistered, channel string) Notification {
	n := Notification{Key: eventID + "/" + channel, UserID: u.UserID, Text: "Welcome, " + u.Name + "!"}
	switch channel {
	case "email":
		n.To = u.Email
	case "sms":
		n.To = u.Phone
	default:
		n.To = u.UserID
	}
	return n
}

// retryInfo reads a record's retry level (0: the events topic) and
// whether it was redriven from a dead-letter topic.
func retryInfo(rec *kgo.Record) (level int, redriven bool) {
	for _, h := range rec.Headers {
		switch h.Key {
		case consumers.HeaderRedrives:
			redriven = true
		case consumers.HeaderLevel:
			if n, err := strconv.Atoi(string(h.Value)); err == nil {
				level = n
			}
		}
	}
	return level, redriven
}

// verdict checks the invariants and prints a table: each notification
// delivered once per channel (by idempotency key), none lost, and the
// retry delays observed within tolerance.
func verdict(c config, runs []*channelRun, ids []string, deadFirst map[string]int) error {
	const early, late = 20 * time.Millisecond, 2500 * time.Millisecond
	var failures []string
	fmt.Fprintf(c.stdout, "\n%-8s %8s %9s %5s %7s %9s %8s %9s  %s\n", "channel", "expected", "delivered", "lost", "unknown", "twice→one", "retried", "redriven", "retry delays (min-max per level)")
	for _, r := range runs {
		got := r.got.snapshot()
		lost, unknown, retried, twice := 0, 0, 0, 0
		want := map[string]bool{}
		for _, id := range ids {
			key := id + "/" + r.name
			want[key] = true
			if got[key] == 0 {
				lost++
			}
		}
		for key, n := range got {
			if !want[key] {
				unknown++
			}
			twice += n - 1
		}
		gaps := make([][]time.Duration, len(c.delays))
		r.mu.Lock()
		for key, as := range r.attempts {
			if len(as) > 1 {
				retried++
			}
			for i := 1; i < len(as); i++ {
				if as[i].redrive || as[i].level == 0 || as[i].level != as[i-1].level+1 {
					continue
				}
				gaps[as[i].level-1] = append(gaps[as[i].level-1], as[i].at.Sub(as[i-1].at))
				if d, want := as[i].at.Sub(as[i-1].at), c.delays[as[i].level-1]; d < want-early || d > want+late {
					failures = append(failures, fmt.Sprintf("%s %s: retry level %d came %s after the previous attempt, want %s (-%s/+%s)", r.name, key, as[i].level, d.Round(time.Millisecond), want, early, late))
				}
			}
		}
		r.mu.Unlock()
		var delays []string
		for lvl, g := range gaps {
			if len(g) == 0 {
				delays = append(delays, fmt.Sprintf("L%d: -", lvl+1))
				continue
			}
			slices.Sort(g)
			delays = append(delays, fmt.Sprintf("L%d: %.2f-%.2fs", lvl+1, g[0].Seconds(), g[len(g)-1].Seconds()))
		}
		fmt.Fprintf(c.stdout, "%-8s %8d %9d %5d %7d %9d %8d %9d  %s\n", r.name, len(ids), len(ids)-lost, lost, unknown, twice, retried,
			deadFirst[r.name], strings.Join(delays, "  "))
		if lost > 0 {
			failures = append(failures, fmt.Sprintf("%s: %d notifications lost", r.name, lost))
		}
		if unknown > 0 {
			failures = append(failures, fmt.Sprintf("%s: %d notifications nobody sent", r.name, unknown))
		}
	}
	fmt.Fprintln(c.stdout)
	check := func(ok bool, what string) {
		mark := "ok  "
		if !ok {
			mark = "FAIL"
		}
		fmt.Fprintf(c.stdout, "  %s %s\n", mark, what)
	}
	check(!slices.ContainsFunc(failures, func(s string) bool { return strings.Contains(s, "lost") || strings.Contains(s, "nobody") }),
		"each notification delivered exactly once per channel (receivers keep one per idempotency key), none lost")
	check(!slices.ContainsFunc(failures, func(s string) bool { return strings.Contains(s, "retry level") }),
		fmt.Sprintf("every retry came after its level's delay %v (%s early to %s late tolerated)", c.delays, early, late))
	if len(failures) > 0 {
		for _, f := range failures[:min(len(failures), 10)] {
			fmt.Fprintln(c.stderr, "violation:", f)
		}
		return fmt.Errorf("%d invariant violations", len(failures))
	}
	return nil
}
