package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestReplayHelperProcess is not a test: run by TestReplayKillNine as a
// separate process, it runs `replay` with the arguments in
// REPLAY_HELPER_ARGS.
func TestReplayHelperProcess(t *testing.T) {
	raw := os.Getenv("REPLAY_HELPER_ARGS")
	if raw == "" {
		t.Skip("helper process only")
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		os.Exit(3)
	}
	if err := runReplay(context.Background(), args, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func TestReplayUsage(t *testing.T) {
	base := []string{"replay", "--brokers", "b:9092"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no topics", base, "--from and --to are required"},
		{"same topic", append(base, "--from", "a", "--to", "a"), "--to a is the source topic"},
		{"bad since", append(base, "--from", "a", "--to", "b", "--since", "yesterday"), `--since: usage: time "yesterday"`},
		{"bad until", append(base, "--from", "a", "--to", "b", "--until", "2026-13-01"), `--until: usage: time "2026-13-01"`},
		{"until before since", append(base, "--from", "a", "--to", "b", "--since", "1h", "--until", "2h"), "is not after --since"},
		{"two starts", append(base, "--from", "a", "--to", "b", "--since", "1h", "--from-offset", "3"), "--from-offset and --since"},
		{"offsets reversed", append(base, "--from", "a", "--to", "b", "--from-offset", "9", "--to-offset", "3"), "--to-offset 3 is before --from-offset 9"},
		{"bad partition", append(base, "--from", "a", "--to", "b", "--partitions", "0,x"), `--partitions: "x"`},
		{"bad rate", append(base, "--from", "a", "--to", "b", "--rate", "-5"), "--rate -5 is out of range"},
		{"bad header", append(base, "--from", "a", "--to", "b", "--header", "novalue"), "want k=v"},
		{"both modes", append(base, "--from", "a", "--to", "b", "--dry-run", "--execute"), "exclude each other"},
		{"bad output", append(base, "--from", "a", "--to", "b", "-o", "yaml"), `-o "yaml"`},
		{"no brokers", []string{"replay", "--brokers", "", "--from", "a", "--to", "b"}, "KAFKA_BROKERS is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 mentioning %q", code, stderr, tc.want)
			}
		})
	}
}

// sourceRecord is what the tests put in a source topic.
type sourceRecord struct {
	partition int32
	offset    int64
	key, typ  string
	tenant    string
	ts        time.Time
}

// fillSource produces n records over the source's partitions with keys
// k0..k49, CloudEvents types A/B/C and a tenant header t0..t2; timestamps
// rise by 1ms from base.
func fillSource(t *testing.T, seeds []string, topic string, n int, base time.Time) []sourceRecord {
	t.Helper()
	cl := testenv.Client(t, seeds, kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(5*time.Millisecond))
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Key: []byte("k" + strconv.Itoa(i%50)), Value: []byte("v" + strconv.Itoa(i)), Timestamp: base.Add(time.Duration(i) * time.Millisecond),
			Headers: []kgo.RecordHeader{{Key: "ce_type", Value: []byte(string(rune('A' + i%3)))}, {Key: "tenant", Value: []byte("t" + strconv.Itoa(i%7%3))}}}
	}
	res := cl.ProduceSync(t.Context(), recs...)
	if err := res.FirstErr(); err != nil {
		t.Fatal(err)
	}
	out := make([]sourceRecord, n)
	for i, r := range res {
		out[i] = sourceRecord{r.Record.Partition, r.Record.Offset, string(r.Record.Key), hdr(r.Record, "ce_type"), hdr(r.Record, "tenant"), r.Record.Timestamp}
	}
	return out
}

// destination reads a topic to its end (read_committed) and returns the
// provenance of each record: "topic/partition/offset" -> copies.
func destination(t *testing.T, seeds []string, topic string) map[string]int {
	t.Helper()
	adm := kadm.NewClient(testenv.Client(t, seeds))
	ends, err := adm.ListCommittedOffsets(t.Context(), topic)
	if err != nil {
		t.Fatal(err)
	}
	want := int64(0)
	ends.Each(func(o kadm.ListedOffset) { want += o.Offset })
	out := map[string]int{}
	if want == 0 {
		return out
	}
	cl := testenv.Client(t, seeds, kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.KeepControlRecords())
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	seen := int64(0)
	done := map[int32]int64{}
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %s: %d of %d offsets", topic, seen, want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			done[r.Partition] = r.Offset + 1
			if !r.Attrs.IsControl() {
				out[hdr(r, HeaderReplaySource)]++
			}
		})
		seen = 0
		for _, n := range done {
			seen += n
		}
		finished := true
		ends.Each(func(o kadm.ListedOffset) {
			if done[o.Partition] < o.Offset {
				finished = false
			}
		})
		if finished {
			return out
		}
	}
}

func provenance(topic string, r sourceRecord) string {
	return fmt.Sprintf("%s/%d/%d", topic, r.partition, r.offset)
}

// TestReplayKillNineIntegration: a replay of 100k records killed -9
// twice, at random points, and run again completes with each source record
// exactly once in the destination (by its provenance header).
func TestReplayKillNineIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	src := testenv.Topic(t, seeds, 4, nil)
	dst := testenv.Topic(t, seeds, 4, nil)
	n := 100_000
	if testing.Short() {
		n = 20_000
	}
	source := fillSource(t, seeds, src, n, time.Now().Add(-time.Hour))
	ckpt := testenv.Name("ckpt")
	t.Cleanup(func() { _, _ = kadm.NewClient(testenv.Client(t, seeds)).DeleteTopics(context.Background(), ckpt) })
	args := []string{"--brokers", strings.Join(seeds, ","), "--from", src, "--to", dst, "--execute", "--batch", "500", "--checkpoint-topic", ckpt, "-o", "json"}
	raw, _ := json.Marshal(args)
	adm := kadm.NewClient(testenv.Client(t, seeds))
	committed := func() int64 {
		ends, err := adm.ListCommittedOffsets(t.Context(), dst)
		if err != nil {
			return 0
		}
		var s int64
		ends.Each(func(o kadm.ListedOffset) { s += o.Offset })
		return s
	}
	for kill := range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestReplayHelperProcess$")
		cmd.Env = append(os.Environ(), "REPLAY_HELPER_ARGS="+string(raw))
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill once some (more) progress is committed, at a random moment.
		before := committed()
		deadline := time.Now().Add(time.Minute)
		for committed() <= before+int64(rand.IntN(n/4)) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Logf("kill %d at about %d destination offsets; output: %s", kill+1, committed(), strings.TrimSpace(out.String()))
	}
	code, stdout, stderr := run(t, append([]string{"replay"}, args...)...)
	if code != 0 {
		t.Fatalf("resume: exit %d: %s %s", code, stdout, stderr)
	}
	got := destination(t, seeds, dst)
	if len(got) != n {
		t.Fatalf("destination has %d distinct source records, want %d (%s)", len(got), n, stderr)
	}
	for _, r := range source {
		if c := got[provenance(src, r)]; c != 1 {
			t.Fatalf("source record %s is %d times in the destination", provenance(src, r), c)
		}
	}
	// Run again: finished, nothing more written.
	code, stdout, _ = run(t, append([]string{"replay"}, args...)...)
	if code != 0 || !strings.Contains(stdout, "already finished") {
		t.Fatalf("rerun: exit %d: %s", code, stdout)
	}
	if again := destination(t, seeds, dst); len(again) != n {
		t.Fatalf("rerun wrote more: %d", len(again))
	}
}

// TestReplayFiltersIntegration: key, header, type and time filters copy
// exactly what a brute-force filter of the source selects (times follow
// ListOffsets: from the first record at or after --since to the first at
// or after --until); a dry run and a plan change no end offset; a missing
// topic is a usage error that writes nothing.
func TestReplayFiltersIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	src := testenv.Topic(t, seeds, 3, nil)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	source := fillSource(t, seeds, src, 3000, base)
	adm := kadm.NewClient(testenv.Client(t, seeds))
	ckpt := testenv.Name("ckpt")
	t.Cleanup(func() { _, _ = adm.DeleteTopics(context.Background(), ckpt) })
	since, until := base.Add(700*time.Millisecond), base.Add(2300*time.Millisecond)
	for _, tc := range []struct {
		name  string
		flags []string
		keep  func(sourceRecord) bool
	}{
		{"key", []string{"--key", "k7"}, func(r sourceRecord) bool { return r.key == "k7" }},
		{"type", []string{"--type", "B"}, func(r sourceRecord) bool { return r.typ == "B" }},
		{"header and type", []string{"--header", "tenant=t1", "--type", "C"}, func(r sourceRecord) bool { return r.tenant == "t1" && r.typ == "C" }},
		{"time range", []string{"--since", since.Format(time.RFC3339Nano), "--until", until.Format(time.RFC3339Nano)},
			func(r sourceRecord) bool { return !r.ts.Before(since) && r.ts.Before(until) }},
		{"partition and offsets", []string{"--partitions", "1", "--from-offset", "10", "--to-offset", "200"},
			func(r sourceRecord) bool { return r.partition == 1 && r.offset >= 10 && r.offset < 200 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := testenv.Topic(t, seeds, 2, nil)
			args := append([]string{"replay", "--brokers", strings.Join(seeds, ","), "--from", src, "--to", dst, "--checkpoint-topic", ckpt}, tc.flags...)
			for _, mode := range []string{"plan", "--dry-run"} {
				a := args
				if mode != "plan" {
					a = append(a, mode)
				}
				if code, out, errs := run(t, a...); code != 0 {
					t.Fatalf("%s: exit %d: %s %s", mode, code, out, errs)
				}
				ends, err := adm.ListEndOffsets(t.Context(), dst)
				if err != nil {
					t.Fatal(err)
				}
				ends.Each(func(o kadm.ListedOffset) {
					if o.Offset != 0 {
						t.Fatalf("%s wrote to %s[%d]: end offset %d", mode, dst, o.Partition, o.Offset)
					}
				})
			}
			if code, out, errs := run(t, append(args, "--execute")...); code != 0 {
				t.Fatalf("execute: exit %d: %s %s", code, out, errs)
			}
			got := destination(t, seeds, dst)
			want := 0
			for _, r := range source {
				if tc.keep(r) {
					want++
					if got[provenance(src, r)] != 1 {
						t.Fatalf("%+v copied %d times, want once", r, got[provenance(src, r)])
					}
				}
			}
			if len(got) != want || want == 0 {
				t.Fatalf("copied %d records, the oracle selects %d", len(got), want)
			}
		})
	}
	t.Run("missing topic", func(t *testing.T) {
		code, _, stderr := run(t, "replay", "--brokers", strings.Join(seeds, ","), "--from", src, "--to", "no-such-topic-"+testenv.Name("x"), "--execute", "--checkpoint-topic", ckpt)
		if code != 2 || !strings.Contains(stderr, "does not exist") {
			t.Fatalf("exit %d: %s", code, stderr)
		}
	})
}

// TestReplayRateIntegration: --rate 1000 copies 3,000 records in 3s ±10%.
func TestReplayRateIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	src := testenv.Topic(t, seeds, 2, nil)
	dst := testenv.Topic(t, seeds, 2, nil)
	fillSource(t, seeds, src, 3000, time.Now().Add(-time.Minute))
	ckpt := testenv.Name("ckpt")
	t.Cleanup(func() { _, _ = kadm.NewClient(testenv.Client(t, seeds)).DeleteTopics(context.Background(), ckpt) })
	code, out, errs := run(t, "replay", "--brokers", strings.Join(seeds, ","), "--from", src, "--to", dst, "--checkpoint-topic", ckpt, "--execute", "--rate", "1000", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, out, errs)
	}
	var res struct {
		Copied  int64
		Seconds float64
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	rate := float64(res.Copied) / res.Seconds
	if res.Copied != 3000 || rate < 900 || rate > 1100 {
		t.Fatalf("copied %d in %.2fs = %.0f/s, want 3000 at 1000/s ±10%%", res.Copied, res.Seconds, rate)
	}
	t.Logf("%.0f records/s", rate)
}
