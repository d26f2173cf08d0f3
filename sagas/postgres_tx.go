package sagas

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A transition's transaction is driven by hand over one pooled
// connection, so that BEGIN travels in the first batch (the inbox
// inserts and the instances' reads) and COMMIT in the second (every
// write): two round trips in all, where pgx.Tx takes four (BEGIN, the
// two batches, COMMIT). On a busy machine every round trip waits for the
// database and the client to be scheduled again, so this is most of a
// transition's time there. The version fence cannot look at a rows
// affected count before the COMMIT is sent, so the fenced statement
// fails by itself when it changes no row (fenced); PostgreSQL then skips
// the rest of the batch, COMMIT included, and the transaction is rolled
// back.

// begin acquires the connection of a transaction; BEGIN is the first
// statement of its first batch (see beginBatch).
func (s *PostgresStore) begin(ctx context.Context) (*pgxpool.Conn, error) {
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("sagas: begin: %w", err)
	}
	return c, nil
}

// beginBatch returns a batch that opens the transaction: BEGIN, then
// the idle-in-transaction timeout. Read their two results first.
func beginBatch() *pgx.Batch {
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	// A member paused in the middle of this transaction (SIGSTOP, a long
	// GC, a partition) must not hold its row locks for ever: the server
	// ends its session after IdleInTransactionTimeout, so the member that
	// took over the partition proceeds and the paused one's commit fails.
	b.Queue(`SELECT set_config('idle_in_transaction_session_timeout', $1, true)`, idleTimeout)
	return b
}

var idleTimeout = fmt.Sprint(IdleInTransactionTimeout.Milliseconds())

// end rolls back whatever c still has open and releases it (a
// connection the rollback could not bring back is closed by the pool).
func end(ctx context.Context, c *pgxpool.Conn) {
	if pc := c.Conn().PgConn(); !pc.IsClosed() && pc.TxStatus() != 'I' {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_, _ = c.Exec(rctx, `ROLLBACK`)
		cancel()
	}
	c.Release()
}

// fenced makes stmt, an UPDATE or INSERT … ON CONFLICT DO NOTHING,
// fail with division_by_zero when it changes no row.
func fenced(stmt string) string {
	return `WITH f AS (` + stmt + ` RETURNING 1) SELECT 1 / count(*) FROM f`
}

// isFenced reports whether err is a fenced statement's failure.
func isFenced(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "22012"
}

// commitWrites sends w, then COMMIT, in one round trip. fence[k] is the
// error for statement k of w when it is fenced. With a crash hook set
// (tests), COMMIT goes alone after w and the "written" crash point.
func (s *PostgresStore) commitWrites(ctx context.Context, c *pgxpool.Conn, w *pgx.Batch, fence map[int]func() error) error {
	n := w.Len()
	alone := s.crashAt != nil
	if !alone {
		w.Queue(`COMMIT`)
	}
	if w.Len() > 0 {
		br := c.SendBatch(ctx, w)
		var err error
		for k := 0; err == nil && k < w.Len(); k++ {
			var tag pgconn.CommandTag
			tag, err = br.Exec()
			switch {
			case err != nil && fence[k] != nil && isFenced(err):
				err = fence[k]()
			case err != nil && k == n:
				err = fmt.Errorf("commit: %w", err)
			case err == nil && k == n && tag.String() != "COMMIT":
				err = fmt.Errorf("commit: the transaction was rolled back (%s)", tag)
			}
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	if !alone {
		return nil
	}
	if err := s.crash("written"); err != nil {
		return err
	}
	tag, err := c.Exec(ctx, `COMMIT`)
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if tag.String() != "COMMIT" {
		return fmt.Errorf("commit: the transaction was rolled back (%s)", tag)
	}
	return nil
}
