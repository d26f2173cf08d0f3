package postgres_test

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
)

// TestReadDecodesEveryColumn reads events that exercise every column
// (extensions, times before 2000 and with nanoseconds, empty and repeated
// strings, payloads large and small) through the wire decoder of the
// default pool and through rows.Scan of a simple-protocol pool (text
// results), and wants the same entries from both.
func TestReadDecodesEveryColumn(t *testing.T) {
	pool := testenv.Pool(t)
	s := newStore(t, pool)
	ctx := t.Context()
	var want []orchestrix.Event
	for i := range 40 {
		stream := fmt.Sprintf("s-%d", i%3)
		e := orchestrix.Event{
			Metadata: orchestrix.Metadata{
				ID: fmt.Sprintf("id-%d", i), Type: "T" + fmt.Sprint(i%2), Source: "/src",
				Time: time.Date(1990+i, 3, 4, 5, 6, 7, i*1000, time.FixedZone("x", 3600)),
			},
			ContentType: "application/json",
			Data:        []byte(fmt.Sprintf(`{"n":%d}`, i)),
		}
		if i%4 == 0 {
			e.Subject, e.CorrelationID, e.CausationID, e.TraceParent = "subj", "corr", fmt.Sprint("cause", i), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
			e.Extensions = map[string]string{"tenant": "t1", "n": fmt.Sprint(i)}
			e.CommandID = fmt.Sprint("cmd-", i)
		}
		if i == 7 {
			e.Data = bytes.Repeat([]byte("x"), 100_000)
		}
		if i == 8 {
			e.Data = []byte{}
		}
		if _, err := s.Append(ctx, stream, stores.Any, []orchestrix.Event{e}); err != nil {
			t.Fatal(err)
		}
		want = append(want, e)
	}

	cfg := pool.Config().Copy()
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	simplePool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer simplePool.Close()
	simple, err := postgres.New(ctx, simplePool, postgres.WithSchema(s.Schema()))
	if err != nil {
		t.Fatal(err)
	}

	// Reads are gap-safe: a transaction running anywhere on the cluster
	// (a parallel test) holds them back for a while.
	read := func(s *postgres.Store) []stores.Entry {
		deadline := time.Now().Add(30 * time.Second)
		for {
			var out []stores.Entry
			for e, err := range s.ReadAll(ctx, stores.Cursor{}, 0) {
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, e)
			}
			batch, err := s.ReadLogBatch(ctx, stores.Cursor{}, 100)
			if err != nil {
				t.Fatal(err)
			}
			if len(out) == len(want) && len(batch) == len(want) {
				if !reflect.DeepEqual(batch, out) {
					t.Fatalf("ReadLogBatch and ReadAll differ")
				}
				// AppendLogBatch keeps what dst holds and fills its spare
				// capacity when it has room for limit entries, or grows it.
				for _, dst := range [][]stores.Entry{make([]stores.Entry, 1, 2), make([]stores.Entry, 1, 1+100)} {
					dst[0].StreamID = "kept"
					got, err := s.AppendLogBatch(ctx, dst, stores.Cursor{}, 100)
					if err != nil {
						t.Fatal(err)
					}
					if len(got) != 1+len(want) || got[0].StreamID != "kept" || !reflect.DeepEqual(got[1:], out) {
						t.Fatalf("AppendLogBatch to a slice of cap %d: %d entries, first %q", cap(dst), len(got), got[0].StreamID)
					}
					if reused := &got[0] == &dst[0]; reused != (cap(dst) > 2) {
						t.Errorf("AppendLogBatch to a slice of cap %d reused it: %v", cap(dst), reused)
					}
				}
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("ReadAll read %d events, ReadLogBatch %d, want %d", len(out), len(batch), len(want))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	fast, scanned := read(s), read(simple)
	if len(fast) != len(want) {
		t.Fatalf("read %d events, want %d", len(fast), len(want))
	}
	for i := range fast {
		if !reflect.DeepEqual(fast[i], scanned[i]) {
			t.Errorf("entry %d decoded\n%+v\nscanned\n%+v", i, fast[i], scanned[i])
		}
		got, w := fast[i].Event, want[i]
		if w.Subject == "" {
			w.Subject = got.StreamID // the store's default
		}
		if !got.Time.Equal(w.Time) || got.Time.Location() != time.UTC || got.ID != w.ID || got.Subject != w.Subject ||
			got.CausationID != w.CausationID || got.CommandID != w.CommandID || !bytes.Equal(got.Data, w.Data) ||
			!reflect.DeepEqual(got.Extensions, w.Extensions) || got.StreamID != fmt.Sprintf("s-%d", i%3) {
			t.Errorf("entry %d: got %+v, want %+v", i, got, w)
		}
	}
}
