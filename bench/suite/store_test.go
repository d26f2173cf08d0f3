package suite

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
)

// rawStore is a baseline event store: the plainest code that does the same
// work with the raw tool (a Go map and slice, raw pgx statements).
type rawStore interface {
	// append writes evs to stream as versions from+1 ... (from is the
	// version the caller expects the stream at).
	append(ctx context.Context, stream string, from uint64, evs []orchestrix.Event) error
	// read reads the stream's events after version after and returns how
	// many there were.
	read(ctx context.Context, stream string, after uint64) (int, error)
	saveSnapshot(ctx context.Context, s stores.Snapshot) error
	loadSnapshot(ctx context.Context, stream string) (stores.Snapshot, bool, error)
}

// events returns n events of 100-byte payloads, as an aggregate's decide
// returns them (no IDs, versions or times: the store assigns those).
func events(n int) []orchestrix.Event {
	out := make([]orchestrix.Event, n)
	pad := strings.Repeat("x", 80)
	for i := range out {
		out[i] = orchestrix.Event{
			Metadata:    orchestrix.Metadata{Type: "bench.Deposited", Source: "/bench"},
			ContentType: "application/json",
			Data:        fmt.Appendf(nil, `{"n":%06d,"p":"%s"}`, i, pad),
		}
	}
	return out
}

// snapshot returns a 1 KiB snapshot of stream at version v.
func snapshot(stream string, v uint64) stores.Snapshot {
	return stores.Snapshot{StreamID: stream, Version: v, Type: "bench.Account", ContentType: "application/json",
		Data: fmt.Appendf(nil, `{"v":%d,"p":"%s"}`, v, strings.Repeat("x", 1000))}
}

// fill appends n events to stream in batches of at most 1,000.
func fill(b *testing.B, s stores.EventStore, raw rawStore, stream string, n int) {
	b.Helper()
	for v := 0; v < n; v += 1000 {
		evs := events(min(1000, n-v))
		if _, err := s.Append(b.Context(), stream, stores.Exact(uint64(v)), evs); err != nil {
			b.Fatal(err)
		}
		if err := raw.append(b.Context(), stream, uint64(v), evs); err != nil {
			b.Fatal(err)
		}
	}
}

// backend opens an empty store and its empty baseline. A backend whose
// stores live in this process (memory) is reopened every so many
// operations of the write cases, so that a long run's heap stays bounded
// (maxEvents per store); the other backends are never reopened.
type backend struct {
	open      func(b *testing.B) (stores.EventStore, rawStore)
	maxEvents int
}

// sides holds a write case's store and baseline, reopening each on its
// own side when the backend bounds its events.
type sides struct {
	be    backend
	every int // operations per store life; 0: never reopen
	s     stores.EventStore
	raw   rawStore
}

func newSides(b *testing.B, be backend, perOp int) *sides {
	sd := &sides{be: be}
	sd.s, sd.raw = be.open(b)
	if be.maxEvents > 0 {
		sd.every = max(1, be.maxEvents/perOp)
	}
	return sd
}

// sys returns the store for operation i and i's index within the store's
// life (so versions restart with a new store).
func (sd *sides) sys(b *testing.B, i int) (stores.EventStore, int) {
	if sd.every == 0 {
		return sd.s, i
	}
	if i > 0 && i%sd.every == 0 {
		sd.s, _ = sd.be.open(b)
	}
	return sd.s, i % sd.every
}

// base is sys for the baseline.
func (sd *sides) base(b *testing.B, i int) (rawStore, int) {
	if sd.every == 0 {
		return sd.raw, i
	}
	if i > 0 && i%sd.every == 0 {
		_, sd.raw = sd.be.open(b)
	}
	return sd.raw, i % sd.every
}

// storeCases runs the event store cases on the backend.
func storeCases(b *testing.B, be backend) {
	open := be.open
	for _, n := range []int{1, 100, 1000, 10000} {
		run(b, fmt.Sprintf("append=%d", n), func(b *testing.B) {
			evs := events(n)
			run := time.Now().UnixNano()
			// One-event appends are too short to time one by one: an
			// operation is 100 of them, to 100 streams.
			reps := 1
			if n == 1 {
				reps = 100
			}
			sd := newSides(b, be, n*reps)
			pair(b, n*reps, "events", func(i int) {
				raw, _ := sd.base(b, i)
				for r := range reps {
					if err := raw.append(b.Context(), fmt.Sprintf("r%d-%d-%d", run, i, r), 0, evs); err != nil {
						b.Fatal(err)
					}
				}
			}, func(i int) {
				s, _ := sd.sys(b, i)
				for r := range reps {
					if _, err := s.Append(b.Context(), fmt.Sprintf("s%d-%d-%d", run, i, r), stores.NoStream, evs); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
	for _, n := range []int{1, 100, 1000, 10000} {
		run(b, fmt.Sprintf("load=%d", n), func(b *testing.B) {
			s, raw := open(b)
			fill(b, s, raw, "load", n)
			pair(b, n, "events", func(int) {
				if got, err := raw.read(b.Context(), "load", 0); err != nil || got != n {
					b.Fatalf("raw read: %d events, %v", got, err)
				}
			}, func(int) {
				if got := count(b, s, "load", 0); got != n {
					b.Fatalf("read %d events, want %d", got, n)
				}
			})
		})
	}
	run(b, "load-from=9900of10000", func(b *testing.B) {
		s, raw := open(b)
		fill(b, s, raw, "partial", 10000)
		pair(b, 100, "events", func(int) {
			if got, err := raw.read(b.Context(), "partial", 9900); err != nil || got != 100 {
				b.Fatalf("raw read: %d events, %v", got, err)
			}
		}, func(int) {
			if got := count(b, s, "partial", 9900); got != 100 {
				b.Fatalf("read %d events, want 100", got)
			}
		})
	})
	run(b, "snapshot-save", func(b *testing.B) {
		s, raw := open(b)
		pair(b, 1, "snapshots", func(i int) {
			if err := raw.saveSnapshot(b.Context(), snapshot(fmt.Sprintf("snap-%d", i%100), uint64(i))); err != nil {
				b.Fatal(err)
			}
		}, func(i int) {
			if err := s.SaveSnapshot(b.Context(), snapshot(fmt.Sprintf("snap-%d", i%100), uint64(i))); err != nil {
				b.Fatal(err)
			}
		})
	})
	run(b, "snapshot-load", func(b *testing.B) {
		s, raw := open(b)
		for i := range 100 {
			if err := s.SaveSnapshot(b.Context(), snapshot(fmt.Sprintf("snap-%d", i), 7)); err != nil {
				b.Fatal(err)
			}
			if err := raw.saveSnapshot(b.Context(), snapshot(fmt.Sprintf("snap-%d", i), 7)); err != nil {
				b.Fatal(err)
			}
		}
		pair(b, 1, "snapshots", func(i int) {
			if snap, ok, err := raw.loadSnapshot(b.Context(), fmt.Sprintf("snap-%d", i%100)); err != nil || !ok || snap.Version != 7 {
				b.Fatalf("raw load snapshot: %v %v", ok, err)
			}
		}, func(i int) {
			if snap, ok, err := s.LoadSnapshot(b.Context(), fmt.Sprintf("snap-%d", i%100)); err != nil || !ok || snap.Version != 7 {
				b.Fatalf("load snapshot: %v %v", ok, err)
			}
		})
	})
	// 100 streams: an operation appends 10 events to each of 100 streams
	// (100 appends), each stream growing by 10 per operation.
	run(b, "streams=100", func(b *testing.B) {
		sd := newSides(b, be, 1000)
		evs := events(10)
		pair(b, 1000, "events", func(i int) {
			raw, i := sd.base(b, i)
			for k := range 100 {
				if err := raw.append(b.Context(), fmt.Sprintf("m-%d", k), uint64(i*10), evs); err != nil {
					b.Fatal(err)
				}
			}
		}, func(i int) {
			s, i := sd.sys(b, i)
			for k := range 100 {
				if _, err := s.Append(b.Context(), fmt.Sprintf("m-%d", k), stores.Exact(uint64(i*10)), evs); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	// Concurrent writers: 8 writers, each appending 10 events 10 times to
	// a stream of its own per operation.
	run(b, "writers=8", func(b *testing.B) {
		evs := events(10)
		const writers, appends = 8, 10
		sd := newSides(b, be, writers*appends*10)
		pair(b, writers*appends*10, "events", func(i int) {
			raw, i := sd.base(b, i)
			concurrently(b, writers, func(w int) error {
				for a := range appends {
					if err := raw.append(b.Context(), fmt.Sprintf("w%d", w), uint64((i*appends+a)*10), evs); err != nil {
						return err
					}
				}
				return nil
			})
		}, func(i int) {
			s, i := sd.sys(b, i)
			concurrently(b, writers, func(w int) error {
				for a := range appends {
					if _, err := s.Append(b.Context(), fmt.Sprintf("w%d", w), stores.Exact(uint64((i*appends+a)*10)), evs); err != nil {
						return err
					}
				}
				return nil
			})
		})
	})
}

// run runs f as the sub-benchmark name of b, except in the warm-up run
// before a fixed count (warmRun).
func run(b *testing.B, name string, f func(b *testing.B)) {
	b.Run(name, func(b *testing.B) {
		if warmRun(b) {
			return
		}
		f(b)
	})
}

// concurrently runs f(0..n-1) in n goroutines and fails b on an error.
func concurrently(b *testing.B, n int, f func(w int) error) {
	b.Helper()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for w := range n {
		wg.Go(func() { errs[w] = f(w) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
}

// count reads stream after version after from s and returns how many
// events it held.
func count(b *testing.B, s stores.EventStore, stream string, after uint64) int {
	b.Helper()
	n := 0
	for _, err := range s.ReadStream(b.Context(), stream, after) {
		if err != nil {
			b.Fatal(err)
		}
		n++
	}
	return n
}

// BenchmarkStore runs the event store cases on the memory store (baseline:
// a map of slices behind a mutex), on PostgreSQL (baseline: raw pgx on
// tables shaped like the store's) and on the events topic in Kafka
// (baseline: raw franz-go), see kafkalog_test.go.
//
//	go test -run '^$' -bench 'Store/memory' ./bench/suite/
//	eval "$(scripts/services.sh start)"; go test -run '^$' -bench 'Store/postgres' -benchtime 20x ./bench/suite/
func BenchmarkStore(b *testing.B) {
	b.Run("memory", func(b *testing.B) {
		storeCases(b, backend{open: func(*testing.B) (stores.EventStore, rawStore) { return memory.New(), newRawMem() }, maxEvents: 200_000})
	})
	b.Run("postgres", func(b *testing.B) {
		storeCases(b, backend{open: func(b *testing.B) (stores.EventStore, rawStore) {
			pool := testenv.Pool(b)
			s := pgtest.Store(b, pool)
			return s, newRawPG(b, pool, s.Schema())
		}})
	})
	b.Run("kafka", kafkaLogCases)
}

// rawMem is the memory baseline: a map of streams to event slices and a
// log slice, behind a mutex, checking the expected version.
type rawMem struct {
	mu      sync.Mutex
	streams map[string][]orchestrix.Event
	log     []*orchestrix.Event
	snaps   map[string]stores.Snapshot
}

// sink receives the events the memory baseline reads (a function value,
// so the compiler cannot drop the reads).
var sink = func(orchestrix.Event) {}

func newRawMem() *rawMem {
	return &rawMem{streams: map[string][]orchestrix.Event{}, snaps: map[string]stores.Snapshot{}}
}

func (m *rawMem) append(_ context.Context, stream string, from uint64, evs []orchestrix.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.streams[stream]
	if uint64(len(cur)) != from {
		return fmt.Errorf("stream %s at %d, expected %d", stream, len(cur), from)
	}
	now := time.Now()
	for j, e := range evs {
		e.StreamID, e.Version, e.Position, e.Time = stream, from+uint64(j)+1, uint64(len(m.log)+1), now
		cur = append(cur, e)
		m.log = append(m.log, &cur[len(cur)-1])
	}
	m.streams[stream] = cur
	return nil
}

func (m *rawMem) read(_ context.Context, stream string, after uint64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Each event handed to the reader by value, as an iterator does.
	n := 0
	cur := m.streams[stream]
	for _, e := range cur[min(after, uint64(len(cur))):] {
		sink(e)
		n++
	}
	return n, nil
}

func (m *rawMem) saveSnapshot(_ context.Context, s stores.Snapshot) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.snaps[s.StreamID] = s
	return nil
}

func (m *rawMem) loadSnapshot(_ context.Context, stream string) (stores.Snapshot, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.snaps[stream]
	return s, ok, nil
}

// rawPG is the PostgreSQL baseline: raw pgx statements on raw_events and
// raw_snapshots, made LIKE the store's events and snapshots tables
// (INCLUDING ALL: the same columns, defaults, constraints and indexes).
// Appends are what a competent user would write: a single-row INSERT for
// one event, one multi-row INSERT below 256 events (the store's
// postgres.CopyThreshold), COPY from there.
type rawPG struct {
	pool          *pgxpool.Pool
	events        pgx.Identifier
	insert1, sel  string
	save, loadSQL string
}

var rawColumns = []string{"stream_id", "version", "id", "type", "source", "subject", "time", "content_type", "data", "correlation_id", "causation_id", "traceparent", "extensions", "command_id"}

func newRawPG(b *testing.B, pool *pgxpool.Pool, schema string) *rawPG {
	b.Helper()
	ev := pgx.Identifier{schema, "raw_events"}
	sn := pgx.Identifier{schema, "raw_snapshots"}
	for _, ddl := range []string{
		"CREATE TABLE " + ev.Sanitize() + " (LIKE " + pgx.Identifier{schema, "events"}.Sanitize() + " INCLUDING ALL)",
		"CREATE TABLE " + sn.Sanitize() + " (LIKE " + pgx.Identifier{schema, "snapshots"}.Sanitize() + " INCLUDING ALL)",
	} {
		if _, err := pool.Exec(b.Context(), ddl); err != nil {
			b.Fatal(err)
		}
	}
	ph := make([]string, len(rawColumns))
	for i := range ph {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	return &rawPG{
		pool:    pool,
		events:  ev,
		insert1: "INSERT INTO " + ev.Sanitize() + " (" + strings.Join(rawColumns, ", ") + ") VALUES (" + strings.Join(ph, ", ") + ")",
		sel: "SELECT position, stream_id, version, id, type, source, subject, time, content_type, data, correlation_id, causation_id, traceparent, extensions, command_id FROM " +
			ev.Sanitize() + " WHERE stream_id = $1 AND version > $2 ORDER BY version",
		save: "INSERT INTO " + sn.Sanitize() + " (stream_id, version, type, content_type, data) VALUES ($1, $2, $3, $4, $5) " +
			"ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, type = excluded.type, content_type = excluded.content_type, data = excluded.data",
		loadSQL: "SELECT version, type, content_type, data FROM " + sn.Sanitize() + " WHERE stream_id = $1",
	}
}

var rawSeq struct {
	mu sync.Mutex
	n  uint64
}

// rawID returns a time-ordered unique ID shaped like a UUIDv7.
func rawID() string {
	rawSeq.mu.Lock()
	rawSeq.n++
	n := rawSeq.n
	rawSeq.mu.Unlock()
	return fmt.Sprintf("%08x-0000-7000-8000-%012x", time.Now().Unix(), n)
}

func rawRow(stream string, v uint64, e orchestrix.Event, now time.Time) []any {
	return []any{stream, int64(v), rawID(), e.Type, e.Source, stream, now, e.ContentType, e.Data, "", "", "", nil, ""}
}

func (p *rawPG) append(ctx context.Context, stream string, from uint64, evs []orchestrix.Event) error {
	now := time.Now()
	switch {
	case len(evs) == 1:
		_, err := p.pool.Exec(ctx, p.insert1, rawRow(stream, from+1, evs[0], now)...)
		return err
	case len(evs) < 256:
		var sql strings.Builder
		sql.WriteString("INSERT INTO " + p.events.Sanitize() + " (" + strings.Join(rawColumns, ", ") + ") VALUES ")
		args := make([]any, 0, len(evs)*len(rawColumns))
		for j, e := range evs {
			if j > 0 {
				sql.WriteByte(',')
			}
			sql.WriteByte('(')
			for k := range rawColumns {
				if k > 0 {
					sql.WriteByte(',')
				}
				fmt.Fprintf(&sql, "$%d", len(args)+k+1)
			}
			sql.WriteByte(')')
			args = append(args, rawRow(stream, from+uint64(j)+1, e, now)...)
		}
		_, err := p.pool.Exec(ctx, sql.String(), args...)
		return err
	}
	rows := make([][]any, len(evs))
	for j, e := range evs {
		rows[j] = rawRow(stream, from+uint64(j)+1, e, now)
	}
	_, err := p.pool.CopyFrom(ctx, p.events, rawColumns, pgx.CopyFromRows(rows))
	return err
}

func (p *rawPG) read(ctx context.Context, stream string, after uint64) (int, error) {
	rows, err := p.pool.Query(ctx, p.sel, stream, int64(after))
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var e orchestrix.Event
	var pos, ver int64
	var corr, cause, tp, cmd string
	var ext []byte
	n := 0
	for rows.Next() {
		if err := rows.Scan(&pos, &e.StreamID, &ver, &e.ID, &e.Type, &e.Source, &e.Subject, &e.Time, &e.ContentType, &e.Data, &corr, &cause, &tp, &ext, &cmd); err != nil {
			return n, err
		}
		n++
	}
	return n, rows.Err()
}

func (p *rawPG) saveSnapshot(ctx context.Context, s stores.Snapshot) error {
	_, err := p.pool.Exec(ctx, p.save, s.StreamID, int64(s.Version), s.Type, s.ContentType, s.Data)
	return err
}

func (p *rawPG) loadSnapshot(ctx context.Context, stream string) (stores.Snapshot, bool, error) {
	s := stores.Snapshot{StreamID: stream}
	var v int64
	err := p.pool.QueryRow(ctx, p.loadSQL, stream).Scan(&v, &s.Type, &s.ContentType, &s.Data)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, false, nil
	}
	s.Version = uint64(v)
	return s, err == nil, err
}
