package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/twmb/franz-go/pkg/kgo"
)

// timeline prints what happens: notes of the run always, and with
// --watch every command, outcome, event, saga transition (retries and
// timeouts are in their notes) and dead letter, as it happens.
type timeline struct {
	w     io.Writer
	start time.Time
	on    bool
	mu    sync.Mutex
}

func (t *timeline) printf(kind, format string, args ...any) {
	line := fmt.Sprintf("%7.3fs  %-11s %s\n", time.Since(t.start).Seconds(), kind, fmt.Sprintf(format, args...))
	t.mu.Lock()
	defer t.mu.Unlock()
	_, _ = io.WriteString(t.w, line)
}

// note prints a step of the run.
func (t *timeline) note(format string, args ...any) { t.printf("run", format, args...) }

// transition prints a committed saga transition (the runtime's
// OnTransition hook).
func (t *timeline) transition(tr sagas.Transition) {
	if !t.on {
		return
	}
	t.printf("saga", "%s v%d %s: %s → %s  %s", tr.SagaID, tr.Version, tr.InputKind, stateName(string(tr.From)), tr.To, tr.Note)
}

// tap follows the example's topics from their start and prints each
// record until ctx ends.
func (t *timeline) tap(ctx context.Context, seeds []string, kafka []kgo.Opt, tp Topics) {
	dlqs := deadLetterTopics(tp)
	names := append([]string{tp.Orders, tp.Payments, tp.Inventory, tp.Outcomes, tp.Events}, dlqs...)
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(names...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100 * time.Millisecond)}, kafka...)...)
	if err != nil {
		t.note("watch: %v", err)
		return
	}
	defer cl.Close()
	isDLQ := map[string]bool{}
	for _, d := range dlqs {
		isDLQ[d] = true
	}
	for ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) {
			h := map[string]string{}
			for _, x := range r.Headers {
				h[x.Key] = string(x.Value)
			}
			short := strings.TrimPrefix(h["ce_type"], "ecommerce.")
			if short == "" {
				short = "(not a CloudEvent)"
			}
			switch {
			case isDLQ[r.Topic]:
				t.printf("DEAD LETTER", "%s key %s: %s (%s)", r.Topic, r.Key, h[consumers.HeaderReason], h[consumers.HeaderError])
			case r.Topic == tp.Outcomes:
				var o orchestrix.Outcome
				if json.Unmarshal(r.Value, &o) != nil {
					return
				}
				detail := ""
				if o.Status == orchestrix.OutcomeRejected {
					detail = "  " + o.Code + ": " + o.Message
				}
				t.printf("outcome", "%-9s %s %s%s", o.Status, strings.TrimPrefix(o.CommandType, "ecommerce."), o.AggregateID, detail)
			case r.Topic == tp.Events:
				t.printf("event", "%s %s v%s", short, r.Key, h["ce_aggregateversion"])
			default:
				by := "client"
				if _, id, ok := sagas.ParseCorrelation(h["ce_correlationid"]); ok {
					by = "saga " + id
				}
				t.printf("command", "%s → %s (%s)", short, r.Key, by)
			}
		})
	}
}
