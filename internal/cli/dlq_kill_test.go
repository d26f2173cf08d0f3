package cli

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestDLQHelperProcess is not a test: run by TestDLQRedriveKilled as a
// separate process, it runs `dlq` with the arguments in DLQ_HELPER_ARGS.
func TestDLQHelperProcess(t *testing.T) {
	raw := os.Getenv("DLQ_HELPER_ARGS")
	if raw == "" {
		t.Skip("helper process only")
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		os.Exit(3)
	}
	if err := runDLQ(context.Background(), args, os.Stdout, os.Stderr); err != nil {
		os.Exit(1)
	}
	os.Exit(0)
}

// TestDLQRedriveKilled kills a redrive with SIGKILL after it committed
// part of its progress and checks that a second run resumes at the
// committed position: every dead letter is redriven, and the only
// duplicates are the ones the killed run produced past its last commit.
func TestDLQRedriveKilled(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			testRedriveKilled(t, b.Seeds(t))
		})
	}
}

func testRedriveKilled(t *testing.T, seeds []string) {
	topic := testenv.Topic(t, seeds, 1, nil)
	group := testenv.Name("g")
	dlq := consumers.DeadLetterTopic(topic, group)
	adm := kadm.NewClient(testenv.Client(t, seeds))
	if _, err := adm.CreateTopic(t.Context(), 1, 1, nil, dlq); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = adm.DeleteTopics(context.Background(), dlq) })
	const n = 400
	var recs []*kgo.Record
	for i := range n {
		recs = append(recs, &kgo.Record{Topic: dlq, Key: []byte("k"), Value: []byte("v" + strconv.Itoa(i)), Headers: []kgo.RecordHeader{
			{Key: consumers.HeaderTopic, Value: []byte(topic)}, {Key: consumers.HeaderPartition, Value: []byte("0")},
			{Key: consumers.HeaderErrorClass, Value: []byte("transient")},
		}})
	}
	if err := testenv.Client(t, seeds).ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	args := []string{"redrive", "--brokers", strings.Join(seeds, ","), "--topic", topic, "--group", group, "--rate", "150"}
	raw, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^TestDLQHelperProcess$")
	cmd.Env = append(os.Environ(), "DLQ_HELPER_ARGS="+string(raw))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	position := func() int64 {
		offs, err := adm.FetchOffsets(t.Context(), dlq+".redrive")
		if err != nil {
			return 0
		}
		o, _ := offs.Lookup(dlq, 0)
		return o.At
	}
	deadline := time.Now().Add(60 * time.Second)
	// Kill between commits: some records produced past the position.
	for (position() <= 0 || endTotal(t, seeds, topic) <= position()) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	time.Sleep(300 * time.Millisecond) // let a request sent before the kill land
	atKill := position()
	produced := endTotal(t, seeds, topic)
	if atKill <= 0 || atKill >= n {
		t.Fatalf("position at kill %d: want a partial redrive of %d", atKill, n)
	}
	out, _, err := dlqRun(t.Context(), t, args...)
	if err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	if got, want := endTotal(t, seeds, topic), produced+(n-atKill); got != want {
		t.Fatalf("%d records in %s after resuming, want %d (%d by the killed run, %d after its last commit at %d)", got, topic, want, produced, n-atKill, atKill)
	}
	t.Logf("killed after producing %d with position %d; resumed with %d; %d duplicates", produced, atKill, n-atKill, produced-atKill)
	seen := map[string]bool{}
	rd := testenv.Client(t, seeds, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for total := int64(0); total < produced+(n-atKill) && ctx.Err() == nil; {
		for _, r := range rd.PollFetches(ctx).Records() {
			total++
			seen[string(r.Value)] = true
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct records redriven, want %d", len(seen), n)
	}
}
