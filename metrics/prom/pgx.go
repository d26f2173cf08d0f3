package prom

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// QueryTracer is a pgx v5 tracer (pgx.QueryTracer, pgx.BatchTracer and
// pgx.CopyFromTracer) timing PostgreSQL calls by a low-cardinality
// operation: the statement's first keyword (select, insert, update,
// delete, with, begin, commit, rollback, ...; anything else "other"),
// "batch" for a whole pgx.Batch and "copy_from" for CopyFrom:
//
//	orchestrix_pg_query_seconds{op,outcome="ok|error"}  histogram: one query, batch or copy
//	orchestrix_pg_queries_total{op,outcome}             statements, including each statement of a batch
//
// No label carries SQL text, arguments or an error message. Set it as the
// pool's tracer (config.ConnConfig.Tracer = prom.NewQueryTracer(reg)); to
// combine it with another tracer, use pgx's multitracer package.
type QueryTracer struct {
	seconds *prometheus.HistogramVec
	queries *prometheus.CounterVec
	series  sync.Map // opOutcome -> *opSeries
}

// opOutcome keys the series of one operation and outcome.
type opOutcome struct {
	op string
	ok bool
}

// opSeries are the series of one operation and outcome, looked up once.
type opSeries struct {
	seconds prometheus.Observer
	queries prometheus.Counter
}

func (t *QueryTracer) seriesOf(op string, err error) *opSeries {
	k := opOutcome{op, err == nil}
	if s, ok := t.series.Load(k); ok {
		return s.(*opSeries)
	}
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	s, _ := t.series.LoadOrStore(k, &opSeries{seconds: t.seconds.WithLabelValues(op, outcome), queries: t.queries.WithLabelValues(op, outcome)})
	return s.(*opSeries)
}

// NewQueryTracer registers the PostgreSQL series with reg.
func NewQueryTracer(reg prometheus.Registerer) (*QueryTracer, error) {
	t := &QueryTracer{
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "orchestrix_pg_query_seconds",
			Help:    "Time of one PostgreSQL query, batch or copy, by operation (the statement's first keyword, batch, copy_from) and outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 17)}, []string{"op", "outcome"}),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_pg_queries_total",
			Help: "PostgreSQL statements run, each statement of a batch included, by operation and outcome."}, []string{"op", "outcome"}),
	}
	if err := register(reg, t.seconds, t.queries); err != nil {
		return nil, err
	}
	return t, nil
}

type traceKey struct{}

// traceStart is what a traced call carries from its start to its end.
type traceStart struct {
	at  time.Time
	sql string
}

func withStart(ctx context.Context, sql string) context.Context {
	return context.WithValue(ctx, traceKey{}, traceStart{at: time.Now(), sql: sql})
}

func (t *QueryTracer) end(ctx context.Context, op string, err error, statements int) {
	s := t.seriesOf(op, err)
	if start, ok := ctx.Value(traceKey{}).(traceStart); ok {
		s.seconds.Observe(time.Since(start.at).Seconds())
	}
	if statements > 0 {
		s.queries.Add(float64(statements))
	}
}

// TraceQueryStart implements pgx.QueryTracer.
func (t *QueryTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	return withStart(ctx, data.SQL)
}

// TraceQueryEnd implements pgx.QueryTracer. The operation comes from the
// command tag PostgreSQL returned when there is one (it names what ran,
// also for a statement behind a WITH), else from the SQL text.
func (t *QueryTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	op := ""
	if tag := data.CommandTag.String(); tag != "" {
		op = Operation(tag)
	}
	if op == "" || op == "other" {
		if start, ok := ctx.Value(traceKey{}).(traceStart); ok {
			op = Operation(start.sql)
		}
	}
	if op == "" {
		op = "other"
	}
	t.end(ctx, op, data.Err, 1)
}

// TraceBatchStart implements pgx.BatchTracer.
func (t *QueryTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return withStart(ctx, "")
}

// TraceBatchQuery implements pgx.BatchTracer: it counts the statement.
func (t *QueryTracer) TraceBatchQuery(_ context.Context, _ *pgx.Conn, data pgx.TraceBatchQueryData) {
	t.seriesOf(Operation(data.SQL), data.Err).queries.Inc()
}

// TraceBatchEnd implements pgx.BatchTracer.
func (t *QueryTracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchEndData) {
	t.end(ctx, "batch", data.Err, 0)
}

// TraceCopyFromStart implements pgx.CopyFromTracer.
func (t *QueryTracer) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceCopyFromStartData) context.Context {
	return withStart(ctx, "")
}

// TraceCopyFromEnd implements pgx.CopyFromTracer.
func (t *QueryTracer) TraceCopyFromEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceCopyFromEndData) {
	t.end(ctx, "copy_from", data.Err, 1)
}

var (
	_ pgx.QueryTracer    = (*QueryTracer)(nil)
	_ pgx.BatchTracer    = (*QueryTracer)(nil)
	_ pgx.CopyFromTracer = (*QueryTracer)(nil)
)

// operations are the first keywords Operation keeps (mapped to
// themselves, so the label is a constant string); any other is "other".
var operations = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"select", "insert", "update", "delete", "with", "merge",
		"begin", "commit", "rollback", "savepoint", "release",
		"copy", "lock", "set", "show", "listen", "notify", "unlisten",
		"create", "drop", "alter", "truncate", "declare", "fetch", "close"} {
		m[k] = k
	}
	return m
}()

// Operation returns the operation label of a statement or command tag:
// its first keyword in lower case if it is a known one, else "other".
// Leading white space and SQL comments are skipped.
func Operation(sql string) string {
	for {
		i := 0
		for i < len(sql) && (sql[i] == ' ' || sql[i] == '\t' || sql[i] == '\r' || sql[i] == '\n' || sql[i] == '(') {
			i++
		}
		sql = sql[i:]
		switch {
		case strings.HasPrefix(sql, "--"):
			i := strings.IndexByte(sql, '\n')
			if i < 0 {
				return "other"
			}
			sql = sql[i+1:]
			continue
		case strings.HasPrefix(sql, "/*"):
			i := strings.Index(sql, "*/")
			if i < 0 {
				return "other"
			}
			sql = sql[i+2:]
			continue
		}
		break
	}
	end := 0
	for end < len(sql) && end < 12 && (sql[end]|0x20 >= 'a' && sql[end]|0x20 <= 'z') {
		end++
	}
	var buf [12]byte
	w := buf[:end]
	for i := range end {
		w[i] = sql[i] | 0x20
	}
	if op, ok := operations[string(w)]; ok { // no allocation: the map key conversion is optimised
		return op
	}
	return "other"
}
