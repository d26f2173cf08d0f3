// Package testenv gives tests their real services: PostgreSQL and Kafka.
//
// Each service comes from an environment variable (DATABASE_URL,
// KAFKA_BROKERS, ESDB_URL) pointing at a service that already runs. Two
// ways set them: `eval "$(scripts/services.sh start)"` (no Docker), or
// `go -C scripts/containers run . -- go test ./...` (Docker containers
// through testcontainers-go, a module of its own so that this module does
// not require Docker's client). Without them the test is skipped with a
// hint naming both, or fails when ORCHESTRIX_REQUIRE_SERVICES=1 (the
// README's test command sets it: a skipped integration test there would be
// a test that cannot fail).
//
// Every test gets its own schema (Schema) and topics (Topic), dropped when
// it ends, so tests may run in parallel on one database and broker.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/internal/redact"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// RequireEnv is the variable that turns skips into failures.
const RequireEnv = "ORCHESTRIX_REQUIRE_SERVICES"

const hint = "run `eval \"$(scripts/services.sh start)\"` first, or with Docker `go -C scripts/containers run . -- go test ./...`"

func unavailable(t testing.TB, what string, err error) {
	t.Helper()
	err = redact.Error(err) // may quote DATABASE_URL
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s unavailable and %s=1: %v: %s", what, RequireEnv, err, hint)
	}
	t.Skipf("%s unavailable (%v): %s", what, err, hint)
}

// Required reports whether skipping an integration test is a failure.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// DatabaseURL returns DATABASE_URL, or skips (fails when required).
func DatabaseURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("DATABASE_URL")
	if u == "" {
		unavailable(t, "PostgreSQL", errors.New("DATABASE_URL is not set"))
	}
	return u
}

// Brokers returns the seed brokers of KAFKA_BROKERS, or skips (fails when
// required).
func Brokers(t testing.TB) []string {
	t.Helper()
	b := os.Getenv("KAFKA_BROKERS")
	if b == "" {
		unavailable(t, "Kafka", errors.New("KAFKA_BROKERS is not set"))
	}
	return strings.Split(b, ",")
}

// Pool returns a pool on the test database, closed when the test ends.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(DatabaseURL(t))
	if err != nil {
		t.Fatalf("parse DATABASE_URL: %v", redact.Error(err))
	}
	cfg.MaxConns = 24
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		unavailable(t, "PostgreSQL", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Name returns a unique lower-case name with the given prefix, usable as a
// schema, topic or group name.
func Name(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

// Schema returns a fresh schema name, dropped with everything in it when
// the test ends. It does not create the schema.
func Schema(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	name := Name("t")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE"); err != nil {
			t.Logf("drop schema %s: %v", name, err)
		}
	})
	return name
}

// Client returns a franz-go client on seeds with opts, closed when the
// test ends.
func Client(t testing.TB, seeds []string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(seeds...)}, opts...)...)
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// Topic creates a fresh topic with the given partitions on seeds and
// deletes it when the test ends.
func Topic(t testing.TB, seeds []string, partitions int32, configs map[string]*string) string {
	t.Helper()
	name := strings.ReplaceAll(Name("t"), "_", "-")
	TopicNamed(t, seeds, name, partitions, configs)
	return name
}

// TopicNamed creates the topic name (a group's dead-letter topic, say)
// and deletes it when the test ends. It returns once the topic is listed
// with its leaders (topics.Ensure), so the test can use it at once.
func TopicNamed(t testing.TB, seeds []string, name string, partitions int32, configs map[string]*string) {
	t.Helper()
	adm := kadm.NewClient(Client(t, seeds))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := topics.Spec{Name: name, Partitions: partitions, ReplicationFactor: 1, Configs: map[string]string{}}
	for k, v := range configs {
		if v != nil {
			spec.Configs[k] = *v
		}
	}
	if _, err := topics.Ensure(ctx, adm, spec); err != nil {
		unavailable(t, "Kafka", fmt.Errorf("create topic: %w", err))
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = adm.DeleteTopics(ctx, name)
	})
}
