package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestGroupsUsage(t *testing.T) {
	base := []string{"groups", "reset", "--brokers", "b:9092", "--group", "g"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no sub", []string{"groups"}, "groups describe"},
		{"unknown sub", []string{"groups", "delete"}, `unknown groups command "delete"`},
		{"no group", []string{"groups", "describe", "--brokers", "b:9092"}, "--group is required"},
		{"no strategy", append(base, "--topic", "t"), "exactly one of"},
		{"two strategies", append(base, "--topic", "t", "--to-earliest", "--to-latest"), "exactly one of"},
		{"no topic", append(base, "--to-earliest"), "--topic is required"},
		{"bad datetime", append(base, "--topic", "t", "--to-datetime", "yesterday"), `--to-datetime "yesterday" is not RFC 3339`},
		{"bad duration", append(base, "--topic", "t", "--by-duration", "P1X"), `--by-duration "P1X"`},
		{"negative offset", append(base, "--topic", "t", "--to-offset", "-4"), "--to-offset -4"},
		{"bad shift", append(base, "--topic", "t", "--shift-by", "many"), "invalid value"},
		{"bad scope", append(base, "--topic", "t:a,b", "--to-earliest"), `--topic "t:a,b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 mentioning %q", code, stderr, tc.want)
			}
		})
	}
	for s, want := range map[string]time.Duration{"24h": 24 * time.Hour, "P1D": 24 * time.Hour, "PT1H30M": 90 * time.Minute, "P1DT0.5S": 24*time.Hour + 500*time.Millisecond} {
		if d, err := parseISODuration(s); err != nil || d != want {
			t.Errorf("parseISODuration(%q) = %s, %v; want %s", s, d, err, want)
		}
	}
}

// TestGroupsIntegration: describe shows committed offsets and lag; a
// reset prints a plan and commits nothing without --execute; each
// strategy moves the offsets as kafka-consumer-groups would; a reset of an
// active group is refused and changes nothing.
func TestGroupsIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	topic := testenv.Topic(t, seeds, 2, nil)
	group := testenv.Name("g")
	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	cl := testenv.Client(t, seeds, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	var recs []*kgo.Record
	for p := range int32(2) {
		for i := range 100 {
			recs = append(recs, &kgo.Record{Topic: topic, Partition: p, Value: []byte("v"), Timestamp: base.Add(time.Duration(i) * time.Second)})
		}
	}
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(cl)
	set := kadm.Offsets{}
	set.Add(kadm.Offset{Topic: topic, Partition: 0, At: 40, LeaderEpoch: -1})
	set.Add(kadm.Offset{Topic: topic, Partition: 1, At: 60, LeaderEpoch: -1})
	if err := adm.CommitAllOffsets(t.Context(), group, set); err != nil {
		t.Fatal(err)
	}
	committed := func() [2]int64 {
		offs, err := adm.FetchOffsets(t.Context(), group)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := offs.Lookup(topic, 0)
		b, _ := offs.Lookup(topic, 1)
		return [2]int64{a.At, b.At}
	}
	brokers := strings.Join(seeds, ",")
	code, out, errs := run(t, "groups", "describe", "--brokers", brokers, "--group", group, "-o", "json")
	if code != 0 {
		t.Fatalf("describe: %d %s %s", code, out, errs)
	}
	var d struct {
		State      string
		Partitions []groupRow
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil || len(d.Partitions) != 2 || d.Partitions[0].Lag != 60 || d.Partitions[1].Lag != 40 {
		t.Fatalf("describe: %s (%v)", out, err)
	}
	reset := []string{"groups", "reset", "--brokers", brokers, "--group", group, "--topic", topic}
	for _, tc := range []struct {
		flags []string
		want  [2]int64
	}{
		{[]string{"--to-earliest"}, [2]int64{0, 0}},
		{[]string{"--to-latest"}, [2]int64{100, 100}},
		{[]string{"--shift-by", "-30"}, [2]int64{70, 70}},
		{[]string{"--shift-by", "+500"}, [2]int64{100, 100}},
		{[]string{"--to-offset", "25"}, [2]int64{25, 25}},
		{[]string{"--to-datetime", base.Add(10 * time.Second).UTC().Format(time.RFC3339Nano)}, [2]int64{10, 10}},
		{[]string{"--by-duration", "P1D"}, [2]int64{0, 0}},
	} {
		before := committed()
		code, out, errs := run(t, append(reset, tc.flags...)...)
		if code != 0 || committed() != before || !strings.Contains(out, "plan") {
			t.Fatalf("%v plan: exit %d, offsets %v -> %v: %s %s", tc.flags, code, before, committed(), out, errs)
		}
		code, out, errs = run(t, append(append(reset, tc.flags...), "--execute")...)
		if code != 0 || committed() != tc.want {
			t.Fatalf("%v: exit %d, offsets %v, want %v: %s %s", tc.flags, code, committed(), tc.want, out, errs)
		}
	}
	// An active member: the reset is refused.
	member := testenv.Client(t, seeds, kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic), kgo.DisableAutoCommit())
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		member.PollRecords(ctx, 10)
		dg, err := adm.DescribeGroups(ctx, group)
		if err == nil && dg[group].State == "Stable" {
			break
		}
	}
	before := committed()
	code, out, errs = run(t, append(reset, "--to-earliest", "--execute")...)
	if code != 1 || !strings.Contains(errs, "refused") || committed() != before {
		t.Fatalf("reset of an active group: exit %d, offsets %v -> %v: %s %s", code, before, committed(), out, errs)
	}
}
