package main

import (
	"context"
	"net/netip"
	"strconv"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"
)

// startPostgres starts a PostgreSQL container with the database, role and
// password scripts/services.sh uses, and returns its URL. The container is
// returned even with an error, so the caller can remove it.
func startPostgres(ctx context.Context, image string) (testcontainers.Container, string, error) {
	c, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithDatabase("orchestrix"), tcpostgres.WithUsername("orchestrix"), tcpostgres.WithPassword("orchestrix"),
		// The tests run many concurrent writers and pools (services.sh raises
		// max_connections to 200 for the same reason).
		testcontainers.WithCmd("postgres", "-c", "max_connections=200"),
		tcpostgres.BasicWaitStrategies())
	if c == nil {
		return nil, "", err
	}
	if err != nil {
		return c, "", err
	}
	url, err := c.ConnectionString(ctx, "sslmode=disable")
	return c, url, err
}

// startKafka starts a single-node Kafka (broker and controller, KRaft) whose
// listener is published on 127.0.0.1:port and advertised as that address,
// with the settings scripts/services.sh writes (replication factors 1, no
// topic auto-creation, no initial rebalance delay), and returns the seed
// broker address.
func startKafka(ctx context.Context, image string, port int) (testcontainers.Container, string, error) {
	addr := "127.0.0.1:" + strconv.Itoa(port)
	req := testcontainers.GenericContainerRequest{
		Started: true,
		ContainerRequest: testcontainers.ContainerRequest{
			Image:        image,
			ExposedPorts: []string{"9092/tcp"},
			Env: map[string]string{
				"KAFKA_NODE_ID":                                  "1",
				"KAFKA_PROCESS_ROLES":                            "broker,controller",
				"KAFKA_LISTENERS":                                "PLAINTEXT://:9092,CONTROLLER://:9093",
				"KAFKA_ADVERTISED_LISTENERS":                     "PLAINTEXT://" + addr,
				"KAFKA_CONTROLLER_LISTENER_NAMES":                "CONTROLLER",
				"KAFKA_LISTENER_SECURITY_PROTOCOL_MAP":           "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
				"KAFKA_CONTROLLER_QUORUM_VOTERS":                 "1@localhost:9093",
				"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":         "1",
				"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
				"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR":            "1",
				"KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS":         "0",
				"KAFKA_AUTO_CREATE_TOPICS_ENABLE":                "false",
				"KAFKA_NUM_PARTITIONS":                           "1",
			},
			HostConfigModifier: func(hc *container.HostConfig) {
				p, _ := network.ParsePort("9092/tcp")
				hc.PortBindings = network.PortMap{p: {{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: strconv.Itoa(port)}}}
			},
			WaitingFor: wait.ForLog("Kafka Server started").WithStartupTimeout(2 * time.Minute),
		},
	}
	c, err := testcontainers.GenericContainer(ctx, req)
	return c, addr, err
}
