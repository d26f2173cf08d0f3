package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/stores"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migration is one embedded schema change.
type Migration struct {
	Version int
	Name    string
	SQL     string // with the {{schema}} placeholder
}

// ErrMigrationState reports a migrations table this code cannot make sense
// of (a gap, or a name that differs from the embedded migration).
var ErrMigrationState = errors.New("postgres: migration state is inconsistent")

// Migrations returns the embedded migrations in version order. Files are
// named NNNN_name.sql.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, fmt.Errorf("postgres: read embedded migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		num, name, ok := strings.Cut(strings.TrimSuffix(e.Name(), ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("postgres: migration file %q is not NNNN_name.sql", e.Name())
		}
		b, err := migrationFS.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: v, Name: name, SQL: string(b)})
	}
	slices.SortFunc(out, func(a, b Migration) int { return a.Version - b.Version })
	return out, nil
}

// Migrate creates the schema if needed and applies every embedded
// migration it lacks, in one transaction, holding an advisory lock so
// concurrent migrators wait for each other. It returns the versions
// applied (none when the schema was current).
func Migrate(ctx context.Context, pool *pgxpool.Pool, schema string) ([]int, error) {
	if err := checkSchemaName(schema); err != nil {
		return nil, err
	}
	all, err := Migrations()
	if err != nil {
		return nil, err
	}
	q := pgx.Identifier{schema}.Sanitize()
	var applied []int
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('orchestrix.migrate.' || $1))", schema); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+q); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+q+".schema_migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"); err != nil {
			return err
		}
		done, err := appliedMigrations(ctx, tx, q)
		if err != nil {
			return err
		}
		if err := checkState(done, all); err != nil {
			return err
		}
		for _, m := range all[len(done):] {
			if _, err := tx.Exec(ctx, strings.ReplaceAll(m.SQL, "{{schema}}", q)); err != nil {
				return fmt.Errorf("migration %04d_%s: %w", m.Version, m.Name, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+q+".schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
				return err
			}
			applied = append(applied, m.Version)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: migrate schema %q: %w", schema, err)
	}
	return applied, nil
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func appliedMigrations(ctx context.Context, q querier, schema string) ([]Migration, error) {
	rows, err := q.Query(ctx, "SELECT version, name FROM "+schema+".schema_migrations ORDER BY version")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Migration, error) {
		var m Migration
		err := r.Scan(&m.Version, &m.Name)
		return m, err
	})
}

// checkState compares the recorded migrations with the embedded ones.
func checkState(done, all []Migration) error {
	for i, d := range done {
		if i >= len(all) {
			return fmt.Errorf("database has migration %04d_%s, this code knows up to %04d: %w", d.Version, d.Name, all[len(all)-1].Version, stores.ErrSchemaTooNew)
		}
		if d.Version != all[i].Version || d.Name != all[i].Name {
			return fmt.Errorf("recorded migration %d is %04d_%s, expected %04d_%s: %w", i+1, d.Version, d.Name, all[i].Version, all[i].Name, ErrMigrationState)
		}
	}
	return nil
}

// checkMigrated reports ErrNotMigrated, ErrSchemaTooNew or
// ErrMigrationState when the schema is not exactly at the embedded state.
func checkMigrated(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	all, err := Migrations()
	if err != nil {
		return err
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgx.Identifier{schema, "schema_migrations"}.Sanitize()).Scan(&exists); err != nil {
		return fmt.Errorf("postgres: check schema %q: %w", schema, err)
	}
	if !exists {
		return fmt.Errorf("postgres: schema %q has no migrations table (run `orchestrix migrate` or postgres.Migrate): %w", schema, stores.ErrNotMigrated)
	}
	done, err := appliedMigrations(ctx, pool, pgx.Identifier{schema}.Sanitize())
	if err != nil {
		return fmt.Errorf("postgres: read migrations of schema %q: %w", schema, err)
	}
	if err := checkState(done, all); err != nil {
		return fmt.Errorf("postgres: schema %q: %w", schema, err)
	}
	if len(done) < len(all) {
		return fmt.Errorf("postgres: schema %q is at migration %d of %d (run `orchestrix migrate`): %w", schema, len(done), len(all), stores.ErrNotMigrated)
	}
	return nil
}
