// Package postgres is the PostgreSQL event store (pgx/v5, pgxpool).
//
// # Schema
//
// Tables live in a configurable schema (default "orchestrix") created by
// explicit migrations: Migrate, or `orchestrix migrate`. New refuses a
// schema that is missing, behind or ahead of the embedded migrations.
// The runtime role needs only INSERT and SELECT on events and commands
// (and UPDATE on snapshots): events are never updated or deleted.
//
// # Appends
//
// A single Append is one SQL statement, so one round trip in its own
// implicit transaction: it reads the stream's version, checks the
// expectation, records the command ID and inserts the events; the unique
// (stream_id, version) constraint makes a concurrent writer that lost the
// race fail with a *stores.ConflictError. Appends of at least CopyThreshold
// events use COPY. Event IDs default to UUIDv7 (time-ordered).
//
// AppendMany (and AppendDecisions, which also records rejected commands
// in the commands table, stores.RejectionRecorder) reads every stream's
// version and the commands seen before in one pipelined round trip, then
// writes the whole batch — however many streams — with one multi-row
// insert of the commands and one of the events (COPY from CopyThreshold
// events). Lookups probe the indexes once per key: a thousand-ID
// "= ANY($1)" was planned as a sequential scan.
//
// # Reading the log (gap-safe)
//
// Positions come from an identity sequence, and sequence order is not
// commit order: a slow transaction can commit position 10 after position
// 11 became visible. Every row therefore records its transaction ID
// (xid8), and ReadAll reads only rows whose transaction is older than the
// oldest transaction still running (pg_snapshot_xmin of the current
// snapshot), in (tx_id, position) order. Rows below that horizon can no
// longer change, so nothing committed late is ever skipped and nothing
// rolled back is ever read. The order keeps each stream's versions because
// every transaction of this package reads the streams it appends to before
// its first write (so a later version always has a later transaction ID);
// do the same in transactions passed to AppendTx.
//
// The costs, documented rather than hidden: any long-running transaction in
// the cluster (even in another database) holds the horizon and delays
// ReadAll until it ends; and xid8 values do not survive a dump and restore,
// so a restored database must restart readers from a fresh cursor.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
)

// DefaultSchema is the schema used when none is configured.
const DefaultSchema = "orchestrix"

// CopyThreshold is the number of events from which Append uses COPY.
const CopyThreshold = 256

const readPage = 1000

// Store is a PostgreSQL stores.EventStore. It is safe for concurrent use.
// It does not own the pool: closing the pool is the caller's job.
type Store struct {
	pool    *pgxpool.Pool
	schema  string
	maxSize int
	sql     statements
}

// Option configures a Store.
type Option func(*Store)

// WithSchema sets the schema holding the tables (default "orchestrix").
func WithSchema(name string) Option { return func(s *Store) { s.schema = name } }

// WithMaxEventSize limits one event's Data (default stores.DefaultMaxEventSize).
func WithMaxEventSize(n int) Option { return func(s *Store) { s.maxSize = n } }

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

func checkSchemaName(s string) error {
	if !schemaName.MatchString(s) {
		return fmt.Errorf("postgres: schema name %q must match %s: %w", s, schemaName, orchestrix.ErrInvalid)
	}
	return nil
}

// New returns a store on pool after checking that the schema is migrated.
func New(ctx context.Context, pool *pgxpool.Pool, opts ...Option) (*Store, error) {
	s := &Store{pool: pool, schema: DefaultSchema, maxSize: stores.DefaultMaxEventSize}
	for _, o := range opts {
		o(s)
	}
	var errs []error
	if pool == nil {
		errs = append(errs, fmt.Errorf("postgres: nil pool: %w", orchestrix.ErrInvalid))
	}
	if err := checkSchemaName(s.schema); err != nil {
		errs = append(errs, err)
	}
	if s.maxSize <= 0 {
		errs = append(errs, fmt.Errorf("postgres: max event size %d must be positive: %w", s.maxSize, orchestrix.ErrInvalid))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := checkMigrated(ctx, pool, s.schema); err != nil {
		return nil, err
	}
	s.sql = newStatements(pgx.Identifier{s.schema}.Sanitize())
	return s, nil
}

// Pool returns the pool the store uses.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Schema returns the schema name.
func (s *Store) Schema() string { return s.schema }

type statements struct {
	append, appendOne, appendPlain, maxVersions, insertCommands, insertEvents, insertRejections, readStream, readStreams, loadSnapshots, readAll, findCommand, findCommands, saveSnapshot, loadSnapshot string
	table                                                                                                                                                                                               string
}

const eventColumns = "position, stream_id, version, id, type, source, subject, time, content_type, data, correlation_id, causation_id, traceparent, extensions, command_id"

func newStatements(q string) statements {
	// $1 stream, $2 any, $3 expected, $4 command id, then event arrays.
	insert := `INSERT INTO ` + q + `.events (stream_id, version, id, type, source, subject, time, content_type, data, correlation_id, causation_id, traceparent, extensions, command_id)
	SELECT $1, base.v + u.ord, u.id, u.type, u.source, u.subject, u.time, u.content_type, u.data, u.corr, u.cause, u.tp, u.ext, $4
	FROM base, unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::bytea[], $12::text[], $13::text[], $14::text[], $15::jsonb[])
	     WITH ORDINALITY AS u(id, type, source, subject, time, content_type, data, corr, cause, tp, ext, ord)
	WHERE base.ok AND ($4 = '' OR EXISTS (SELECT 1 FROM cmd))
	RETURNING version`
	// The same statement for one event with scalar parameters: encoding
	// and unnesting eleven one-element arrays costs more than the insert.
	head := `WITH cur AS (SELECT coalesce(max(version), 0) AS v FROM ` + q + `.events WHERE stream_id = $1),
	base AS (SELECT CASE WHEN $2 THEN cur.v ELSE $3::bigint END AS v, ($2 OR cur.v = $3::bigint) AS ok, cur.v AS actual FROM cur),
	cmd AS (INSERT INTO ` + q + `.commands (command_id, stream_id, from_version, to_version)
	        SELECT $4, $1, base.v + 1, base.v + %s FROM base WHERE $4 <> '' AND base.ok
	        ON CONFLICT DO NOTHING RETURNING 1),`
	one := fmt.Sprintf(head, "1") + `
	ins AS (INSERT INTO ` + q + `.events (stream_id, version, id, type, source, subject, time, content_type, data, correlation_id, causation_id, traceparent, extensions, command_id)
	        SELECT $1, base.v + 1, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $4
	        FROM base WHERE base.ok AND ($4 = '' OR EXISTS (SELECT 1 FROM cmd)) RETURNING version)
	SELECT (SELECT count(*) FROM ins), (SELECT actual FROM base)`
	// The plainest form, for one event with an exact expectation and no
	// command: insert version $3+1 if version $3 exists (or $3 is 0); the
	// unique (stream_id, version) constraint catches a stream that moved on.
	// $2 (the Any flag, false here) is referenced only so that every append
	// statement takes the same parameter list.
	plain := `INSERT INTO ` + q + `.events (stream_id, version, id, type, source, subject, time, content_type, data, correlation_id, causation_id, traceparent, extensions, command_id)
	SELECT $1, $3::bigint + 1, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $4
	WHERE $2::bool IS NOT NULL AND ($3::bigint = 0 OR EXISTS (SELECT 1 FROM ` + q + `.events WHERE stream_id = $1 AND version = $3::bigint))`
	return statements{
		table:       q + ".events",
		appendOne:   one,
		appendPlain: plain,
		append: fmt.Sprintf(head, "cardinality($5::text[])") + `
	ins AS (` + insert + `)
	SELECT (SELECT count(*) FROM ins), (SELECT actual FROM base)`,
		// One index probe per stream (max via the (stream_id, version)
		// index), not a scan of every version of every stream.
		maxVersions: `SELECT s.id, coalesce((SELECT max(version) FROM ` + q + `.events WHERE stream_id = s.id), 0) FROM unnest($1::text[]) AS s(id)`,
		insertCommands: `INSERT INTO ` + q + `.commands (command_id, stream_id, from_version, to_version)
	SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) ON CONFLICT DO NOTHING`,
		insertEvents: `INSERT INTO ` + q + `.events (stream_id, version, id, type, source, subject, time, content_type, data, correlation_id, causation_id, traceparent, extensions, command_id)
	SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::bytea[], $10::text[], $11::text[], $12::text[], $13::jsonb[], $14::text[])`,
		readStream: `SELECT ` + eventColumns + ` FROM ` + q + `.events WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT $3`,
		// One index range scan per stream, in the order given.
		readStreams: `SELECT e.* FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS u(id, after, ord)
	CROSS JOIN LATERAL (SELECT ` + eventColumns + ` FROM ` + q + `.events WHERE stream_id = u.id AND version > u.after ORDER BY version LIMIT $3) AS e
	ORDER BY u.ord, e.version LIMIT $3`,
		loadSnapshots: `SELECT s.stream_id, s.version, s.type, s.content_type, s.data FROM unnest($1::text[]) AS u(id)
	CROSS JOIN LATERAL (SELECT stream_id, version, type, content_type, data FROM ` + q + `.snapshots WHERE stream_id = u.id LIMIT 1) AS s`,
		// The table is aliased so that ORDER BY names the xid8 column:
		// a bare "tx_id" would name the tx_id::text output column, sort
		// text (wrong when the IDs gain a digit) and, without the
		// (tx_id, position) index, sort the whole log for every page.
		readAll: `SELECT ev.tx_id::text, ` + eventColumns + ` FROM ` + q + `.events AS ev
	WHERE (ev.tx_id, ev.position) > ($1::text::xid8, $2) AND ev.tx_id < pg_snapshot_xmin(pg_current_snapshot())
	ORDER BY ev.tx_id, ev.position LIMIT $3`,
		findCommand: `SELECT stream_id, from_version, to_version, rejection FROM ` + q + `.commands WHERE command_id = $1`,
		// One index probe per ID: with "command_id = ANY($1)" and a
		// thousand IDs the planner picks a sequential scan that compares
		// every row with every ID; the LIMIT keeps the lateral subquery
		// from being flattened into a hash join.
		findCommands: `SELECT c.command_id, c.stream_id, c.from_version, c.to_version, c.rejection FROM unnest($1::text[]) AS u(id)
	CROSS JOIN LATERAL (SELECT command_id, stream_id, from_version, to_version, rejection FROM ` + q + `.commands WHERE command_id = u.id LIMIT 1) AS c`,
		insertRejections: `INSERT INTO ` + q + `.commands (command_id, stream_id, from_version, to_version, rejection)
	SELECT id, stream, 0, 0, reason FROM unnest($1::text[], $2::text[], $3::jsonb[]) AS r(id, stream, reason) ON CONFLICT DO NOTHING`,
		saveSnapshot: `INSERT INTO ` + q + `.snapshots AS s (stream_id, version, type, content_type, data) VALUES ($1, $2, $3, $4, $5)
	ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, type = excluded.type, content_type = excluded.content_type, data = excluded.data, taken_at = now()
	WHERE s.version <= excluded.version`,
		loadSnapshot: `SELECT version, type, content_type, data FROM ` + q + `.snapshots WHERE stream_id = $1`,
	}
}

// columns holds one append's events as the arrays the insert unnests.
type columns struct {
	id, typ, source, subject, contentType, corr, cause, tp []string
	time                                                   []time.Time
	data                                                   [][]byte
	ext                                                    [][]byte
}

func toColumns(streamID string, events []orchestrix.Event) (columns, error) {
	n := len(events)
	c := columns{
		id: make([]string, n), typ: make([]string, n), source: make([]string, n), subject: make([]string, n),
		contentType: make([]string, n), corr: make([]string, n), cause: make([]string, n), tp: make([]string, n),
		time: make([]time.Time, n), data: make([][]byte, n), ext: make([][]byte, n),
	}
	now := time.Now().UTC()
	for i, e := range events {
		c.id[i] = e.ID
		if c.id[i] == "" {
			u, err := uuid.NewV7()
			if err != nil {
				return c, fmt.Errorf("postgres: new event id: %w", err)
			}
			c.id[i] = u.String()
		}
		c.typ[i], c.source[i], c.subject[i] = e.Type, e.Source, e.Subject
		if c.subject[i] == "" {
			c.subject[i] = streamID
		}
		c.contentType[i], c.corr[i], c.cause[i], c.tp[i] = e.ContentType, e.CorrelationID, e.CausationID, e.TraceParent
		c.time[i] = e.Time
		if e.Time.IsZero() {
			c.time[i] = now
		}
		c.data[i] = e.Data
		if len(e.Extensions) > 0 {
			b, err := json.Marshal(e.Extensions)
			if err != nil {
				return c, err
			}
			c.ext[i] = b
		}
	}
	return c, nil
}

func (c columns) args(streamID string, anyVersion bool, expected uint64, commandID string) []any {
	if len(c.id) == 1 {
		var ext any
		if c.ext[0] != nil {
			ext = c.ext[0]
		}
		return []any{streamID, anyVersion, int64(expected), commandID,
			c.id[0], c.typ[0], c.source[0], c.subject[0], c.time[0], c.contentType[0], c.data[0], c.corr[0], c.cause[0], c.tp[0], ext}
	}
	return []any{streamID, anyVersion, int64(expected), commandID,
		c.id, c.typ, c.source, c.subject, c.time, c.contentType, c.data, c.corr, c.cause, c.tp, c.ext}
}

// appendSQL returns the append statement for n events.
func (s *Store) appendSQL(n int) string {
	if n == 1 {
		return s.sql.appendOne
	}
	return s.sql.append
}

// Append implements stores.EventStore.
func (s *Store) Append(ctx context.Context, streamID string, expected stores.ExpectedVersion, events []orchestrix.Event) (stores.AppendResult, error) {
	if err := stores.CheckEvents(streamID, events, s.maxSize); err != nil {
		return stores.AppendResult{}, err
	}
	if len(events) >= CopyThreshold {
		var res stores.AppendResult
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			r, err := s.appendMany(ctx, tx, []stores.AppendRequest{{StreamID: streamID, Expected: expected, Events: events}}, nil)
			if err == nil {
				res = r[0]
			}
			return err
		})
		return res, s.wrap(ctx, streamID, expected, err)
	}
	cmd := events[0].CommandID
	c, err := toColumns(streamID, events)
	if err != nil {
		return stores.AppendResult{}, err
	}
	// Expected-version Any can lose a race to a concurrent writer; the
	// retry runs in a new implicit transaction, so it reads first again.
	for attempt := 0; ; attempt++ {
		var n int64
		var actual uint64
		if len(events) == 1 && cmd == "" && !expected.IsAny() {
			var tag pgconn.CommandTag
			tag, err = s.pool.Exec(ctx, s.sql.appendPlain, c.args(streamID, false, expected.Version(), "")...)
			if err == nil && tag.RowsAffected() == 1 {
				return stores.AppendResult{StreamID: streamID, FromVersion: expected.Version() + 1, ToVersion: expected.Version() + 1}, nil
			}
			if err == nil { // version $3 does not exist: the stream is behind
				ce := &stores.ConflictError{StreamID: streamID, Expected: expected}
				_ = s.pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+s.sql.table+" WHERE stream_id = $1", streamID).Scan(&ce.Actual)
				return stores.AppendResult{}, ce
			}
			return stores.AppendResult{}, s.wrap(ctx, streamID, expected, err)
		}
		err = s.pool.QueryRow(ctx, s.appendSQL(len(events)), c.args(streamID, expected.IsAny(), expected.Version(), cmd)...).Scan(&n, &actual)
		if err == nil && n == int64(len(events)) {
			return stores.AppendResult{StreamID: streamID, FromVersion: actual + 1, ToVersion: actual + uint64(n)}, nil
		}
		if err != nil && !isUniqueViolation(err) {
			return stores.AppendResult{}, s.wrap(ctx, streamID, expected, err)
		}
		// Nothing inserted: the command was seen before, the expectation
		// failed, or we lost a race to a concurrent writer.
		if cmd != "" {
			if prev, ok, ferr := s.FindCommand(ctx, cmd); ferr != nil {
				return stores.AppendResult{}, ferr
			} else if ok {
				prev.Duplicate = true
				return prev, nil
			}
		}
		if expected.IsAny() && attempt < 5 {
			continue
		}
		if err == nil {
			err = &stores.ConflictError{StreamID: streamID, Expected: expected, Actual: actual}
		}
		return stores.AppendResult{}, s.wrap(ctx, streamID, expected, err)
	}
}

// wrap turns unique violations into conflict errors and names the stream.
func (s *Store) wrap(ctx context.Context, streamID string, expected stores.ExpectedVersion, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, stores.ErrConflict) || errors.Is(err, orchestrix.ErrInvalid) {
		return err
	}
	if isUniqueViolation(err) {
		ce := &stores.ConflictError{StreamID: streamID, Expected: expected}
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.ConstraintName == "events_stream_version" {
			_ = s.pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+s.sql.table+" WHERE stream_id = $1", streamID).Scan(&ce.Actual)
		}
		return ce
	}
	return fmt.Errorf("postgres: append to %q: %w", streamID, err)
}

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// AppendMany implements stores.EventStore in one transaction.
func (s *Store) AppendMany(ctx context.Context, reqs []stores.AppendRequest) ([]stores.AppendResult, error) {
	return s.AppendDecisions(ctx, reqs, nil)
}

// AppendDecisions implements stores.RejectionRecorder in one transaction:
// rejected commands become rows of the commands table with no versions.
func (s *Store) AppendDecisions(ctx context.Context, reqs []stores.AppendRequest, rejected []stores.RejectedCommand) ([]stores.AppendResult, error) {
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
	var res []stores.AppendResult
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		res, err = s.appendMany(ctx, tx, reqs, rejected)
		return err
	})
	if err != nil {
		var ce *stores.ConflictError
		if errors.As(err, &ce) {
			return nil, err
		}
		if isUniqueViolation(err) {
			return nil, &stores.ConflictError{StreamID: conflictStream(err, reqs), Expected: stores.Any}
		}
		return nil, fmt.Errorf("postgres: append many: %w", err)
	}
	return res, nil
}

// conflictStream guesses which request a unique violation came from.
func conflictStream(err error, reqs []stores.AppendRequest) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		for _, r := range reqs {
			if strings.Contains(pe.Detail, "(stream_id, version)=("+r.StreamID+", ") {
				return r.StreamID
			}
		}
	}
	if len(reqs) == 1 {
		return reqs[0].StreamID
	}
	return ""
}

// AppendTx appends inside the caller's transaction, so events can commit
// together with other writes (a read model, a saga's state). The caller
// commits. To keep the log's per-stream order, call it before the
// transaction's first write of anything else, or make sure the streams
// appended to were read in this transaction before its first write.
func (s *Store) AppendTx(ctx context.Context, tx pgx.Tx, reqs []stores.AppendRequest) ([]stores.AppendResult, error) {
	for _, r := range reqs {
		if err := stores.CheckEvents(r.StreamID, r.Events, s.maxSize); err != nil {
			return nil, err
		}
	}
	return s.appendMany(ctx, tx, reqs, nil)
}

// appendMany reads the versions of every stream and the commands seen
// before, first (before the first write, see the package doc); then it
// checks every expectation and numbers every event itself, and writes the
// whole batch in two pipelined statements: one multi-row insert of the
// commands (ON CONFLICT DO NOTHING: fewer rows than sent means a
// concurrent transaction recorded one meanwhile) and one of the events,
// through unnest, or COPY from CopyThreshold events. The unique (stream,
// version) constraint stops a concurrent writer that read the same
// version. A request whose command was seen before writes nothing and
// reports the first result, Duplicate.
func (s *Store) appendMany(ctx context.Context, tx pgx.Tx, reqs []stores.AppendRequest, rejected []stores.RejectedCommand) ([]stores.AppendResult, error) {
	ids := make([]string, 0, len(reqs))
	cmds := make([]string, 0, len(reqs))
	for _, r := range reqs {
		ids = append(ids, r.StreamID)
		if c := r.Events[0].CommandID; c != "" {
			cmds = append(cmds, c)
		}
	}
	var rej struct {
		id, stream []string
		reason     [][]byte
	}
	for _, rc := range rejected {
		rej.id, rej.stream, rej.reason = append(rej.id, rc.CommandID), append(rej.stream, rc.StreamID), append(rej.reason, rc.Reason)
	}
	current, seen, err := s.readState(ctx, tx, ids, cmds)
	if err != nil {
		return nil, err
	}
	results := make([]stores.AppendResult, len(reqs))
	var rows batchRows
	var cmdRows commandRows
	for i, r := range reqs {
		cmd := r.Events[0].CommandID
		if prev, ok := seen[cmd]; ok && cmd != "" {
			results[i] = prev
			continue
		}
		cur := current[r.StreamID]
		if !r.Expected.IsAny() && r.Expected.Version() != cur {
			return nil, &stores.ConflictError{StreamID: r.StreamID, Expected: r.Expected, Actual: cur}
		}
		n := uint64(len(r.Events))
		results[i] = stores.AppendResult{StreamID: r.StreamID, FromVersion: cur + 1, ToVersion: cur + n}
		current[r.StreamID] = cur + n
		if cmd != "" {
			seen[cmd] = stores.AppendResult{StreamID: r.StreamID, FromVersion: cur + 1, ToVersion: cur + n, Duplicate: true}
			cmdRows.add(cmd, r.StreamID, cur+1, cur+n)
		}
		if err := rows.add(r.StreamID, cur, cmd, r.Events); err != nil {
			return nil, err
		}
	}
	if rows.len() == 0 && len(rej.id) == 0 {
		return results, nil
	}
	var batch pgx.Batch
	if len(rej.id) > 0 {
		batch.Queue(s.sql.insertRejections, rej.id, rej.stream, rej.reason)
	}
	if len(cmdRows.id) > 0 {
		batch.Queue(s.sql.insertCommands, cmdRows.id, cmdRows.stream, cmdRows.from, cmdRows.to)
	}
	copyRows := rows.len() >= CopyThreshold
	if !copyRows && rows.len() > 0 {
		batch.Queue(s.sql.insertEvents, rows.args()...)
	}
	if batch.Len() > 0 {
		br := tx.SendBatch(ctx, &batch)
		if len(rej.id) > 0 {
			tag, err := br.Exec()
			if err != nil {
				br.Close()
				return nil, s.conflict(err, reqs)
			}
			if tag.RowsAffected() != int64(len(rej.id)) { // recorded before, or meanwhile
				br.Close()
				return nil, &stores.ConflictError{StreamID: rej.stream[0], Expected: stores.Any}
			}
		}
		if len(cmdRows.id) > 0 {
			tag, err := br.Exec()
			if err != nil {
				br.Close()
				return nil, s.conflict(err, reqs)
			}
			if tag.RowsAffected() != int64(len(cmdRows.id)) { // a concurrent transaction recorded one meanwhile
				br.Close()
				return nil, &stores.ConflictError{StreamID: rows.stream[0], Expected: stores.Any}
			}
		}
		if !copyRows && rows.len() > 0 {
			if _, err := br.Exec(); err != nil {
				br.Close()
				return nil, s.conflict(err, reqs)
			}
		}
		if err := br.Close(); err != nil {
			return nil, s.conflict(err, reqs)
		}
	}
	if copyRows && rows.len() > 0 {
		if err := s.copyEvents(ctx, tx, &rows); err != nil {
			return nil, s.conflict(err, reqs)
		}
	}
	return results, nil
}

// conflict turns a unique violation of a batch into a ConflictError naming
// the stream when it can.
func (s *Store) conflict(err error, reqs []stores.AppendRequest) error {
	if isUniqueViolation(err) {
		return &stores.ConflictError{StreamID: conflictStream(err, reqs), Expected: stores.Any}
	}
	return err
}

// commandRows are the rows of a multi-row insert into the commands table.
type commandRows struct {
	id, stream []string
	from, to   []int64
}

func (c *commandRows) add(id, stream string, from, to uint64) {
	c.id, c.stream = append(c.id, id), append(c.stream, stream)
	c.from, c.to = append(c.from, int64(from)), append(c.to, int64(to))
}

// batchRows are the events of many requests, numbered, as column arrays.
type batchRows struct {
	columns
	stream, cmd []string
	version     []int64
}

func (b *batchRows) len() int { return len(b.stream) }

func (b *batchRows) add(streamID string, cur uint64, cmd string, events []orchestrix.Event) error {
	c, err := toColumns(streamID, events)
	if err != nil {
		return err
	}
	for i := range events {
		b.stream = append(b.stream, streamID)
		b.version = append(b.version, int64(cur)+int64(i)+1)
		b.cmd = append(b.cmd, cmd)
	}
	b.id, b.typ, b.source, b.subject = append(b.id, c.id...), append(b.typ, c.typ...), append(b.source, c.source...), append(b.subject, c.subject...)
	b.contentType, b.corr, b.cause, b.tp = append(b.contentType, c.contentType...), append(b.corr, c.corr...), append(b.cause, c.cause...), append(b.tp, c.tp...)
	b.time, b.data, b.ext = append(b.time, c.time...), append(b.data, c.data...), append(b.ext, c.ext...)
	return nil
}

func (b *batchRows) args() []any {
	return []any{b.stream, b.version, b.id, b.typ, b.source, b.subject, b.time, b.contentType, b.data, b.corr, b.cause, b.tp, b.ext, b.cmd}
}

// readState reads, in one pipelined round trip, the current version of
// each stream and the commands among cmds recorded before.
func (s *Store) readState(ctx context.Context, tx pgx.Tx, ids, cmds []string) (map[string]uint64, map[string]stores.AppendResult, error) {
	var reads pgx.Batch
	reads.Queue(s.sql.maxVersions, ids)
	if len(cmds) > 0 {
		reads.Queue(s.sql.findCommands, cmds)
	}
	br := tx.SendBatch(ctx, &reads)
	defer br.Close()
	current := map[string]uint64{}
	rows, err := br.Query()
	if err != nil {
		return nil, nil, err
	}
	for rows.Next() {
		var id string
		var v int64
		if err := rows.Scan(&id, &v); err != nil {
			return nil, nil, err
		}
		current[id] = uint64(v)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	seen := map[string]stores.AppendResult{}
	if len(cmds) > 0 {
		rows, err := br.Query()
		if err != nil {
			return nil, nil, err
		}
		for rows.Next() {
			var id string
			r := stores.AppendResult{Duplicate: true}
			if err := rows.Scan(&id, &r.StreamID, &r.FromVersion, &r.ToVersion, &r.Rejection); err != nil {
				return nil, nil, err
			}
			seen[id] = r
		}
		if err := rows.Err(); err != nil {
			return nil, nil, err
		}
	}
	return current, seen, br.Close()
}

func (s *Store) copyEvents(ctx context.Context, tx pgx.Tx, b *batchRows) error {
	_, err := tx.CopyFrom(ctx, pgx.Identifier{s.schema, "events"},
		[]string{"stream_id", "version", "id", "type", "source", "subject", "time", "content_type", "data", "correlation_id", "causation_id", "traceparent", "extensions", "command_id"},
		pgx.CopyFromSlice(b.len(), func(i int) ([]any, error) {
			var ext any
			if b.ext[i] != nil {
				ext = b.ext[i]
			}
			return []any{b.stream[i], b.version[i], b.id[i], b.typ[i], b.source[i], b.subject[i], b.time[i], b.contentType[i], b.data[i], b.corr[i], b.cause[i], b.tp[i], ext, b.cmd[i]}, nil
		}))
	return err
}

// ReadStream implements stores.EventStore, one page of rows at a time.
func (s *Store) ReadStream(ctx context.Context, streamID string, after uint64) iter.Seq2[orchestrix.Event, error] {
	return func(yield func(orchestrix.Event, error) bool) {
		if err := orchestrix.CheckID("stream id", streamID); err != nil {
			yield(orchestrix.Event{}, fmt.Errorf("postgres: read stream: %w", err))
			return
		}
		for {
			page, err := s.page(ctx, nil, s.sql.readStream, false, streamID, int64(after), readPage)
			if err != nil {
				yield(orchestrix.Event{}, fmt.Errorf("postgres: read stream %q after %d: %w", streamID, after, err))
				return
			}
			for _, e := range page {
				if !yield(e.Event, nil) {
					return
				}
				after = e.Version
			}
			if len(page) < readPage {
				return
			}
		}
	}
}

// ReadStreams implements stores.MultiStreamReader: one query per page of
// 1,000 events, whatever the number of streams.
func (s *Store) ReadStreams(ctx context.Context, reads []stores.StreamRead) iter.Seq2[orchestrix.Event, error] {
	return func(yield func(orchestrix.Event, error) bool) {
		ids := make([]string, 0, len(reads))
		afters := make([]int64, 0, len(reads))
		named := make(map[string]bool, len(reads))
		for _, r := range reads {
			if err := orchestrix.CheckID("stream id", r.StreamID); err != nil {
				yield(orchestrix.Event{}, fmt.Errorf("postgres: read streams: %w", err))
				return
			}
			if named[r.StreamID] {
				yield(orchestrix.Event{}, fmt.Errorf("postgres: read streams: stream %q named twice: %w", r.StreamID, orchestrix.ErrInvalid))
				return
			}
			named[r.StreamID] = true
			ids, afters = append(ids, r.StreamID), append(afters, int64(r.After))
		}
		for len(ids) > 0 {
			page, err := s.page(ctx, nil, s.sql.readStreams, false, ids, afters, readPage)
			if err != nil {
				yield(orchestrix.Event{}, fmt.Errorf("postgres: read %d streams: %w", len(ids), err))
				return
			}
			for _, e := range page {
				if !yield(e.Event, nil) {
					return
				}
			}
			if len(page) < readPage {
				return
			}
			// A full page: the streams before the last one read are
			// complete; go on from the last event.
			last := page[len(page)-1]
			i := slices.Index(ids, last.StreamID)
			ids, afters = ids[i:], afters[i:]
			afters[0] = int64(last.Version)
		}
	}
}

// LoadSnapshots implements stores.MultiStreamReader.
func (s *Store) LoadSnapshots(ctx context.Context, streamIDs []string) (map[string]stores.Snapshot, error) {
	out := make(map[string]stores.Snapshot, len(streamIDs))
	rows, err := s.pool.Query(ctx, s.sql.loadSnapshots, streamIDs)
	if err != nil {
		return nil, fmt.Errorf("postgres: load %d snapshots: %w", len(streamIDs), err)
	}
	defer rows.Close()
	for rows.Next() {
		var snap stores.Snapshot
		var v int64
		if err := rows.Scan(&snap.StreamID, &v, &snap.Type, &snap.ContentType, &snap.Data); err != nil {
			return nil, fmt.Errorf("postgres: load %d snapshots: %w", len(streamIDs), err)
		}
		snap.Version = uint64(v)
		out[snap.StreamID] = snap
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: load %d snapshots: %w", len(streamIDs), err)
	}
	return out, nil
}

// ReadAll implements stores.EventStore; see the package doc for the order.
func (s *Store) ReadAll(ctx context.Context, after stores.Cursor, limit int) iter.Seq2[stores.Entry, error] {
	return func(yield func(stores.Entry, error) bool) {
		for n := 0; limit <= 0 || n < limit; {
			size := readPage
			if limit > 0 {
				size = min(size, limit-n)
			}
			page, err := s.page(ctx, nil, s.sql.readAll, true, strconv.FormatUint(after.Tx, 10), int64(after.Position), size)
			if err != nil {
				yield(stores.Entry{}, fmt.Errorf("postgres: read all after %s: %w", after, err))
				return
			}
			for _, e := range page {
				if !yield(e, nil) {
					return
				}
				after = e.Cursor
			}
			n += len(page)
			if len(page) < size {
				return
			}
		}
	}
}

// page runs a query selecting [tx_id::text,] eventColumns and decodes its
// rows, appending them to dst. Rows in pgx's binary result format (the default query modes) are
// decoded straight from the wire (see rowDecoder); any other format (a
// pool in simple-protocol mode) is scanned the generic way.
func (s *Store) page(ctx context.Context, dst []stores.Entry, sql string, withTx bool, a, b any, size int) ([]stores.Entry, error) {
	rows, err := s.pool.Query(ctx, sql, a, b, size)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := slices.Grow(dst, size)
	var d *rowDecoder
	first := true
	for rows.Next() {
		if first {
			first = false
			if binaryEventColumns(rows.FieldDescriptions(), withTx) {
				d = &rowDecoder{}
			}
		}
		out = append(out, stores.Entry{})
		e := &out[len(out)-1]
		if d != nil {
			err = d.decode(e, rows.RawValues(), withTx)
		} else {
			err = scanRow(rows, e, withTx)
		}
		if err != nil {
			return nil, err
		}
	}
	return out, rows.Err()
}

// scanRow scans one row of page with rows.Scan.
func scanRow(rows pgx.Rows, e *stores.Entry, withTx bool) error {
	var (
		txText   string
		pos, ver int64
		ext      []byte
	)
	dest := []any{&pos, &e.StreamID, &ver, &e.ID, &e.Type, &e.Source, &e.Subject, &e.Time, &e.ContentType, &e.Data, &e.CorrelationID, &e.CausationID, &e.TraceParent, &ext, &e.CommandID}
	if withTx {
		dest = append([]any{&txText}, dest...)
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	e.Position, e.Version = uint64(pos), uint64(ver)
	e.Time = e.Time.UTC()
	if len(ext) > 0 {
		if err := json.Unmarshal(ext, &e.Extensions); err != nil {
			return fmt.Errorf("event at position %d: extensions: %w", pos, err)
		}
	}
	if withTx {
		tx, err := strconv.ParseUint(txText, 10, 64)
		if err != nil {
			return fmt.Errorf("event at position %d: tx id %q: %w", pos, txText, err)
		}
		e.Cursor = stores.Cursor{Tx: tx, Position: e.Position}
	}
	return nil
}

// FindCommand implements stores.EventStore.
func (s *Store) FindCommand(ctx context.Context, commandID string) (stores.AppendResult, bool, error) {
	var r stores.AppendResult
	err := s.pool.QueryRow(ctx, s.sql.findCommand, commandID).Scan(&r.StreamID, &r.FromVersion, &r.ToVersion, &r.Rejection)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("postgres: find command %q: %w", commandID, err)
	}
	return r, true, nil
}

// FindCommands looks up many command IDs in one round trip; the result
// holds the ones found, marked Duplicate.
func (s *Store) FindCommands(ctx context.Context, ids []string) (map[string]stores.AppendResult, error) {
	out := make(map[string]stores.AppendResult)
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, s.sql.findCommands, ids)
	if err != nil {
		return nil, fmt.Errorf("postgres: find %d commands: %w", len(ids), err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		r := stores.AppendResult{Duplicate: true}
		if err := rows.Scan(&id, &r.StreamID, &r.FromVersion, &r.ToVersion, &r.Rejection); err != nil {
			return nil, err
		}
		out[id] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: find %d commands: %w", len(ids), err)
	}
	return out, nil
}

// SaveSnapshot implements stores.EventStore.
func (s *Store) SaveSnapshot(ctx context.Context, snap stores.Snapshot) error {
	if err := orchestrix.CheckID("stream id", snap.StreamID); err != nil {
		return fmt.Errorf("postgres: save snapshot: %w", err)
	}
	if snap.Data == nil {
		snap.Data = []byte{}
	}
	if _, err := s.pool.Exec(ctx, s.sql.saveSnapshot, snap.StreamID, int64(snap.Version), snap.Type, snap.ContentType, snap.Data); err != nil {
		return fmt.Errorf("postgres: save snapshot of %q: %w", snap.StreamID, err)
	}
	return nil
}

// LoadSnapshot implements stores.EventStore.
func (s *Store) LoadSnapshot(ctx context.Context, streamID string) (stores.Snapshot, bool, error) {
	snap := stores.Snapshot{StreamID: streamID}
	var v int64
	err := s.pool.QueryRow(ctx, s.sql.loadSnapshot, streamID).Scan(&v, &snap.Type, &snap.ContentType, &snap.Data)
	if errors.Is(err, pgx.ErrNoRows) {
		return snap, false, nil
	}
	if err != nil {
		return snap, false, fmt.Errorf("postgres: load snapshot of %q: %w", streamID, err)
	}
	snap.Version = uint64(v)
	return snap, true, nil
}

var _ stores.EventStore = (*Store)(nil)

var _ stores.RejectionRecorder = (*Store)(nil)

var _ stores.MultiStreamReader = (*Store)(nil)
