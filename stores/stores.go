// Package stores defines the event store contract every Orchestrix store
// implements: stores/memory (tests, the embedded demo), stores/postgres and
// stores/esdb. stores/storetest is the conformance suite they all pass.
//
// # Contract
//
// A store keeps streams of events. Append adds events to one stream with
// an expected version and is atomic: either every event is stored with
// consecutive versions, or nothing is and the error says why. A stale
// expectation fails with a *ConflictError (errors.Is ErrConflict).
//
// Events appended with a CommandID are stored once per command: appending
// the same command again returns the first append's result with Duplicate
// set, and writes nothing.
//
// ReadStream reads one stream in version order, in pages, so memory stays
// bounded however long the stream is. ReadAll reads every stream's events
// in the store's log order from a [Cursor]; it never skips an event that a
// slower concurrent transaction commits later (gap-safe), and never yields
// an event that is not committed. The log order keeps every stream's
// version order; across streams it is the order in which events became
// safe to read, which is not always ascending Position (see
// stores/postgres).
//
// # Roles
//
// [EventStore] is five small interfaces, so code states the part it uses:
// [StreamAppender] (Append, AppendMany), [StreamReader] (ReadStream),
// [LogReader] (ReadAll: the outbox relay's and projections' source),
// [CommandFinder] (FindCommand) and [SnapshotStore] (SaveSnapshot,
// LoadSnapshot). Optional capabilities are interfaces of their own, found
// by type assertion: [RejectionRecorder], [MultiStreamReader], [Leaser].
package stores

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrConflict: the stream is not at the expected version.
	ErrConflict = errors.New("stores: version conflict")
	// ErrNotMigrated: the store's schema is missing or older than the code.
	ErrNotMigrated = errors.New("stores: schema not migrated")
	// ErrSchemaTooNew: the database holds migrations this code does not know.
	ErrSchemaTooNew = errors.New("stores: schema is newer than this code")
)

// ConflictError reports a failed expected-version check.
type ConflictError struct {
	StreamID string
	Expected ExpectedVersion
	// Actual is the stream's version when it could be read; 0 for an empty
	// or missing stream.
	Actual uint64
}

// Error describes the conflict.
func (e *ConflictError) Error() string {
	return fmt.Sprintf("stores: version conflict on stream %q: expected %s, stream is at %d", e.StreamID, e.Expected, e.Actual)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// ExpectedVersion is what Append requires of the stream before it writes.
// The zero value is NoStream.
type ExpectedVersion struct {
	any     bool
	version uint64
}

var (
	// Any appends whatever the stream's version.
	Any = ExpectedVersion{any: true}
	// NoStream requires that the stream has no events.
	NoStream = ExpectedVersion{}
)

// Exact requires the stream to be at version v (0 means empty, like NoStream).
func Exact(v uint64) ExpectedVersion { return ExpectedVersion{version: v} }

// IsAny reports whether e is Any.
func (e ExpectedVersion) IsAny() bool { return e.any }

// Version returns the exact version required; meaningless for Any.
func (e ExpectedVersion) Version() uint64 { return e.version }

// String returns "any", "no stream" or the version.
func (e ExpectedVersion) String() string {
	switch {
	case e.any:
		return "any"
	case e.version == 0:
		return "no stream"
	}
	return strconv.FormatUint(e.version, 10)
}

// AppendResult describes a successful append.
type AppendResult struct {
	StreamID string
	// FromVersion and ToVersion are the first and last versions written.
	FromVersion, ToVersion uint64
	// Duplicate is true when the command had been appended before: nothing
	// was written and the versions are those of the first append.
	Duplicate bool
	// Rejection is set when the command was recorded as rejected
	// (RejectionRecorder): it holds the recorded reason, no events were
	// ever written for it, and the versions are 0.
	Rejection []byte
}

// RejectedCommand is a command that was decided and refused, recorded so
// that a redelivered copy gets the same answer instead of a new decision
// against a state that has moved on.
type RejectedCommand struct {
	CommandID string
	StreamID  string
	// Reason is opaque to the store (the aggregates package keeps the
	// JSON Outcome there).
	Reason []byte
}

// RejectionRecorder is an optional EventStore interface (memory, esdb and
// postgres stores have it). AppendDecisions does what AppendMany does
// and, in the same atomic step, records the rejected commands: FindCommand
// then reports each as a Duplicate carrying its Rejection, and a later
// append request with its command ID writes nothing. A rejected command
// whose ID is already recorded (accepted or rejected, e.g. by another
// processor that got the partition) fails the whole call with a
// *ConflictError, so the caller re-reads the first decision.
type RejectionRecorder interface {
	AppendDecisions(ctx context.Context, reqs []AppendRequest, rejected []RejectedCommand) ([]AppendResult, error)
}

// StreamRead names a stream and the version after which to read it.
type StreamRead struct {
	StreamID string
	After    uint64
}

// MultiStreamReader is an optional EventStore interface (stores/postgres
// and stores/memory have it) for loading many aggregates in a few round trips instead of
// two per aggregate: the aggregates processor loads the cold aggregates
// of a poll with it.
type MultiStreamReader interface {
	// LoadSnapshots returns the latest snapshot of each stream that has
	// one.
	LoadSnapshots(ctx context.Context, streamIDs []string) (map[string]Snapshot, error)
	// ReadStreams yields the events of each stream with Version > its
	// After, stream by stream in the order given, each in version order.
	// Memory stays bounded: the store reads in pages.
	ReadStreams(ctx context.Context, reads []StreamRead) iter.Seq2[orchestrix.Event, error]
}

// Term is one term of leadership won from an Elector.
type Term interface {
	// Lost is closed when the term ends by itself: the lock's session
	// broke, or the database ended a holder that stopped answering.
	Lost() <-chan struct{}
	// Release ends the term and lets a standby take over at once.
	Release()
}

// Elector campaigns for the leadership of one role (the outbox relay of
// a transactional ID, a saga timer poller, a projection rebuild) among
// processes: at most one holds a term at a time.
type Elector interface {
	// Campaign blocks until this process leads or ctx ends.
	Campaign(ctx context.Context) (Term, error)
}

// ElectorConfig describes an Elector to a Leaser.
type ElectorConfig struct {
	// Role is what is led; electors of one role exclude each other.
	Role string
	// Lease is how long a leader that stopped answering (paused, hung,
	// partitioned) keeps its term before a standby takes over.
	Lease time.Duration
	// Instance names the campaigning process where the database shows
	// sessions (PostgreSQL's application_name).
	Instance string
	// Logger receives campaign warnings (nil: discard).
	Logger *slog.Logger
}

// Leaser is an optional EventStore interface (stores/postgres has it): a
// store that can hold leases in its database gives runtimes an Elector
// without any other coordination service.
type Leaser interface {
	Elector(cfg ElectorConfig) (Elector, error)
}

// AppendRequest is one stream's part of an AppendMany call.
type AppendRequest struct {
	StreamID string
	Expected ExpectedVersion
	Events   []orchestrix.Event
}

// Cursor is a place in a store's log. The zero value is the beginning.
// Tx orders safe windows for stores whose positions are not assigned in
// commit order (stores/postgres keeps the writing transaction's ID there);
// stores that commit in position order leave it 0.
type Cursor struct {
	Tx       uint64
	Position uint64
}

// String formats the cursor as "tx/position", parseable by ParseCursor.
func (c Cursor) String() string {
	return strconv.FormatUint(c.Tx, 10) + "/" + strconv.FormatUint(c.Position, 10)
}

// ParseCursor parses the String form.
func ParseCursor(s string) (Cursor, error) {
	tx, pos, ok := strings.Cut(s, "/")
	if !ok {
		return Cursor{}, fmt.Errorf("stores: cursor %q is not tx/position: %w", s, orchestrix.ErrInvalid)
	}
	t, err1 := strconv.ParseUint(tx, 10, 64)
	p, err2 := strconv.ParseUint(pos, 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return Cursor{}, fmt.Errorf("stores: cursor %q: %w: %w", s, orchestrix.ErrInvalid, err)
	}
	return Cursor{Tx: t, Position: p}, nil
}

// Entry is one event read from the log with the cursor just after it.
type Entry struct {
	orchestrix.Event
	Cursor Cursor
}

// Snapshot is a stream's folded state at a version, encoded by the caller.
type Snapshot struct {
	StreamID    string
	Version     uint64
	Type        string
	ContentType string
	Data        []byte
}

// StreamAppender is the write side of an [EventStore]: it appends events
// to streams with an expected version. A command processor that also
// reads its aggregates needs [StreamReader], [CommandFinder] and
// [SnapshotStore] too.
type StreamAppender interface {
	// Append writes events to one stream if it is at the expected version.
	// Versions and positions of the passed events are ignored and assigned.
	Append(ctx context.Context, streamID string, expected ExpectedVersion, events []orchestrix.Event) (AppendResult, error)
	// AppendMany writes to several streams in one atomic step: if any
	// request conflicts, nothing is written and the *ConflictError names
	// the stream. Requests whose command was appended before are reported
	// Duplicate and skipped; the others are written.
	AppendMany(ctx context.Context, reqs []AppendRequest) ([]AppendResult, error)
}

// StreamReader reads one stream, the way an aggregate is loaded.
type StreamReader interface {
	// ReadStream yields the stream's events with Version > after, in order.
	// A missing stream yields nothing.
	ReadStream(ctx context.Context, streamID string, after uint64) iter.Seq2[orchestrix.Event, error]
}

// LogReader reads the store's whole log, gap-safe, from a [Cursor]: what
// the outbox relay publishes (outbox.Source) and a projection reads
// (projections.FromStore). Runtimes that take a LogReader look for the
// optional capabilities of the store behind it ([Leaser], and their own
// small interfaces) by type assertion.
type LogReader interface {
	// ReadAll yields at most limit (0: no limit) committed events after the
	// cursor, in log order, each with the cursor to resume after it.
	ReadAll(ctx context.Context, after Cursor, limit int) iter.Seq2[Entry, error]
}

// CommandFinder finds what an earlier append did with a command, so a
// redelivered command gets its first answer.
type CommandFinder interface {
	// FindCommand returns the result of the append that recorded commandID.
	FindCommand(ctx context.Context, commandID string) (AppendResult, bool, error)
}

// SnapshotStore keeps each stream's latest [Snapshot].
type SnapshotStore interface {
	// SaveSnapshot stores s unless a snapshot of a later version exists.
	SaveSnapshot(ctx context.Context, s Snapshot) error
	// LoadSnapshot returns the stream's latest snapshot, if any.
	LoadSnapshot(ctx context.Context, streamID string) (Snapshot, bool, error)
}

// EventStore is the contract of every store: all five roles
// ([StreamAppender], [StreamReader], [LogReader], [CommandFinder],
// [SnapshotStore]). Implementations are safe for concurrent use. Code
// that needs one role takes that role; the optional interfaces
// ([RejectionRecorder], [MultiStreamReader], [Leaser]) are found by type
// assertion.
type EventStore interface {
	StreamAppender
	StreamReader
	LogReader
	CommandFinder
	SnapshotStore
}

// CheckRejected validates a rejected command before a store records it: a
// valid command and stream ID and a reason that is a JSON value. The
// returned error wraps orchestrix.ErrInvalid.
func CheckRejected(rc RejectedCommand) error {
	if err := orchestrix.CheckID("command id", rc.CommandID); err != nil {
		return fmt.Errorf("record rejection: %w", err)
	}
	if err := orchestrix.CheckID("stream id", rc.StreamID); err != nil {
		return fmt.Errorf("record rejection of %q: %w", rc.CommandID, err)
	}
	if len(rc.Reason) == 0 || !json.Valid(rc.Reason) {
		return fmt.Errorf("record rejection of %q: the reason must be JSON: %w", rc.CommandID, orchestrix.ErrInvalid)
	}
	return nil
}

// DefaultMaxEventSize is the default limit on one event's Data.
const DefaultMaxEventSize = 1 << 20

// CheckEvents validates what every store requires of an append before it
// writes anything: a valid stream ID, at least one event, a type and
// non-nil data of at most maxSize bytes each, and one command ID for all
// events (or none). The returned error wraps orchestrix.ErrInvalid.
func CheckEvents(streamID string, events []orchestrix.Event, maxSize int) error {
	if err := orchestrix.CheckID("stream id", streamID); err != nil {
		return err
	}
	if len(events) == 0 {
		return fmt.Errorf("append to %q: no events: %w", streamID, orchestrix.ErrInvalid)
	}
	var errs []error
	for i, e := range events {
		if err := orchestrix.CheckID("event type", e.Type); err != nil {
			errs = append(errs, fmt.Errorf("event %d: %w", i, err))
		}
		if e.Data == nil {
			errs = append(errs, fmt.Errorf("event %d (%s): data is nil (use an empty payload such as {}): %w", i, e.Type, orchestrix.ErrInvalid))
		}
		if len(e.Data) > maxSize {
			errs = append(errs, fmt.Errorf("event %d (%s): data is %d bytes, limit %d: %w", i, e.Type, len(e.Data), maxSize, orchestrix.ErrInvalid))
		}
		if e.CommandID != events[0].CommandID {
			errs = append(errs, fmt.Errorf("event %d: command id %q differs from the first event's %q: %w", i, e.CommandID, events[0].CommandID, orchestrix.ErrInvalid))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("append to %q: %w", streamID, errors.Join(errs...))
	}
	return nil
}
