package cli

import (
	"strings"
	"testing"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
)

// TestTopicsGroupIntegration: `topics create --group` creates the group's
// retry levels and dead-letter topic for each topic it consumes, with the
// consumed topics' partitions: what consumers.Run checks at start (and
// names in its MissingTopicsError).
func TestTopicsGroupIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	brokers := strings.Join(seeds, ",")
	adm := kadm.NewClient(testenv.Client(t, seeds))
	bc, extra, group := testenv.Name("ctx"), testenv.Name("t"), testenv.Name("g")
	want := []string{topics.Commands(bc), topics.Events(bc), topics.Outcomes(bc), extra}
	for _, origin := range []string{topics.Commands(bc), extra} {
		want = append(want, consumers.RetryTopic(origin, group, 1), consumers.RetryTopic(origin, group, 2), consumers.DeadLetterTopic(origin, group))
	}
	t.Cleanup(func() { _, _ = adm.DeleteTopics(t.Context(), want...) })

	code, out, stderr := run(t, "topics", "create", "--brokers", brokers, "--context", bc, "--topics", extra, "--group", group, "--retry-levels", "2", "--partitions", "3")
	if code != 0 || strings.Count(out, "created") != len(want) {
		t.Fatalf("create: exit %d\n%s%s", code, out, stderr)
	}
	td, err := adm.ListTopics(t.Context(), want...)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range want {
		if d, ok := td[name]; !ok || d.Err != nil || len(d.Partitions) != 3 {
			t.Errorf("%s: %+v, want 3 partitions", name, d)
		}
	}
	if code, out, _ := run(t, "topics", "create", "--brokers", brokers, "--context", bc, "--topics", extra, "--group", group, "--retry-levels", "2", "--partitions", "3"); code != 0 || strings.Count(out, "exists") != len(want) {
		t.Fatalf("second create: exit %d\n%s", code, out)
	}
	code, out, stderr = run(t, "topics", "describe", "--brokers", brokers, "--topics", extra, "--group", group, "--retry-levels", "2")
	if code != 0 || strings.Count(out, "partitions=3") != 4 {
		t.Fatalf("describe: exit %d\n%s%s", code, out, stderr)
	}
}

func TestTopicsGroupUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"levels without group", []string{"--topics", "x", "--retry-levels", "2"}, "--retry-levels needs --group"},
		{"negative levels", []string{"--topics", "x", "--group", "g", "--retry-levels", "-1"}, "is negative"},
		{"group without topics", []string{"--group", "g"}, "name topics with --context or --topics"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"topics", "create", "--brokers", "127.0.0.1:1"}, tc.args...)
			if code, _, stderr := run(t, args...); code != 2 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("%v: exit %d, %q; want 2 and %q", args, code, stderr, tc.want)
			}
		})
	}
}
