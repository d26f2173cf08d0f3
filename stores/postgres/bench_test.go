package postgres_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/stores/storetest"
)

// parallel runs n operations spread over workers goroutines, each op
// numbered per worker, and fails b on the first error.
func parallel(b *testing.B, workers, n int, op func(worker, i int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				if next.Add(1) > int64(n) {
					return
				}
				if err := op(w, i); err != nil {
					once.Do(func() { b.Error(err) })
					return
				}
			}
		})
	}
	wg.Wait()
}

// rawTable creates a table shaped like the events table (same columns,
// defaults, constraints and indexes) for the raw pgx baselines.
func rawTable(b *testing.B, s *postgres.Store) string {
	table := pgx.Identifier{s.Schema(), "raw_events"}.Sanitize()
	if _, err := s.Pool().Exec(b.Context(), "CREATE TABLE "+table+" (LIKE "+pgx.Identifier{s.Schema(), "events"}.Sanitize()+" INCLUDING ALL)"); err != nil {
		b.Fatal(err)
	}
	return table
}

// rawColumns are the columns the store writes for an event.
var rawColumns = []string{"stream_id", "version", "id", "type", "source", "subject", "time", "content_type", "data", "correlation_id", "causation_id", "traceparent", "extensions", "command_id"}

const rawInsertSQL = `INSERT INTO %s (stream_id, version, id, type, source, subject, time, content_type, data, correlation_id, causation_id, traceparent, extensions, command_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`

// rawRow is the row the store writes for one storetest event.
func rawRow(stream string, v int) []any {
	return []any{stream, int64(v), fmt.Sprintf("0190b7a4-0000-7000-8000-%012d", v), "Bench", "/storetest", stream, time.Now(), "application/json", []byte(`{"n":1}`), "", "", "", nil, ""}
}

// timed runs f once and returns how long it took. Baselines run the same
// number of operations as the measured code, before it, in the same run
// (testing.Benchmark cannot be nested in a benchmark).
func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

// reportRatio reports events/s of the measured code and of its baseline,
// and their ratio; both did b.N operations of perOp events.
func reportRatio(b *testing.B, perOp int, elapsed, baseline time.Duration) {
	rate := float64(b.N*perOp) / elapsed.Seconds()
	base := float64(b.N*perOp) / baseline.Seconds()
	b.ReportMetric(rate, "events/s")
	b.ReportMetric(base, "baseline-events/s")
	b.ReportMetric(rate/base, "ratio")
}

func benchStore(b *testing.B) (*postgres.Store, *pgxpool.Pool) {
	pool := testenv.Pool(b)
	return newStore(b, pool), pool
}

// BenchmarkAppendSingle16Writers: 16 writers each appending one event at a
// time to their own stream, beside raw single-row INSERTs by 16 writers.
func BenchmarkAppendSingle16Writers(b *testing.B) {
	s, pool := benchStore(b)
	raw := rawTable(b, s)
	const writers = 16
	baseline := timed(func() {
		sql := fmt.Sprintf(rawInsertSQL, raw)
		run := time.Now().UnixNano()
		parallel(b, writers, b.N, func(w, i int) error {
			_, err := pool.Exec(b.Context(), sql, rawRow(fmt.Sprintf("raw-%d-%d", run, w), i+1)...)
			return err
		})
	})
	b.ResetTimer()
	start := time.Now()
	run := time.Now().UnixNano()
	parallel(b, writers, b.N, func(w, i int) error {
		_, err := s.Append(b.Context(), fmt.Sprintf("s-%d-%d", run, w), stores.Exact(uint64(i)), storetest.Events("Bench", 1))
		return err
	})
	reportRatio(b, 1, time.Since(start), baseline)
}

// BenchmarkAppendBatch100: one writer appending 100-event batches, beside
// raw multi-row INSERTs and COPY of the same rows.
func BenchmarkAppendBatch100(b *testing.B) {
	s, pool := benchStore(b)
	raw := rawTable(b, s)
	const size = 100
	multi := func() {
		run := time.Now().UnixNano()
		for i := range b.N {
			sql := fmt.Sprintf("INSERT INTO %s (%s) VALUES ", raw, strings.Join(rawColumns, ", "))
			args := make([]any, 0, size*len(rawColumns))
			for j := range size {
				if j > 0 {
					sql += ","
				}
				n := len(args)
				ph := make([]string, len(rawColumns))
				for k := range ph {
					ph[k] = fmt.Sprintf("$%d", n+k+1)
				}
				sql += "(" + strings.Join(ph, ",") + ")"
				args = append(args, rawRow(fmt.Sprintf("multi-%d", run), i*size+j+1)...)
			}
			if _, err := pool.Exec(b.Context(), sql, args...); err != nil {
				b.Fatal(err)
			}
		}
	}
	copyRows := func() {
		run := time.Now().UnixNano()
		for i := range b.N {
			rows := make([][]any, size)
			for j := range rows {
				rows[j] = rawRow(fmt.Sprintf("copy-%d", run), i*size+j+1)
			}
			if _, err := pool.CopyFrom(b.Context(), pgx.Identifier{s.Schema(), "raw_events"},
				rawColumns, pgx.CopyFromRows(rows)); err != nil {
				b.Fatal(err)
			}
		}
	}
	multiRes := timed(multi)
	copyRes := timed(copyRows)
	b.ResetTimer()
	start := time.Now()
	stream := fmt.Sprintf("batch-%d", time.Now().UnixNano())
	for i := range b.N {
		if _, err := s.Append(b.Context(), stream, stores.Exact(uint64(i*size)), storetest.Events("Bench", size)); err != nil {
			b.Fatal(err)
		}
	}
	reportRatio(b, size, time.Since(start), multiRes)
	b.ReportMetric(float64(b.N*size)/copyRes.Seconds(), "copy-events/s")
}

// BenchmarkAppendContended: 16 writers appending to one stream with
// version checks, retrying conflicts; reports the conflict rate.
func BenchmarkAppendContended(b *testing.B) {
	s, _ := benchStore(b)
	var conflicts atomic.Int64
	var version atomic.Uint64
	b.ResetTimer()
	start := time.Now()
	parallel(b, 16, b.N, func(w, i int) error {
		for {
			v := version.Load()
			_, err := s.Append(b.Context(), "hot", stores.Exact(v), storetest.Events("Bench", 1))
			if err == nil {
				version.CompareAndSwap(v, v+1)
				return nil
			}
			var ce *stores.ConflictError
			if !asConflict(err, &ce) {
				return err
			}
			conflicts.Add(1)
			version.Store(ce.Actual)
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	b.ReportMetric(float64(conflicts.Load())/float64(b.N), "conflicts/op")
}

// BenchmarkReadStream reads a 100k-event stream, beside a raw pgx scan of
// the same rows.
func BenchmarkReadStream(b *testing.B) {
	s, pool := benchStore(b)
	const n = 100_000
	for v := 0; v < n; v += 5000 {
		if _, err := s.Append(b.Context(), "read", stores.Exact(uint64(v)), storetest.Events("Bench", 5000)); err != nil {
			b.Fatal(err)
		}
	}
	baseline := timed(func() {
		for range b.N {
			// The same columns the store reads, scanned into plain values.
			rows, _ := pool.Query(b.Context(), "SELECT position, stream_id, version, id, type, source, subject, time, content_type, data, correlation_id, causation_id, traceparent, extensions, command_id FROM "+pgx.Identifier{s.Schema(), "events"}.Sanitize()+" WHERE stream_id = 'read' ORDER BY version")
			var pos, ver int64
			var stream, id, typ, src, subj, ct, corr, cause, tp, cmd string
			var at time.Time
			var data, ext []byte
			count := 0
			for rows.Next() {
				_ = rows.Scan(&pos, &stream, &ver, &id, &typ, &src, &subj, &at, &ct, &data, &corr, &cause, &tp, &ext, &cmd)
				count++
			}
			if rows.Err() != nil || count != n {
				b.Fatalf("raw read %d rows: %v", count, rows.Err())
			}
		}
	})
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		count := 0
		for _, err := range s.ReadStream(b.Context(), "read", 0) {
			if err != nil {
				b.Fatal(err)
			}
			count++
		}
		if count != n {
			b.Fatalf("read %d", count)
		}
	}
	reportRatio(b, n, time.Since(start), baseline)
}

func asConflict(err error, ce **stores.ConflictError) bool { return errors.As(err, ce) }

// BenchmarkAppendManyCommands: what an aggregate processor does per poll —
// AppendMany of 50 one-event requests, each to its own stream (of 1,000)
// with a command ID, 4 writers — beside a raw pgx transaction per batch
// inserting the same 50 rows with one unnest INSERT into a table shaped
// like events, and 50 rows into one like commands.
func BenchmarkAppendManyCommands(b *testing.B) {
	s, pool := benchStore(b)
	raw := rawTable(b, s)
	rawCmds := pgx.Identifier{s.Schema(), "raw_commands"}.Sanitize()
	if _, err := pool.Exec(b.Context(), "CREATE TABLE "+rawCmds+" (LIKE "+pgx.Identifier{s.Schema(), "commands"}.Sanitize()+" INCLUDING ALL)"); err != nil {
		b.Fatal(err)
	}
	size, writers, streams := benchEnvInt("BENCH_BATCH", 50), 4, 1000
	rawSQL := fmt.Sprintf(`INSERT INTO %s (stream_id, version, id, type, source, subject, time, content_type, data, command_id)
	SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::bytea[], $10::text[])`, raw)
	cmdSQL := fmt.Sprintf(`INSERT INTO %s SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])`, rawCmds)
	run := time.Now().UnixNano()
	versions := make([][]uint64, writers)
	for w := range versions {
		versions[w] = make([]uint64, streams/writers)
	}
	baseline := timed(func() {
		var seq atomic.Int64
		parallel(b, writers, b.N, func(w, i int) error {
			cols := make([][]any, 10)
			var cs, ss []string
			var fs []int64
			for j := range size {
				n := seq.Add(1)
				stream := fmt.Sprintf("raw-%d-%d", run, n)
				row := rawRow(stream, 1)
				for c := range 10 {
					cols[c] = append(cols[c], row[c])
				}
				cols[9][len(cols[9])-1] = fmt.Sprintf("cmd-%d-%d", run, n)
				cs, ss, fs = append(cs, fmt.Sprintf("cmd-%d-%d", run, n)), append(ss, stream), append(fs, 1)
				_ = j
			}
			return pgx.BeginFunc(b.Context(), pool, func(tx pgx.Tx) error {
				var batch pgx.Batch
				batch.Queue(cmdSQL, cs, ss, fs, fs)
				args := make([]any, 10)
				for c := range 10 {
					args[c] = typed(cols[c])
				}
				batch.Queue(rawSQL, args...)
				return tx.SendBatch(b.Context(), &batch).Close()
			})
		})
	})
	b.ResetTimer()
	start := time.Now()
	var seq atomic.Int64
	parallel(b, writers, b.N, func(w, i int) error {
		reqs := make([]stores.AppendRequest, size)
		for j := range size {
			k := (i*size + j) % (streams / writers)
			evs := storetest.Events("Bench", 1)
			evs[0].CommandID = fmt.Sprintf("c-%d-%d", run, seq.Add(1))
			reqs[j] = stores.AppendRequest{StreamID: fmt.Sprintf("s-%d-%d-%d", run, w, k), Expected: stores.Exact(versions[w][k]), Events: evs}
			versions[w][k]++
		}
		_, err := s.AppendMany(b.Context(), reqs)
		return err
	})
	reportRatio(b, size, time.Since(start), baseline)
}

// typed turns a column of raw values into the slice type pgx encodes as
// an array of the column's type.
func typed(col []any) any {
	switch col[0].(type) {
	case string:
		out := make([]string, len(col))
		for i, v := range col {
			out[i] = v.(string)
		}
		return out
	case int64:
		out := make([]int64, len(col))
		for i, v := range col {
			out[i] = v.(int64)
		}
		return out
	case time.Time:
		out := make([]time.Time, len(col))
		for i, v := range col {
			out[i] = v.(time.Time)
		}
		return out
	default:
		out := make([][]byte, len(col))
		for i, v := range col {
			out[i] = v.([]byte)
		}
		return out
	}
}

// benchEnvInt reads a benchmark size from the environment.
func benchEnvInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// BenchmarkReadLogBatch reads a 200k-event log (40 streams of 5,000) with
// ReadLogBatch in the outbox relay's batches of 2,000, beside the same
// query whose rows are only iterated (rows.RawValues, nothing decoded):
// the server's and the wire's share, so the ratio is what decoding into
// entries costs. Allocations are reported per event.
func BenchmarkReadLogBatch(b *testing.B) {
	s, pool := benchStore(b)
	const n, perStream, batch = 200_000, 5000, 2000
	for i := range n / perStream {
		if _, err := s.Append(b.Context(), fmt.Sprintf("log-%03d", i), stores.NoStream, storetest.Events("Bench", perStream)); err != nil {
			b.Fatal(err)
		}
	}
	readAll := func() {
		count := 0
		for cur := (stores.Cursor{}); ; {
			page, err := s.ReadLogBatch(b.Context(), cur, batch)
			if err != nil {
				b.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			count += len(page)
			cur = page[len(page)-1].Cursor
		}
		if count != n {
			b.Fatalf("read %d events, want %d", count, n)
		}
	}
	readAll() // warm the connection's statement cache and the buffers
	baseline := timed(func() {
		for range b.N {
			sql := `SELECT ev.tx_id::text, position, stream_id, version, id, type, source, subject, time, content_type, data, correlation_id, causation_id, traceparent, extensions, command_id
	FROM ` + pgx.Identifier{s.Schema(), "events"}.Sanitize() + ` AS ev WHERE (ev.tx_id, position) > ($1::text::xid8, $2) AND ev.tx_id < pg_snapshot_xmin(pg_current_snapshot())
	ORDER BY ev.tx_id, position LIMIT $3`
			tx, pos, count := "0", int64(0), 0
			for {
				rows, _ := pool.Query(b.Context(), sql, tx, pos, batch)
				got := 0
				for rows.Next() {
					v := rows.RawValues()
					tx, got = string(v[0]), got+1
					pos = int64(binary.BigEndian.Uint64(v[1]))
				}
				if rows.Err() != nil {
					b.Fatal(rows.Err())
				}
				count += got
				if got == 0 {
					break
				}
			}
			if count != n {
				b.Fatalf("raw read %d rows", count)
			}
		}
	})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		readAll()
	}
	elapsed := time.Since(start)
	b.StopTimer()
	runtime.ReadMemStats(&after)
	reportRatio(b, n, elapsed, baseline)
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N*n), "allocs/event")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(b.N*n), "B/event")
}
