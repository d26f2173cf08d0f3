package postgres

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix/internal/testenv"
)

// TestReadAllOrdersByIndex: the log read orders by the xid8 column
// through the (tx_id, position) index, not by the tx_id::text output
// column (which sorts text, and sorts the whole log for each page).
func TestReadAllOrdersByIndex(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	if _, err := Migrate(t.Context(), pool, schema); err != nil {
		t.Fatal(err)
	}
	sql := newStatements(pgx.Identifier{schema}.Sanitize()).readAll
	tx, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(t.Context()) }()
	// Whatever the table's size, a plan that can use the index does.
	if _, err := tx.Exec(t.Context(), "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off"); err != nil {
		t.Fatal(err)
	}
	rows, err := tx.Query(t.Context(), "EXPLAIN "+sql, "0", int64(0), 100)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(plan, "\n")
	if strings.Contains(text, "Sort") || !strings.Contains(text, "events_tx_position") {
		t.Fatalf("the log read does not follow the (tx_id, position) index:\n%s", text)
	}
}
