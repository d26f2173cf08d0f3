package prom

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
)

// KafkaClient is a franz-go hook exporting one client's metrics through
// kprom (github.com/twmb/franz-go/plugin/kprom) under the namespace
// orchestrix_kafka, labelled client="<name>": connects, disconnects,
// bytes and errors per broker (node_id), produce and fetch bytes per topic,
// buffered records and bytes. Create one per client (a group, a relay, a
// producer) and pass it with kgo.WithHooks, e.g.
// consumers.WithClientOpts(kgo.WithHooks(k)).
//
// Runtimes that open short-lived side clients with the same options (the
// relay reads its checkpoint with one) share it safely: only the first
// client builds the series, later clients add to them, and closing a
// client removes nothing.
type KafkaClient struct {
	m     *kprom.Metrics
	once  sync.Once
	ready atomic.Bool
}

// NewKafkaClient registers a client's metrics, labelled client=name, with
// reg. Two clients of one registry need two names.
func NewKafkaClient(reg prometheus.Registerer, name string) (*KafkaClient, error) {
	k := &KafkaClient{m: kprom.NewMetrics("orchestrix_kafka", kprom.Registry(nil),
		kprom.WithStaticLabel(prometheus.Labels{"client": name}))}
	if err := reg.Register(k); err != nil {
		return nil, err
	}
	return k, nil
}

// Describe implements prometheus.Collector. It describes nothing: the
// series exist once the client does (an unchecked collector).
func (k *KafkaClient) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (k *KafkaClient) Collect(ch chan<- prometheus.Metric) {
	if k.ready.Load() {
		k.m.Collect(ch)
	}
}

// OnNewClient implements kgo.HookNewClient.
func (k *KafkaClient) OnNewClient(cl *kgo.Client) {
	k.once.Do(func() {
		k.m.OnNewClient(cl)
		k.ready.Store(true)
	})
}

// OnBrokerConnect implements kgo.HookBrokerConnect.
func (k *KafkaClient) OnBrokerConnect(meta kgo.BrokerMetadata, d time.Duration, c net.Conn, err error) {
	if k.ready.Load() {
		k.m.OnBrokerConnect(meta, d, c, err)
	}
}

// OnBrokerDisconnect implements kgo.HookBrokerDisconnect.
func (k *KafkaClient) OnBrokerDisconnect(meta kgo.BrokerMetadata, c net.Conn) {
	if k.ready.Load() {
		k.m.OnBrokerDisconnect(meta, c)
	}
}

// OnBrokerThrottle implements kgo.HookBrokerThrottle.
func (k *KafkaClient) OnBrokerThrottle(meta kgo.BrokerMetadata, d time.Duration, after bool) {
	if k.ready.Load() {
		k.m.OnBrokerThrottle(meta, d, after)
	}
}

// OnBrokerRead implements kgo.HookBrokerRead.
func (k *KafkaClient) OnBrokerRead(meta kgo.BrokerMetadata, key int16, n int, wait, read time.Duration, err error) {
	if k.ready.Load() {
		k.m.OnBrokerRead(meta, key, n, wait, read, err)
	}
}

// OnBrokerWrite implements kgo.HookBrokerWrite.
func (k *KafkaClient) OnBrokerWrite(meta kgo.BrokerMetadata, key int16, n int, wait, write time.Duration, err error) {
	if k.ready.Load() {
		k.m.OnBrokerWrite(meta, key, n, wait, write, err)
	}
}

// OnBrokerE2E implements kgo.HookBrokerE2E.
func (k *KafkaClient) OnBrokerE2E(meta kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	if k.ready.Load() {
		k.m.OnBrokerE2E(meta, key, e2e)
	}
}

// OnProduceBatchWritten implements kgo.HookProduceBatchWritten.
func (k *KafkaClient) OnProduceBatchWritten(meta kgo.BrokerMetadata, topic string, p int32, m kgo.ProduceBatchMetrics) {
	if k.ready.Load() {
		k.m.OnProduceBatchWritten(meta, topic, p, m)
	}
}

// OnFetchBatchRead implements kgo.HookFetchBatchRead.
func (k *KafkaClient) OnFetchBatchRead(meta kgo.BrokerMetadata, topic string, p int32, m kgo.FetchBatchMetrics) {
	if k.ready.Load() {
		k.m.OnFetchBatchRead(meta, topic, p, m)
	}
}

var (
	_ kgo.HookNewClient           = (*KafkaClient)(nil)
	_ kgo.HookBrokerConnect       = (*KafkaClient)(nil)
	_ kgo.HookBrokerDisconnect    = (*KafkaClient)(nil)
	_ kgo.HookBrokerThrottle      = (*KafkaClient)(nil)
	_ kgo.HookBrokerRead          = (*KafkaClient)(nil)
	_ kgo.HookBrokerWrite         = (*KafkaClient)(nil)
	_ kgo.HookBrokerE2E           = (*KafkaClient)(nil)
	_ kgo.HookProduceBatchWritten = (*KafkaClient)(nil)
	_ kgo.HookFetchBatchRead      = (*KafkaClient)(nil)
)
