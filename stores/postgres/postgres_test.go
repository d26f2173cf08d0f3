package postgres_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/orchestrix/orchestrix/stores/storetest"
)

// newStore migrates a fresh schema and returns a store on it.
func newStore(t testing.TB, pool *pgxpool.Pool) *postgres.Store {
	t.Helper()
	return pgtest.Store(t, pool)
}

// pending adapts a Store to storetest.PendingAppender with AppendTx.
type pending struct{ *postgres.Store }

func (p pending) BeginAppend(ctx context.Context, streamID string, expected stores.ExpectedVersion, events []orchestrix.Event) (func(context.Context, bool) error, error) {
	tx, err := p.Pool().Begin(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := p.AppendTx(ctx, tx, []stores.AppendRequest{{StreamID: streamID, Expected: expected, Events: events}}); err != nil {
		_ = tx.Rollback(ctx)
		return nil, err
	}
	return func(ctx context.Context, commit bool) error {
		if commit {
			return tx.Commit(ctx)
		}
		return tx.Rollback(ctx)
	}, nil
}

func TestConformanceIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	storetest.Run(t, func(t *testing.T) stores.EventStore { return pending{newStore(t, pool)} })
}

func TestLongStreamIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("1M-event stream: not in -short mode")
	}
	pool := testenv.Pool(t)
	storetest.RunLongStream(t, newStore(t, pool), 1_000_000, 64<<20)
}

func TestMigrationsIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := t.Context()
	schema := testenv.Schema(t, pool)

	if _, err := postgres.New(ctx, pool, postgres.WithSchema(schema)); !errors.Is(err, stores.ErrNotMigrated) {
		t.Fatalf("New on an empty schema: %v, want ErrNotMigrated", err)
	}
	applied, err := postgres.Migrate(ctx, pool, schema)
	if err != nil || len(applied) == 0 {
		t.Fatalf("first migrate = %v, %v", applied, err)
	}
	if again, err := postgres.Migrate(ctx, pool, schema); err != nil || len(again) != 0 {
		t.Fatalf("second migrate = %v, %v; want nothing applied", again, err)
	}
	q := pgx.Identifier{schema}.Sanitize()
	if _, err := pool.Exec(ctx, "INSERT INTO "+q+".schema_migrations (version, name) VALUES (9999, 'future')"); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.New(ctx, pool, postgres.WithSchema(schema)); !errors.Is(err, stores.ErrSchemaTooNew) {
		t.Fatalf("New with a future migration: %v, want ErrSchemaTooNew", err)
	}
	if _, err := pool.Exec(ctx, "DELETE FROM "+q+".schema_migrations WHERE version = 9999"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "UPDATE "+q+".schema_migrations SET name = 'tampered' WHERE version = 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.Migrate(ctx, pool, schema); !errors.Is(err, postgres.ErrMigrationState) {
		t.Fatalf("Migrate on a tampered state: %v, want ErrMigrationState", err)
	}
	for _, bad := range []string{"", "Robert'); DROP", "UPPER", "a-b"} {
		if _, err := postgres.Migrate(ctx, pool, bad); !errors.Is(err, orchestrix.ErrInvalid) {
			t.Errorf("Migrate(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

// TestCopyAppendIntegration covers the COPY path with a version conflict.
func TestCopyAppendIntegration(t *testing.T) {
	s := newStore(t, testenv.Pool(t))
	ctx := t.Context()
	big := storetest.Events("Bulk", postgres.CopyThreshold+10)
	r, err := s.Append(ctx, "bulk", stores.NoStream, big)
	if err != nil || r.ToVersion != uint64(len(big)) {
		t.Fatalf("copy append = %+v, %v", r, err)
	}
	if _, err := s.Append(ctx, "bulk", stores.Exact(5), big); !errors.Is(err, stores.ErrConflict) {
		t.Fatalf("stale copy append: %v, want conflict", err)
	}
	if got := storetest.ReadStream(t, s, "bulk", 0); len(got) != len(big) {
		t.Fatalf("stream has %d events, want %d", len(got), len(big))
	}
}
