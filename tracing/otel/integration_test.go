package otel_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
)

// TestTraceIntegration: the traces of TestCommandToProjection and
// TestSagaTrace on the real broker and PostgreSQL (event store, saga
// store whose commands the relay publishes from the outbox table,
// projection backend).
func TestTraceIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	pool := testenv.Pool(t)
	store := pgtest.Store(t, pool)
	back, err := projections.NewPostgres(pool, store.Schema())
	if err != nil {
		t.Fatal(err)
	}
	ss, err := sagas.NewPostgresStore(pool, store.Schema())
	if err != nil {
		t.Fatal(err)
	}
	tr, rec, tt := recorder(t)
	bc := testenv.Name("trace")
	p := startPipeline(t, env[pgx.Tx]{seeds: seeds, store: store, back: back, apply: func(context.Context, pgx.Tx, projections.Batch) error { return nil },
		sagas: ss}, bc, tr)
	t.Run("command", func(t *testing.T) { commandTraces(t, p, rec, tt) })
	t.Run("saga", func(t *testing.T) { sagaTrace(t, p, rec, tt) })
}
