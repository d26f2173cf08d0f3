package check

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestRelayProbesIntegration runs `orchestrix relay --listen` as the
// chart does and checks what its probes rely on: /livez reports the relay
// loop's heartbeat, /readyz PostgreSQL, and SIGTERM stops it cleanly well
// within the chart's grace period (30 s).
func TestRelayProbesIntegration(t *testing.T) {
	dsn := testenv.DatabaseURL(t)
	brokers := strings.Join(testenv.Brokers(t), ",")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "orchestrix")
	build := exec.Command("go", "build", "-o", bin, "./cmd/orchestrix")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	pool := openPool(t, dsn)
	sfx := suffix()
	schema, bc := "orx_probe_"+sfx, "probe"+sfx
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	})
	if _, err := postgres.Migrate(ctx, pool, schema); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if _, err := topics.Ensure(ctx, adm, topics.Spec{Name: topics.Events(bc), Partitions: 1, ReplicationFactor: 1}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = adm.DeleteTopics(context.Background(), topics.Events(bc), topics.Events(bc)+outbox.CheckpointSuffix)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var stdout, stderr bytes.Buffer
	relay := exec.Command(bin, "relay", "--database-url", dsn, "--brokers", brokers, "--schema", schema,
		"--context", bc, "--listen", addr, "--lease", "3s")
	relay.Stdout, relay.Stderr = &stdout, &stderr
	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = relay.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			_ = relay.Process.Kill()
			<-exited
		}
	}()

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get("/livez")
		if code == http.StatusOK && strings.Contains(body, `"relay":"running, heartbeat`) {
			t.Logf("/livez: %s", strings.TrimSpace(body))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/livez: %d %s; stderr:\n%s", code, body, stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, body := get("/readyz"); code != http.StatusOK || !strings.Contains(body, `"postgres":"ok"`) {
		t.Fatalf("/readyz: %d %s", code, body)
	}
	start := time.Now()
	if err := relay.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("exit after SIGTERM: %v; stderr:\n%s", waitErr, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("still running 20s after SIGTERM; stderr:\n%s", stderr.String())
	}
	took := time.Since(start)
	if !strings.Contains(stdout.String(), "relay stopped") {
		t.Errorf("stdout: %q", stdout.String())
	}
	t.Logf("stopped %s after SIGTERM (the chart gives the relay 30s)", took.Round(time.Millisecond))
}
