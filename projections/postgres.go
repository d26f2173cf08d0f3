package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
)

// Postgres keeps read models and checkpoints in a PostgreSQL schema
// migrated by `orchestrix migrate` (migration 0005: projection_versions,
// projection_checkpoints, projection_dead_letters). Handlers get the
// batch's pgx.Tx. It is safe for concurrent use and does not own the pool.
type Postgres struct {
	pool   *pgxpool.Pool
	schema string
	q      string // the sanitized schema
	views  []string
	idle   string // idle_in_transaction_session_timeout of batch transactions
}

// PostgresOption configures a Postgres backend.
type PostgresOption func(*Postgres)

// Views names read-model tables that queries read through views: view
// "balances" in the schema selects from the active version's table
// "balances_v<N>" and is repointed by Cutover and Rollback, in their
// transaction.
func Views(bases ...string) PostgresOption {
	return func(p *Postgres) { p.views = append(p.views, bases...) }
}

// TxIdleTimeout bounds how long a batch transaction may sit idle (default
// DefaultLease): an owner paused mid-transaction (SIGSTOP, a stalled
// host) has its session ended by the server after it, which rolls the
// batch back and releases the checkpoint row to the next owner. A handler
// must not spend longer than this between two statements.
func TxIdleTimeout(d time.Duration) PostgresOption {
	return func(p *Postgres) { p.idle = fmt.Sprint(d.Milliseconds()) }
}

// NewPostgres returns a backend on pool's schema (the store's schema when
// the store source is PostgreSQL: lag is counted from its events table).
func NewPostgres(pool *pgxpool.Pool, schema string, opts ...PostgresOption) (*Postgres, error) {
	var errs []error
	if pool == nil {
		errs = append(errs, errors.New("nil pool"))
	}
	if schema == "" {
		errs = append(errs, errors.New("empty schema"))
	}
	p := &Postgres{pool: pool, schema: schema, q: pgx.Identifier{schema}.Sanitize(), idle: fmt.Sprint(DefaultLease.Milliseconds())}
	for _, o := range opts {
		o(p)
	}
	for _, v := range p.views {
		if !namePattern.MatchString(v) {
			errs = append(errs, fmt.Errorf("view %q must match %s", v, namePattern))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("projections: postgres backend: %w: %w", orchestrix.ErrInvalid, err)
	}
	return p, nil
}

// Pool returns the backend's pool.
func (p *Postgres) Pool() *pgxpool.Pool { return p.pool }

// Schema returns the backend's schema.
func (p *Postgres) Schema() string { return p.schema }

func (p *Postgres) t(name string) string { return p.q + "." + name }

func (p *Postgres) register(ctx context.Context, k key, shards int, source string) error {
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('orchestrix.projection.register:' || $1, 0))", k.projection); err != nil {
			return err
		}
		var have int
		err := tx.QueryRow(ctx, "SELECT shards FROM "+p.t("projection_versions")+" WHERE projection = $1 AND version = $2", k.projection, k.version).Scan(&have)
		switch {
		case err == nil && have != shards:
			return fmt.Errorf("projections: %s v%d has %d shards, not %d (build a new version to change them): %w", k.projection, k.version, have, shards, orchestrix.ErrInvalid)
		case errors.Is(err, pgx.ErrNoRows):
			// The first version is active at once; later ones build.
			if _, err := tx.Exec(ctx, `INSERT INTO `+p.t("projection_versions")+` (projection, version, status, shards, source, activated_at)
				SELECT $1, $2, s, $3, $4, CASE WHEN s = 'active' THEN now() END
				FROM (SELECT CASE WHEN EXISTS (SELECT 1 FROM `+p.t("projection_versions")+` WHERE projection = $1) THEN 'building' ELSE 'active' END AS s) AS x`,
				k.projection, k.version, shards, source); err != nil {
				return err
			}
		case err != nil:
			return err
		}
		_, err = tx.Exec(ctx, "INSERT INTO "+p.t("projection_checkpoints")+" (projection, version, shard) SELECT $1, $2, s FROM generate_series(0, $3 - 1) AS s ON CONFLICT DO NOTHING",
			k.projection, k.version, shards)
		return err
	})
}

func (p *Postgres) elector(role string, lease time.Duration, instance string, log *slog.Logger) (stores.Elector, error) {
	return postgres.NewElector(p.pool, stores.ElectorConfig{Role: role, Lease: lease, Instance: instance, Logger: log})
}

const statusSub = "(SELECT status FROM %s v WHERE v.projection = $1 AND v.version = $2)"

func (p *Postgres) claim(ctx context.Context, k key, owner string) (claim, error) {
	var c claim
	err := p.pool.QueryRow(ctx, "UPDATE "+p.t("projection_checkpoints")+` SET owner_epoch = owner_epoch + 1, owner = $4, heartbeat_at = now()
		WHERE projection = $1 AND version = $2 AND shard = $3 RETURNING owner_epoch, cursor, `+fmt.Sprintf(statusSub, p.t("projection_versions"))+`,
		(SELECT created_at FROM `+p.t("projection_versions")+` v WHERE v.projection = $1 AND v.version = $2)`,
		k.projection, k.version, k.shard, owner).Scan(&c.epoch, &c.cursor, &c.status, &c.created)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("projections: %s v%d shard %d: %w", k.projection, k.version, k.shard, ErrUnknownProjection)
	}
	if err != nil {
		return c, fmt.Errorf("projections: %s v%d shard %d: claim: %w", k.projection, k.version, k.shard, err)
	}
	return c, nil
}

// fence moves the checkpoint as the first statement of tx, taking the
// row's lock, only where the epoch is still the caller's.
func (p *Postgres) fence(ctx context.Context, tx pgx.Tx, k key, epoch int64, pr progress, parked int) (string, error) {
	var et *time.Time
	if !pr.eventTime.IsZero() {
		et = &pr.eventTime
	}
	if _, err := tx.Exec(ctx, "SELECT set_config('idle_in_transaction_session_timeout', $1, true)", p.idle); err != nil {
		return "", err
	}
	var status string
	err := tx.QueryRow(ctx, "UPDATE "+p.t("projection_checkpoints")+` SET cursor = $5, position = GREATEST(position, $6), event_time = COALESCE($7, event_time),
		applied = applied + $8, parked = parked + $9, heartbeat_at = now(), status = 'running', error = ''
		WHERE projection = $1 AND version = $2 AND shard = $3 AND owner_epoch = $4 RETURNING `+fmt.Sprintf(statusSub, p.t("projection_versions")),
		k.projection, k.version, k.shard, epoch, pr.cursor, int64(pr.position), et, pr.applied, parked).Scan(&status)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("projections: %s v%d shard %d epoch %d: %w", k.projection, k.version, k.shard, epoch, ErrFenced)
	}
	return status, err
}

func (p *Postgres) commit(ctx context.Context, k key, epoch int64, pr progress, apply func(context.Context, pgx.Tx, string) error) (string, error) {
	var status string
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var err error
		if status, err = p.fence(ctx, tx, k, epoch, pr, 0); err != nil {
			return err
		}
		return apply(ctx, tx, status)
	})
	return status, err
}

// eventJSON is a parked event's stored form.
type eventJSON struct {
	orchestrix.Event
	Payload any `json:"-"`
}

func (p *Postgres) park(ctx context.Context, k key, epoch int64, pr progress, dl DeadLetter) error {
	b, err := json.Marshal(eventJSON{Event: dl.Event})
	if err != nil {
		return fmt.Errorf("projections: park: encode event: %w", err)
	}
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := p.fence(ctx, tx, k, epoch, pr, 1); err != nil {
			return err
		}
		e := dl.Event
		_, err := tx.Exec(ctx, "INSERT INTO "+p.t("projection_dead_letters")+` (projection, version, shard, stream_id, event_version, position, event_id, event_type, event, error, attempts)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
			k.projection, k.version, k.shard, e.StreamID, int64(e.Version), int64(e.Position), e.ID, e.Type, b, dl.Error, dl.Attempts)
		return err
	})
}

func (p *Postgres) stop(ctx context.Context, k key, epoch int64, reason string) (bool, error) {
	var status string
	err := p.pool.QueryRow(ctx, "UPDATE "+p.t("projection_checkpoints")+` SET status = CASE WHEN status = 'skip' THEN 'skip' ELSE 'stopped' END, error = $5, heartbeat_at = now()
		WHERE projection = $1 AND version = $2 AND shard = $3 AND owner_epoch = $4 RETURNING status`, k.projection, k.version, k.shard, epoch, reason).Scan(&status)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, fmt.Errorf("projections: %s v%d shard %d: %w", k.projection, k.version, k.shard, ErrFenced)
	}
	if err != nil {
		return false, fmt.Errorf("projections: %s shard %d: record stop: %w", k.projection, k.shard, err)
	}
	return status == "skip", nil
}

func (p *Postgres) shardStatus(ctx context.Context, k key) (string, error) {
	var status string
	err := p.pool.QueryRow(ctx, "SELECT status FROM "+p.t("projection_checkpoints")+" WHERE projection = $1 AND version = $2 AND shard = $3",
		k.projection, k.version, k.shard).Scan(&status)
	return status, err
}

// SkipStopped asks the owner of a stopped shard to park the event it is
// stopped on (with its error, in the dead-letter table, where `parked
// retry` can apply it later) and go on; the owner notices within a second.
// version 0 means the active version. It fails with ErrUnknownProjection
// when no such shard is stopped.
func (p *Postgres) SkipStopped(ctx context.Context, name string, version, shard int) error {
	tag, err := p.pool.Exec(ctx, "UPDATE "+p.t("projection_checkpoints")+` c SET status = 'skip'
		WHERE c.projection = $1 AND c.shard = $3 AND c.status = 'stopped'
		AND c.version = CASE WHEN $2 > 0 THEN $2 ELSE (SELECT version FROM `+p.t("projection_versions")+` WHERE projection = $1 AND status = 'active') END`,
		name, version, shard)
	if err != nil {
		return fmt.Errorf("projections: skip on %s shard %d: %w", name, shard, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("projections: %s v%d shard %d is not stopped: %w", name, version, shard, ErrUnknownProjection)
	}
	return nil
}

func (p *Postgres) retries(ctx context.Context, k key) ([]DeadLetter, error) {
	return p.deadLetters(ctx, "WHERE projection = $1 AND version = $2 AND shard = $3 AND status = 'retry' ORDER BY id LIMIT 100", k.projection, k.version, k.shard)
}

func (p *Postgres) deadLetters(ctx context.Context, where string, args ...any) ([]DeadLetter, error) {
	rows, err := p.pool.Query(ctx, "SELECT id, projection, version, shard, event, error, attempts, parked_at, status FROM "+p.t("projection_dead_letters")+" "+where, args...)
	if err != nil {
		return nil, fmt.Errorf("projections: read dead letters: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeadLetter, error) {
		var dl DeadLetter
		var ev []byte
		if err := r.Scan(&dl.ID, &dl.Projection, &dl.Version, &dl.Shard, &ev, &dl.Error, &dl.Attempts, &dl.ParkedAt, &dl.Status); err != nil {
			return dl, err
		}
		if err := json.Unmarshal(ev, &dl.Event); err != nil {
			return dl, fmt.Errorf("dead letter %d: %w", dl.ID, err)
		}
		return dl, nil
	})
}

func (p *Postgres) resolve(ctx context.Context, k key, epoch int64, id int64, apply func(context.Context, pgx.Tx) error) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE "+p.t("projection_checkpoints")+` SET heartbeat_at = now(), parked = parked - 1
			WHERE projection = $1 AND version = $2 AND shard = $3 AND owner_epoch = $4`, k.projection, k.version, k.shard, epoch)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("projections: %s v%d shard %d: %w", k.projection, k.version, k.shard, ErrFenced)
		}
		if _, err := tx.Exec(ctx, "UPDATE "+p.t("projection_dead_letters")+" SET status = 'retried', resolved_at = now() WHERE id = $1 AND status = 'retry'", id); err != nil {
			return err
		}
		return apply(ctx, tx)
	})
	var he *handlerError
	if errors.As(err, &he) {
		if _, err := p.pool.Exec(ctx, "UPDATE "+p.t("projection_dead_letters")+" SET status = 'parked', error = $2, attempts = attempts + 1 WHERE id = $1 AND status = 'retry'",
			id, truncate(he.err.Error())); err != nil {
			return fmt.Errorf("projections: dead letter %d failed again, and recording it failed: %w", id, err)
		}
	}
	return err
}

func (p *Postgres) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return p.pool.Ping(ctx)
}

var _ Backend[pgx.Tx] = (*Postgres)(nil)
