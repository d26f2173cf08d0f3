package postgres_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
)

// TestOutboxTableIntegration: CheckOutbox names an unmigrated schema;
// ReadOutbox returns committed rows in log order with their columns as
// written, never a row of a transaction still running nor one committed
// after it began (until it ends), and never a rolled-back one.
func TestOutboxTableIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := t.Context()
	bare := postgres.NewOutboxTable(pool, testenv.Schema(t, pool))
	if err := bare.CheckOutbox(ctx); !errors.Is(err, stores.ErrNotMigrated) {
		t.Fatalf("CheckOutbox on an unmigrated schema = %v, want ErrNotMigrated", err)
	}

	schema := pgtest.Store(t, pool).Schema()
	tbl := postgres.NewOutboxTable(pool, schema)
	if err := tbl.CheckOutbox(ctx); err != nil {
		t.Fatal(err)
	}
	insert := `INSERT INTO "` + schema + `".outbox (topic, key, value, headers) VALUES ($1, $2, $3, $4)`
	// A slow transaction writes first and is still open when a later one
	// commits: neither is read until it ends.
	slow, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Rollback(context.WithoutCancel(ctx))
	if _, err := slow.Exec(ctx, insert, "t", []byte("k0"), []byte("rolled back"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, insert, "t", []byte("k1"), []byte("v1"), []byte(`[{"k":"h","v":"x"}]`)); err != nil {
		t.Fatal(err)
	}
	rows, err := tbl.ReadOutbox(ctx, stores.Cursor{}, 10)
	if err != nil || len(rows) != 0 {
		t.Fatalf("read with a transaction open below = %v, %v; want nothing", rows, err)
	}
	if err := slow.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, insert, "u", nil, []byte("v2"), nil); err != nil {
		t.Fatal(err)
	}
	// (Another test's transaction anywhere in the cluster holds the
	// horizon too: wait for it.)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if rows, err = tbl.ReadOutbox(ctx, stores.Cursor{}, 10); err != nil {
			t.Fatal(err)
		}
		if len(rows) == 2 || time.Now().After(deadline) {
			break
		}
	}
	if len(rows) != 2 || rows[0].Topic != "t" || string(rows[0].Key) != "k1" || string(rows[0].Value) != "v1" ||
		string(rows[0].Headers) != `[{"k": "h", "v": "x"}]` || rows[1].Topic != "u" || rows[1].Key != nil || rows[1].Headers != nil ||
		rows[0].CreatedAt.IsZero() || !(rows[0].Cursor.Tx < rows[1].Cursor.Tx) {
		t.Fatalf("rows = %+v, want k1 then v2, as written", rows)
	}
	rows, err = tbl.ReadOutbox(ctx, rows[0].Cursor, 1)
	if err != nil || len(rows) != 1 || string(rows[0].Value) != "v2" {
		t.Fatalf("read after the first row, limit 1 = %+v, %v; want v2", rows, err)
	}
	if rows, err = tbl.ReadOutbox(ctx, rows[0].Cursor, 10); err != nil || len(rows) != 0 {
		t.Fatalf("read after the last row = %+v, %v; want nothing", rows, err)
	}
}
