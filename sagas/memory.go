package sagas

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/twmb/franz-go/pkg/kgo"
)

// MemoryStore is a Store in memory, for unit tests and the embedded
// demo. Its outbox is a queue in memory: Publish drains it to Kafka. It
// passes the same conformance tests as PostgresStore, but it is gone
// with the process, and a message can be published twice if the
// producer fails after the broker took it (the inbox makes that
// harmless). It is safe for concurrent use.
type MemoryStore struct {
	mu      sync.Mutex
	inst    map[key]Instance
	inbox   map[key]map[string]bool
	timers  map[key]Timer
	history map[key][]Transition
	queue   []outbox.Message
	wake    chan struct{}
}

type key struct{ typ, id string }

// NewMemoryStore returns an empty store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{inst: map[key]Instance{}, inbox: map[key]map[string]bool{}, timers: map[key]Timer{},
		history: map[key][]Transition{}, wake: make(chan struct{}, 1)}
}

// Apply implements Store.
func (m *MemoryStore) Apply(ctx context.Context, typ, sagaID, inputID string, fn func(cur *Instance) (*Change, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := key{typ, sagaID}
	if m.inbox[k][inputID] {
		return ErrDuplicateInput
	}
	var cur *Instance
	if i, ok := m.inst[k]; ok {
		cur = &i
	}
	ch, err := fn(cur)
	if err != nil {
		return err
	}
	if ch != nil {
		i := ch.Instance
		stored, ok := m.inst[k]
		if (i.Version == 1 && ok) || (i.Version > 1 && (!ok || stored.Version != i.Version-1)) {
			return fmt.Errorf("sagas: %s/%s at version %d: %w", typ, sagaID, i.Version-1, ErrFenced)
		}
		m.inst[k] = i
		switch {
		case ch.Timer != nil:
			m.timers[k] = *ch.Timer
		case !ch.KeepTimer:
			delete(m.timers, k)
		}
		tr := ch.Transition
		tr.Type, tr.SagaID, tr.Version = typ, sagaID, i.Version
		m.history[k] = append(m.history[k], tr)
		m.enqueue(ch.Messages)
	}
	if m.inbox[k] == nil {
		m.inbox[k] = map[string]bool{}
	}
	m.inbox[k][inputID] = true
	return nil
}

// ApplyBatch implements Store: Apply of each item in order (each its own
// atomic unit).
func (m *MemoryStore) ApplyBatch(ctx context.Context, typ string, items []Item) []error {
	errs := make([]error, len(items))
	failed := map[string]bool{}
	for i, it := range items {
		if failed[it.SagaID] {
			errs[i] = consumers.ErrBlocked
			continue
		}
		errs[i] = m.Apply(ctx, typ, it.SagaID, it.InputID, it.Decide)
		if errs[i] != nil && !errors.Is(errs[i], ErrDuplicateInput) {
			failed[it.SagaID] = true
		}
	}
	return errs
}

func (m *MemoryStore) enqueue(msgs []outbox.Message) {
	if len(msgs) == 0 {
		return
	}
	m.queue = append(m.queue, msgs...)
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// FireTimers implements Store.
func (m *MemoryStore) FireTimers(ctx context.Context, typ string, now time.Time, limit int, msg func(Timer) (outbox.Message, error)) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var due []Timer
	for k, t := range m.timers {
		if k.typ == typ && !t.Due.After(now) {
			due = append(due, t)
		}
	}
	slices.SortFunc(due, func(a, b Timer) int { return a.Due.Compare(b.Due) })
	if len(due) > limit {
		due = due[:limit]
	}
	msgs := make([]outbox.Message, len(due))
	for i, t := range due {
		var err error
		if msgs[i], err = msg(t); err != nil {
			return 0, fmt.Errorf("sagas: fire %s timers: %w", typ, err)
		}
	}
	for _, t := range due {
		delete(m.timers, key{typ, t.SagaID})
	}
	m.enqueue(msgs)
	return len(due), nil
}

// Get implements Store.
func (m *MemoryStore) Get(ctx context.Context, typ, sagaID string) (Instance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i, ok := m.inst[key{typ, sagaID}]
	if !ok {
		return Instance{}, fmt.Errorf("sagas: %s/%s: %w", typ, sagaID, ErrNotFound)
	}
	return i, nil
}

// List implements Store.
func (m *MemoryStore) List(ctx context.Context, f Filter) ([]Instance, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Instance
	for _, i := range m.inst {
		if (f.Type == "" || i.Type == f.Type) && (f.Status == "" || i.Status == f.Status) &&
			(f.UpdatedBefore.IsZero() || i.UpdatedAt.Before(f.UpdatedBefore)) {
			out = append(out, i)
		}
	}
	slices.SortFunc(out, func(a, b Instance) int {
		if c := a.UpdatedAt.Compare(b.UpdatedAt); c != 0 {
			return c
		}
		if a.Type != b.Type {
			return compareStrings(a.Type, b.Type)
		}
		return compareStrings(a.ID, b.ID)
	})
	if len(out) > f.Limit {
		out = out[:f.Limit]
	}
	return out, nil
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// History implements Store.
func (m *MemoryStore) History(ctx context.Context, typ, sagaID string) ([]Transition, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.history[key{typ, sagaID}]), nil
}

// Timers implements Store.
func (m *MemoryStore) Timers(ctx context.Context, typ string, limit int) ([]Timer, error) {
	if limit <= 0 {
		limit = 100
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Timer
	for k, t := range m.timers {
		if typ == "" || k.typ == typ {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b Timer) int { return a.Due.Compare(b.Due) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// Pending returns the messages written and not yet published.
func (m *MemoryStore) Pending() []outbox.Message {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.queue)
}

// Publish produces the store's outbox messages with client, in order,
// until ctx ends (then it returns nil). A failed produce is retried; the
// messages of one produce leave the queue once all were acknowledged.
func (m *MemoryStore) Publish(ctx context.Context, client *kgo.Client) error {
	for {
		m.mu.Lock()
		batch := slices.Clone(m.queue)
		m.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-m.wake:
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		recs := make([]*kgo.Record, len(batch))
		for i, msg := range batch {
			recs[i] = &kgo.Record{Topic: msg.Topic, Key: msg.Key, Value: msg.Value, Headers: msg.Headers}
		}
		if err := client.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		m.mu.Lock()
		m.queue = m.queue[len(batch):]
		m.mu.Unlock()
	}
}
