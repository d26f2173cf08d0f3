package main

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// check fills the verdict: every invariant of the run, each one row.
func check(ctx context.Context, c checkConfig, a *app, seeds []string, plan []plannedTransfer, results map[string]transferResult,
	accounts []string, rd *reader, bg *blueGreen, endedAt time.Time, sc scenarioSpec, v *verdict) error {
	// What became of the transfers.
	count := map[string]int{}
	for _, p := range plan {
		count[results[p.id].result]++
	}
	fmt.Fprintf(c.stdout, "\ntransfers: %d completed, %d declined (funds), %d refunded (credit failed), %d compensation failed\n",
		count[banking.ResultCompleted], count[banking.ResultDeclined], count[banking.ResultRefunded], count[banking.ResultCompensationFailed])
	v.check(count[banking.ResultCompensationFailed] == 0, "every transfer ended",
		"%d of %d completed, declined or refunded; %d left in compensation_failed", len(plan)-count[banking.ResultCompensationFailed], len(plan), count[banking.ResultCompensationFailed])

	// Balances, as the account aggregate loads them.
	balances := map[string]int64{}
	var total int64
	for _, acc := range accounts {
		root, err := a.repo.Load(ctx, acc)
		if err != nil {
			return fmt.Errorf("load %s: %w", acc, err)
		}
		balances[acc] = root.State.Balance
		total += root.State.Balance
	}
	want := int64(len(accounts)) * initialBalance
	v.check(total == want, "money is conserved", "the sum of the %d balances is %d, deposited %d", len(accounts), total, want)

	expected := map[string]int64{}
	for _, acc := range accounts {
		expected[acc] = initialBalance
	}
	for _, p := range plan {
		if results[p.id].result == banking.ResultCompleted {
			expected[p.t.From] -= p.t.Amount
			expected[p.t.To] += p.t.Amount
		}
	}
	var off []string
	for _, acc := range accounts {
		if balances[acc] != expected[acc] {
			off = append(off, fmt.Sprintf("%s %d (want %d)", acc, balances[acc], expected[acc]))
		}
	}
	v.check(len(off) == 0, "balances follow the transfers", "each balance = opening deposit + completed transfers in - out%s", firstFew(off))

	// Failed credits are refunded; nothing else is.
	var ghosts, ghostRefunded, wrong int
	for _, p := range plan {
		r := results[p.id].result
		switch {
		case p.ghost:
			ghosts++
			if r == banking.ResultRefunded {
				ghostRefunded++
			} else if r != banking.ResultDeclined {
				wrong++
			}
		case r == banking.ResultRefunded:
			wrong++
		}
	}
	v.check(wrong == 0, "failed credits are refunded", "%d of %d transfers to never-opened accounts debited and refunded (the others declined for funds); %d transfers ended otherwise than their kind allows",
		ghostRefunded, ghosts, wrong)

	// Every statement equals its account's events.
	final, err := a.statements(ctx, 0)
	if err != nil {
		return err
	}
	truth := map[string][]banking.StatementLine{}
	var lines int
	var bad []string
	for _, acc := range accounts {
		var events []orchestrix.Event
		for e, err := range a.store.ReadStream(ctx, acc, 0) {
			if err != nil {
				return fmt.Errorf("read %s: %w", acc, err)
			}
			events = append(events, e)
		}
		st, err := banking.Statement(events)
		if err != nil {
			return err
		}
		truth[acc], lines = st, lines+len(st)
		if !reflect.DeepEqual(final[acc], st) {
			bad = append(bad, fmt.Sprintf("%s: %d lines, want %d", acc, len(final[acc]), len(st)))
		} else if n := len(st); n == 0 || st[n-1].Balance != balances[acc] {
			bad = append(bad, fmt.Sprintf("%s: statement ends at a balance other than the account's", acc))
		}
	}
	for acc := range final {
		if _, ok := truth[acc]; !ok {
			bad = append(bad, fmt.Sprintf("%s: a statement for an account that was never opened", acc))
		}
	}
	v.check(len(bad) == 0, "statements equal the events", "%d statements, %d lines: each line one event of its account, in version order, with the balance after it%s",
		len(final), lines, firstFew(bad))

	if sc.bluegreen {
		checkBlueGreen(ctx, a, plan, rd, bg, endedAt, truth, v)
	}

	// Dead letters: exactly the bad input, each with its reason.
	dead, err := deadLetters(ctx, seeds, c.kafka, a.cfg.deadLetterTopics())
	if err != nil {
		return err
	}
	wantDead := 0
	if sc.poison {
		wantDead = poisonCount
	}
	commandsDLQ := a.cfg.deadLetterTopics()[0]
	var deadTotal, withReason int
	var reasons []string
	for topic, recs := range dead {
		deadTotal += len(recs)
		for _, r := range recs {
			if topic == commandsDLQ && r != "" {
				withReason++
				reasons = append(reasons, r)
			}
		}
	}
	if wantDead == 0 {
		v.check(deadTotal == 0, "no dead letters", "%d records in the service's dead-letter topics", deadTotal)
	} else {
		v.check(deadTotal == wantDead && withReason == wantDead, "bad input dead-lettered",
			"%d of %d bad commands in %s with their reason %q, %d records in the other dead-letter topics; their account's later commands flowed",
			withReason, wantDead, commandsDLQ, reasons, deadTotal-withReason)
	}
	return nil
}

// checkBlueGreen checks what a reader saw while statement v2 was built
// and cut over to.
func checkBlueGreen(ctx context.Context, a *app, plan []plannedTransfer, rd *reader, bg *blueGreen, endedAt time.Time,
	truth map[string][]banking.StatementLine, v *verdict) {
	if bg.err != nil {
		v.check(false, "blue/green cut-over", "%v", bg.err)
		return
	}
	v.check(bg.registeredAtSent < int64(len(plan)) && bg.cutAt.Before(endedAt), "cut over while transfers ran",
		"v%d registered after %d of %d transfers started, active %s later (%d started by then); the last transfer ended %s after the cut-over",
		bg.version, bg.registeredAtSent, len(plan), bg.cutAt.Sub(bg.registered).Round(time.Millisecond), bg.cutAtSent, endedAt.Sub(bg.cutAt).Round(time.Millisecond))

	// v2 (active) and v1 (retired, kept current) hold the same lines.
	old, err1 := a.statements(ctx, bg.version-1)
	cur, err2 := a.statements(ctx, bg.version)
	same := err1 == nil && err2 == nil && reflect.DeepEqual(old, cur) && reflect.DeepEqual(cur, truth)
	v.check(same, "v2 equals v1", "the rebuilt statements equal the incrementally built ones, line for line (%d accounts)", len(cur))

	// Every read through the view was a whole, true statement (a prefix of
	// the account's final statement: lines are never rewritten), and no
	// account's statement ever got shorter from one read to the next — not
	// across the cut-over either.
	rd.mu.Lock()
	defer rd.mu.Unlock()
	var during, after, wrong, back int
	var first []string
	prev := map[string]int{}
	for _, r := range rd.reads {
		switch {
		case r.at.After(bg.cutAt):
			after++
		case r.at.After(bg.registered):
			during++
		}
		for acc, lines := range r.s {
			t := truth[acc]
			if len(lines) > len(t) || !reflect.DeepEqual(lines, t[:len(lines)]) {
				wrong++
				first = append(first, fmt.Sprintf("%s at %s: not a prefix of its statement", acc, r.at.Format("15:04:05.000")))
			}
			if len(lines) < prev[acc] {
				back++
				first = append(first, fmt.Sprintf("%s at %s: %d lines after %d", acc, r.at.Format("15:04:05.000"), len(lines), prev[acc]))
			}
			prev[acc] = len(lines)
		}
	}
	v.check(len(rd.errs) == 0 && wrong == 0 && back == 0 && during > 0 && after > 0, "readers saw nothing change",
		"%d reads of every statement through the view (%d while v2 was building, %d after the cut-over): %d not a true statement, %d went back, %d failed%s",
		len(rd.reads), during, after, wrong, back, len(rd.errs), firstFew(first))
}

// deadLetters reads the records of topics (missing topics hold none):
// per topic, each record's reason header.
func deadLetters(ctx context.Context, seeds []string, opts []kgo.Opt, names []string) (map[string][]string, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(seeds...)}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("count dead letters: %w", err)
	}
	want := map[string]map[int32]kgo.Offset{}
	left := 0
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil && o.Offset > 0 {
			if want[o.Topic] == nil {
				want[o.Topic] = map[int32]kgo.Offset{}
			}
			want[o.Topic][o.Partition] = kgo.NewOffset().AtStart()
			left += int(o.Offset) // an upper bound: transaction markers count
		}
	})
	out := map[string][]string{}
	if left == 0 {
		return out, nil
	}
	rd, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(seeds...), kgo.ConsumePartitions(want),
		kgo.FetchIsolationLevel(kgo.ReadCommitted())}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	// Read until every partition's end (or a quiet second: markers).
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fs := rd.PollFetches(pctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) {
			n++
			reason := ""
			for _, h := range r.Headers {
				if h.Key == consumers.HeaderReason {
					reason = string(h.Value)
				}
			}
			out[r.Topic] = append(out[r.Topic], reason)
		})
		if n == 0 {
			return out, nil
		}
	}
}

func firstFew(s []string) string {
	if len(s) == 0 {
		return ""
	}
	slices.Sort(s)
	if len(s) > 3 {
		return fmt.Sprintf("; e.g. %v and %d more", s[:3], len(s)-3)
	}
	return fmt.Sprintf("; %v", s)
}
