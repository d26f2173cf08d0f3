package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func dlqRun(ctx context.Context, t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := runDLQ(ctx, args, &out, &errb)
	return out.String(), errb.String(), err
}

// consumeAll runs a group over topic until want records were committed,
// failing permanently on values starting with "bad".
func consumeAll(t *testing.T, seeds []string, topic, group string, want int64) {
	t.Helper()
	h := consumers.HandlerFunc(func(_ context.Context, r *kgo.Record) error {
		if bytes.HasPrefix(r.Value, []byte("bad")) || bytes.Contains(r.Value, []byte(`"bad"`)) {
			return consumers.Permanent(errors.New("cannot handle " + string(r.Value)))
		}
		return nil
	})
	g, err := consumers.New(seeds, group, []string{topic}, h)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	adm := kadm.NewClient(testenv.Client(t, seeds))
	for ctx.Err() == nil {
		offs, err := adm.FetchOffsets(ctx, group)
		if err == nil {
			var sum int64
			offs.Each(func(o kadm.OffsetResponse) {
				if o.Topic == topic {
					sum += o.At
				}
			})
			if sum >= want {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("group: %v", err)
	}
}

func endTotal(t *testing.T, seeds []string, topic string) int64 {
	t.Helper()
	ends, err := kadm.NewClient(testenv.Client(t, seeds)).ListEndOffsets(t.Context(), topic)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

func TestDLQ(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) { testDLQ(t, b.Seeds(t)) })
	}
}

func testDLQ(t *testing.T, seeds []string) {
	topic := testenv.Topic(t, seeds, 2, nil)
	group := testenv.Name("g")
	dlq := consumers.DeadLetterTopic(topic, group)
	adm := kadm.NewClient(testenv.Client(t, seeds))
	if _, err := adm.CreateTopic(t.Context(), 2, 1, nil, dlq); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = adm.DeleteTopics(context.Background(), dlq) })
	var recs []*kgo.Record
	const n, bad = 100, 30
	for i := range n {
		v := "ok " + strconv.Itoa(i)
		if i%10 < 3 {
			v = "bad " + strconv.Itoa(i)
		}
		recs = append(recs, &kgo.Record{Topic: topic, Key: []byte("k" + strconv.Itoa(i%7)), Value: []byte(v), Headers: []kgo.RecordHeader{{Key: "x-user", Value: []byte("u" + strconv.Itoa(i))}}})
	}
	ev, err := codec.EventToRecord(topic, orchestrix.Event{
		Metadata: orchestrix.Metadata{ID: "e1", Type: "test.Broken", Source: "test", Time: time.Now()},
		StreamID: "s1", Version: 1, ContentType: "application/json", Data: []byte(`{"state":"bad"}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	recs = append(recs, ev)
	cl := testenv.Client(t, seeds)
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	consumeAll(t, seeds, topic, group, n+1)
	base := []string{"--brokers", strings.Join(seeds, ","), "--topic", topic, "--group", group}
	args := func(sub string, extra ...string) []string { return append(append([]string{sub}, base...), extra...) }

	out, _, err := dlqRun(t.Context(), t, args("list")...)
	if err != nil || !strings.Contains(out, strconv.Itoa(bad+1)+" dead letters") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, _, err = dlqRun(t.Context(), t, args("list", "--type", "test.Broken")...)
	if err != nil || !strings.Contains(out, "1 dead letters") {
		t.Fatalf("list --type: %v\n%s", err, out)
	}
	out, _, err = dlqRun(t.Context(), t, args("show", "--type", "test.Broken")...)
	var v dlqView
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || v.Event["type"] != "test.Broken" || v.Failure["reason"] != "permanent" || string(v.Payload) == "" {
		t.Fatalf("show: %v\n%s", err, out)
	}

	// A group that dead-lettered nothing: the topic is not found, said
	// plainly (not the broker's UNKNOWN_TOPIC_OR_PARTITION).
	out, _, err = dlqRun(t.Context(), t, "list", "--brokers", strings.Join(seeds, ","), "--topic", topic, "--group", "not-"+group)
	if !errors.Is(err, errDLQNotFound) || !strings.Contains(err.Error(), "dead-letter topic "+consumers.DeadLetterTopic(topic, "not-"+group)+" not found") ||
		strings.Contains(err.Error(), "UNKNOWN_TOPIC") {
		t.Fatalf("list with a wrong group: %v\n%s", err, out)
	}

	// Dry run: nothing produced, position unchanged; the dead letters
	// classed permanent are flagged: redriven unchanged they fail again.
	out, errOut, err := dlqRun(t.Context(), t, args("redrive", "--dry-run")...)
	if err != nil || !strings.Contains(out, strconv.Itoa(bad+1)+" would be redriven") || endTotal(t, seeds, topic) != n+1 {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if strings.Count(out, "will fail again") != bad+1 || !strings.Contains(errOut, "warning: "+strconv.Itoa(bad+1)+" of the "+strconv.Itoa(bad+1)+" would fail again") {
		t.Fatalf("dry run does not warn that permanent failures fail again:\n%s\n%s", out, errOut)
	}

	out, _, err = dlqRun(t.Context(), t, args("redrive", "--dry-run", "--to-level", "1", "--limit-not-a-flag")...)
	if err == nil {
		t.Fatalf("unknown flag accepted:\n%s", out)
	}
	out, _, err = dlqRun(t.Context(), t, args("redrive", "--dry-run", "--to-level", "1")...)
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("dry run to a missing retry level: %v\n%s", err, out)
	}
	if _, err := adm.CreateTopic(t.Context(), 2, 1, nil, consumers.RetryTopic(topic, group, 1)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = adm.DeleteTopics(context.Background(), consumers.RetryTopic(topic, group, 1)) })
	out, _, err = dlqRun(t.Context(), t, args("redrive", "--dry-run", "--to-level", "1")...)
	if err != nil || !strings.Contains(out, consumers.RetryTopic(topic, group, 1)) {
		t.Fatalf("dry run to level 1: %v\n%s", err, out)
	}

	// Interrupted redrive, then resume: each dead letter redriven once.
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	out, _, err = dlqRun(ctx, t, args("redrive", "--rate", "40", "--key", "", "--class", "perm")...)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "resume") {
		t.Fatalf("interrupted redrive: %v\n%s", err, out)
	}
	first := endTotal(t, seeds, topic) - (n + 1)
	out, _, err = dlqRun(t.Context(), t, args("redrive")...)
	if err != nil {
		t.Fatalf("resumed redrive: %v\n%s", err, out)
	}
	if got := endTotal(t, seeds, topic) - (n + 1); got != bad+1 {
		t.Fatalf("redriven %d (%d before the interruption), want %d", got, first, bad+1)
	}
	t.Logf("interrupted after %d of %d", first, bad+1)
	redrivenRecs := 0
	rd := testenv.Client(t, seeds, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	rctx, rcancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer rcancel()
	for seen := 0; seen < n+1+bad+1 && rctx.Err() == nil; {
		for _, r := range rd.PollFetches(rctx).Records() {
			seen++
			if hdr(r, consumers.HeaderRedrives) == "1" {
				redrivenRecs++
				if hdr(r, "ce_type") == "" && !strings.HasPrefix(hdr(r, "x-user"), "u") {
					t.Errorf("redriven record lost its headers: %v", r.Headers)
				}
			}
		}
	}
	if redrivenRecs != bad+1 {
		t.Fatalf("%d records carry the redrive count, want %d", redrivenRecs, bad+1)
	}

	// They fail again: the loop guard refuses a second redrive.
	consumeAll(t, seeds, topic, group, n+1+bad+1)
	out, _, err = dlqRun(t.Context(), t, args("redrive", "--max-redrives", "1")...)
	if err != nil || !strings.Contains(out, "0 redriven, "+strconv.Itoa(bad+1)+" refused") {
		t.Fatalf("loop guard: %v\n%s", err, out)
	}
	// Refused records were passed: --from-start --force redrives them.
	out, _, err = dlqRun(t.Context(), t, args("redrive", "--max-redrives", "1", "--from-start", "--force", "--dry-run", "--key", "k1")...)
	if err != nil || !strings.Contains(out, "would be redriven") || strings.Contains(out, "refused 0@") {
		t.Fatalf("force: %v\n%s", err, out)
	}

	// Purge asks first; only the position moves.
	if err := cl.ProduceSync(t.Context(), &kgo.Record{Topic: topic, Key: []byte("k9"), Value: []byte("bad again")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	consumeAll(t, seeds, topic, group, n+1+bad+1+1)
	before := endTotal(t, seeds, dlq)
	dlqStdin = strings.NewReader("n\n")
	t.Cleanup(func() { dlqStdin = nil })
	if _, _, err := dlqRun(t.Context(), t, args("purge")...); err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Fatalf("purge without confirmation: %v", err)
	}
	out, _, err = dlqRun(t.Context(), t, args("purge", "--yes")...)
	if err != nil || !strings.Contains(out, "purged 1 ") {
		t.Fatalf("purge: %v\n%s", err, out)
	}
	if endTotal(t, seeds, dlq) != before {
		t.Fatalf("purge deleted records")
	}
	if out, _, _ := dlqRun(t.Context(), t, args("list")...); !strings.Contains(out, "0 dead letters") {
		t.Fatalf("list after purge:\n%s", out)
	}
}

func TestDLQUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no sub", nil, "dlq list|show"},
		{"unknown sub", []string{"frob"}, "unknown dlq command"},
		{"no brokers", []string{"list", "--brokers", "", "--topic", "t", "--group", "g"}, "KAFKA_BROKERS is required"},
		{"no topic", []string{"list", "--brokers", "x:1"}, "--topic and --group"},
		{"bad time", []string{"list", "--brokers", "x:1", "--topic", "t", "--group", "g", "--since", "yesterday"}, "neither RFC 3339"},
		{"bad rate", []string{"redrive", "--brokers", "x:1", "--topic", "t", "--group", "g", "--rate", "-1"}, "--rate -1 is out of range"},
		{"purge filter", []string{"purge", "--brokers", "x:1", "--topic", "t", "--group", "g", "--key", "k"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := dlqRun(t.Context(), t, tc.args...)
			if tc.want == "" {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want usage error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestFailsAgain(t *testing.T) {
	rec := func(class, reason string) *kgo.Record {
		return &kgo.Record{Headers: []kgo.RecordHeader{{Key: consumers.HeaderErrorClass, Value: []byte(class)}, {Key: consumers.HeaderReason, Value: []byte(reason)}}}
	}
	tests := []struct {
		name          string
		class, reason string
		again         bool
	}{
		{"permanent", "permanent", consumers.ReasonPermanent, true},
		{"invalid", "permanent", consumers.ReasonInvalid, true},
		{"poison", "permanent", "poison:bad-json", true},
		{"retries exhausted", "transient", consumers.ReasonExhausted, false},
		{"parked", "transient", consumers.ReasonParkedDead, false},
		{"no headers", "", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := failsAgain(rec(tc.class, tc.reason)); (got != "") != tc.again {
				t.Fatalf("failsAgain(%s, %s) = %q, want fails again: %v", tc.class, tc.reason, got, tc.again)
			}
		})
	}
}
