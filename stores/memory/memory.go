// Package memory is an in-process event store for tests and the embedded
// demo. It passes the stores conformance suite; it keeps everything in
// memory and loses it when the process ends.
//
// Appends commit in position order, so its cursors use Position only.
package memory

import (
	"context"
	"fmt"
	"iter"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
)

// Store is an in-memory stores.EventStore. It is safe for concurrent use.
type Store struct {
	mu        sync.RWMutex
	log       []orchestrix.Event // index i holds Position i+1
	streams   map[string][]int   // stream ID -> indexes into log
	commands  map[string]stores.AppendResult
	snapshots map[string]stores.Snapshot
	maxSize   int
	notify    chan struct{}
}

// Option configures a Store.
type Option func(*Store)

// WithMaxEventSize limits one event's Data (default stores.DefaultMaxEventSize).
func WithMaxEventSize(n int) Option { return func(s *Store) { s.maxSize = n } }

// New returns an empty store.
func New(opts ...Option) *Store {
	s := &Store{
		streams:   map[string][]int{},
		commands:  map[string]stores.AppendResult{},
		snapshots: map[string]stores.Snapshot{},
		maxSize:   stores.DefaultMaxEventSize,
		notify:    make(chan struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Append implements stores.EventStore.
func (s *Store) Append(ctx context.Context, streamID string, expected stores.ExpectedVersion, events []orchestrix.Event) (stores.AppendResult, error) {
	res, err := s.AppendMany(ctx, []stores.AppendRequest{{StreamID: streamID, Expected: expected, Events: events}})
	if err != nil {
		return stores.AppendResult{}, err
	}
	return res[0], nil
}

// AppendMany implements stores.EventStore.
func (s *Store) AppendMany(ctx context.Context, reqs []stores.AppendRequest) ([]stores.AppendResult, error) {
	return s.AppendDecisions(ctx, reqs, nil)
}

// AppendDecisions implements stores.RejectionRecorder.
func (s *Store) AppendDecisions(ctx context.Context, reqs []stores.AppendRequest, rejected []stores.RejectedCommand) ([]stores.AppendResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, r := range reqs {
		if err := stores.CheckEvents(r.StreamID, r.Events, s.maxSize); err != nil {
			return nil, err
		}
	}
	for _, rc := range rejected {
		if err := stores.CheckRejected(rc); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rc := range rejected {
		if _, ok := s.commands[rc.CommandID]; ok {
			return nil, &stores.ConflictError{StreamID: rc.StreamID, Expected: stores.Any}
		}
	}
	results := make([]stores.AppendResult, len(reqs))
	planned := map[string]uint64{} // stream -> version after the requests before
	write := make([]bool, len(reqs))
	batch := map[string]stores.AppendResult{} // commands of this call's earlier requests
	for i, r := range reqs {
		cmd := r.Events[0].CommandID
		if cmd != "" {
			prev, ok := s.commands[cmd]
			if !ok {
				prev, ok = batch[cmd]
			}
			if ok {
				prev.Duplicate = true
				results[i] = prev
				continue
			}
		}
		cur, ok := planned[r.StreamID]
		if !ok {
			cur = uint64(len(s.streams[r.StreamID]))
		}
		if !r.Expected.IsAny() && r.Expected.Version() != cur {
			return nil, &stores.ConflictError{StreamID: r.StreamID, Expected: r.Expected, Actual: cur}
		}
		planned[r.StreamID] = cur + uint64(len(r.Events))
		results[i] = stores.AppendResult{StreamID: r.StreamID, FromVersion: cur + 1, ToVersion: cur + uint64(len(r.Events))}
		write[i] = true
		if cmd != "" {
			batch[cmd] = results[i]
		}
	}
	// Like the other stores: a command is decided once, so a rejection of
	// a command that this call also appends, or rejects twice, conflicts.
	rejecting := map[string]bool{}
	for _, rc := range rejected {
		if _, ok := batch[rc.CommandID]; ok || rejecting[rc.CommandID] {
			return nil, &stores.ConflictError{StreamID: rc.StreamID, Expected: stores.Any}
		}
		rejecting[rc.CommandID] = true
	}
	now := time.Now().UTC()
	for i, r := range reqs {
		if !write[i] {
			continue
		}
		for j, e := range r.Events {
			e.StreamID = r.StreamID
			e.Version = results[i].FromVersion + uint64(j)
			e.Position = uint64(len(s.log) + 1)
			if e.ID == "" {
				e.ID = uuid.Must(uuid.NewV7()).String()
			}
			if e.Subject == "" {
				e.Subject = r.StreamID
			}
			if e.Time.IsZero() {
				e.Time = now
			}
			e.Data = append([]byte(nil), e.Data...)
			e.Payload = nil
			s.streams[r.StreamID] = append(s.streams[r.StreamID], len(s.log))
			s.log = append(s.log, e)
		}
		if cmd := r.Events[0].CommandID; cmd != "" {
			s.commands[cmd] = results[i]
		}
	}
	for _, rc := range rejected {
		s.commands[rc.CommandID] = stores.AppendResult{StreamID: rc.StreamID, Rejection: append([]byte{}, rc.Reason...)}
	}
	if len(reqs) > 0 {
		close(s.notify)
		s.notify = make(chan struct{})
	}
	return results, nil
}

// Appended returns a channel closed at the next successful append, so a
// reader can wait for new events instead of polling.
func (s *Store) Appended() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.notify
}

// ReadStream implements stores.EventStore.
func (s *Store) ReadStream(ctx context.Context, streamID string, after uint64) iter.Seq2[orchestrix.Event, error] {
	return func(yield func(orchestrix.Event, error) bool) {
		if err := orchestrix.CheckID("stream id", streamID); err != nil {
			yield(orchestrix.Event{}, fmt.Errorf("read stream: %w", err))
			return
		}
		for v := after; ; v++ {
			if err := ctx.Err(); err != nil {
				yield(orchestrix.Event{}, err)
				return
			}
			s.mu.RLock()
			idx := s.streams[streamID]
			if v >= uint64(len(idx)) {
				s.mu.RUnlock()
				return
			}
			e := s.log[idx[v]]
			s.mu.RUnlock()
			if !yield(e, nil) {
				return
			}
		}
	}
}

// ReadAll implements stores.EventStore.
func (s *Store) ReadAll(ctx context.Context, after stores.Cursor, limit int) iter.Seq2[stores.Entry, error] {
	return func(yield func(stores.Entry, error) bool) {
		for n, p := 0, after.Position; limit <= 0 || n < limit; n, p = n+1, p+1 {
			if err := ctx.Err(); err != nil {
				yield(stores.Entry{}, err)
				return
			}
			s.mu.RLock()
			if p >= uint64(len(s.log)) {
				s.mu.RUnlock()
				return
			}
			e := s.log[p]
			s.mu.RUnlock()
			if !yield(stores.Entry{Event: e, Cursor: stores.Cursor{Position: e.Position}}, nil) {
				return
			}
		}
	}
}

// FindCommand implements stores.EventStore.
func (s *Store) FindCommand(ctx context.Context, commandID string) (stores.AppendResult, bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.commands[commandID]
	return r, ok, ctx.Err()
}

// SaveSnapshot implements stores.EventStore.
func (s *Store) SaveSnapshot(ctx context.Context, snap stores.Snapshot) error {
	if err := orchestrix.CheckID("stream id", snap.StreamID); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev, ok := s.snapshots[snap.StreamID]; ok && prev.Version > snap.Version {
		return nil
	}
	snap.Data = append([]byte(nil), snap.Data...)
	s.snapshots[snap.StreamID] = snap
	return ctx.Err()
}

// LoadSnapshot implements stores.EventStore.
func (s *Store) LoadSnapshot(ctx context.Context, streamID string) (stores.Snapshot, bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	snap, ok := s.snapshots[streamID]
	return snap, ok, ctx.Err()
}

// ReadStreams implements stores.MultiStreamReader.
func (s *Store) ReadStreams(ctx context.Context, reads []stores.StreamRead) iter.Seq2[orchestrix.Event, error] {
	return func(yield func(orchestrix.Event, error) bool) {
		for _, r := range reads {
			for e, err := range s.ReadStream(ctx, r.StreamID, r.After) {
				if !yield(e, err) || err != nil {
					return
				}
			}
		}
	}
}

// LoadSnapshots implements stores.MultiStreamReader.
func (s *Store) LoadSnapshots(ctx context.Context, streamIDs []string) (map[string]stores.Snapshot, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]stores.Snapshot{}
	for _, id := range streamIDs {
		if snap, ok := s.snapshots[id]; ok {
			out[id] = snap
		}
	}
	return out, ctx.Err()
}

var (
	_ stores.EventStore        = (*Store)(nil)
	_ stores.RejectionRecorder = (*Store)(nil)
	_ stores.MultiStreamReader = (*Store)(nil)
)
