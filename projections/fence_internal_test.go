package projections

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
)

// TestFenceIntegration: an owner whose shard was claimed by another
// (the case of an owner paused before its batch transaction began, woken
// after a takeover) cannot commit: ErrFenced, and its read-model writes
// roll back; the new owner commits.
func TestFenceIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	store := pgtest.Store(t, pool)
	p, err := NewPostgres(pool, store.Schema())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	k := key{"fence", 1, 0}
	if err := p.register(ctx, k, 1, SourceStore); err != nil {
		t.Fatal(err)
	}
	table := pgx.Identifier{store.Schema(), "marks"}.Sanitize()
	if _, err := pool.Exec(ctx, "CREATE TABLE "+table+" (who text)"); err != nil {
		t.Fatal(err)
	}
	old, err := p.claim(ctx, k, "old")
	if err != nil {
		t.Fatal(err)
	}
	cur, err := p.claim(ctx, k, "new")
	if err != nil || cur.epoch != old.epoch+1 {
		t.Fatalf("second claim = %+v, %v", cur, err)
	}
	write := func(who string) func(context.Context, pgx.Tx, string) error {
		return func(ctx context.Context, tx pgx.Tx, _ string) error {
			_, err := tx.Exec(ctx, "INSERT INTO "+table+" VALUES ($1)", who)
			return err
		}
	}
	if _, err := p.commit(ctx, k, old.epoch, progress{cursor: "1/1"}, write("old")); !errors.Is(err, ErrFenced) {
		t.Fatalf("old owner's commit = %v, want ErrFenced", err)
	}
	if err := p.park(ctx, k, old.epoch, progress{cursor: "1/1"}, DeadLetter{}); !errors.Is(err, ErrFenced) {
		t.Fatalf("old owner's park = %v, want ErrFenced", err)
	}
	if _, err := p.stop(ctx, k, old.epoch, "x"); !errors.Is(err, ErrFenced) {
		t.Fatalf("old owner's stop = %v, want ErrFenced", err)
	}
	if _, err := p.commit(ctx, k, cur.epoch, progress{cursor: "2/2", applied: 1}, write("new")); err != nil {
		t.Fatal(err)
	}
	var marks []string
	rows, _ := pool.Query(ctx, "SELECT who FROM "+table)
	marks, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(marks) != 1 || marks[0] != "new" {
		t.Fatalf("marks = %v, %v: want only the new owner's", marks, err)
	}
	st, err := p.Status(ctx, "fence")
	if err != nil || st[0].Cursor != "2/2" || st[0].Owner != "new" || st[0].OwnerEpoch != cur.epoch {
		t.Fatalf("status = %+v, %v", st, err)
	}
}
