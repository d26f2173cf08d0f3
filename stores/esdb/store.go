package esdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
)

// Defaults of a Store.
const (
	// DefaultSubjectPrefix is the subject under which a Store keeps its
	// subjects.
	DefaultSubjectPrefix = "/orchestrix"
	// DefaultSource is the CloudEvents source of events whose Source is
	// empty.
	DefaultSource = "urn:orchestrix:store"
	// DefaultEventTypePrefix prefixes orchestrix event types that are not
	// valid ESDB types (see WithEventTypePrefix).
	DefaultEventTypePrefix = "io.orchestrix.event"
	// DefaultMaxAppendAttempts bounds the attempts of one append whose
	// preconditions keep failing because of concurrent writers.
	DefaultMaxAppendAttempts = 64
)

// ESDB event types of the store's bookkeeping events.
const (
	// CommandRecordedType is the record of an accepted command: the
	// stream and versions its append wrote.
	CommandRecordedType = "io.orchestrix.store.command-recorded"
	// CommandRejectedType is the record of a rejected command
	// (AppendDecisions): the stream and the reason, no versions.
	CommandRejectedType = "io.orchestrix.store.command-rejected"
	// SnapshotSavedType is a saved snapshot.
	SnapshotSavedType = "io.orchestrix.store.snapshot-saved"
)

// Store is a stores.EventStore on EventSourcingDB. It is safe for
// concurrent use and keeps no state of its own: everything lives in the
// server, under the subject prefix. See the package documentation for how
// the contract maps onto EventSourcingDB.
type Store struct {
	c           *Client
	prefix      string
	source      string
	typePrefix  string
	maxSize     int
	maxAttempts int
	observe     ObserveOptions
}

// Option configures a Store.
type Option func(*Store)

// WithSubjectPrefix sets the subject under which the store keeps its
// streams, command records and snapshots (default DefaultSubjectPrefix).
// Stores with different prefixes on one server are independent.
func WithSubjectPrefix(p string) Option { return func(s *Store) { s.prefix = p } }

// WithSource sets the CloudEvents source written for events whose Source
// is empty (default DefaultSource).
func WithSource(src string) Option { return func(s *Store) { s.source = src } }

// WithEventTypePrefix sets the prefix of ESDB event types made from
// orchestrix types that are not reverse domain names (default
// DefaultEventTypePrefix; "Deposited" becomes "io.orchestrix.event.Deposited").
func WithEventTypePrefix(p string) Option { return func(s *Store) { s.typePrefix = p } }

// WithMaxEventSize limits one event's Data (default stores.DefaultMaxEventSize).
func WithMaxEventSize(n int) Option { return func(s *Store) { s.maxSize = n } }

// WithMaxAppendAttempts bounds how often one append is retried when its
// preconditions fail because another writer got in between (default
// DefaultMaxAppendAttempts). An append with expected version Any that
// still loses then returns a *stores.ConflictError.
func WithMaxAppendAttempts(n int) Option { return func(s *Store) { s.maxAttempts = n } }

// WithObserveOptions sets the stall timeout, backoff, attempt limit and
// reconnect hook of Observe (Recursive, LowerBound and FromLatestEvent are
// set by Observe itself).
func WithObserveOptions(o ObserveOptions) Option { return func(s *Store) { s.observe = o } }

// New returns a store on the client. It reports every problem with the
// options at once; the errors wrap orchestrix.ErrInvalid.
func New(c *Client, opts ...Option) (*Store, error) {
	s := &Store{
		c:           c,
		prefix:      DefaultSubjectPrefix,
		source:      DefaultSource,
		typePrefix:  DefaultEventTypePrefix,
		maxSize:     stores.DefaultMaxEventSize,
		maxAttempts: DefaultMaxAppendAttempts,
	}
	for _, o := range opts {
		o(s)
	}
	var errs []error
	if c == nil {
		errs = append(errs, errors.New("client is nil"))
	}
	s.prefix = strings.TrimSuffix(s.prefix, "/")
	if err := ValidateSubject(s.prefix + "/streams"); err != nil {
		errs = append(errs, fmt.Errorf("subject prefix %q: %w", s.prefix, err))
	}
	if s.source == "" {
		errs = append(errs, errors.New("source is empty"))
	}
	if err := ValidateEventType(s.typePrefix + ".x"); err != nil {
		errs = append(errs, fmt.Errorf("event type prefix %q: %w", s.typePrefix, err))
	}
	if s.maxSize <= 0 {
		errs = append(errs, fmt.Errorf("max event size %d is not positive", s.maxSize))
	}
	if s.maxAttempts <= 0 {
		errs = append(errs, fmt.Errorf("max append attempts %d is not positive", s.maxAttempts))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("esdb: new store: %w: %w", orchestrix.ErrInvalid, errors.Join(errs...))
	}
	return s, nil
}

// Client returns the store's client.
func (s *Store) Client() *Client { return s.c }

// StreamsSubject is the subject whose children are the streams; ReadAll
// and Observe read it recursively.
func (s *Store) StreamsSubject() string { return s.prefix + "/streams" }

// StreamSubject returns the subject of a stream: the prefix, "/streams/"
// and the stream ID escaped into one segment (letters, digits and "-"
// stay; every other byte becomes "_XX", e.g. "order/42" → "order_2F42").
func (s *Store) StreamSubject(streamID string) string {
	return s.prefix + "/streams/" + escapeSegment(streamID)
}

func (s *Store) commandSubject(commandID string) string {
	return s.prefix + "/commands/" + escapeSegment(commandID)
}

func (s *Store) snapshotSubject(streamID string) string {
	return s.prefix + "/snapshots/" + escapeSegment(streamID)
}

// head is a stream's state: its version and the ESDB ID of its last event.
type head struct {
	version uint64
	lastID  string
}

// latest reads the last event of a subject, if any.
func (s *Store) latest(ctx context.Context, subject string) (Event, bool, error) {
	for e, err := range s.c.ReadEvents(ctx, subject, ReadOptions{Order: Antichronological}) {
		if err != nil {
			return Event{}, false, err
		}
		return e, true, nil
	}
	return Event{}, false, nil
}

func (s *Store) head(ctx context.Context, streamID string) (head, error) {
	e, ok, err := s.latest(ctx, s.StreamSubject(streamID))
	if err != nil || !ok {
		return head{}, err
	}
	ev, err := s.decode(e)
	if err != nil {
		return head{}, err
	}
	return head{version: ev.Version, lastID: e.ID}, nil
}

// decode turns a stream event into an orchestrix event.
func (s *Store) decode(e Event) (orchestrix.Event, error) {
	var env envelope
	if err := json.Unmarshal(e.Data, &env); err != nil || env.Orchestrix == nil {
		return orchestrix.Event{}, fmt.Errorf("esdb: event %s in %s has no orchestrix envelope: %w", e.ID, e.Subject, ErrForeignEvent)
	}
	m := env.Orchestrix
	if m.V != envelopeVersion || m.Version == 0 {
		return orchestrix.Event{}, fmt.Errorf("esdb: event %s in %s: envelope v%d, version %d: %w", e.ID, e.Subject, m.V, m.Version, ErrForeignEvent)
	}
	if want := s.StreamSubject(m.Stream); e.Subject != want {
		return orchestrix.Event{}, fmt.Errorf("esdb: event %s of stream %q is in %s, not %s: %w", e.ID, m.Stream, e.Subject, want, ErrForeignEvent)
	}
	data, err := payloadBytes(env.Payload, env.PayloadBase64)
	if err != nil {
		return orchestrix.Event{}, fmt.Errorf("esdb: event %s: %w: %w", e.ID, ErrForeignEvent, err)
	}
	pos, err := e.Position()
	if err != nil {
		return orchestrix.Event{}, err
	}
	t := e.Time
	if m.Time != nil {
		t = *m.Time
	}
	return orchestrix.Event{
		Metadata: orchestrix.Metadata{
			ID: m.ID, Type: m.Type, Source: m.Source, Subject: m.Subject, Time: t,
			CorrelationID: m.CorrelationID, CausationID: m.CausationID, TraceParent: m.TraceParent,
			Extensions: m.Extensions,
		},
		StreamID:    m.Stream,
		Version:     m.Version,
		Position:    pos + 1,
		CommandID:   m.CommandID,
		ContentType: m.ContentType,
		Data:        data,
	}, nil
}

// candidate builds the ESDB event for an orchestrix event at a version.
func (s *Store) candidate(streamID string, version uint64, e orchestrix.Event) (EventCandidate, error) {
	m := &meta{
		V: envelopeVersion, Stream: streamID, Version: version, ID: e.ID, Type: e.Type,
		Source: e.Source, Subject: e.Subject, CorrelationID: e.CorrelationID, CausationID: e.CausationID,
		TraceParent: e.TraceParent, Extensions: e.Extensions, CommandID: e.CommandID, ContentType: e.ContentType,
	}
	if !e.Time.IsZero() {
		t := e.Time
		m.Time = &t
	}
	env := envelope{Orchestrix: m}
	env.Payload, env.PayloadBase64 = payloadFields(e.ContentType, e.Data)
	data, err := json.Marshal(env)
	if err != nil {
		return EventCandidate{}, fmt.Errorf("esdb: encode event %d of %q: %w", version, streamID, err)
	}
	src := e.Source
	if src == "" {
		src = s.source
	}
	c := EventCandidate{Source: src, Subject: s.StreamSubject(streamID), Type: mapEventType(s.typePrefix, e.Type), Data: data}
	if ValidateTraceParent(e.TraceParent) == nil {
		c.TraceParent = e.TraceParent
	}
	return c, nil
}

// commandRecord is the data of a command's record.
type commandRecord struct {
	Stream      string `json:"stream"`
	FromVersion uint64 `json:"fromVersion"`
	ToVersion   uint64 `json:"toVersion"`
}

// rejectionRecord is the data of a rejected command's record: the reason
// as JSON when it is in the compact form the server writes (so it comes
// back byte for byte), else as base64.
type rejectionRecord struct {
	Stream       string          `json:"stream"`
	Reason       json.RawMessage `json:"reason,omitempty"`
	ReasonBase64 *string         `json:"reasonBase64,omitempty"`
}

// parseCommandRecord turns the first event of a command's subject into
// the result FindCommand reports: the versions of an accepted command, or
// the reason of a rejected one.
func parseCommandRecord(commandID string, e Event) (stores.AppendResult, error) {
	foreign := fmt.Errorf("esdb: command record %s of %q: %w", e.ID, commandID, ErrForeignEvent)
	switch e.Type {
	case CommandRecordedType:
		var rec commandRecord
		if err := json.Unmarshal(e.Data, &rec); err != nil || rec.Stream == "" {
			return stores.AppendResult{}, foreign
		}
		return stores.AppendResult{StreamID: rec.Stream, FromVersion: rec.FromVersion, ToVersion: rec.ToVersion}, nil
	case CommandRejectedType:
		var rec rejectionRecord
		if err := json.Unmarshal(e.Data, &rec); err != nil || rec.Stream == "" {
			return stores.AppendResult{}, foreign
		}
		reason, err := payloadBytes(rec.Reason, rec.ReasonBase64)
		if err != nil || len(reason) == 0 {
			return stores.AppendResult{}, foreign
		}
		return stores.AppendResult{StreamID: rec.Stream, Rejection: reason}, nil
	}
	return stores.AppendResult{}, foreign
}

// Append implements stores.EventStore.
func (s *Store) Append(ctx context.Context, streamID string, expected stores.ExpectedVersion, events []orchestrix.Event) (stores.AppendResult, error) {
	res, err := s.AppendMany(ctx, []stores.AppendRequest{{StreamID: streamID, Expected: expected, Events: events}})
	if err != nil {
		return stores.AppendResult{}, err
	}
	return res[0], nil
}

// AppendMany implements stores.EventStore: every request's events, and the
// records of their commands, go into one write-events call, which the
// server applies atomically.
func (s *Store) AppendMany(ctx context.Context, reqs []stores.AppendRequest) ([]stores.AppendResult, error) {
	return s.AppendDecisions(ctx, reqs, nil)
}

// AppendDecisions implements stores.RejectionRecorder: it does what
// AppendMany does and, in the same write-events call, records each
// rejected command as a CommandRejectedType event in the command's
// subject, guarded by isSubjectPristine like the record of an accepted
// command, so a command is decided once. FindCommand then reports the
// rejection, and an append with its command ID writes nothing. A rejected
// command whose ID is already recorded (accepted or rejected), appended
// by this call, or rejected twice in it fails the whole call with a
// *stores.ConflictError and writes nothing.
func (s *Store) AppendDecisions(ctx context.Context, reqs []stores.AppendRequest, rejected []stores.RejectedCommand) ([]stores.AppendResult, error) {
	if len(reqs) == 0 && len(rejected) == 0 {
		return []stores.AppendResult{}, nil
	}
	// Events get their IDs once, so a retried attempt writes the same
	// events.
	prepared := make([][]orchestrix.Event, len(reqs))
	for i, r := range reqs {
		if err := stores.CheckEvents(r.StreamID, r.Events, s.maxSize); err != nil {
			return nil, err
		}
		evs := make([]orchestrix.Event, len(r.Events))
		for j, e := range r.Events {
			if e.ID == "" {
				id, err := uuid.NewV7()
				if err != nil {
					return nil, fmt.Errorf("esdb: event id: %w", err)
				}
				e.ID = id.String()
			}
			if e.Subject == "" {
				e.Subject = r.StreamID
			}
			evs[j] = e
		}
		prepared[i] = evs
	}
	rejections := make([]EventCandidate, len(rejected))
	for i, rc := range rejected {
		if err := stores.CheckRejected(rc); err != nil {
			return nil, err
		}
		rec := rejectionRecord{Stream: rc.StreamID}
		rec.Reason, rec.ReasonBase64 = payloadFields("application/json", rc.Reason)
		data, err := json.Marshal(rec)
		if err != nil {
			return nil, fmt.Errorf("esdb: encode rejection of %q: %w", rc.CommandID, err)
		}
		rejections[i] = EventCandidate{Source: s.source, Subject: s.commandSubject(rc.CommandID), Type: CommandRejectedType, Data: data}
	}
	var lastConflict *stores.ConflictError
	for attempt := 0; attempt < s.maxAttempts; attempt++ {
		p, err := s.plan(ctx, reqs, prepared, rejected, rejections)
		if err != nil {
			return nil, err
		}
		if len(p.candidates) == 0 {
			return p.results, nil
		}
		_, err = s.c.WriteEvents(ctx, p.candidates, p.preconditions...)
		if err == nil {
			return p.results, nil
		}
		if !errors.Is(err, ErrPreconditionFailed) {
			return nil, fmt.Errorf("esdb: append: %w", err)
		}
		// Someone wrote to one of the streams or recorded one of the
		// commands in between: plan again from the new state, which
		// reports the conflict or the duplicate, or retries an Any.
		lastConflict = p.firstWrite
		if err := pause(ctx, attempt); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("esdb: append: preconditions failed %d times under concurrent writers: %w", s.maxAttempts, lastConflict)
}

// pause waits a little longer after each failed attempt, so competing
// writers spread out, or returns the context's error.
func pause(ctx context.Context, attempt int) error {
	t := time.NewTimer(time.Duration(attempt) * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

type appendPlan struct {
	results       []stores.AppendResult
	candidates    []EventCandidate
	preconditions []Precondition
	firstWrite    *stores.ConflictError
}

// plan reads the current state of the streams and commands of reqs and
// rejected and builds one write: the events with their versions, each
// command's record, each rejection, and the preconditions that pin the
// state the plan was made on.
func (s *Store) plan(ctx context.Context, reqs []stores.AppendRequest, prepared [][]orchestrix.Event, rejected []stores.RejectedCommand, rejections []EventCandidate) (appendPlan, error) {
	p := appendPlan{results: make([]stores.AppendResult, len(reqs))}
	ids := make([]string, 0, len(reqs)+len(rejected))
	for _, r := range reqs {
		if cmd := r.Events[0].CommandID; cmd != "" {
			ids = append(ids, cmd)
		}
	}
	for _, rc := range rejected {
		ids = append(ids, rc.CommandID)
	}
	recorded, err := s.lookupCommands(ctx, ids)
	if err != nil {
		return appendPlan{}, err
	}
	heads := map[string]*head{}
	commands := map[string]int{}
	for i, r := range reqs {
		cmd := r.Events[0].CommandID
		if cmd != "" {
			if j, ok := commands[cmd]; ok {
				p.results[i] = p.results[j]
				p.results[i].Duplicate = true
				continue
			}
			if prev, found := recorded[cmd]; found {
				prev.Duplicate = true
				p.results[i] = prev
				continue
			}
			commands[cmd] = i
		}
		h, ok := heads[r.StreamID]
		if !ok {
			cur, err := s.head(ctx, r.StreamID)
			if err != nil {
				return appendPlan{}, fmt.Errorf("esdb: append to %q: %w", r.StreamID, err)
			}
			h = &cur
			heads[r.StreamID] = h
			subject := s.StreamSubject(r.StreamID)
			if cur.lastID == "" {
				p.preconditions = append(p.preconditions, IsSubjectPristine(subject))
			} else {
				p.preconditions = append(p.preconditions, IsSubjectOnEventID(subject, cur.lastID))
			}
		}
		if !r.Expected.IsAny() && r.Expected.Version() != h.version {
			return appendPlan{}, &stores.ConflictError{StreamID: r.StreamID, Expected: r.Expected, Actual: h.version}
		}
		if p.firstWrite == nil {
			p.firstWrite = &stores.ConflictError{StreamID: r.StreamID, Expected: r.Expected, Actual: h.version}
		}
		res := stores.AppendResult{StreamID: r.StreamID, FromVersion: h.version + 1, ToVersion: h.version + uint64(len(r.Events))}
		for j, e := range prepared[i] {
			c, err := s.candidate(r.StreamID, res.FromVersion+uint64(j), e)
			if err != nil {
				return appendPlan{}, err
			}
			p.candidates = append(p.candidates, c)
		}
		h.version = res.ToVersion
		p.results[i] = res
		if cmd != "" {
			data, err := json.Marshal(commandRecord{Stream: res.StreamID, FromVersion: res.FromVersion, ToVersion: res.ToVersion})
			if err != nil {
				return appendPlan{}, fmt.Errorf("esdb: encode command record: %w", err)
			}
			subject := s.commandSubject(cmd)
			p.candidates = append(p.candidates, EventCandidate{Source: s.source, Subject: subject, Type: CommandRecordedType, Data: data})
			p.preconditions = append(p.preconditions, IsSubjectPristine(subject))
		}
	}
	// A command is decided once: a rejection of a command recorded
	// before, appended by this call or rejected twice in it conflicts.
	rejecting := map[string]bool{}
	for i, rc := range rejected {
		_, appended := commands[rc.CommandID]
		_, found := recorded[rc.CommandID]
		if appended || found || rejecting[rc.CommandID] {
			return appendPlan{}, &stores.ConflictError{StreamID: rc.StreamID, Expected: stores.Any}
		}
		rejecting[rc.CommandID] = true
		p.candidates = append(p.candidates, rejections[i])
		p.preconditions = append(p.preconditions, IsSubjectPristine(rejections[i].Subject))
		if p.firstWrite == nil {
			p.firstWrite = &stores.ConflictError{StreamID: rc.StreamID, Expected: stores.Any}
		}
	}
	return p, nil
}

// lookupCommands returns the recorded results of the command IDs that
// have a record, in one EventQL query per commandsPerQuery IDs.
func (s *Store) lookupCommands(ctx context.Context, ids []string) (map[string]stores.AppendResult, error) {
	return s.findCommands(ctx, ids, false)
}

// commandsPerQuery bounds the command IDs of one FindCommands query (and
// so its length: about 60 bytes per ID).
const commandsPerQuery = 256

// FindCommands looks up many command IDs at once and returns the results
// of those that are recorded, marked Duplicate (the aggregates
// processor's CommandFinder): one run-eventql-query request per 256 IDs
// instead of one read-events request per ID. The query selects the
// events of the IDs' command subjects and projects their ID, subject,
// type and data; a command subject whose first event the store did not
// write fails with ErrForeignEvent, as FindCommand does.
func (s *Store) FindCommands(ctx context.Context, ids []string) (map[string]stores.AppendResult, error) {
	return s.findCommands(ctx, ids, true)
}

func (s *Store) findCommands(ctx context.Context, ids []string, duplicate bool) (map[string]stores.AppendResult, error) {
	out := make(map[string]stores.AppendResult, len(ids))
	bySubject := make(map[string]string, len(ids))
	subjects := make([]string, 0, len(ids))
	for _, id := range ids {
		if err := orchestrix.CheckID("command id", id); err != nil {
			return nil, fmt.Errorf("esdb: find commands: %w", err)
		}
		sub := s.commandSubject(id)
		if _, ok := bySubject[sub]; ok {
			continue
		}
		bySubject[sub] = id
		subjects = append(subjects, sub)
	}
	for len(subjects) > 0 {
		chunk := subjects[:min(commandsPerQuery, len(subjects))]
		subjects = subjects[len(chunk):]
		var q strings.Builder
		q.WriteString("FROM e IN events WHERE ")
		for i, sub := range chunk {
			if i > 0 {
				q.WriteString(" OR ")
			}
			// Subjects are [0-9A-Za-z_/-] (ValidateSubject): no quoting
			// needed.
			q.WriteString(`e.subject == "` + sub + `"`)
		}
		q.WriteString(" ORDER BY e.id ASC PROJECT INTO { id: e.id, subject: e.subject, type: e.type, data: e.data }")
		for row, err := range s.c.RunEventQLQuery(ctx, q.String()) {
			if err != nil {
				return nil, fmt.Errorf("esdb: find %d commands: %w", len(ids), err)
			}
			var r struct {
				ID      string          `json:"id"`
				Subject string          `json:"subject"`
				Type    string          `json:"type"`
				Data    json.RawMessage `json:"data"`
			}
			if err := json.Unmarshal(row, &r); err != nil || r.Subject == "" {
				return nil, fmt.Errorf("esdb: find commands: row %s: %w", snippet(row), ErrMalformedResponse)
			}
			e := Event{ID: r.ID, Subject: r.Subject, Type: r.Type, Data: r.Data}
			id, ok := bySubject[e.Subject]
			if !ok {
				return nil, fmt.Errorf("esdb: find commands: row of subject %s, which was not asked for: %w", e.Subject, ErrMalformedResponse)
			}
			if _, seen := out[id]; seen {
				continue // a later event of the subject: the first decides
			}
			res, err := parseCommandRecord(id, e)
			if err != nil {
				return nil, err
			}
			res.Duplicate = duplicate
			out[id] = res
		}
	}
	return out, nil
}

// Bounds of the tail ReadStream keeps in memory while it reads a stream
// backwards from its head.
const (
	tailEvents = 512
	tailBytes  = 4 << 20
)

// ReadStream implements stores.EventStore. ESDB cannot seek by version
// within a subject, but it reads a subject from its last event backwards
// and from any event ID forwards (lowerBound), so the cost of skipping
// `after` events does not grow with after:
//
//   - after 0: one chronological read of the subject;
//   - otherwise one antichronological read from the head (version V). A
//     tail of V-after events that fits in memory (512 events, 4 MiB) is
//     yielded from that one read; a longer one is read chronologically
//     after the cheaper skip: from the first event skipping after events
//     when after ≤ V-after, else from lowerBound = the ID of version
//     after, found by reading on backwards.
//
// So it transfers the V-after events it yields plus at most
// min(after, V-after) more, whatever after is: loading an aggregate from
// its snapshot at version after costs the events since the snapshot.
func (s *Store) ReadStream(ctx context.Context, streamID string, after uint64) iter.Seq2[orchestrix.Event, error] {
	return func(yield func(orchestrix.Event, error) bool) {
		if err := orchestrix.CheckID("stream id", streamID); err != nil {
			yield(orchestrix.Event{}, fmt.Errorf("read stream: %w", err))
			return
		}
		if after == 0 {
			s.readForward(ctx, streamID, 0, nil, yield)
			return
		}
		var (
			tail       []orchestrix.Event // versions head, head-1, …
			size       int
			full       bool // the tail outgrew memory: only the ID is sought
			head, seen uint64
			afterID    *Bound
		)
		for e, err := range s.c.ReadEvents(ctx, s.StreamSubject(streamID), ReadOptions{Order: Antichronological}) {
			if err != nil {
				yield(orchestrix.Event{}, fmt.Errorf("esdb: read stream %q: %w", streamID, err))
				return
			}
			ev, err := s.decode(e)
			if err == nil {
				if seen == 0 {
					head = ev.Version
				}
				if ev.StreamID != streamID || ev.Version != head-seen {
					err = fmt.Errorf("esdb: event %s is version %d of %q, want version %d of %q: %w", e.ID, ev.Version, ev.StreamID, head-seen, streamID, ErrForeignEvent)
				}
			}
			if err != nil {
				yield(orchestrix.Event{}, err)
				return
			}
			seen++
			if head <= after {
				return // nothing after it
			}
			if ev.Version == after {
				id, err := e.Position()
				if err != nil {
					yield(orchestrix.Event{}, err)
					return
				}
				afterID = &Bound{ID: id, Type: Exclusive}
				break
			}
			if full {
				continue
			}
			tail = append(tail, ev)
			size += len(ev.Data)
			if len(tail) == tailEvents || size >= tailBytes {
				if after <= head-after {
					// Skipping from the first event is cheaper than
					// reading on backwards.
					s.readForward(ctx, streamID, after, nil, yield)
					return
				}
				full, tail = true, nil
			}
		}
		if !full {
			// The whole tail is in memory (or the subject is empty).
			for i := len(tail) - 1; i >= 0; i-- {
				if !yield(tail[i], nil) {
					return
				}
			}
			return
		}
		if afterID == nil {
			yield(orchestrix.Event{}, fmt.Errorf("esdb: read stream %q: version %d not found reading backwards: %w", streamID, after, ErrForeignEvent))
			return
		}
		s.readForward(ctx, streamID, after, afterID, yield)
	}
}

// readForward yields the stream's events with Version > after, reading
// chronologically from lower (nil: from the first event, skipping after
// events), and checks that versions are consecutive.
func (s *Store) readForward(ctx context.Context, streamID string, after uint64, lower *Bound, yield func(orchestrix.Event, error) bool) {
	var index uint64
	if lower != nil {
		index = after
	}
	for e, err := range s.c.ReadEvents(ctx, s.StreamSubject(streamID), ReadOptions{LowerBound: lower}) {
		if err != nil {
			yield(orchestrix.Event{}, fmt.Errorf("esdb: read stream %q: %w", streamID, err))
			return
		}
		index++
		if index <= after {
			continue
		}
		ev, err := s.decode(e)
		if err == nil && (ev.Version != index || ev.StreamID != streamID) {
			err = fmt.Errorf("esdb: event %s is version %d of %q at index %d of %q: %w", e.ID, ev.Version, ev.StreamID, index, streamID, ErrForeignEvent)
		}
		if err != nil {
			yield(orchestrix.Event{}, err)
			return
		}
		if !yield(ev, nil) {
			return
		}
	}
}

// ReadAll implements stores.EventStore: it reads the streams subject
// recursively from the ESDB ID after.Position (Position is the ESDB ID +
// 1, so a cursor's Position is the ID of the next event to read).
// EventSourcingDB commits in ID order, so the log is gap-safe and Tx is
// always 0.
func (s *Store) ReadAll(ctx context.Context, after stores.Cursor, limit int) iter.Seq2[stores.Entry, error] {
	return func(yield func(stores.Entry, error) bool) {
		opts := ReadOptions{Recursive: true}
		if after.Position > 0 {
			opts.LowerBound = &Bound{ID: after.Position, Type: Inclusive}
		}
		n := 0
		for e, err := range s.c.ReadEvents(ctx, s.StreamsSubject(), opts) {
			if err != nil {
				yield(stores.Entry{}, fmt.Errorf("esdb: read all: %w", err))
				return
			}
			if limit > 0 && n >= limit {
				return
			}
			ev, err := s.decode(e)
			if err != nil {
				yield(stores.Entry{}, foreign(e, err))
				return
			}
			n++
			if !yield(stores.Entry{Event: ev, Cursor: stores.Cursor{Position: ev.Position}}, nil) {
				return
			}
		}
	}
}

// Observe yields every stream event after the cursor in log order, then
// each new one as it is written, until ctx ends: the source for an outbox
// relay that keeps its cursor as a durable checkpoint. It rides on
// ObserveEvents, so a dropped or stalled connection is resumed from the
// last event yielded, losing and repeating nothing; transient errors go to
// the OnReconnect hook of WithObserveOptions. The iteration ends with an
// error that retrying cannot fix, or with the context's error.
func (s *Store) Observe(ctx context.Context, after stores.Cursor) iter.Seq2[stores.Entry, error] {
	return func(yield func(stores.Entry, error) bool) {
		o := s.observe
		o.Recursive, o.FromLatestEvent, o.LowerBound = true, nil, nil
		if after.Position > 0 {
			o.LowerBound = &Bound{ID: after.Position, Type: Inclusive}
		}
		for e, err := range s.c.ObserveEvents(ctx, s.StreamsSubject(), o) {
			if err != nil {
				yield(stores.Entry{}, fmt.Errorf("esdb: observe: %w", err))
				return
			}
			ev, err := s.decode(e)
			if err != nil {
				yield(stores.Entry{}, foreign(e, err))
				return
			}
			if !yield(stores.Entry{Event: ev, Cursor: stores.Cursor{Position: ev.Position}}, nil) {
				return
			}
		}
	}
}

// FindCommand implements stores.EventStore by reading the command's record
// subject: the versions of an accepted command, or the Rejection of a
// command recorded by AppendDecisions.
func (s *Store) FindCommand(ctx context.Context, commandID string) (stores.AppendResult, bool, error) {
	if err := orchestrix.CheckID("command id", commandID); err != nil {
		return stores.AppendResult{}, false, fmt.Errorf("esdb: find command: %w", err)
	}
	for e, err := range s.c.ReadEvents(ctx, s.commandSubject(commandID), ReadOptions{}) {
		if err != nil {
			return stores.AppendResult{}, false, fmt.Errorf("esdb: find command %q: %w", commandID, err)
		}
		res, err := parseCommandRecord(commandID, e)
		if err != nil {
			return stores.AppendResult{}, false, err
		}
		return res, true, nil
	}
	return stores.AppendResult{}, false, nil
}

// snapshotRecord is the data of a snapshot event.
type snapshotRecord struct {
	Stream      string          `json:"stream"`
	Version     uint64          `json:"version"`
	Type        string          `json:"type"`
	ContentType string          `json:"contentType,omitempty"`
	Data        json.RawMessage `json:"data,omitempty"`
	DataBase64  *string         `json:"dataBase64,omitempty"`
}

func (s *Store) latestSnapshot(ctx context.Context, streamID string) (stores.Snapshot, string, bool, error) {
	e, ok, err := s.latest(ctx, s.snapshotSubject(streamID))
	if err != nil || !ok {
		return stores.Snapshot{}, "", false, err
	}
	var rec snapshotRecord
	if err := json.Unmarshal(e.Data, &rec); err != nil || e.Type != SnapshotSavedType || rec.Stream != streamID {
		return stores.Snapshot{}, "", false, fmt.Errorf("esdb: snapshot %s of %q: %w", e.ID, streamID, ErrForeignEvent)
	}
	data, err := payloadBytes(rec.Data, rec.DataBase64)
	if err != nil {
		return stores.Snapshot{}, "", false, fmt.Errorf("esdb: snapshot %s of %q: %w: %w", e.ID, streamID, ErrForeignEvent, err)
	}
	return stores.Snapshot{StreamID: streamID, Version: rec.Version, Type: rec.Type, ContentType: rec.ContentType, Data: data}, e.ID, true, nil
}

// SaveSnapshot implements stores.EventStore: it appends a snapshot event to
// the stream's snapshot subject, guarded by the subject's last event, unless
// that one is of a later version.
func (s *Store) SaveSnapshot(ctx context.Context, snap stores.Snapshot) error {
	if err := orchestrix.CheckID("stream id", snap.StreamID); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	if snap.Data == nil {
		return fmt.Errorf("save snapshot of %q: data is nil: %w", snap.StreamID, orchestrix.ErrInvalid)
	}
	if len(snap.Data) > s.maxSize {
		return fmt.Errorf("save snapshot of %q: data is %d bytes, limit %d: %w", snap.StreamID, len(snap.Data), s.maxSize, orchestrix.ErrInvalid)
	}
	rec := snapshotRecord{Stream: snap.StreamID, Version: snap.Version, Type: snap.Type, ContentType: snap.ContentType}
	rec.Data, rec.DataBase64 = payloadFields(snap.ContentType, snap.Data)
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("esdb: encode snapshot of %q: %w", snap.StreamID, err)
	}
	subject := s.snapshotSubject(snap.StreamID)
	for attempt := 0; attempt < s.maxAttempts; attempt++ {
		prev, lastID, ok, err := s.latestSnapshot(ctx, snap.StreamID)
		if err != nil {
			return err
		}
		if ok && prev.Version > snap.Version {
			return nil
		}
		pre := IsSubjectPristine(subject)
		if ok {
			pre = IsSubjectOnEventID(subject, lastID)
		}
		_, err = s.c.WriteEvents(ctx, []EventCandidate{{Source: s.source, Subject: subject, Type: SnapshotSavedType, Data: data}}, pre)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, ErrPreconditionFailed):
			return fmt.Errorf("esdb: save snapshot of %q: %w", snap.StreamID, err)
		}
		// A concurrent save got in between: look again.
		if err := pause(ctx, attempt); err != nil {
			return err
		}
	}
	return fmt.Errorf("esdb: save snapshot of %q: preconditions failed %d times under concurrent writers", snap.StreamID, s.maxAttempts)
}

// LoadSnapshot implements stores.EventStore by reading the snapshot
// subject's last event.
func (s *Store) LoadSnapshot(ctx context.Context, streamID string) (stores.Snapshot, bool, error) {
	if err := orchestrix.CheckID("stream id", streamID); err != nil {
		return stores.Snapshot{}, false, fmt.Errorf("load snapshot: %w", err)
	}
	snap, _, ok, err := s.latestSnapshot(ctx, streamID)
	return snap, ok, err
}

var (
	_ stores.EventStore        = (*Store)(nil)
	_ stores.RejectionRecorder = (*Store)(nil)
)
