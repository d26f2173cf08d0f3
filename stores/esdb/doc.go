// Package esdb is the EventSourcingDB event store: a small client for
// EventSourcingDB's HTTP API (the v2 API where the server offers it, else
// v1) and Store, a stores.EventStore on top of it that passes the stores
// conformance suite.
//
//	client, err := esdb.NewClient("http://localhost:3000", token)
//	if err != nil { … }
//	store, err := esdb.New(client, esdb.WithSubjectPrefix("/banking"))
//	if err != nil { … }
//	res, err := store.Append(ctx, "acct-1", stores.NoStream, events)
//
// # Client
//
// Client covers every documented endpoint: Ping (no token),
// VerifyAPIToken, WriteEvents with the four preconditions, ReadEvents,
// ObserveEvents (with heartbeats, stall detection and reconnection from
// the last event seen), RunEventQLQuery, RegisterEventSchema,
// ReadSubjects, ReadEventTypes and ReadEventType. It speaks the v2 API
// (reads by the HTTP method QUERY, envelopes, coded errors, recursive
// preconditions) when the server offers it, which it asks with a v2 ping
// on its first request, else v1 (Client.API, WithAPI). Streams are
// iter.Seq2[T, error]. Every answer must carry "Server: EventSourcingDB/…"
// (else ErrMissingServerHeader); statuses map to *ServerError (matching
// ErrUnauthorized, ErrNotFound, ErrPreconditionFailed), error lines after
// a 200 to *StreamError (v2 errors with a code to *APIError, matching the
// same sentinels), anything undocumented to ErrMalformedResponse,
// and hashes that do not verify to *IntegrityError. Subjects and event
// types are validated before sending (ValidateSubject, ValidateEventType);
// those errors wrap orchestrix.ErrInvalid. IsRetryable tells transient
// errors apart.
//
// # How Store maps the contract
//
// Subjects. Everything lives below a prefix (WithSubjectPrefix, default
// "/orchestrix"): stream S is the subject <prefix>/streams/<escape(S)>,
// where escape keeps ASCII letters, digits and "-" and writes every other
// byte as "_XX" (so any stream ID becomes one valid segment, reversibly);
// command records live in <prefix>/commands/<escape(commandID)> and
// snapshots in <prefix>/snapshots/<escape(S)>.
//
// Events. Each event's data is an envelope: {"orchestrix": metadata,
// "payload": JSON} or {"orchestrix": metadata, "payloadBase64": "…"}. The
// metadata keeps what the CloudEvent ESDB stores has no place for or sets
// itself: the stream and version, the orchestrix event ID and time (ESDB
// assigns its own), type, source, subject, correlation and causation IDs,
// traceparent, extensions, command ID and content type. The payload is
// embedded as JSON (queryable with EventQL) when the content type is JSON
// and the bytes are already in the compact form the server writes, else
// as base64, so Data always comes back byte for byte. The ESDB type is the
// orchestrix type when that is a reverse domain name, else
// WithEventTypePrefix + "." + the type escaped; the source is the event's
// Source or WithSource; a valid W3C traceparent is also set on the
// CloudEvent.
//
// Versions and expected versions. Version is the event's 1-based index in
// its subject and is written into the envelope. Every append first reads
// the stream's last event (read-events antichronologically, stopping after
// one: one round trip however long the stream) and writes with the
// precondition isSubjectPristine (empty stream) or isSubjectOnEventId(its
// ID), so the versions in the envelopes are exact even under concurrent
// writers. NoStream and Exact(v) are checked against that head before
// writing (a mismatch is a *stores.ConflictError without a write); a 409
// means another writer got in between, so the append plans again: Exact
// then reports the conflict, Any retries (at most WithMaxAppendAttempts
// times). An append therefore costs one read per stream, one EventQL
// query for all its command IDs (FindCommands), and one write.
//
// Command deduplication. An append with a command ID writes, in the same
// write-events call, a record event to the command's subject guarded by
// isSubjectPristine. Writes of one call are atomic, so a command's events
// are stored at most once even when two processes race: the loser's
// precondition fails, it plans again, finds the record (FindCommand reads
// it) and reports Duplicate with the first append's versions.
//
// AppendMany puts every request's events and command records into one
// write-events call, so it is atomic across streams.
//
// Rejections. Store is a stores.RejectionRecorder: AppendDecisions adds
// to that one call a CommandRejectedType event per rejected command, in
// the command's subject and guarded by isSubjectPristine like an accepted
// command's record, so a command is decided once. FindCommand reports it
// as AppendResult.Rejection; recording a command ID that is already
// recorded fails the whole call with a *stores.ConflictError.
//
// Positions and ReadAll. Position is the ESDB event ID + 1 (IDs start at
// "0", positions at 1), so it is unique and increasing but has gaps where
// command records, snapshots and other applications' events sit. ReadAll
// reads <prefix>/streams recursively from lowerBound = cursor.Position
// (inclusive), which is the ID after the last one read; ESDB commits in ID
// order, so the log is gap-safe and Cursor.Tx is always 0.
//
// ReadStream(after) reads the stream's subject backwards from its last
// event and yields the tail after `after` from that one read when it fits
// in memory; a longer tail is read forwards after the cheaper skip (from
// the first event, or from the ID of version after found backwards), so
// the cost does not grow with after.
//
// Snapshots are events in the snapshot subject, each written with a
// precondition on the subject's last event; SaveSnapshot skips a snapshot
// older than the latest, LoadSnapshot reads the latest
// (antichronologically, one event).
//
// Observe(ctx, cursor) streams the log from a cursor and then live, via
// observe-events with reconnection. Store thereby implements
// outbox.Observer: an outbox.Relay over a Store follows that stream (the
// store is its own outbox) rather than polling ReadAll, publishing each
// event as soon as the server pushes it, in transactions together with
// its checkpoint in Kafka. Each relay term observes from the checkpoint
// it recovered, so after a restart, a takeover or a dropped connection
// every event is published exactly once, in log order, as from
// PostgreSQL.
//
// Events under the prefix that the store did not write fail reads with
// ErrForeignEvent; ReadAll and Observe yield it as a *ForeignEventError,
// which an outbox.Relay writes to its dead-letter topic before it reads
// on after the event.
//
// The in-process double of the server is in esdbtest; docs/esdb.md shows
// how to run the tests against a real server.
package esdb
