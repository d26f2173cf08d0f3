package main

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/cli"
	"github.com/orchestrix/orchestrix/internal/exampleapp/exampletest"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestMain(m *testing.M) {
	testenv.ChildMain(main)
	os.Exit(m.Run())
}

// TestServeDriveBadFlags: bad flags of serve and drive are usage errors
// (exit 2), named.
func TestServeDriveBadFlags(t *testing.T) {
	t.Setenv("KAFKA_BROKERS", "")
	exampletest.BadFlags(t, realMain, [][]string{
		{"extra"},
		{"serve", "--partitions", "0"},
		{"serve", "--replication", "0"},
		{"serve", "--listen", ""},
		{"serve", "--context", "a b"},
		{"serve", "--retry-delays", "1s,x"},
		{"serve", "--fail", "sms=2"},
		{"serve", "--fail", "fax=0.1"},
		{"serve", "--fail", "sms"},
		{"serve", "--smtp-addr", "no-port"},
		{"serve", "--webhook-url", "ftp://example.com/x"},
		{"serve", "--shutdown-timeout", "0s"},
		{"serve", "--session-timeout", "10ms"},
		{"serve", "--log-level", "loud"},
		{"serve", "--bogus"},
		{"serve", "extra"},
		{"drive"}, // no brokers
		{"drive", "--brokers", "127.0.0.1:1", "--rate", "0"},
		{"drive", "--brokers", "127.0.0.1:1", "--count", "0"},
		{"drive", "--brokers", "127.0.0.1:1", "--invalid", "1.5"},
		{"drive", "--brokers", "127.0.0.1:1", "--timeout", "-1s"},
		{"drive", "--brokers", "127.0.0.1:1", "--context", ""},
		{"drive", "--brokers", "127.0.0.1:1", "extra"},
	})
}

// serveLines are the status lines of serve.
var serveLines = testenv.ServerLines{
	Listen:  regexp.MustCompile(`^listening on (\S+)`),
	Brokers: regexp.MustCompile(`^embedded Kafka at (\S+)`),
}

// startServe runs `serve args...` as a child process (the test binary
// re-executed) and waits until it is ready.
func startServe(t *testing.T, args ...string) *testenv.Server {
	t.Helper()
	s := testenv.StartServer(t, serveLines, 90*time.Second, nil, append([]string{"serve", "--listen", "127.0.0.1:0", "--retry-delays", "200ms,400ms,800ms"}, args...)...)
	s.Ready(t, 60*time.Second)
	return s
}

// runDrive runs drive in this process and returns its output; it fails
// the test unless drive exits 0.
func runDrive(t *testing.T, c *testenv.Server, args ...string) string {
	t.Helper()
	var out, errOut testenv.SyncBuffer
	code := driveMain(t.Context(), append([]string{"--timeout", "90s"}, args...), &out, &errOut)
	if code != 0 {
		t.Fatalf("drive exit %d\n%s%s\nserve:\n%s", code, out.String(), errOut.String(), c.Out.String())
	}
	return out.String()
}

// row returns the report's row of a channel, its fields.
func row(t *testing.T, out, channel string) []string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == channel {
			return f
		}
	}
	t.Fatalf("no row for %s in\n%s", channel, out)
	return nil
}

// serveAndDrive: serve (with sms failing a third of its calls) driven by
// 40 users, a tenth of them with an invalid email address: every
// notification is delivered except those emails, which are dead-lettered
// as permanent at once; sms retries. Then a UserRegistered and a record
// that is no CloudEvent sent by hand, as with kcat; then SIGTERM.
func serveAndDrive(t *testing.T, brokers, name string, serveArgs ...string) {
	c := startServe(t, append([]string{"--fail", "sms=0.3"}, serveArgs...)...)
	if brokers == "" {
		brokers = c.Brokers
	}
	out := runDrive(t, c, "--brokers", brokers, "--context", name, "--count", "40", "--rate", "100", "--invalid", "0.1")
	// sms may dead-letter a few (0.3^4 of them fail every attempt): its
	// notifications are only all settled, which drive's exit 0 says.
	want := map[string][2]string{"email": {"36", "4"}, "push": {"40", "0"}, "webhook": {"40", "0"}}
	for ch, w := range want {
		f := row(t, out, ch)
		if f[2] != w[0] || f[4] != w[1] {
			t.Errorf("%s: delivered %s, dead-lettered %s; want %s and %s\n%s", ch, f[2], f[4], w[0], w[1], out)
		}
	}
	if f := row(t, out, "sms"); f[3] == "0" {
		t.Errorf("sms failing 30%% of its calls retried nothing\n%s", out)
	}
	if !strings.Contains(out, "160 of 160 notifications settled") || !strings.Contains(out, "+4 during this drive (permanent 4)") {
		t.Errorf("report:\n%s", out)
	}
	t.Log("\n" + out)
	pokeByHand(t, brokers, name)
	c.StopClean(t, 45*time.Second, "stopped cleanly")
	if !strings.Contains(c.Out.String(), "received in the process: email 37 ") {
		t.Errorf("the SMTP server in the process should have 37 emails (36 driven, 1 by hand):\n%s", c.Out.String())
	}
}

// pokeByHand sends what the README's kcat line sends — a UserRegistered
// with hand-written CloudEvents headers — and waits for its deliveries
// (sms may fail every attempt); then a record without CloudEvents headers, which every
// channel's group dead-letters with the reason.
func pokeByHand(t *testing.T, brokers, name string) {
	t.Helper()
	seeds := strings.Split(brokers, ",")
	cl := testenv.Client(t, seeds)
	adm := kadm.NewClient(cl)
	deliveries, events := DeliveriesTopic(name), topics.Events(name)
	emailDLQ := consumers.DeadLetterTopic(events, groupName(name, "email"))
	ends, err := adm.ListEndOffsets(t.Context(), deliveries, emailDLQ)
	if err != nil {
		t.Fatal(err)
	}
	from := map[string]map[int32]kgo.Offset{deliveries: {}, emailDLQ: {}}
	ends.Each(func(o kadm.ListedOffset) { from[o.Topic][o.Partition] = kgo.NewOffset().At(o.Offset) })
	follow := testenv.Client(t, seeds, kgo.ConsumePartitions(from))
	id := testenv.Name("kcat")
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	byHand := &kgo.Record{Topic: events, Key: []byte("u-1"), Value: []byte(`{"user_id":"u-1","email":"ann@example.com","phone":"+15550000001","name":"Ann"}`),
		Headers: []kgo.RecordHeader{h("ce_specversion", "1.0"), h("ce_id", id), h("ce_source", "/kcat"), h("ce_type", TypeUserRegistered),
			h("ce_time", time.Now().UTC().Format("2006-01-02T15:04:05Z")), h("content-type", "application/json")}}
	bad := &kgo.Record{Topic: events, Key: []byte("u-2"), Value: []byte(`{"user_id":"u-2"}`)}
	if err := cl.ProduceSync(t.Context(), byHand, bad).FirstErr(); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	var reason string
	deadline := time.Now().Add(60 * time.Second)
	delivered := func() bool { return got["email"] && got["push"] && got["webhook"] }
	for (!delivered() || reason == "") && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		fs := follow.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			if r.Topic == emailDLQ && string(r.Key) == "u-2" {
				for _, h := range r.Headers {
					if h.Key == consumers.HeaderReason {
						reason = string(h.Value)
					}
				}
				return
			}
			if strings.Contains(string(r.Value), `"event_id":"`+id+`"`) {
				for _, ch := range channelNames {
					if strings.Contains(string(r.Value), `"channel":"`+ch+`"`) {
						got[ch] = true
					}
				}
			}
		})
	}
	if !delivered() {
		t.Fatalf("the UserRegistered sent by hand (%s) was delivered on %v only", id, got)
	}
	if !strings.HasPrefix(reason, "poison:") {
		t.Fatalf("the record without CloudEvents headers: dead letter reason %q, want poison:...", reason)
	}
}

// serve on the embedded broker, driven from this process.
func TestServeDrive(t *testing.T) {
	t.Setenv("KAFKA_BROKERS", "")
	serveAndDrive(t, "", "notifications")
}

// serve --init against the real broker; drive; SIGTERM.
func TestServeDriveIntegration(t *testing.T) {
	e := exampletest.Kafka(t, "notif-s")
	serveAndDrive(t, e.Brokers, e.Context, "--init", "--brokers", e.Brokers, "--context", e.Context, "--partitions", "2", "--session-timeout", "6s")
}

// Without --init on a context whose topics do not exist, serve exits 1
// and names the command that creates them.
func TestServeMissingTopicsIntegration(t *testing.T) {
	seeds := testenv.Brokers(t)
	name := strings.ReplaceAll(testenv.Name("notif-m"), "_", "-")
	var out, errOut testenv.SyncBuffer
	code := serveMain(t.Context(), []string{"--brokers", strings.Join(seeds, ","), "--context", name, "--listen", "127.0.0.1:0"}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "orchestrix topics create --topics "+DeliveriesTopic(name)) {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errOut.String())
	}
}

// The operator's way out of an outage, against the real broker: serve
// with the webhook receiver down dead-letters every webhook (after the
// retry ladder); serve is stopped, started again with the receiver back,
// and `orchestrix dlq redrive` brings every one home.
func TestServeOutageRedriveIntegration(t *testing.T) {
	e := exampletest.Kafka(t, "notif-r")
	args := []string{"--brokers", e.Brokers, "--context", e.Context, "--partitions", "2", "--session-timeout", "6s"}
	first := startServe(t, append([]string{"--init", "--fail", "webhook=1"}, args...)...)
	out := runDrive(t, first, "--brokers", e.Brokers, "--context", e.Context, "--count", "20", "--rate", "100")
	if f := row(t, out, "webhook"); f[2] != "0" || f[4] != "20" {
		t.Fatalf("with the receiver down: webhook delivered %s, dead-lettered %s; want 0 and 20\n%s", f[2], f[4], out)
	}
	first.StopClean(t, 45*time.Second, "stopped cleanly")
	second := startServe(t, args...)
	adm := kadm.NewClient(testenv.Client(t, e.Seeds))
	ends, err := adm.ListEndOffsets(t.Context(), DeliveriesTopic(e.Context))
	if err != nil {
		t.Fatal(err)
	}
	before := int64(0)
	ends.Each(func(o kadm.ListedOffset) { before += o.Offset })
	var cliOut strings.Builder
	if code := cli.Run(t.Context(), []string{"dlq", "redrive", "--brokers", e.Brokers, "--topic", topics.Events(e.Context), "--group", groupName(e.Context, "webhook"), "--to-level", "1"}, &cliOut, &cliOut); code != 0 {
		t.Fatalf("redrive: exit %d\n%s", code, cliOut.String())
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ends, err := adm.ListEndOffsets(t.Context(), DeliveriesTopic(e.Context))
		if err != nil {
			t.Fatal(err)
		}
		after := int64(0)
		ends.Each(func(o kadm.ListedOffset) { after += o.Offset })
		if after-before >= 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 20 webhooks delivered after the redrive\n%s\n%s", after-before, cliOut.String(), second.Out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	second.StopClean(t, 45*time.Second, "stopped cleanly")
	if !strings.Contains(second.Out.String(), "webhook 20 (0 twice→one)") {
		t.Errorf("the second serve's webhook receiver:\n%s", second.Out.String())
	}
	t.Logf("redrive: %s", strings.TrimSpace(cliOut.String()))
}

// kill -9 of serve while drive has notifications in flight (real
// broker): a new serve takes over once the dead member's session ends,
// the records whose offsets were not committed are handled again (the
// same idempotency keys), and every notification is delivered.
func TestServeKillNineIntegration(t *testing.T) {
	e := exampletest.Kafka(t, "notif-k")
	args := []string{"--brokers", e.Brokers, "--context", e.Context, "--partitions", "2", "--session-timeout", "6s"}
	first := startServe(t, append([]string{"--init"}, args...)...)
	var out, errOut testenv.SyncBuffer
	code := make(chan int, 1)
	go func() {
		code <- driveMain(t.Context(), []string{"--brokers", e.Brokers, "--context", e.Context, "--count", "100", "--rate", "20", "--timeout", "2m", "--watch"}, &out, &errOut)
	}()
	out.Await(t, "delivered (", 40, 60*time.Second)
	first.Kill(t)
	before := strings.Count(out.String(), "delivered (")
	second := startServe(t, args...)
	select {
	case c := <-code:
		if c != 0 || !strings.Contains(out.String(), "400 of 400 notifications settled") {
			t.Fatalf("drive exit %d\n%s%s\nafter the kill:\n%s", c, out.String(), errOut.String(), second.Out.String())
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("drive did not end\n%s", out.String())
	}
	for _, ch := range channelNames {
		if f := row(t, out.String(), ch); f[2] != "100" {
			t.Errorf("%s: %s of 100 delivered\n%s", ch, f[2], out.String())
		}
	}
	t.Logf("killed with %d of 400 delivered; after the restart all 400\n%s", before, out.String()[strings.Index(out.String(), "\nchannel"):])
	second.StopClean(t, 45*time.Second, "stopped cleanly")
}
