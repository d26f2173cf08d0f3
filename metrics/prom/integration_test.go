package prom_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/metrics/prom"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The relay child: a relay process exporting its metrics over HTTP.
const (
	childEnv       = "ORCHESTRIX_PROM_RELAY_CHILD"
	childSchemaEnv = "ORCHESTRIX_PROM_CHILD_SCHEMA"
	childTopicEnv  = "ORCHESTRIX_PROM_CHILD_TOPIC"
	childLeaseEnv  = "ORCHESTRIX_PROM_CHILD_LEASE"
	childAddrEnv   = "ORCHESTRIX_PROM_CHILD_ADDR_FILE"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(relayChild())
	}
	os.Exit(m.Run())
}

// relayChild runs relay instance "a" until SIGTERM, serving /metrics on
// a free port whose address it writes to the file childAddrEnv names.
func relayChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	fail := func(err error) int { log.Error("relay child", "err", err); return 1 }
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	store, err := postgres.New(ctx, pool, postgres.WithSchema(os.Getenv(childSchemaEnv)))
	if err != nil {
		return fail(err)
	}
	lease, err := time.ParseDuration(os.Getenv(childLeaseEnv))
	if err != nil {
		return fail(err)
	}
	reg := prometheus.NewRegistry()
	rep := prom.NewRelayReports()
	r, err := outbox.NewRelay(store, strings.Split(os.Getenv("KAFKA_BROKERS"), ","), outbox.ToTopic(os.Getenv(childTopicEnv)),
		outbox.Instance("a"), outbox.Lease(lease), outbox.WithLogger(log),
		outbox.ReportStats(200*time.Millisecond, rep.Observe), outbox.OnCommit(rep.Commit))
	if err != nil {
		return fail(err)
	}
	reg.MustRegister(prom.Relay(r, rep))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	if err := os.WriteFile(os.Getenv(childAddrEnv), []byte(ln.Addr().String()), 0o600); err != nil {
		return fail(err)
	}
	if err := r.Run(ctx); err != nil {
		return fail(err)
	}
	return 0
}

// scrape reads one series' value from a /metrics endpoint (-1 when it is
// absent).
func scrape(t testing.TB, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metrics of %s: %q: %v", addr, line, err)
		}
		return v
	}
	return -1
}

// TestRelayFailoverIntegration: two relays of one topic elected through
// PostgreSQL, the leader a child process exporting /metrics, the standby
// in this process. While events are appended, the leader is stopped: the
// standby's leader gauge flips to 1 within the lease, and the backlog
// drains again. With SIGSTOP (a hung leader whose session stays open) the
// standby waits out the lease, and the backlog (RelayBacklog, exported
// here, outside any relay) must grow meanwhile; with SIGKILL the session
// ends at once and the takeover is quicker than the lease, so the backlog
// may not have grown measurably: its peak is logged.
func TestRelayFailoverIntegration(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGSTOP, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) { relayFailover(t, sig) })
	}
}

func relayFailover(t *testing.T, sig syscall.Signal) {
	ctx := t.Context()
	pool := testenv.Pool(t)
	seeds := testenv.Brokers(t)
	store := pgtest.Store(t, pool)
	topic := testenv.Topic(t, seeds, 2, nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
		if err == nil {
			defer cl.Close()
			_, _ = kadm.NewClient(cl).DeleteTopics(ctx, topic+outbox.CheckpointSuffix, topic+outbox.DeadLetterSuffix)
		}
	})
	const lease = 3 * time.Second

	// The leader: a child process.
	addrFile := filepath.Join(t.TempDir(), "addr")
	logFile, err := os.Create(filepath.Join(t.TempDir(), "child.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	testenv.OwnProcessGroup(cmd) // stays stopped when SIGSTOPped, whatever happens to the test's own group
	cmd.Env = append(os.Environ(), childEnv+"=1", childSchemaEnv+"="+store.Schema(), childTopicEnv+"="+topic,
		childLeaseEnv+"="+lease.String(), childAddrEnv+"="+addrFile)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("child log:\n%s", b)
		}
	})

	// Events keep coming, about 200 a second.
	var appended atomic.Int64
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
			}
			e := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "T", Source: "/f", Time: time.Now()}, ContentType: "application/json", Data: []byte(`{}`)}
			if _, err := store.Append(loadCtx, fmt.Sprintf("s-%d", i%50), stores.Any, []orchestrix.Event{e}); err == nil {
				appended.Add(1)
			}
		}
	}()

	var addr string
	waitFor(t, 30*time.Second, "the child's metrics address", func() bool {
		b, err := os.ReadFile(addrFile)
		addr = string(b)
		return err == nil && addr != ""
	})
	waitFor(t, 60*time.Second, "the child to lead and publish", func() bool {
		return scrape(t, addr, "orchestrix_relay_leader") == 1 && scrape(t, addr, "orchestrix_relay_published_events_total") > 0
	})

	// The standby, here, and the backlog seen from here.
	reg := prometheus.NewRegistry()
	rep := prom.NewRelayReports()
	standby, err := outbox.NewRelay(store, seeds, outbox.ToTopic(topic), outbox.Instance("b"), outbox.Lease(lease),
		outbox.ReportStats(200*time.Millisecond, rep.Observe), outbox.OnCommit(rep.Commit))
	if err != nil {
		t.Fatal(err)
	}
	// Two registries: the relay's series answer at once, the backlog's
	// scrape takes about 0.4s; the flip is timed on the fast one.
	reg.MustRegister(prom.Relay(standby, rep))
	backlogReg := prometheus.NewRegistry()
	backlogReg.MustRegister(prom.RelayBacklog(store, topic, seeds))
	runCtx, stopStandby := context.WithCancel(ctx)
	standbyDone := make(chan error, 1)
	go func() { standbyDone <- standby.Run(runCtx) }()
	defer func() {
		stopStandby()
		if err := <-standbyDone; err != nil {
			t.Errorf("standby Run: %v", err)
		}
	}()
	time.Sleep(time.Second) // the standby campaigns
	if v := gaugeValue(t, reg, "orchestrix_relay_leader"); v != 0 {
		t.Fatalf("standby leader gauge = %v while the child leads", v)
	}
	waitFor(t, 30*time.Second, "a small backlog while the child leads", func() bool {
		return gaugeValue(t, backlogReg, "orchestrix_relay_backlog_events") < 100
	})
	before := gaugeValue(t, backlogReg, "orchestrix_relay_backlog_events")
	wantSeries := []string{"orchestrix_relay_backlog_events{topic}", "orchestrix_relay_backlog_oldest_seconds{topic}",
		"orchestrix_scrape_errors_total{collector,target}"}
	if got := seriesOf(t, backlogReg, "orchestrix_"); !slices.Equal(got, wantSeries) {
		t.Fatalf("backlog series %v, want %v", got, wantSeries)
	}
	if errs := gaugeValue(t, backlogReg, "orchestrix_scrape_errors_total"); errs != 0 {
		t.Fatalf("backlog scrape errors: %v", errs)
	}

	// Stop the leader.
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	if sig == syscall.SIGKILL {
		<-exited
	}
	killed := time.Now()
	// The backlog, scraped in the background until the flip.
	var maxBacklog, maxOldest float64
	flip := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-flip:
				return
			default:
			}
			mfs, err := backlogReg.Gather()
			if err != nil {
				continue
			}
			for _, mf := range mfs {
				switch mf.GetName() {
				case "orchestrix_relay_backlog_events":
					maxBacklog = max(maxBacklog, mf.GetMetric()[0].GetGauge().GetValue())
				case "orchestrix_relay_backlog_oldest_seconds":
					maxOldest = max(maxOldest, mf.GetMetric()[0].GetGauge().GetValue())
				}
			}
		}
	}()
	var flipped time.Duration
	for flipped == 0 {
		if time.Since(killed) > lease+10*time.Second {
			close(flip)
			<-sampled
			t.Fatalf("standby leader gauge still 0 %s after the signal (lease %s)", time.Since(killed).Round(time.Millisecond), lease)
		}
		if gaugeValue(t, reg, "orchestrix_relay_leader") == 1 {
			flipped = time.Since(killed)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(flip)
	<-sampled
	t.Logf("leader got %s: standby leader gauge flipped after %s (lease %s); backlog %v events before, peaked at %v (oldest %.2fs) before the flip",
		sig, flipped.Round(time.Millisecond), lease, before, maxBacklog, maxOldest)
	if flipped > lease+2*time.Second {
		t.Errorf("the standby took %s to lead, more than the lease %s (+2s)", flipped, lease)
	}
	if sig == syscall.SIGSTOP && (maxBacklog < before+100 || maxOldest < 1) {
		t.Errorf("backlog did not grow while the leader hung: %v -> %v events, oldest %.2fs", before, maxBacklog, maxOldest)
	}
	waitFor(t, 60*time.Second, "the new leader to drain the backlog", func() bool {
		return gaugeValue(t, backlogReg, "orchestrix_relay_backlog_events") < 100 &&
			gaugeValue(t, reg, "orchestrix_relay_published_events_total") > 0
	})
	stopLoad()
	<-loadDone
	t.Logf("%d events appended", appended.Load())
}

// TestRelayBacklogNoRelayIntegration: before any relay has run there is
// no checkpoint topic, and every event is backlog — the case the series
// exists to catch — not a scrape error.
func TestRelayBacklogNoRelayIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	seeds := testenv.Brokers(t)
	store := pgtest.Store(t, pool)
	topic := testenv.Topic(t, seeds, 1, nil)
	const n = 25
	for i := range n {
		e := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "T", Source: "/f", Time: time.Now()}, ContentType: "application/json", Data: []byte(`{}`)}
		if _, err := store.Append(t.Context(), fmt.Sprintf("s-%d", i), stores.NoStream, []orchestrix.Event{e}); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prom.RelayBacklog(store, topic, seeds))
	if v := gaugeValue(t, reg, "orchestrix_relay_backlog_events"); v != n {
		t.Errorf("backlog with no relay ever run = %v, want %d", v, n)
	}
	if v := gaugeValue(t, reg, "orchestrix_scrape_errors_total"); v != 0 {
		t.Errorf("scrape errors = %v, want 0", v)
	}
}
