package producers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Awaiter waits for command outcomes.
//
// Why an outcomes topic: the aggregate processor publishes each command's
// Outcome (accepted with versions, rejected with reasons, duplicate) to
// "<context>.outcomes" keyed by command ID before it commits the command's
// offset. A sender then needs only Kafka — no database access and no
// polling — and the same stream serves every sender and auditing tools.
// Outcomes are at-least-once like everything crossing Kafka; the first one
// for a command wins.
//
// An Awaiter reads every partition of the topic (no consumer group) from a
// little before it was created, so an outcome published after NewAwaiter
// returns is never missed. Run must be running for Wait to return.
type Awaiter struct {
	cl *kgo.Client

	mu      sync.Mutex
	waiters map[string][]chan orchestrix.Outcome
	recent  map[string]orchestrix.Outcome
	order   []string
	keep    int
}

// NewAwaiter returns an awaiter on the outcomes topic. It keeps the last
// 10000 outcomes so a Wait that starts after its outcome arrived still
// returns.
func NewAwaiter(seeds []string, topic string, opts ...kgo.Opt) (*Awaiter, error) {
	if err := orchestrix.CheckID("topic", topic); err != nil {
		return nil, fmt.Errorf("producers: awaiter: %w", err)
	}
	since := time.Now().Add(-5 * time.Second).UnixMilli()
	base := []kgo.Opt{
		kgo.SeedBrokers(seeds...),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AfterMilli(since)),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(100 * time.Millisecond),
	}
	cl, err := kgo.NewClient(append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("producers: awaiter client: %w", err)
	}
	return &Awaiter{cl: cl, waiters: map[string][]chan orchestrix.Outcome{}, recent: map[string]orchestrix.Outcome{}, keep: 10000}, nil
}

// Run reads outcomes until ctx ends, then closes the client and returns nil.
func (a *Awaiter) Run(ctx context.Context) error {
	defer a.cl.Close()
	for {
		fs := a.cl.PollFetches(ctx)
		if ctx.Err() != nil || fs.IsClientClosed() {
			return nil
		}
		fs.EachRecord(func(r *kgo.Record) {
			var o orchestrix.Outcome
			if err := json.Unmarshal(r.Value, &o); err != nil || o.CommandID == "" {
				return // not ours to judge; the topic is the processor's
			}
			a.deliver(o)
		})
	}
}

func (a *Awaiter) deliver(o orchestrix.Outcome) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.recent[o.CommandID]; ok {
		return // first one wins
	}
	a.recent[o.CommandID] = o
	a.order = append(a.order, o.CommandID)
	if len(a.order) > a.keep {
		delete(a.recent, a.order[0])
		a.order = a.order[1:]
	}
	for _, ch := range a.waiters[o.CommandID] {
		ch <- o
	}
	delete(a.waiters, o.CommandID)
}

// ErrNoOutcome reports that no outcome arrived before the context ended.
var ErrNoOutcome = errors.New("producers: no outcome before the deadline")

// Wait returns the outcome of commandID, or ErrNoOutcome when ctx ends
// first (give it a timeout).
func (a *Awaiter) Wait(ctx context.Context, commandID string) (orchestrix.Outcome, error) {
	a.mu.Lock()
	if o, ok := a.recent[commandID]; ok {
		a.mu.Unlock()
		return o, nil
	}
	ch := make(chan orchestrix.Outcome, 1)
	a.waiters[commandID] = append(a.waiters[commandID], ch)
	a.mu.Unlock()
	select {
	case o := <-ch:
		return o, nil
	case <-ctx.Done():
		a.mu.Lock()
		ws := a.waiters[commandID]
		for i, w := range ws {
			if w == ch {
				a.waiters[commandID] = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(a.waiters[commandID]) == 0 {
			delete(a.waiters, commandID)
		}
		a.mu.Unlock()
		return orchestrix.Outcome{}, fmt.Errorf("command %s: %w: %w", commandID, ErrNoOutcome, ctx.Err())
	}
}
