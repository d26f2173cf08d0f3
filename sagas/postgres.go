package sagas

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/outbox"
)

// PostgresStore is the Store on the tables of migration 0004_sagas
// (`orchestrix migrate`) in one schema. Each Apply is one transaction of
// two round trips: BEGIN, inbox insert and instance read; fenced update,
// timer, history and outbox rows (outbox.Writer, published exactly once
// by the relay), COMMIT. It takes
// no locks besides the rows it writes: one instance's inputs arrive in
// order on one partition, and the version fence rejects a member that
// lost it. It is safe for concurrent use.
type PostgresStore struct {
	pool   *pgxpool.Pool
	schema string
	out    *outbox.Writer
	t      map[string]string // table name -> quoted
	// crashAt, set by tests, fails Apply at a point of its transaction
	// ("read": after the inbox insert and the read; "written": after
	// every write, before the commit) and FireTimers at one of its
	// ("timer-written": the outbox rows written and the timers deleted,
	// before the commit; "timer-committed": after it).
	crashAt func(point string) error
}

func (s *PostgresStore) crash(point string) error {
	if s.crashAt == nil {
		return nil
	}
	return s.crashAt(point)
}

// NewPostgresStore returns a store on pool's schema.
func NewPostgresStore(pool *pgxpool.Pool, schema string) (*PostgresStore, error) {
	if pool == nil {
		return nil, fmt.Errorf("sagas: nil pool: %w", orchestrix.ErrInvalid)
	}
	w, err := outbox.NewWriter(schema)
	if err != nil {
		return nil, fmt.Errorf("sagas: %w", err)
	}
	s := &PostgresStore{pool: pool, schema: schema, out: w, t: map[string]string{}}
	for _, n := range []string{"saga_instances", "saga_inbox", "saga_timers", "saga_transitions"} {
		s.t[n] = pgx.Identifier{schema, n}.Sanitize()
	}
	return s, nil
}

// IdleInTransactionTimeout is how long PostgreSQL lets an Apply
// transaction sit idle (its member paused mid-transaction) before it
// ends the session, releasing the instance's rows for the member that
// took over.
const IdleInTransactionTimeout = 5 * time.Second

// Pool returns the store's pool.
func (s *PostgresStore) Pool() *pgxpool.Pool { return s.pool }

// Schema returns the store's schema.
func (s *PostgresStore) Schema() string { return s.schema }

const instanceCols = `saga_type, saga_id, definition_version, version, status, step, attempt, tries, wait, state, reason, started_at, updated_at`

func scanInstance(row pgx.Row) (Instance, error) {
	var i Instance
	var status string
	err := row.Scan(&i.Type, &i.ID, &i.DefinitionVersion, &i.Version, &status, &i.Step, &i.Attempt, &i.Tries, &i.Wait, &i.State,
		&i.Reason, &i.StartedAt, &i.UpdatedAt)
	i.Status = Status(status)
	i.StartedAt, i.UpdatedAt = i.StartedAt.UTC(), i.UpdatedAt.UTC()
	return i, err
}

// Apply implements Store.
func (s *PostgresStore) Apply(ctx context.Context, typ, sagaID, inputID string, fn func(cur *Instance) (*Change, error)) error {
	c, err := s.begin(ctx)
	if err != nil {
		return err
	}
	defer end(ctx, c)
	b := beginBatch()
	b.Queue(`INSERT INTO `+s.t["saga_inbox"]+` (saga_type, saga_id, input_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, typ, sagaID, inputID)
	b.Queue(`SELECT `+instanceCols+` FROM `+s.t["saga_instances"]+` WHERE saga_type = $1 AND saga_id = $2`, typ, sagaID)
	br := c.SendBatch(ctx, b)
	_, err = br.Exec()
	if err == nil {
		_, err = br.Exec()
	}
	var tag pgconn.CommandTag
	if err == nil {
		tag, err = br.Exec()
	}
	if err != nil {
		br.Close()
		return fmt.Errorf("sagas: inbox %s/%s: %w", typ, sagaID, err)
	}
	var cur *Instance
	inst, err := scanInstance(br.QueryRow())
	switch {
	case err == nil:
		cur = &inst
	case !errors.Is(err, pgx.ErrNoRows):
		br.Close()
		return fmt.Errorf("sagas: load %s/%s: %w", typ, sagaID, err)
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("sagas: load %s/%s: %w", typ, sagaID, err)
	}
	if tag.RowsAffected() == 0 {
		return ErrDuplicateInput
	}
	ch, err := fn(cur)
	if err != nil {
		return err
	}
	if err := s.crash("read"); err != nil {
		return err
	}
	w := &pgx.Batch{}
	fence := map[int]func() error{}
	if ch != nil {
		i := ch.Instance
		fence[0] = func() error {
			return fmt.Errorf("sagas: %s/%s at version %d: %w", i.Type, i.ID, i.Version-1, ErrFenced)
		}
		if err := s.queueChange(ctx, w, ch); err != nil {
			return err
		}
	}
	if err := s.commitWrites(ctx, c, w, fence); err != nil {
		if errors.Is(err, ErrFenced) {
			return err
		}
		return fmt.Errorf("sagas: save %s/%s: %w", typ, sagaID, err)
	}
	return nil
}

// queueChange queues ch's writes on b, the fenced instance write first.
func (s *PostgresStore) queueChange(ctx context.Context, b *pgx.Batch, ch *Change) error {
	i := ch.Instance
	if i.Version == 1 {
		b.Queue(fenced(`INSERT INTO `+s.t["saga_instances"]+` (`+instanceCols+`) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) ON CONFLICT DO NOTHING`),
			i.Type, i.ID, i.DefinitionVersion, i.Version, string(i.Status), i.Step, i.Attempt, i.Tries, i.Wait, []byte(i.State), i.Reason, i.StartedAt, i.UpdatedAt)
	} else {
		b.Queue(fenced(`UPDATE `+s.t["saga_instances"]+` SET version = $4, status = $5, step = $6, attempt = $7, tries = $8, wait = $9, state = $10,
			reason = $11, updated_at = $12 WHERE saga_type = $1 AND saga_id = $2 AND version = $3`),
			i.Type, i.ID, i.Version-1, i.Version, string(i.Status), i.Step, i.Attempt, i.Tries, i.Wait, []byte(i.State), i.Reason, i.UpdatedAt)
	}
	switch {
	case ch.Timer != nil:
		t := ch.Timer
		b.Queue(`INSERT INTO `+s.t["saga_timers"]+` (saga_type, saga_id, phase, step, try, kind, due_at) VALUES ($1,$2,$3,$4,$5,$6,$7)
			ON CONFLICT (saga_type, saga_id) DO UPDATE SET phase = $3, step = $4, try = $5, kind = $6, due_at = $7`,
			i.Type, i.ID, string(t.Fired.Phase), t.Fired.Step, t.Fired.Try, t.Fired.Kind, t.Due)
	case !ch.KeepTimer:
		b.Queue(`DELETE FROM `+s.t["saga_timers"]+` WHERE saga_type = $1 AND saga_id = $2`, i.Type, i.ID)
	}
	tr := ch.Transition
	b.Queue(`INSERT INTO `+s.t["saga_transitions"]+` (saga_type, saga_id, version, at, input_id, input_kind, from_status, to_status, step, note)
		VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)`, i.Type, i.ID, i.Version, tr.At, tr.InputID, string(tr.InputKind), string(tr.From), string(tr.To), tr.Step, tr.Note)
	// The outbox rows join the batch: the writer checks the messages and
	// queues its one INSERT.
	if err := s.out.Write(ctx, batchExecer{b}, ch.Messages...); err != nil {
		return fmt.Errorf("sagas: commands of %s/%s: %w", i.Type, i.ID, err)
	}
	return nil
}

// batchExecer queues statements on a batch (outbox.Execer), so the
// outbox insert travels with the transition's other writes.
type batchExecer struct{ b *pgx.Batch }

// Exec queues the statement; its result comes with the batch's.
func (e batchExecer) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	e.b.Queue(sql, args...)
	return pgconn.CommandTag{}, nil
}

// FireTimers implements Store. Concurrent callers skip each other's
// timers (FOR UPDATE SKIP LOCKED).
func (s *PostgresStore) FireTimers(ctx context.Context, typ string, now time.Time, limit int, msg func(Timer) (outbox.Message, error)) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT saga_id, phase, step, try, kind, due_at FROM `+s.t["saga_timers"]+`
			WHERE saga_type = $1 AND due_at <= $2 ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED`, typ, now, limit)
		if err != nil {
			return err
		}
		timers, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Timer, error) {
			t := Timer{Type: typ}
			var phase string
			err := r.Scan(&t.SagaID, &phase, &t.Fired.Step, &t.Fired.Try, &t.Fired.Kind, &t.Due)
			t.Fired.Phase = Phase(phase)
			return t, err
		})
		if err != nil || len(timers) == 0 {
			return err
		}
		msgs := make([]outbox.Message, len(timers))
		ids := make([]string, len(timers))
		for i, t := range timers {
			if msgs[i], err = msg(t); err != nil {
				return err
			}
			ids[i] = t.SagaID
		}
		if err := s.out.Write(ctx, tx, msgs...); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+s.t["saga_timers"]+` WHERE saga_type = $1 AND saga_id = ANY($2)`, typ, ids); err != nil {
			return err
		}
		n = len(timers)
		return s.crash("timer-written")
	})
	if err == nil && n > 0 {
		err = s.crash("timer-committed")
	}
	if err != nil {
		return 0, fmt.Errorf("sagas: fire %s timers: %w", typ, err)
	}
	return n, nil
}

// Get implements Store.
func (s *PostgresStore) Get(ctx context.Context, typ, sagaID string) (Instance, error) {
	i, err := scanInstance(s.pool.QueryRow(ctx, `SELECT `+instanceCols+` FROM `+s.t["saga_instances"]+` WHERE saga_type = $1 AND saga_id = $2`, typ, sagaID))
	if errors.Is(err, pgx.ErrNoRows) {
		return Instance{}, fmt.Errorf("sagas: %s/%s: %w", typ, sagaID, ErrNotFound)
	}
	if err != nil {
		return Instance{}, fmt.Errorf("sagas: get %s/%s: %w", typ, sagaID, err)
	}
	return i, nil
}

// List implements Store.
func (s *PostgresStore) List(ctx context.Context, f Filter) ([]Instance, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	before := f.UpdatedBefore
	if before.IsZero() {
		before = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+instanceCols+` FROM `+s.t["saga_instances"]+`
		WHERE ($1 = '' OR saga_type = $1) AND ($2 = '' OR status = $2) AND updated_at < $3 ORDER BY updated_at, saga_type, saga_id LIMIT $4`,
		f.Type, string(f.Status), before, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("sagas: list: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Instance, error) { return scanInstance(r) })
	if err != nil {
		return nil, fmt.Errorf("sagas: list: %w", err)
	}
	return out, nil
}

// History implements Store.
func (s *PostgresStore) History(ctx context.Context, typ, sagaID string) ([]Transition, error) {
	rows, err := s.pool.Query(ctx, `SELECT version, at, input_id, input_kind, from_status, to_status, step, note FROM `+s.t["saga_transitions"]+`
		WHERE saga_type = $1 AND saga_id = $2 ORDER BY version`, typ, sagaID)
	if err != nil {
		return nil, fmt.Errorf("sagas: history %s/%s: %w", typ, sagaID, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Transition, error) {
		t := Transition{Type: typ, SagaID: sagaID}
		var kind, from, to string
		err := r.Scan(&t.Version, &t.At, &t.InputID, &kind, &from, &to, &t.Step, &t.Note)
		t.InputKind, t.From, t.To, t.At = InputKind(kind), Status(from), Status(to), t.At.UTC()
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("sagas: history %s/%s: %w", typ, sagaID, err)
	}
	return out, nil
}

// Timers implements Store.
func (s *PostgresStore) Timers(ctx context.Context, typ string, limit int) ([]Timer, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, `SELECT saga_type, saga_id, phase, step, try, kind, due_at FROM `+s.t["saga_timers"]+`
		WHERE ($1 = '' OR saga_type = $1) ORDER BY due_at LIMIT $2`, typ, limit)
	if err != nil {
		return nil, fmt.Errorf("sagas: timers: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Timer, error) {
		var t Timer
		var phase string
		err := r.Scan(&t.Type, &t.SagaID, &phase, &t.Fired.Step, &t.Fired.Try, &t.Fired.Kind, &t.Due)
		t.Fired.Phase, t.Due = Phase(phase), t.Due.UTC()
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("sagas: timers: %w", err)
	}
	return out, nil
}
