package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestBadFlags(t *testing.T) {
	t.Setenv("KAFKA_BROKERS", "")
	t.Setenv("DATABASE_URL", "")
	t.Setenv("ORCHESTRIX_CONTEXT", "")
	for name, args := range map[string][]string{
		"no brokers":        {"--group", "g=t"},
		"nothing to export": {"--brokers", "b:9092"},
		"bad group":         {"--brokers", "b:9092", "--group", "g"},
		"no database":       {"--brokers", "b:9092", "--context", "banking"},
		"extra argument":    {"--brokers", "b:9092", "--group", "g=t", "x"},
	} {
		t.Run(name, func(t *testing.T) {
			var stderr strings.Builder
			if code := run(t.Context(), args, io.Discard, &stderr, nil); code != 2 {
				t.Fatalf("exit %d, want 2 (%s)", code, stderr.String())
			}
			if strings.Count(strings.TrimSpace(stderr.String()), "\n") != 0 {
				t.Errorf("want one line, got %q", stderr.String())
			}
		})
	}
}

// TestExporterIntegration: events appended with no relay running, records
// produced with no consumer, and the scrape shows both as backlog and lag.
func TestExporterIntegration(t *testing.T) {
	dsn := testenv.DatabaseURL(t)
	seeds := testenv.Brokers(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	bc := testenv.Name("exp")
	group := bc + "-aggregates"
	store := pgtest.Store(t, testenv.Pool(t))
	schema := store.Schema()
	for i := range 25 {
		ev := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "Deposited", Source: "/x", Time: time.Now()}, Data: []byte(`{}`)}
		if _, err := store.Append(ctx, "acc-"+strconv.Itoa(i%5), stores.Any, []orchestrix.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	// The checkpoint topic as a relay that has run makes it (before any
	// relay ran, prom.RelayBacklog reports a scrape error instead).
	checkpoint := topics.Spec{Name: topics.Events(bc) + outbox.CheckpointSuffix, Partitions: 1, ReplicationFactor: 1,
		Configs: map[string]string{"cleanup.policy": "compact"}}
	if _, err := topics.Ensure(ctx, adm, append(topics.ForContext(bc, 3, 1), checkpoint)...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = adm.DeleteTopics(context.Background(), topics.Commands(bc), topics.Events(bc), topics.Outcomes(bc), checkpoint.Name)
	})
	for i := range 40 {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topics.Commands(bc), Key: []byte(strconv.Itoa(i))}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}

	addr := make(chan string, 1)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan int, 1)
	go func() {
		done <- run(rctx, []string{"--brokers", strings.Join(seeds, ","), "--database-url", dsn, "--schema", schema,
			"--context", bc, "--group", group + "=" + topics.Commands(bc), "--saga-type", bc + ".transfer", "--listen", "127.0.0.1:0"},
			io.Discard, os.Stderr, func(a string) { addr <- a })
	}()
	var base string
	select {
	case base = <-addr:
	case code := <-done:
		t.Fatalf("exited %d before listening", code)
	}
	metrics := get(t, "http://"+base+"/metrics")
	for _, want := range []struct {
		series string
		value  float64
	}{
		{`orchestrix_relay_backlog_events{topic="` + topics.Events(bc) + `"}`, 25},
		{`orchestrix_saga_instances{saga_type="` + bc + `.transfer",status="running"}`, 0},
		{`orchestrix_saga_timers_pending{saga_type="` + bc + `.transfer"}`, 0},
	} {
		if got, ok := sample(metrics, want.series); !ok || got != want.value {
			t.Errorf("%s = %v (present %v), want %v", want.series, got, ok, want.value)
		}
	}
	lag := 0.0
	for p := range 3 {
		v, _ := sample(metrics, fmt.Sprintf(`orchestrix_consumer_committed_lag_records{group="%s",partition="%d",topic="%s"}`, group, p, topics.Commands(bc)))
		lag += v
	}
	if lag != 40 {
		t.Errorf("committed lag %v, want 40", lag)
	}
	if r := get(t, "http://"+base+"/readyz"); !strings.Contains(r, `"postgres":"ok"`) || !strings.Contains(r, `"kafka":"ok"`) {
		t.Errorf("/readyz: %s", r)
	}
	stop()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// sample returns the value of series (name{labels} as exposed) in text.
func sample(text, series string) (float64, bool) {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}
