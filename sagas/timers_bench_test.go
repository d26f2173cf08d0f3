package sagas

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkTimerLateness: 100,000 pending timers (of 100,000 running
// instances) fall due evenly over 10 seconds; one poller (DefaultTimerPoll,
// DefaultTimerBatch) fires them into the outbox. Lateness is the firing
// transaction's start (the outbox row's created_at) minus the due time.
//
//	eval "$(scripts/services.sh env)"; go test ./sagas -run '^$' -bench TimerLateness -benchtime 1x
func BenchmarkTimerLateness(b *testing.B) {
	for b.Loop() {
		benchTimers(b, 100_000, 10*time.Second)
	}
}

func benchTimers(b *testing.B, n int, spread time.Duration) {
	be := postgresBackend(b)
	s := be.store.(*PostgresStore)
	ctx := b.Context()
	rt := benchRuntime(b, s)
	start := time.Now().Add(2 * time.Second).UTC()
	if _, err := s.Pool().Exec(ctx, `INSERT INTO `+s.t["saga_instances"]+` (`+instanceCols+`)
		SELECT 'transfer', 'i' || g, 1, 1, 'running', 0, 1, 1, 'outcome', '{}', '', now(), now() FROM generate_series(0, $1 - 1) g`, n); err != nil {
		b.Fatal(err)
	}
	if _, err := s.Pool().Exec(ctx, `INSERT INTO `+s.t["saga_timers"]+` (saga_type, saga_id, phase, step, try, kind, due_at)
		SELECT 'transfer', 'i' || g, 'action', 0, 1, 'outcome', $2::timestamptz + (g * $3::bigint / $1) * interval '1 microsecond'
		FROM generate_series(0, $1 - 1) g`, n, start, spread.Microseconds()); err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := contextWithTimeout(b, spread+60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- rt.RunTimers(runCtx) }()
	deadline := time.Now().Add(spread + 60*time.Second)
	for {
		ts, err := s.Timers(ctx, "transfer", 1)
		if err != nil {
			b.Fatal(err)
		}
		if len(ts) == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("timers still pending")
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	var p50, p99, max float64
	var fired int
	err := s.Pool().QueryRow(ctx, `SELECT count(*),
		percentile_cont(0.5) WITHIN GROUP (ORDER BY l), percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l)
		FROM (SELECT extract(epoch FROM o.created_at - ($2::timestamptz + (substr(convert_from(o.key, 'UTF8'), 2)::bigint * $3::bigint / $1) * interval '1 microsecond')) * 1000 AS l
		      FROM `+pgx.Identifier{s.Schema(), "outbox"}.Sanitize()+` o WHERE o.topic = $4) x`,
		n, start, spread.Microseconds(), rt.Inbox()).Scan(&fired, &p50, &p99, &max)
	if err != nil {
		b.Fatal(err)
	}
	if fired != n {
		b.Fatalf("%d timers fired, want %d", fired, n)
	}
	b.ReportMetric(p50, "late-p50-ms")
	b.ReportMetric(p99, "late-p99-ms")
	b.ReportMetric(max, "late-max-ms")
	b.Logf("%d timers fired; lateness p50 %.0f ms, p99 %.0f ms, max %.0f ms", fired, p50, p99, max)
}
