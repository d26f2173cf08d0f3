package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestProjectionsUsage(t *testing.T) {
	db := []string{"--database-url", "postgres://x"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no sub", []string{"projections"}, "projections list"},
		{"unknown sub", []string{"projections", "delete"}, `unknown projections command "delete"`},
		{"no name", append([]string{"projections", "status"}, db...), "a projection NAME is required"},
		{"bad name", append([]string{"projections", "status", "Bad Name"}, db...), "must match"},
		{"no url", []string{"projections", "list", "--database-url", ""}, "DATABASE_URL is required"},
		{"parked without verb", []string{"projections", "parked"}, "parked list|retry|skip"},
		{"retry without ids", append([]string{"projections", "parked", "retry", "p"}, db...), "give --id or --all"},
		{"bad id", append([]string{"projections", "parked", "skip", "p", "--id", "x"}, db...), `--id: "x"`},
		{"in place", append([]string{"projections", "rebuild", "p", "--blue-green=false"}, db...), "in-place rebuild"},
		{"bad from", append([]string{"projections", "rebuild", "p", "--from", "kafka"}, db...), `--from "kafka"`},
		{"bad max lag", append([]string{"projections", "cutover", "p", "--max-lag", "-1"}, db...), "--max-lag -1"},
		{"skip without shard", append([]string{"projections", "skip", "p"}, db...), "--shard -1 is out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 mentioning %q", code, stderr, tc.want)
			}
		})
	}
}

// TestProjectionsIntegration drives a running projection through the CLI:
// list and status (a parked poison event visible), parked list, retry
// (fails again, stays parked), skip; rebuild, a cut-over refused while the
// new version lags then done, rollback; an unknown projection is exit 2.
func TestProjectionsIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	store := pgtest.Store(t, pool)
	schema := store.Schema()
	q := pgx.Identifier{schema}.Sanitize() + "."
	for i := range 20 {
		typ := "Counted"
		if i == 7 {
			typ = "Poison"
		}
		ev := orchestrix.Event{Metadata: orchestrix.Metadata{Type: typ, Source: "/test", Time: time.Now()}, Data: []byte("{}")}
		if _, err := store.Append(t.Context(), fmt.Sprintf("s-%d", i), stores.NoStream, []orchestrix.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}
	back, err := projections.NewPostgres(pool, schema, projections.Views("counts"))
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	handler := func(ctx context.Context, tx pgx.Tx, b projections.Batch) error {
		if b.Version == 2 {
			<-gate // v2 lags until the test opens the gate
		}
		for _, e := range b.Events {
			if e.Type == "Poison" {
				return errors.New("cannot count poison")
			}
		}
		_, err := tx.Exec(ctx, "UPDATE "+q+b.Table("counts")+" SET n = n + $1", len(b.Events))
		return err
	}
	setup := func(ctx context.Context, tx pgx.Tx, v int) error {
		_, err := tx.Exec(ctx, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s%s (n bigint NOT NULL); INSERT INTO %[1]s%[2]s SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM %[1]s%[2]s)", q, projections.VersionTable("counts", v)))
		return err
	}
	r, err := projections.New("counts", back, projections.FromStore(store), handler, projections.Setup(setup), projections.OnPoison(projections.Park),
		projections.Attempts(1), projections.VersionScan(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if err := r.WaitForNonStale(ctx); err != nil {
		t.Fatal(err)
	}
	url := testenv.DatabaseURL(t)
	cli := func(want int, args ...string) string {
		t.Helper()
		args = append(args, "--database-url", url, "--schema", schema)
		code, out, errs := run(t, args...)
		if code != want {
			t.Fatalf("%v: exit %d, want %d: %s %s", args, code, want, out, errs)
		}
		return out + errs
	}
	if out := cli(0, "projections", "list"); !strings.Contains(out, "counts") || !strings.Contains(out, "active") {
		t.Fatalf("list: %s", out)
	}
	var st []projections.ShardStatus
	if err := json.Unmarshal([]byte(cli(0, "projections", "status", "counts", "-o", "json")), &st); err != nil || len(st) != 1 || st[0].Parked != 1 || st[0].Applied != 19 || st[0].LagEvents != 0 {
		t.Fatalf("status: %+v, %v", st, err)
	}
	if out := cli(0, "projections", "parked", "list", "counts"); !strings.Contains(out, "s-7") || !strings.Contains(out, "cannot count poison") {
		t.Fatalf("parked list: %s", out)
	}
	cli(0, "projections", "parked", "retry", "counts", "--all")
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(cli(0, "projections", "parked", "list", "counts"), "attempts 2") {
		if time.Now().After(deadline) {
			t.Fatal("the retry did not happen")
		}
		time.Sleep(100 * time.Millisecond)
	}
	dls, err := back.DeadLetters(ctx, "counts", false, 10)
	if err != nil || len(dls) != 1 {
		t.Fatalf("%+v %v", dls, err)
	}
	cli(0, "projections", "parked", "skip", "counts", "--id", fmt.Sprint(dls[0].ID))
	if out := cli(0, "projections", "parked", "list", "counts"); !strings.Contains(out, "0 parked events") {
		t.Fatalf("after skip: %s", out)
	}
	cli(0, "projections", "rebuild", "counts")
	if out := cli(1, "projections", "cutover", "counts"); !strings.Contains(out, "behind") {
		t.Fatalf("cutover of a lagging version: %s", out)
	}
	close(gate)
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, _, _ := run(t, "projections", "cutover", "counts", "--database-url", url, "--schema", schema)
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("cutover never succeeded")
		}
		time.Sleep(100 * time.Millisecond)
	}
	var n int64
	if err := pool.QueryRow(ctx, "SELECT n FROM "+q+"counts").Scan(&n); err != nil || n != 19 {
		t.Fatalf("view after cut-over: %d, %v (v2 parks the poison event too: 19 counted)", n, err)
	}
	if out := cli(0, "projections", "rollback", "counts"); !strings.Contains(out, "v1 is active") {
		t.Fatalf("rollback: %s", out)
	}
	if out := cli(2, "projections", "skip", "counts", "--shard", "0"); !strings.Contains(out, "is not stopped") {
		t.Fatalf("skip of a running shard: %s", out)
	}
	if out := cli(2, "projections", "status", "nosuch"); !strings.Contains(out, "unknown projection") {
		t.Fatalf("unknown: %s", out)
	}
}

// TestProjectionsTopicLagIntegration: status counts the lag of a topic
// source from the partitions' end offsets when --brokers is given.
func TestProjectionsTopicLagIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	seeds := testenv.Brokers(t)
	schema := pgtest.Store(t, pool).Schema()
	topic := testenv.Topic(t, seeds, 2, nil)
	cl := testenv.Client(t, seeds, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	produce := func(n int, p int32) {
		t.Helper()
		for i := range n {
			ev := orchestrix.Event{Metadata: orchestrix.Metadata{ID: testenv.Name("e"), Type: "Counted", Source: "/test", Time: time.Now()}, StreamID: fmt.Sprintf("s-%d-%d", p, i), Version: 1, Data: []byte("{}")}
			r, err := codec.EventToRecord(topic, ev)
			if err != nil {
				t.Fatal(err)
			}
			r.Partition = p
			if err := cl.ProduceSync(t.Context(), r).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
	produce(4, 0)
	produce(3, 1)
	back, err := projections.NewPostgres(pool, schema)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	r, err := projections.New("topical", back, projections.FromTopic(seeds, topic),
		func(context.Context, pgx.Tx, projections.Batch) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	if err := r.WaitForNonStale(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	produce(5, 0)
	code, out, errs := run(t, "projections", "status", "topical", "--database-url", testenv.DatabaseURL(t), "--schema", schema, "--brokers", strings.Join(seeds, ","), "-o", "json")
	if code != 0 {
		t.Fatalf("status: %d %s %s", code, out, errs)
	}
	var st []projections.ShardStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 2 || st[0].LagEvents != 5 || st[1].LagEvents != 0 || st[0].Applied != 4 || st[1].Applied != 3 {
		t.Fatalf("status: %+v, %v: want lag 5 on partition 0, 0 on 1", st, err)
	}
	// A new version of a topic projection: cut-over checks its lag at the
	// brokers (none running: it is the whole topic).
	db := []string{"--database-url", testenv.DatabaseURL(t), "--schema", schema}
	if code, out, errs := run(t, append([]string{"projections", "rebuild", "topical"}, db...)...); code != 0 {
		t.Fatalf("rebuild: %d %s %s", code, out, errs)
	}
	if code, _, errs := run(t, append([]string{"projections", "cutover", "topical", "--brokers", ""}, db...)...); code != 2 || !strings.Contains(errs, "--brokers") {
		t.Fatalf("cutover without brokers: %d %s", code, errs)
	}
	if code, _, errs := run(t, append([]string{"projections", "cutover", "topical", "--brokers", strings.Join(seeds, ",")}, db...)...); code != 1 || !strings.Contains(errs, "events behind") {
		t.Fatalf("cutover of a lagging topic version: %d %s", code, errs)
	}
}
