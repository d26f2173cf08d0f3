package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
)

func TestSagasUsage(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no subcommand", []string{"sagas"}, "sagas list"},
		{"unknown", []string{"sagas", "frob"}, `unknown sagas command "frob"`},
		{"no url", []string{"sagas", "list"}, "DATABASE_URL is required"},
		{"show without id", []string{"sagas", "show", "--database-url", "postgres://x", "--type", "t"}, "needs a saga ID and --type"},
		{"resolve without note", []string{"sagas", "resolve", "s1", "--database-url", "postgres://x", "--type", "t"}, "needs --note"},
		{"bad status", []string{"sagas", "list", "--database-url", "postgres://x", "--status", "weird"}, `--status "weird"`},
		{"bad output", []string{"sagas", "list", "--database-url", "postgres://x", "-o", "yaml"}, `-o "yaml"`},
		{"id on list", []string{"sagas", "list", "s1", "--database-url", "postgres://x"}, "takes no saga ID"},
		{"prune without type", []string{"sagas", "prune", "--database-url", "postgres://x"}, "sagas prune needs --type"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, tc.want)
			}
		})
	}
}

// TestSagasIntegration: list, show, timers, retry and resolve on a real
// schema; retry and resolve of a compensation_failed instance queue an
// operator input in the outbox, of any other status fail clearly.
func TestSagasIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	pg := pgtest.Store(t, pool)
	store, err := sagas.NewPostgresStore(pool, pg.Schema())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	at := time.Now().UTC().Add(-2 * time.Hour)
	for id, st := range map[string]sagas.Status{"ok": sagas.StatusCompleted, "stuck": sagas.StatusCompensationFailed, "busy": sagas.StatusRunning} {
		err := store.Apply(ctx, "transfer", id, "start", func(*sagas.Instance) (*sagas.Change, error) {
			i := sagas.Instance{Type: "transfer", ID: id, DefinitionVersion: 1, Version: 1, Status: st, Attempt: 1, Tries: 1,
				State: json.RawMessage(`{"amount":10}`), StartedAt: at, UpdatedAt: at, Reason: "because"}
			var tm *sagas.Timer
			if st == sagas.StatusRunning {
				tm = &sagas.Timer{Due: at.Add(3 * time.Hour), Fired: sagas.TimerFired{Phase: sagas.PhaseAction, Try: 1, Kind: "outcome"}}
			}
			return &sagas.Change{Instance: i, Timer: tm, Transition: sagas.Transition{At: at, InputID: "start", InputKind: sagas.KindStart, To: st, Note: "started"}}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	url, schema := testenv.DatabaseURL(t), pg.Schema()
	base := func(args ...string) []string { return append(args, "--database-url", url, "--schema", schema) }

	code, out, stderr := run(t, base("sagas", "list", "--status", "compensation_failed", "--older-than", "1h", "-o", "json")...)
	var list []sagas.Instance
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].ID != "stuck" {
		t.Fatalf("list: %d %q %q", code, out, stderr)
	}
	if code, out, _ := run(t, base("sagas", "list", "--older-than", "3h")...); code != 0 || !strings.Contains(out, "0 instances") {
		t.Fatalf("list --older-than 3h: %d %q", code, out)
	}
	if code, out, _ := run(t, base("sagas", "list", "--type", "transfer")...); code != 0 || !strings.Contains(out, "3 instances") || !strings.Contains(out, "compensation_failed") {
		t.Fatalf("list text: %d %q", code, out)
	}
	code, out, stderr = run(t, base("sagas", "show", "busy", "--type", "transfer")...)
	if code != 0 || !strings.Contains(out, "timeline:") || !strings.Contains(out, "started") || !strings.Contains(out, "timer:action:0:1:outcome") {
		t.Fatalf("show: %d %q %q", code, out, stderr)
	}
	if code, out, _ := run(t, base("sagas", "timers", "-o", "json")...); code != 0 || !strings.Contains(out, `"sagaId": "busy"`) {
		t.Fatalf("timers: %d %q", code, out)
	}
	if code, _, stderr := run(t, base("sagas", "show", "nobody", "--type", "transfer")...); code != 1 || !strings.Contains(stderr, "not found") {
		t.Fatalf("show unknown: %d %q", code, stderr)
	}
	if code, _, stderr := run(t, base("sagas", "retry", "busy", "--type", "transfer")...); code != 1 || !strings.Contains(stderr, "is running: only a compensation_failed") {
		t.Fatalf("retry of a running saga: %d %q", code, stderr)
	}
	if code, out, stderr := run(t, base("sagas", "retry", "stuck", "--type", "transfer", "--note", "fixed")...); code != 0 || !strings.Contains(out, "retry of transfer/stuck queued") {
		t.Fatalf("retry: %d %q %q", code, out, stderr)
	}
	if code, out, stderr := run(t, base("sagas", "resolve", "stuck", "--type", "transfer", "--note", "refunded by hand", "-o", "json")...); code != 0 || !strings.Contains(out, `"action": "resolve"`) {
		t.Fatalf("resolve: %d %q %q", code, out, stderr)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "outbox"}.Sanitize()+" WHERE topic = $1 AND key = 'stuck'", sagas.InboxTopic("transfer")).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d operator inputs in the outbox, %v", n, err)
	}
	// prune: the ended instance's inbox row goes, the others' stay; a
	// second prune finds nothing.
	if code, out, stderr := run(t, base("sagas", "prune", "--type", "transfer", "--older-than", "1h", "-o", "json")...); code != 0 ||
		!strings.Contains(out, `"instances": 1`) || !strings.Contains(out, `"inbox_rows": 1`) {
		t.Fatalf("prune: %d %q %q", code, out, stderr)
	}
	if code, out, _ := run(t, base("sagas", "prune", "--type", "transfer", "--older-than", "1h")...); code != 0 || !strings.Contains(out, "pruned the inbox of 0 ended transfer instances") {
		t.Fatalf("second prune: %d %q", code, out)
	}
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "saga_inbox"}.Sanitize()).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d inbox rows after the prune, want the 2 of the instances not ended; %v", n, err)
	}
	if code, _, stderr := run(t, "sagas", "list", "--database-url", url, "--schema", "nosuchschema"); code != 1 || !strings.Contains(stderr, "orchestrix migrate") {
		t.Fatalf("unmigrated schema: %d %q", code, stderr)
	}
}
