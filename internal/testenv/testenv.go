// Package testenv gives tests their real services: PostgreSQL and Kafka.
//
// Each service is found in this order:
//  1. an environment variable (DATABASE_URL, KAFKA_BROKERS, ESDB_URL)
//     pointing at a service that already runs (scripts/services.sh sets
//     them);
//  2. testcontainers-go, when a Docker daemon answers (one container per
//     test binary, reaped by testcontainers when the binary ends);
//  3. otherwise the test is skipped with a hint, or fails when
//     ORCHESTRIX_REQUIRE_SERVICES=1 (the README's test command sets it: a
//     skipped integration test there would be a test that cannot fail).
//
// Every test gets its own schema (Schema) and topics (Topic), dropped when
// it ends, so tests may run in parallel on one database and broker.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/orchestrix/orchestrix/internal/redact"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// RequireEnv is the variable that turns skips into failures.
const RequireEnv = "ORCHESTRIX_REQUIRE_SERVICES"

const hint = "run `eval \"$(scripts/services.sh start)\"` first, or start Docker for testcontainers"

func unavailable(t testing.TB, what string, err error) {
	t.Helper()
	err = redact.Error(err) // may quote DATABASE_URL
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s unavailable and %s=1: %v", what, RequireEnv, err)
	}
	t.Skipf("%s unavailable (%v): %s", what, err, hint)
}

// Required reports whether skipping an integration test is a failure.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

type lazy struct {
	once sync.Once
	val  string
	err  error
}

var (
	pgContainer    lazy
	kafkaContainer lazy
)

func dockerAvailable() bool {
	if os.Getenv("DOCKER_HOST") != "" {
		return true
	}
	_, err := os.Stat("/var/run/docker.sock")
	return err == nil
}

// DatabaseURL returns a PostgreSQL URL, or skips (fails when required).
func DatabaseURL(t testing.TB) string {
	t.Helper()
	if u := os.Getenv("DATABASE_URL"); u != "" {
		return u
	}
	if !dockerAvailable() {
		unavailable(t, "PostgreSQL", fmt.Errorf("DATABASE_URL is not set and Docker is not available"))
	}
	pgContainer.once.Do(func() {
		ctx := context.Background()
		c, err := tcpostgres.Run(ctx, "postgres:15-alpine",
			tcpostgres.WithDatabase("orchestrix"), tcpostgres.WithUsername("orchestrix"), tcpostgres.WithPassword("orchestrix"),
			tcpostgres.BasicWaitStrategies())
		if err != nil {
			pgContainer.err = err
			return
		}
		pgContainer.val, pgContainer.err = c.ConnectionString(ctx, "sslmode=disable")
	})
	if pgContainer.err != nil {
		unavailable(t, "PostgreSQL (testcontainers)", pgContainer.err)
	}
	return pgContainer.val
}

// Brokers returns Kafka seed brokers, or skips (fails when required).
func Brokers(t testing.TB) []string {
	t.Helper()
	if b := os.Getenv("KAFKA_BROKERS"); b != "" {
		return strings.Split(b, ",")
	}
	if !dockerAvailable() {
		unavailable(t, "Kafka", fmt.Errorf("KAFKA_BROKERS is not set and Docker is not available"))
	}
	kafkaContainer.once.Do(func() {
		ctx := context.Background()
		kafkaContainer.val, kafkaContainer.err = startKafkaContainer(ctx)
	})
	if kafkaContainer.err != nil {
		unavailable(t, "Kafka (testcontainers)", kafkaContainer.err)
	}
	return strings.Split(kafkaContainer.val, ",")
}

// dockerKafkaPort is the fixed host port of the shared Kafka container.
// A fixed port lets the broker advertise an address that works from the
// host; test binaries of one `go test` run share the container by name.
const dockerKafkaPort = "29092"

func startKafkaContainer(ctx context.Context) (string, error) {
	req := testcontainers.GenericContainerRequest{
		Reuse:   true,
		Started: true,
		ContainerRequest: testcontainers.ContainerRequest{
			Name:         "orchestrix-test-kafka",
			Image:        "apache/kafka:4.1.0",
			ExposedPorts: []string{"9092/tcp"},
			Env: map[string]string{
				"KAFKA_NODE_ID":                                  "1",
				"KAFKA_PROCESS_ROLES":                            "broker,controller",
				"KAFKA_LISTENERS":                                "PLAINTEXT://:9092,CONTROLLER://:9093",
				"KAFKA_ADVERTISED_LISTENERS":                     "PLAINTEXT://127.0.0.1:" + dockerKafkaPort,
				"KAFKA_CONTROLLER_LISTENER_NAMES":                "CONTROLLER",
				"KAFKA_LISTENER_SECURITY_PROTOCOL_MAP":           "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
				"KAFKA_CONTROLLER_QUORUM_VOTERS":                 "1@localhost:9093",
				"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":         "1",
				"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
				"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR":            "1",
				"KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS":         "0",
				"KAFKA_AUTO_CREATE_TOPICS_ENABLE":                "false",
			},
			HostConfigModifier: func(hc *container.HostConfig) {
				port, _ := network.ParsePort("9092/tcp")
				hc.PortBindings = network.PortMap{port: {{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: dockerKafkaPort}}}
			},
			WaitingFor: wait.ForLog("Kafka Server started").WithStartupTimeout(2 * time.Minute),
		},
	}
	if _, err := testcontainers.GenericContainer(ctx, req); err != nil {
		return "", err
	}
	return "127.0.0.1:" + dockerKafkaPort, nil
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
