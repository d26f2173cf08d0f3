package testenv

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

// FakeBrokers starts an in-process kfake cluster (one broker, no topic
// auto-creation) for fast unit tests and returns its address; the cluster
// stops when the test ends. It is not a substitute for the real broker in
// integration tests.
func FakeBrokers(t testing.TB) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// Broker names a broker a test runs on: the real one or kfake.
type Broker struct {
	Name  string
	Seeds func(testing.TB) []string
}

// Brokerages returns the fake broker and the real one, so one test body
// runs on both: t.Run(b.Name, ...). The real one skips (or fails when
// required) without KAFKA_BROKERS.
func Brokerages() []Broker {
	return []Broker{{"kfake", FakeBrokers}, {"kafka", Brokers}}
}
