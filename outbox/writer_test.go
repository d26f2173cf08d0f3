package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/twmb/franz-go/pkg/kgo"
)

// execRecorder is an outbox.Execer that records the statement.
type execRecorder struct {
	sql  string
	args []any
}

func (e *execRecorder) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	e.sql, e.args = sql, args
	return pgconn.NewCommandTag("INSERT 0 1"), nil
}

func TestWriter(t *testing.T) {
	if _, err := outbox.NewWriter("Bad-Schema"); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Fatalf("NewWriter(bad) = %v, want ErrInvalid", err)
	}
	w, err := outbox.NewWriter("orchestrix")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	tests := []struct {
		name string
		msgs []outbox.Message
		ok   bool
	}{
		{"one", []outbox.Message{{Topic: "a.commands", Key: []byte("k"), Value: []byte("v")}}, true},
		{"headers", []outbox.Message{{Topic: "a.commands", Headers: []kgo.RecordHeader{{Key: "ce_id", Value: []byte("1")}, {Key: "bin", Value: []byte{0xff, 0x00}}}}}, true},
		{"no topic", []outbox.Message{{Value: []byte("v")}}, false},
		{"bad topic", []outbox.Message{{Topic: "a topic"}}, false},
		{"too large", []outbox.Message{{Topic: "a", Value: make([]byte, outbox.MaxMessageSize+1)}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec execRecorder
			err := w.Write(ctx, &rec, tt.msgs...)
			if !tt.ok {
				if !errors.Is(err, orchestrix.ErrInvalid) || rec.sql != "" {
					t.Fatalf("Write = %v (sql %q), want ErrInvalid and nothing executed", err, rec.sql)
				}
				return
			}
			if err != nil || !strings.Contains(rec.sql, `"orchestrix"."outbox"`) || len(rec.args) != 4 {
				t.Fatalf("Write = %v, sql %q, %d args", err, rec.sql, len(rec.args))
			}
		})
	}
	var rec execRecorder
	if err := w.Write(ctx, &rec); err != nil || rec.sql != "" {
		t.Fatalf("Write() with no messages = %v, executed %q", err, rec.sql)
	}
	cmd := orchestrix.Command{Metadata: orchestrix.Metadata{ID: "c1", Type: "Do", Source: "/saga", Time: time.Unix(1, 0)}, AggregateID: "acct-1", Data: []byte(`{}`)}
	if err := w.WriteCommands(ctx, &rec, "a.commands", cmd); err != nil {
		t.Fatal(err)
	}
	var hs []map[string]any
	if err := json.Unmarshal(rec.args[3].([][]byte)[0], &hs); err != nil || len(hs) == 0 {
		t.Fatalf("headers column %s: %v", rec.args[3].([][]byte)[0], err)
	}
	if keys := rec.args[1].([][]byte); string(keys[0]) != "acct-1" {
		t.Fatalf("key = %q, want the aggregate ID", keys[0])
	}
	bad := cmd
	bad.Source = ""
	if err := w.WriteCommands(ctx, &rec, "a.commands", bad); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Fatalf("WriteCommands(no source) = %v, want ErrInvalid", err)
	}
}
