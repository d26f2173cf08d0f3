// Package pgtest gives tests a PostgreSQL store of their own: a fresh
// schema (see testenv.Schema, dropped when the test ends), migrated, with
// a store on it. It needs the PostgreSQL that testenv finds (DATABASE_URL)
// and skips, or fails under ORCHESTRIX_REQUIRE_SERVICES, like testenv.
package pgtest

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores/postgres"
)

// Store migrates a fresh schema on pool and returns a store on it; the
// store's Schema method names the schema.
func Store(t testing.TB, pool *pgxpool.Pool) *postgres.Store {
	t.Helper()
	schema := testenv.Schema(t, pool)
	if _, err := postgres.Migrate(t.Context(), pool, schema); err != nil {
		t.Fatalf("migrate %s: %v", schema, err)
	}
	store, err := postgres.New(t.Context(), pool, postgres.WithSchema(schema))
	if err != nil {
		t.Fatalf("store on %s: %v", schema, err)
	}
	return store
}
