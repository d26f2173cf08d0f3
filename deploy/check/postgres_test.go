package check

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func suffix() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func openPool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, dsn)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// as returns dsn with another user and password.
func as(t *testing.T, dsn, user, password string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("DATABASE_URL is not a URL: %v", err)
	}
	u.User = url.UserPassword(user, password)
	return u.String()
}

var (
	psqlIdent = regexp.MustCompile(`:"([a-z_]+)"`)
	psqlValue = regexp.MustCompile(`:([a-z_]+)\b`)
)

// runSQLFile runs a psql script of deploy/postgres the way `psql -v
// name=value -f file` would, on one connection: each :"name" becomes the
// quoted identifier, each :name the value as it is. The scripts are plain
// statements, one per semicolon.
func runSQLFile(ctx context.Context, t *testing.T, db *pgxpool.Pool, path string, vars map[string]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "--") {
			lines = append(lines, l)
		}
	}
	value := func(re *regexp.Regexp, m string) string {
		v, ok := vars[re.FindStringSubmatch(m)[1]]
		if !ok {
			t.Fatalf("%s: no value for %s", path, m)
		}
		return v
	}
	sql := psqlIdent.ReplaceAllStringFunc(strings.Join(lines, "\n"), func(m string) string {
		return pgx.Identifier{value(psqlIdent, m)}.Sanitize()
	})
	sql = psqlValue.ReplaceAllStringFunc(sql, func(m string) string { return value(psqlValue, m) })
	conn, err := db.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, stmt := range strings.Split(sql, ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			_, _ = conn.Exec(ctx, "ROLLBACK")
			t.Fatalf("%s: %s: %v", path, strings.TrimSpace(stmt), err)
		}
	}
}

// TestLeastPrivilegeIntegration creates the roles of deploy/postgres on
// the test database, migrates as the migrator, grants with grants.sql,
// then runs every runtime's SQL as the role the guide gives it: the
// store's appends (single, batched, COPY, deduplicated, rejected),
// snapshots, the outbox writer, a saga's transitions and timers, a
// projection with a view, and the relay publishing to Kafka. The runtime
// role may not UPDATE, DELETE or TRUNCATE the event log; the relay may
// not write at all.
func TestLeastPrivilegeIntegration(t *testing.T) {
	adminURL := testenv.DatabaseURL(t)
	seeds := testenv.Brokers(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	admin := openPool(t, adminURL)
	var db string
	if err := admin.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	sfx := suffix()
	vars := map[string]string{"db": db, "schema": "orx_" + sfx,
		"migrator": "orx_migrate_" + sfx, "app": "orx_app_" + sfx, "relay": "orx_relay_" + sfx}
	password := "pw-" + suffix()
	runSQLFile(ctx, t, admin, "../postgres/roles.sql", vars)
	roles := []string{vars["migrator"], vars["app"], vars["relay"]}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m, err := pgxpool.New(ctx, as(t, adminURL, vars["migrator"], password))
		if err == nil {
			_, err = m.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{vars["schema"]}.Sanitize()+" CASCADE")
			m.Close()
		}
		if err != nil {
			t.Logf("drop schema: %v", err)
		}
		for _, r := range roles {
			id := pgx.Identifier{r}.Sanitize()
			if _, err := admin.Exec(ctx, "REVOKE ALL ON DATABASE "+pgx.Identifier{db}.Sanitize()+" FROM "+id); err != nil {
				t.Logf("revoke %s: %v", r, err)
			}
			if _, err := admin.Exec(ctx, "DROP ROLE IF EXISTS "+id); err != nil {
				t.Logf("drop role %s: %v", r, err)
			}
		}
	})
	for _, r := range roles {
		if _, err := admin.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", pgx.Identifier{r}.Sanitize(), password)); err != nil {
			t.Fatal(err)
		}
	}

	// The migration Job: migrate, then grant.
	migrator := openPool(t, as(t, adminURL, vars["migrator"], password))
	if _, err := postgres.Migrate(ctx, migrator, vars["schema"]); err != nil {
		t.Fatalf("migrate as %s: %v", vars["migrator"], err)
	}
	runSQLFile(ctx, t, migrator, "../postgres/grants.sql", vars)
	checkEveryTableGranted(ctx, t, migrator, vars)

	app := openPool(t, as(t, adminURL, vars["app"], password))
	relayPool := openPool(t, as(t, adminURL, vars["relay"], password))
	schema := vars["schema"]
	topic := "orx." + sfx + ".events"
	commandsTopic := "orx." + sfx + ".commands"
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if _, err := topics.Ensure(ctx, adm, topics.Spec{Name: topic, Partitions: 2, ReplicationFactor: 1},
		topics.Spec{Name: commandsTopic, Partitions: 2, ReplicationFactor: 1}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = adm.DeleteTopics(ctx, topic, commandsTopic, topic+outbox.CheckpointSuffix)
	})

	events := appendAsApp(ctx, t, app, schema)
	messages := sagaAndOutboxAsApp(ctx, t, app, schema, commandsTopic)
	projectAsApp(ctx, t, app, schema, events)
	refusedWrites(ctx, t, app, relayPool, schema)
	relayAsRelay(ctx, t, relayPool, schema, seeds, topic, commandsTopic, events, messages)
}

// checkEveryTableGranted fails when a table of the schema has no grant
// to a runtime role: a migration that added a table without a line in
// grants.sql.
func checkEveryTableGranted(ctx context.Context, t *testing.T, db *pgxpool.Pool, vars map[string]string) {
	t.Helper()
	rows, err := db.Query(ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind = 'r'
		AND NOT has_table_privilege($2, c.oid, 'SELECT') AND NOT has_table_privilege($3, c.oid, 'SELECT')`,
		vars["schema"], vars["app"], vars["relay"])
	if err != nil {
		t.Fatal(err)
	}
	missing, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) > 0 {
		t.Fatalf("tables no runtime role may read (add them to deploy/postgres/grants.sql): %v", missing)
	}
}

func event(typ string, n int) orchestrix.Event {
	return orchestrix.Event{Metadata: orchestrix.Metadata{Type: typ, Source: "/check", Time: time.Now()},
		Data: fmt.Appendf(nil, `{"amount":%d}`, n)}
}

// appendAsApp runs the store's writes and reads as the runtime role and
// returns how many events the log holds.
func appendAsApp(ctx context.Context, t *testing.T, app *pgxpool.Pool, schema string) int {
	t.Helper()
	store, err := postgres.New(ctx, app, postgres.WithSchema(schema))
	if err != nil {
		t.Fatalf("store as the runtime role: %v", err)
	}
	total := 0
	// One event with a command ID, twice: the second is deduplicated.
	for range 2 {
		ev := event("Deposited", 1)
		ev.CommandID = "cmd-1"
		if _, err := store.Append(ctx, "acc-1", stores.Any, []orchestrix.Event{ev}); err != nil {
			t.Fatalf("append: %v", err)
		}
	}
	total++
	// A batch large enough for COPY, and a rejected command.
	var many []orchestrix.Event
	for i := range postgres.CopyThreshold + 10 {
		many = append(many, event("Deposited", i))
	}
	reqs := []stores.AppendRequest{{StreamID: "acc-2", Expected: stores.NoStream, Events: many}}
	if _, err := store.AppendDecisions(ctx, reqs, []stores.RejectedCommand{{CommandID: "cmd-2", StreamID: "acc-1", Reason: []byte(`{"code":"insufficient_funds"}`)}}); err != nil {
		t.Fatalf("append a batch and a rejection: %v", err)
	}
	total += len(many)
	if _, err := store.Append(ctx, "acc-1", stores.Exact(1), []orchestrix.Event{event("Withdrawn", 1)}); err != nil {
		t.Fatalf("append at a version: %v", err)
	}
	total++
	if _, err := store.Append(ctx, "acc-1", stores.Exact(1), []orchestrix.Event{event("Withdrawn", 1)}); !errors.Is(err, stores.ErrConflict) {
		t.Fatalf("stale append: got %v, want a conflict", err)
	}
	if _, ok, err := store.FindCommand(ctx, "cmd-1"); err != nil || !ok {
		t.Fatalf("find command: %v %v", ok, err)
	}
	for range 2 { // insert, then update
		if err := store.SaveSnapshot(ctx, stores.Snapshot{StreamID: "acc-2", Version: 5, Type: "Account", ContentType: "application/json", Data: []byte(`{}`)}); err != nil {
			t.Fatalf("save snapshot: %v", err)
		}
	}
	if _, ok, err := store.LoadSnapshot(ctx, "acc-2"); err != nil || !ok {
		t.Fatalf("load snapshot: %v %v", ok, err)
	}
	n := 0
	for _, err := range store.ReadStream(ctx, "acc-2", 0) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != len(many) {
		t.Fatalf("read stream: %d events, want %d", n, len(many))
	}
	return total
}

// sagaAndOutboxAsApp runs a saga instance's transitions and timer as the
// runtime role, and returns how many outbox messages it wrote.
func sagaAndOutboxAsApp(ctx context.Context, t *testing.T, app *pgxpool.Pool, schema, commandsTopic string) int {
	t.Helper()
	ss, err := sagas.NewPostgresStore(app, schema)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	msg := outbox.Message{Topic: commandsTopic, Key: []byte("acc-1"), Value: []byte(`{"debit":1}`)}
	start := func(cur *sagas.Instance) (*sagas.Change, error) {
		inst := sagas.Instance{Type: "transfer", ID: "t-1", DefinitionVersion: 1, Version: 1, Status: sagas.StatusRunning,
			Wait: "outcome", State: []byte(`{}`), StartedAt: now, UpdatedAt: now}
		return &sagas.Change{Instance: inst, Messages: []outbox.Message{msg},
			Timer:      &sagas.Timer{Type: "transfer", SagaID: "t-1", Fired: sagas.TimerFired{Phase: sagas.PhaseAction, Kind: "outcome"}, Due: now.Add(-time.Second)},
			Transition: sagas.Transition{Type: "transfer", SagaID: "t-1", Version: 1, At: now, InputID: "start-1", InputKind: sagas.KindStart, To: sagas.StatusRunning}}, nil
	}
	if err := ss.Apply(ctx, "transfer", "t-1", "start-1", start); err != nil {
		t.Fatalf("saga start: %v", err)
	}
	fired, err := ss.FireTimers(ctx, "transfer", time.Now(), 10, func(sagas.Timer) (outbox.Message, error) { return msg, nil })
	if err != nil || fired != 1 {
		t.Fatalf("fire timers: %d %v", fired, err)
	}
	next := func(cur *sagas.Instance) (*sagas.Change, error) {
		inst := *cur
		inst.Version, inst.Status, inst.Wait, inst.UpdatedAt = cur.Version+1, sagas.StatusCompleted, "", now
		return &sagas.Change{Instance: inst,
			Transition: sagas.Transition{Type: "transfer", SagaID: "t-1", Version: inst.Version, At: now, InputID: "done-1", InputKind: sagas.KindOutcome, From: sagas.StatusRunning, To: sagas.StatusCompleted}}, nil
	}
	if errs := ss.ApplyBatch(ctx, "transfer", []sagas.Item{{SagaID: "t-1", InputID: "done-1", Decide: next}}); errors.Join(errs...) != nil {
		t.Fatalf("saga step: %v", errors.Join(errs...))
	}
	if h, err := ss.History(ctx, "transfer", "t-1"); err != nil || len(h) != 2 {
		t.Fatalf("saga history: %d %v", len(h), err)
	}
	w, err := outbox.NewWriter(schema)
	if err != nil {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(ctx, app, func(tx pgx.Tx) error { return w.Write(ctx, tx, msg) }); err != nil {
		t.Fatalf("outbox write: %v", err)
	}
	return 3 // the saga's command, the timer's, and the writer's
}

// projectAsApp runs a projection with a view on the store as the runtime
// role until it has applied every event.
func projectAsApp(ctx context.Context, t *testing.T, app *pgxpool.Pool, schema string, events int) {
	t.Helper()
	store, err := postgres.New(ctx, app, postgres.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	back, err := projections.NewPostgres(app, schema, projections.Views("event_counts"))
	if err != nil {
		t.Fatal(err)
	}
	table := func(b int) string {
		return pgx.Identifier{schema, projections.VersionTable("event_counts", b)}.Sanitize()
	}
	setup := projections.Setup(func(ctx context.Context, tx pgx.Tx, version int) error {
		_, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+table(version)+" (stream text PRIMARY KEY, n bigint NOT NULL)")
		return err
	})
	apply := func(ctx context.Context, tx pgx.Tx, b projections.Batch) error {
		for _, e := range b.Events {
			if _, err := tx.Exec(ctx, "INSERT INTO "+table(b.Version)+" VALUES ($1, 1) ON CONFLICT (stream) DO UPDATE SET n = excluded.n + "+table(b.Version)+".n", e.StreamID); err != nil {
				return err
			}
		}
		return nil
	}
	r, err := projections.New("event_counts", back, projections.FromStore(store), apply, setup, projections.PollInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	err = r.WaitForNonStale(wctx)
	wcancel()
	stop()
	if rerr := <-done; rerr != nil && !errors.Is(rerr, context.Canceled) {
		t.Fatalf("projection as the runtime role: %v", rerr)
	}
	if err != nil {
		t.Fatalf("projection as the runtime role: %v", err)
	}
	var n int
	if err := app.QueryRow(ctx, "SELECT coalesce(sum(n), 0) FROM "+pgx.Identifier{schema, "event_counts"}.Sanitize()).Scan(&n); err != nil {
		t.Fatalf("query the projection's view: %v", err)
	}
	if n != events {
		t.Fatalf("the view counts %d events, want %d", n, events)
	}
}

// refusedWrites checks that the event log is append-only for the runtime
// role and read-only for the relay's.
func refusedWrites(ctx context.Context, t *testing.T, app, relay *pgxpool.Pool, schema string) {
	t.Helper()
	q := func(table string) string { return pgx.Identifier{schema, table}.Sanitize() }
	cases := []struct {
		name string
		db   *pgxpool.Pool
		sql  string
	}{
		{"app updates an event", app, "UPDATE " + q("events") + " SET data = data"},
		{"app deletes an event", app, "DELETE FROM " + q("events")},
		{"app truncates the log", app, "TRUNCATE " + q("events")},
		{"app deletes a command record", app, "DELETE FROM " + q("commands")},
		{"app changes the schema's tables", app, "ALTER TABLE " + q("events") + " ADD COLUMN x int"},
		{"relay appends", relay, "INSERT INTO " + q("events") + " (stream_id, version, id, type, source, subject, time, content_type, data) VALUES ('x', 1, 'x', 'x', 'x', 'x', now(), 'x', '')"},
		{"relay writes the outbox", relay, "INSERT INTO " + q("outbox") + " (topic) VALUES ('x')"},
		{"relay reads saga state", relay, "SELECT * FROM " + q("saga_instances")},
	}
	for _, c := range cases {
		_, err := c.db.Exec(ctx, c.sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || (pgErr.Code != "42501" && pgErr.Code != "42809") {
			t.Errorf("%s: got %v, want permission denied (42501)", c.name, err)
		} else {
			t.Logf("%s: refused: %s", c.name, pgErr.Message)
		}
	}
}

// relayAsRelay runs the relay as the relay role until every event and
// outbox message is in Kafka.
func relayAsRelay(ctx context.Context, t *testing.T, pool *pgxpool.Pool, schema string, seeds []string, topic, commandsTopic string, events, messages int) {
	t.Helper()
	store, err := postgres.New(ctx, pool, postgres.WithSchema(schema))
	if err != nil {
		t.Fatalf("store as the relay role: %v", err)
	}
	relay, stop := startRelay(ctx, t, store, seeds, topic, "relay as the relay role")
	defer stop()
	cons, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(topic, commandsTopic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	got := map[string]int{}
	deadline, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for got[topic] < events || got[commandsTopic] < messages {
		fs := cons.PollFetches(deadline)
		if deadline.Err() != nil {
			t.Fatalf("published %v, want %d events and %d outbox messages (relay stats %+v)", got, events, messages, relay.Stats())
		}
		fs.EachRecord(func(r *kgo.Record) { got[r.Topic]++ })
	}
	t.Logf("the relay role published %d events and %d outbox messages", got[topic], got[commandsTopic])
}

// startRelay runs a relay of store to topic (polling every 5 to 50 ms)
// until stop is called; an error it stops with fails the test, prefixed
// with what.
func startRelay(ctx context.Context, t *testing.T, store *postgres.Store, seeds []string, topic, what string) (relay *outbox.Relay, stop func()) {
	t.Helper()
	relay, err := outbox.NewRelay(store, seeds, outbox.ToTopic(topic), outbox.PollInterval(5*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(rctx) }()
	return relay, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
}
