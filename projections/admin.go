package projections

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix"
)

// ShardStatus is one checkpoint row with its lag, as `orchestrix
// projections status` shows it.
type ShardStatus struct {
	Projection string
	Version    int
	// VersionStatus is the version's "building", "active" or "retired".
	VersionStatus string
	Shard         int
	Cursor        string
	Position      uint64
	EventTime     time.Time // of the last event applied; zero if none
	Applied       int64
	Parked        int64
	OwnerEpoch    int64
	Owner         string
	Heartbeat     time.Time
	// HeartbeatAge is how long ago the owner's loop last committed; a
	// growing age with a running status means a stuck or dead owner.
	HeartbeatAge time.Duration
	// Status is "running" or "stopped" (Error says why).
	Status string
	Error  string
	// LagEvents counts the log's events after the cursor (all shards';
	// -1 when the store's events are not in this schema). LagSeconds is
	// the age of the oldest of them.
	LagEvents  int64
	LagSeconds float64
}

func (p *Postgres) versions(ctx context.Context, name string) ([]VersionInfo, error) {
	return p.listVersions(ctx, "WHERE projection = $1 ORDER BY version", name)
}

// List returns every version of every projection.
func (p *Postgres) List(ctx context.Context) ([]VersionInfo, error) {
	return p.listVersions(ctx, "ORDER BY projection, version")
}

func (p *Postgres) listVersions(ctx context.Context, where string, args ...any) ([]VersionInfo, error) {
	rows, err := p.pool.Query(ctx, "SELECT projection, version, status, shards, source, created_at, activated_at FROM "+p.t("projection_versions")+" "+where, args...)
	if err != nil {
		return nil, fmt.Errorf("projections: list versions: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (VersionInfo, error) {
		var v VersionInfo
		var act *time.Time
		err := r.Scan(&v.Projection, &v.Version, &v.Status, &v.Shards, &v.Source, &v.CreatedAt, &act)
		if act != nil {
			v.ActivatedAt = *act
		}
		return v, err
	})
}

// Status returns the checkpoint rows of every version of projection name,
// with lag; ErrUnknownProjection if it has none.
func (p *Postgres) Status(ctx context.Context, name string) ([]ShardStatus, error) {
	var hasEvents bool
	if err := p.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", p.t("events")).Scan(&hasEvents); err != nil {
		return nil, fmt.Errorf("projections: status: %w", err)
	}
	lag := "-1::bigint, 0::float8"
	if hasEvents {
		// Counted up to a bound: an operator wants "far behind", not an
		// exact count that scans a billion rows.
		lag = `(SELECT count(*) FROM (SELECT 1 FROM ` + p.t("events") + ` e WHERE (e.tx_id, e.position) > (split_part(c.cursor, '/', 1)::xid8, split_part(c.cursor, '/', 2)::bigint) LIMIT 10000000) x),
			COALESCE((SELECT EXTRACT(EPOCH FROM now() - min(e.time))::float8 FROM (SELECT time FROM ` + p.t("events") + ` e WHERE (e.tx_id, e.position) > (split_part(c.cursor, '/', 1)::xid8, split_part(c.cursor, '/', 2)::bigint) ORDER BY e.tx_id, e.position LIMIT 1) e), 0)`
	}
	// Only a store cursor counts against the events table; a topic's lag
	// is the partition's end offset less the cursor (LagEvents -1 here).
	rows, err := p.pool.Query(ctx, `SELECT c.projection, c.version, v.status, c.shard, c.cursor, c.position, c.event_time, c.applied, c.parked, c.owner_epoch, c.owner,
		c.heartbeat_at, COALESCE(EXTRACT(EPOCH FROM now() - c.heartbeat_at)::float8, -1), c.status, c.error, l.*
		FROM `+p.t("projection_checkpoints")+` c JOIN `+p.t("projection_versions")+` v USING (projection, version)
		CROSS JOIN LATERAL (SELECT `+strings.ReplaceAll(lag, "c.cursor", "CASE WHEN c.cursor = '' THEN '0/0' ELSE c.cursor END")+` WHERE v.source = 'store'
			UNION ALL SELECT -1::bigint, 0::float8 WHERE v.source <> 'store') AS l(lag_events, lag_seconds)
		WHERE c.projection = $1 ORDER BY c.version, c.shard`, name)
	if err != nil {
		return nil, fmt.Errorf("projections: status of %s: %w", name, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ShardStatus, error) {
		var s ShardStatus
		var pos int64
		var et, hb *time.Time
		var age float64
		err := r.Scan(&s.Projection, &s.Version, &s.VersionStatus, &s.Shard, &s.Cursor, &pos, &et, &s.Applied, &s.Parked, &s.OwnerEpoch, &s.Owner,
			&hb, &age, &s.Status, &s.Error, &s.LagEvents, &s.LagSeconds)
		s.Position = uint64(pos)
		if et != nil {
			s.EventTime = *et
		}
		if hb != nil {
			s.Heartbeat = *hb
		}
		s.HeartbeatAge = time.Duration(age * float64(time.Second))
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("projections: status of %s: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("projections: %q: %w", name, ErrUnknownProjection)
	}
	return out, nil
}

// Rebuild registers the next version of projection name as building, with
// the given shard count (0: the active version's). Runners of the
// projection pick it up and build it from the start of the log while the
// active version serves; Cutover switches to it. It returns the version.
func (p *Postgres) Rebuild(ctx context.Context, name string, shards int) (int, error) {
	if shards < 0 || shards > 1024 {
		return 0, fmt.Errorf("projections: rebuild %s: shards %d must be 0..1024: %w", name, shards, orchestrix.ErrInvalid)
	}
	var v int
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('orchestrix.projection.register:' || $1, 0))", name); err != nil {
			return err
		}
		var have, next int
		var source string
		err := tx.QueryRow(ctx, `SELECT max(version) + 1, (array_agg(shards ORDER BY (status = 'active') DESC, version DESC))[1], (array_agg(source ORDER BY version DESC))[1]
			FROM `+p.t("projection_versions")+` WHERE projection = $1 HAVING count(*) > 0`, name).Scan(&next, &have, &source)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("projections: %q: %w", name, ErrUnknownProjection)
		}
		if err != nil {
			return err
		}
		if shards == 0 {
			shards = have
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+p.t("projection_versions")+" (projection, version, status, shards, source) VALUES ($1, $2, 'building', $3, $4)",
			name, next, shards, source); err != nil {
			return err
		}
		v = next
		_, err = tx.Exec(ctx, "INSERT INTO "+p.t("projection_checkpoints")+" (projection, version, shard) SELECT $1, $2, s FROM generate_series(0, $3 - 1) AS s",
			name, next, shards)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("projections: rebuild %s: %w", name, err)
	}
	return v, nil
}

// Cutover makes version the active version of projection name in one
// transaction, if every shard of it is at most maxLag events behind the
// log (ErrLagging otherwise): the previous active version becomes retired
// (kept for Rollback) and the views named with Views select from the new
// version's tables. Queries through the views see the old version until
// the transaction commits and the new one after, never a mix. A negative
// maxLag skips the checks. The lag of a topic source is not counted here
// (check it with `orchestrix projections status --brokers` first): only
// stopped shards refuse its cut-over. With a store whose events are not in
// this schema the lag cannot be counted and maxLag must be negative.
func (p *Postgres) Cutover(ctx context.Context, name string, version int, maxLag int64) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if err := p.lockVersions(ctx, tx, name); err != nil {
			return err
		}
		var status, source string
		err := tx.QueryRow(ctx, "SELECT status, source FROM "+p.t("projection_versions")+" WHERE projection = $1 AND version = $2", name, version).Scan(&status, &source)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("projections: %s v%d: %w", name, version, ErrUnknownProjection)
		}
		if err != nil {
			return err
		}
		if status == "active" {
			return nil
		}
		if maxLag >= 0 && source == SourceStore {
			lag, err := p.maxLag(ctx, tx, name, version, maxLag)
			if err != nil {
				return err
			}
			if lag > maxLag {
				return fmt.Errorf("projections: %s v%d is more than %d events behind (at least %d): %w", name, version, maxLag, lag, ErrLagging)
			}
		}
		if maxLag >= 0 {
			var stopped int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM "+p.t("projection_checkpoints")+" WHERE projection = $1 AND version = $2 AND status = 'stopped'", name, version).Scan(&stopped); err != nil {
				return err
			}
			if stopped > 0 {
				return fmt.Errorf("projections: %s v%d has %d stopped shards: %w", name, version, stopped, ErrLagging)
			}
		}
		return p.activate(ctx, tx, name, version)
	})
	if err != nil {
		return fmt.Errorf("projections: cut over %s to v%d: %w", name, version, err)
	}
	return nil
}

// Rollback makes the most recently retired version of projection name
// active again (the active one becomes retired) in one transaction, and
// repoints the views; it returns that version.
func (p *Postgres) Rollback(ctx context.Context, name string) (int, error) {
	var v int
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if err := p.lockVersions(ctx, tx, name); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, "SELECT version FROM "+p.t("projection_versions")+" WHERE projection = $1 AND status = 'retired' ORDER BY activated_at DESC NULLS LAST, version DESC LIMIT 1", name).Scan(&v)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("projections: %s has no retired version to roll back to: %w", name, ErrUnknownProjection)
		}
		if err != nil {
			return err
		}
		return p.activate(ctx, tx, name, v)
	})
	if err != nil {
		return 0, fmt.Errorf("projections: roll back %s: %w", name, err)
	}
	return v, nil
}

func (p *Postgres) lockVersions(ctx context.Context, tx pgx.Tx, name string) error {
	var n int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM (SELECT 1 FROM "+p.t("projection_versions")+" WHERE projection = $1 FOR UPDATE) x", name).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("projections: %q: %w", name, ErrUnknownProjection)
	}
	return nil
}

func (p *Postgres) activate(ctx context.Context, tx pgx.Tx, name string, version int) error {
	if _, err := tx.Exec(ctx, "UPDATE "+p.t("projection_versions")+" SET status = 'retired' WHERE projection = $1 AND status = 'active'", name); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "UPDATE "+p.t("projection_versions")+" SET status = 'active', activated_at = now() WHERE projection = $1 AND version = $2", name, version); err != nil {
		return err
	}
	return p.pointViews(ctx, tx, version)
}

// pointViews (re)creates every view to select from version's tables.
func (p *Postgres) pointViews(ctx context.Context, tx pgx.Tx, version int) error {
	for _, base := range p.views {
		view := p.t(pgx.Identifier{base}.Sanitize())
		table := p.t(pgx.Identifier{VersionTable(base, version)}.Sanitize())
		if _, err := tx.Exec(ctx, "DROP VIEW IF EXISTS "+view); err != nil {
			return fmt.Errorf("drop view %s: %w", base, err)
		}
		if _, err := tx.Exec(ctx, "CREATE VIEW "+view+" AS SELECT * FROM "+table); err != nil {
			return fmt.Errorf("create view %s on %s: %w", base, VersionTable(base, version), err)
		}
	}
	return nil
}

// maxLag returns the largest lag among version's shards, counting at most
// bound+1 events.
func (p *Postgres) maxLag(ctx context.Context, tx pgx.Tx, name string, version int, bound int64) (int64, error) {
	var lag int64
	err := tx.QueryRow(ctx, `SELECT COALESCE(max((SELECT count(*) FROM (SELECT 1 FROM `+p.t("events")+` e
		WHERE (e.tx_id, e.position) > (split_part(c.cur, '/', 1)::xid8, split_part(c.cur, '/', 2)::bigint) LIMIT $3 + 1) x)), 0)
		FROM (SELECT CASE WHEN cursor = '' THEN '0/0' ELSE cursor END AS cur FROM `+p.t("projection_checkpoints")+` WHERE projection = $1 AND version = $2) c`,
		name, version, bound).Scan(&lag)
	if err != nil {
		return 0, fmt.Errorf("count lag (is the store's events table in schema %s?): %w", p.schema, err)
	}
	return lag, nil
}

// DeadLetters returns up to limit parked events of projection name (all
// statuses when all is true, else only those still parked or asked to
// retry), oldest first.
func (p *Postgres) DeadLetters(ctx context.Context, name string, all bool, limit int) ([]DeadLetter, error) {
	where := "WHERE projection = $1"
	if !all {
		where += " AND status IN ('parked', 'retry')"
	}
	return p.deadLetters(ctx, where+" ORDER BY id LIMIT $2", name, max(limit, 1))
}

// RetryParked asks the runners to apply the given parked events of
// projection name again (all of them when ids is empty); they do so within
// seconds, in the shard's transaction. A retried event is applied after
// events that followed it in its stream. It returns how many were marked.
func (p *Postgres) RetryParked(ctx context.Context, name string, ids []int64) (int64, error) {
	return p.markParked(ctx, name, ids, "retry")
}

// SkipParked marks the given parked events of projection name as skipped
// (all when ids is empty): they stay in the table, for the record.
func (p *Postgres) SkipParked(ctx context.Context, name string, ids []int64) (int64, error) {
	return p.markParked(ctx, name, ids, "skipped")
}

func (p *Postgres) markParked(ctx context.Context, name string, ids []int64, to string) (int64, error) {
	set := "status = $2"
	if to == "skipped" {
		set += ", resolved_at = now()"
	}
	q := "UPDATE " + p.t("projection_dead_letters") + " SET " + set + " WHERE projection = $1 AND status IN ('parked', 'retry')"
	args := []any{name, to}
	if len(ids) > 0 {
		q += " AND id = ANY($3)"
		args = append(args, ids)
	}
	tag, err := p.pool.Exec(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("projections: mark parked events of %s %s: %w", name, to, err)
	}
	if to == "skipped" && tag.RowsAffected() > 0 {
		// parked counts the events still parked.
		if _, err := p.pool.Exec(ctx, `UPDATE `+p.t("projection_checkpoints")+` c SET parked = (SELECT count(*) FROM `+p.t("projection_dead_letters")+` d
			WHERE d.projection = c.projection AND d.version = c.version AND d.shard = c.shard AND d.status IN ('parked', 'retry')) WHERE c.projection = $1`, name); err != nil {
			return tag.RowsAffected(), fmt.Errorf("projections: recount parked events of %s: %w", name, err)
		}
	}
	return tag.RowsAffected(), nil
}

// setup runs fn (create the version's tables) in one transaction holding
// the projection's registration lock, and creates the views if the
// version is active and they are missing.
func (p *Postgres) setup(ctx context.Context, k key, fn func(context.Context, pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('orchestrix.projection.register:' || $1, 0))", k.projection); err != nil {
			return err
		}
		if fn != nil {
			if err := fn(ctx, tx); err != nil {
				return err
			}
		}
		var active bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+p.t("projection_versions")+" WHERE projection = $1 AND version = $2 AND status = 'active')", k.projection, k.version).Scan(&active); err != nil {
			return err
		}
		if !active {
			return nil
		}
		for _, base := range p.views {
			var exists bool
			if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", p.t(pgx.Identifier{base}.Sanitize())).Scan(&exists); err != nil {
				return err
			}
			if !exists {
				if err := p.pointViews(ctx, tx, k.version); err != nil {
					return err
				}
				break
			}
		}
		return nil
	})
}
