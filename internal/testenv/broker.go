package testenv

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// KafkaProcess is a single-node KRaft Kafka that one test starts for itself,
// from the jars scripts/services.sh caches, on free loopback ports and a
// data directory of its own, so the test can kill -9 and restart it
// without disturbing the shared broker other tests use.
type KafkaProcess struct {
	java, libs, dir, props, log4j string
	port                          int
	cmd                           *exec.Cmd
	done                          chan struct{}
}

// kafkaLibs returns the directory of the cached Kafka jars, or why there
// is none.
func kafkaLibs() (string, error) {
	dir := os.Getenv("ORCHESTRIX_SERVICES_DIR")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(home, ".cache", "orchestrix", "services")
	}
	libs := filepath.Join(dir, "kafka-libs")
	if m, _ := filepath.Glob(filepath.Join(libs, ".complete-kafka-*")); len(m) == 0 {
		return "", fmt.Errorf("no complete Kafka jar cache in %s (scripts/services.sh start fills it)", libs)
	}
	return libs, nil
}

func findJava() (string, error) {
	if h := os.Getenv("JAVA_HOME"); h != "" {
		if j := filepath.Join(h, "bin", "java"); fileExists(j) {
			return j, nil
		}
	}
	return exec.LookPath("java")
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// OwnBroker formats and starts the test's broker; it is killed when
// the test ends. Without Java or the jar cache the test is skipped, or
// fails under ORCHESTRIX_REQUIRE_SERVICES=1.
func OwnBroker(t *testing.T) *KafkaProcess {
	t.Helper()
	return ownBroker(t, brokerExtras{})
}

// brokerExtras are what a variant of the test's broker adds: listeners
// (name, protocol, port), server properties and arguments to the storage
// tool's format (SCRAM users).
type brokerExtras struct {
	listeners []extraListener
	props     string
	format    []string
}

type extraListener struct {
	name, protocol string
	port           int
}

func ownBroker(t *testing.T, extra brokerExtras) *KafkaProcess {
	t.Helper()
	libs, err := kafkaLibs()
	java, jerr := findJava()
	if err == nil && jerr != nil {
		err = fmt.Errorf("java not found: %w", jerr)
	}
	if err != nil {
		msg := "needs a Kafka broker of its own: " + err.Error()
		if os.Getenv(RequireEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	b := &KafkaProcess{java: java, libs: libs, dir: dir, port: freePort(t),
		props: filepath.Join(dir, "server.properties"), log4j: filepath.Join(dir, "log4j2.properties")}
	ctrl := freePort(t)
	listeners := fmt.Sprintf("PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d", b.port, ctrl)
	advertised := fmt.Sprintf("PLAINTEXT://127.0.0.1:%d", b.port)
	protocols := "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
	for _, l := range extra.listeners {
		listeners += fmt.Sprintf(",%s://127.0.0.1:%d", l.name, l.port)
		advertised += fmt.Sprintf(",%s://127.0.0.1:%d", l.name, l.port)
		protocols += "," + l.name + ":" + l.protocol
	}
	props := fmt.Sprintf(`process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:%[2]d
controller.listener.names=CONTROLLER
listeners=%[4]s
advertised.listeners=%[5]s
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=%[6]s
log.dirs=%[3]s
num.partitions=1
auto.create.topics.enable=false
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
broker.session.timeout.ms=2000
broker.heartbeat.interval.ms=500
num.network.threads=2
num.io.threads=2
`, b.port, ctrl, filepath.Join(dir, "data"), listeners, advertised, protocols) + extra.props
	log4j := fmt.Sprintf(`status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = %s
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%%d] %%p %%m (%%c)%%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
`, filepath.Join(dir, "kafka.log"))
	if err := os.WriteFile(b.props, []byte(props), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.log4j, []byte(log4j), 0o644); err != nil {
		t.Fatal(err)
	}
	// A cluster ID that starts with "-" reads as an option to the storage
	// tool's argument parser (one in 64 did): draw again.
	var id [16]byte
	clusterID := "-"
	for strings.HasPrefix(clusterID, "-") {
		_, _ = rand.Read(id[:])
		clusterID = base64.RawURLEncoding.EncodeToString(id[:])
	}
	format := exec.Command(java, b.jvmOpts("kafka.tools.StorageTool", append([]string{"format", "--standalone",
		"-t", clusterID, "-c", b.props}, extra.format...)...)...)
	if out, err := format.CombinedOutput(); err != nil {
		t.Fatalf("format the broker's data dir: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		b.Kill(t)
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "kafka.log"))
			lines := strings.Split(strings.TrimSpace(string(log)), "\n")
			t.Logf("last lines of the test's broker log:\n%s", strings.Join(lines[max(0, len(lines)-20):], "\n"))
		}
	})
	b.Start(t)
	return b
}

// jvmOpts keeps the JVM small and quick to start on a busy machine.
func (b *KafkaProcess) jvmOpts(main string, args ...string) []string {
	return append([]string{"-Xms256m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
		"-Djava.awt.headless=true", "-Dlog4j2.configurationFile=" + b.log4j, "-cp", b.libs + "/*", main}, args...)
}

// Seeds returns the broker's address.
func (b *KafkaProcess) Seeds() []string { return []string{fmt.Sprintf("127.0.0.1:%d", b.port)} }

// Start launches the broker (again, after Kill: same data) and waits until it answers metadata requests.
func (b *KafkaProcess) Start(t *testing.T) {
	t.Helper()
	out, err := os.OpenFile(filepath.Join(b.dir, "kafka.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	b.cmd = exec.Command(b.java, b.jvmOpts("kafka.Kafka", b.props)...)
	b.cmd.Stdout, b.cmd.Stderr = out, out
	began := time.Now()
	if err := b.cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("start the test's broker: %v", err)
	}
	b.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); out.Close(); close(done) }(b.cmd, b.done)

	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Seeds()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	for {
		select {
		case <-b.done:
			t.Fatalf("the test's broker exited during startup (see %s)", b.dir)
		default:
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		md, err := adm.BrokerMetadata(ctx)
		cancel()
		if err == nil && len(md.Brokers) == 1 && md.Controller >= 0 {
			break
		}
		if time.Since(began) > 90*time.Second {
			t.Fatalf("the test's broker did not answer within 90s: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("own broker on %s ready after %s", b.Seeds()[0], time.Since(began).Round(time.Millisecond))

}

// Kill ends the broker with SIGKILL (no clean shutdown) and waits for it.
func (b *KafkaProcess) Kill(t *testing.T) {
	t.Helper()
	if b.cmd == nil || b.cmd.Process == nil {
		return
	}
	select {
	case <-b.done:
		return
	default:
	}
	_ = b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
}
