package producers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// DefaultKeep is how many recent outcomes an Awaiter keeps for Wait calls
// that start after their outcome arrived.
const DefaultKeep = 10000

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
// returns is never missed by a command registered with Notify before it
// was sent. Wait, called after the send, finds the outcome too unless more
// than DefaultKeep other outcomes arrived in between: a sender that sends
// many commands before waiting registers them with Notify first. Run must
// be running for outcomes to arrive. All methods are safe for concurrent
// use.
type Awaiter struct {
	cl *kgo.Client
	// topic and since, for an awaiter from NewAwaiter: Run positions each
	// partition of topic itself (see assign); assigned are those it has.
	topic    string
	since    int64
	assigned map[int32]bool

	mu      sync.Mutex
	waiters map[string]*waiter
	recent  map[string]orchestrix.Outcome
	order   []string // ring of the command IDs in recent, oldest at next
	next    int
}

// waiter is one registration for a command's outcome; a command's
// registrations form a list.
type waiter struct {
	fn   func(orchestrix.Outcome)
	next *waiter
}

// NewAwaiter returns an awaiter on the outcomes topic. It keeps the last
// DefaultKeep outcomes so a Wait that starts after its outcome arrived
// still returns; outcomes registered with Notify are kept for their
// callers however many others arrive.
func NewAwaiter(seeds []string, topic string, opts ...kgo.Opt) (*Awaiter, error) {
	if err := orchestrix.CheckID("topic", topic); err != nil {
		return nil, fmt.Errorf("producers: awaiter: %w", err)
	}
	since := time.Now().Add(-5 * time.Second).UnixMilli()
	base := []kgo.Opt{
		kgo.SeedBrokers(seeds...),
		// Direct consuming, with no partition yet: Run adds each at the
		// offset it lists itself (assign).
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(100 * time.Millisecond),
	}
	cl, err := kgo.NewClient(append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("producers: awaiter client: %w", err)
	}
	a := newAwaiter(cl, DefaultKeep)
	a.topic, a.since, a.assigned = topic, since, map[int32]bool{}
	return a, nil
}

// assignEvery is how often Run looks for partitions added to the topic.
const assignEvery = 30 * time.Second

// assign starts consuming each partition of the topic that is not yet
// consumed, at its first record stamped at or after since, or at its end
// when there is none: its committed end (LSO) is listed first, then the
// offset by time, and the lower of the two is taken.
//
// franz-go's AfterMilli reset, used before, lists by time and, for a
// partition with no record after the time, lists the end in a second
// request: an outcome appended between the two was skipped (the demo
// lost 19 to 95 of 2,000 outcomes so on a loaded machine, its outcome
// partitions empty when the awaiter started). Listed in this order, an
// outcome appended after the end listing is after the start, and one
// before it is found by the listing by time.
func (a *Awaiter) assign(ctx context.Context) error {
	adm := kadm.NewClient(a.cl)
	// The partition count first: a look for new partitions that finds
	// none lists no offsets.
	tds, err := adm.ListTopics(ctx, a.topic)
	if err == nil {
		err = tds.Error()
	}
	if err != nil {
		return fmt.Errorf("producers: awaiter: describe %s: %w", a.topic, err)
	}
	if td, ok := tds[a.topic]; ok && len(td.Partitions) == len(a.assigned) {
		return nil
	}
	ends, err := adm.ListCommittedOffsets(ctx, a.topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return fmt.Errorf("producers: awaiter: list end offsets of %s: %w", a.topic, err)
	}
	byTime, err := adm.ListOffsetsAfterMilli(ctx, a.since, a.topic)
	if err == nil {
		err = byTime.Error()
	}
	if err != nil {
		return fmt.Errorf("producers: awaiter: list offsets of %s by time: %w", a.topic, err)
	}
	add := map[int32]kgo.Offset{}
	ends.Each(func(e kadm.ListedOffset) {
		if a.assigned[e.Partition] {
			return
		}
		at := e.Offset
		if t, ok := byTime.Lookup(a.topic, e.Partition); ok && t.Offset >= 0 && t.Offset < at {
			at = t.Offset
		}
		add[e.Partition] = kgo.NewOffset().At(at)
		a.assigned[e.Partition] = true
	})
	if len(add) > 0 {
		a.cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{a.topic: add})
	}
	return nil
}

func newAwaiter(cl *kgo.Client, keep int) *Awaiter {
	return &Awaiter{cl: cl, waiters: map[string]*waiter{}, recent: make(map[string]orchestrix.Outcome, keep), order: make([]string, 0, keep)}
}

// Run reads outcomes until ctx ends, then closes the client and returns nil.
func (a *Awaiter) Run(ctx context.Context) error {
	defer a.cl.Close()
	var nextAssign time.Time
	for {
		if a.topic != "" {
			if !time.Now().Before(nextAssign) {
				// Until every partition is placed, try again each
				// second (a broker not up yet, a topic not created
				// yet); then look for new partitions now and then.
				nextAssign = time.Now().Add(time.Second)
				if err := a.assign(ctx); err == nil && len(a.assigned) > 0 {
					nextAssign = time.Now().Add(assignEvery)
				}
			}
		}
		fs := a.poll(ctx, nextAssign)
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

// poll polls until records come, ctx ends or, for an awaiter that
// places its partitions itself, until (when it looks for new ones).
func (a *Awaiter) poll(ctx context.Context, until time.Time) kgo.Fetches {
	if a.topic == "" {
		return a.cl.PollFetches(ctx)
	}
	pctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	return a.cl.PollFetches(pctx)
}

// deliver records o and calls the callbacks registered for its command,
// outside the lock so that a callback may call the Awaiter.
func (a *Awaiter) deliver(o orchestrix.Outcome) {
	a.mu.Lock()
	if _, ok := a.recent[o.CommandID]; ok {
		a.mu.Unlock()
		return // first one wins
	}
	if len(a.order) < cap(a.order) {
		a.order = append(a.order, o.CommandID)
	} else if len(a.order) > 0 {
		delete(a.recent, a.order[a.next])
		a.order[a.next] = o.CommandID
		a.next = (a.next + 1) % len(a.order)
	}
	if cap(a.order) > 0 {
		a.recent[o.CommandID] = o
	}
	w := a.waiters[o.CommandID]
	delete(a.waiters, o.CommandID)
	a.mu.Unlock()
	for ; w != nil; w = w.next {
		w.fn(o)
	}
}

// Notify registers fn to be called once with the first outcome of
// commandID. Register before sending the command: the outcome then reaches
// fn however many other outcomes arrive first, and however long after the
// send. fn runs on Run's goroutine (or on the caller's, when the outcome
// is already among the recent ones) and must not block; it may call the
// Awaiter. Forget drops the registration of a command whose outcome is no
// longer wanted (a send that failed): an outcome that never comes holds
// its registration until then.
func (a *Awaiter) Notify(commandID string, fn func(orchestrix.Outcome)) {
	a.notify(commandID, &waiter{fn: fn})
}

func (a *Awaiter) notify(commandID string, w *waiter) {
	a.mu.Lock()
	if o, ok := a.recent[commandID]; ok {
		a.mu.Unlock()
		w.fn(o)
		return
	}
	w.next = a.waiters[commandID]
	a.waiters[commandID] = w
	a.mu.Unlock()
}

// Forget drops every registration for commandID, those of Notify and of
// Wait calls in progress (which then return when their context ends).
func (a *Awaiter) Forget(commandID string) {
	a.mu.Lock()
	delete(a.waiters, commandID)
	a.mu.Unlock()
}

// Pending reports how many commands have registrations waiting for their
// outcome.
func (a *Awaiter) Pending() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.waiters)
}

// ErrNoOutcome reports that no outcome arrived before the context ended.
var ErrNoOutcome = errors.New("producers: no outcome before the deadline")

// Wait returns the outcome of commandID, or ErrNoOutcome when ctx ends
// first (give it a timeout). A Wait that starts after its outcome arrived
// returns it while it is among the last DefaultKeep outcomes; to wait
// for a command without that limit, register it with Notify before
// sending it.
func (a *Awaiter) Wait(ctx context.Context, commandID string) (orchestrix.Outcome, error) {
	ch := make(chan orchestrix.Outcome, 1)
	w := &waiter{fn: func(o orchestrix.Outcome) { ch <- o }}
	a.notify(commandID, w)
	select {
	case o := <-ch:
		return o, nil
	case <-ctx.Done():
		a.remove(commandID, w)
		select {
		case o := <-ch: // delivered while the context ended
			return o, nil
		default:
		}
		return orchestrix.Outcome{}, fmt.Errorf("command %s: %w: %w", commandID, ErrNoOutcome, ctx.Err())
	}
}

// remove unlinks w from commandID's registrations.
func (a *Awaiter) remove(commandID string, w *waiter) {
	a.mu.Lock()
	defer a.mu.Unlock()
	head := a.waiters[commandID]
	if head == w {
		if w.next == nil {
			delete(a.waiters, commandID)
		} else {
			a.waiters[commandID] = w.next
		}
		return
	}
	for p := head; p != nil; p = p.next {
		if p.next == w {
			p.next = w.next
			return
		}
	}
}
