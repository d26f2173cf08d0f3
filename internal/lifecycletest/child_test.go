package lifecycletest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/redact"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/service"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The child process's environment: childEnv selects the processor mode of
// the test binary; the others configure it.
const (
	childEnv    = "LIFECYCLE_CHILD"
	envSchema   = "LIFECYCLE_SCHEMA"
	envContext  = "LIFECYCLE_CONTEXT"
	envMember   = "LIFECYCLE_MEMBER"
	envVariant  = "LIFECYCLE_VARIANT"
	envShutdown = "LIFECYCLE_SHUTDOWN"
	envGate     = "LIFECYCLE_GATE"
	envLog      = "LIFECYCLE_LOG" // debug: the child logs franz-go's debug lines
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "processor" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

// childEvent is one line the child writes to stdout for the test.
type childEvent struct {
	Ev   string `json:"ev"`             // listen, handled, drained, exit
	Addr string `json:"addr,omitempty"` // listen: the health address
	Us   int64  `json:"us,omitempty"`   // drained: the processor's drain, µs
	Err  string `json:"err,omitempty"`  // exit: service.Run's error
}

var stdoutMu sync.Mutex

func emit(e childEvent) {
	b, _ := json.Marshal(e)
	stdoutMu.Lock()
	defer stdoutMu.Unlock()
	fmt.Fprintln(os.Stdout, string(b))
}

// classicHeartbeat is franz-go's default heartbeat interval, which
// consumers used before it set consumers.GroupHeartbeat (500ms): the
// rolling restart measures both.
const classicHeartbeat = 3 * time.Second

// variantOpts returns the group options of a variant the rolling restart
// compares, passed to the processor's group through
// consumers.WithClientOpts. member names the process for static
// membership.
func variantOpts(name, member string) ([]kgo.Opt, error) {
	static := []kgo.Opt{kgo.InstanceID(member), kgo.SessionTimeout(15 * time.Second)}
	switch name {
	case "", "default":
		// consumers' defaults: franz-go's cooperative-sticky balancer,
		// 45s session, a consumers.GroupHeartbeat (500ms) heartbeat,
		// leave the group on close.
		return nil, nil
	case "heartbeat-3s":
		// franz-go's default heartbeat: the other members notice a
		// rebalance up to 3s late.
		return []kgo.Opt{kgo.HeartbeatInterval(classicHeartbeat)}, nil
	case "static":
		// Static membership: a restarted member with the same instance
		// ID takes its partitions back without a rebalance if it is back
		// within the session timeout (franz-go makes a restarted leader
		// rebalance once).
		return static, nil
	case "static-3s":
		return append(static, kgo.HeartbeatInterval(classicHeartbeat)), nil
	case "eager":
		// Eager range assignment, what consumers picks for ordered retry
		// policies: every rebalance revokes every partition.
		return []kgo.Opt{kgo.Balancers(kgo.RangeBalancer())}, nil
	case "kip848":
		// KIP-848 consumer groups (with consumers' cooperative-sticky
		// balancer, the broker's "uniform" assignor): the broker assigns;
		// members heartbeat at the broker's
		// group.consumer.heartbeat.interval.ms (5s by default, and its
		// minimum).
		return []kgo.Opt{kgo.ServerSideBalancer()}, nil
	case "kip848-static":
		return []kgo.Opt{kgo.ServerSideBalancer(), kgo.InstanceID(member)}, nil
	}
	return nil, fmt.Errorf("unknown variant %q", name)
}

// runChild runs the account processor under service.Run until SIGTERM and
// returns the process's exit code: 0 when service.Run returned nil.
func runChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	level := slog.LevelWarn
	if os.Getenv(envLog) == "debug" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	err := redact.Error(serve(ctx, log)) // may quote DATABASE_URL
	if err != nil {
		log.Error("service", "err", err)
		emit(childEvent{Ev: "exit", Err: err.Error()})
		return 1
	}
	emit(childEvent{Ev: "exit"})
	return 0
}

func serve(ctx context.Context, log *slog.Logger) error {
	bound, err := time.ParseDuration(os.Getenv(envShutdown))
	if err != nil {
		return fmt.Errorf("%s: %w", envShutdown, err)
	}
	member := os.Getenv(envMember)
	vopts, err := variantOpts(os.Getenv(envVariant), member)
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := postgres.New(ctx, pool, postgres.WithSchema(os.Getenv(envSchema)))
	if err != nil {
		return err
	}
	seeds := strings.Split(os.Getenv("KAFKA_BROKERS"), ",")
	bc := os.Getenv(envContext)
	reg := codec.NewRegistry()
	if err := testdomain.Register(reg); err != nil {
		return err
	}
	agg, err := testdomain.NewAggregate(aggregates.SnapshotEvery(100))
	if err != nil {
		return err
	}
	repo, err := aggregates.NewRepository(agg, store, reg, "/"+bc)
	if err != nil {
		return err
	}
	cl, err := producers.NewClient(seeds)
	if err != nil {
		return err
	}
	defer cl.Close()
	proc, err := aggregates.NewProcessor(repo, aggregates.WithOutcomes(cl, topics.Outcomes(bc)), aggregates.WithProcessorLogger(log))
	if err != nil {
		return err
	}
	h := &notifying{Processor: proc, first: func() { emit(childEvent{Ev: "handled"}) }}
	g, err := consumers.New(seeds, bc+"-aggregates", []string{topics.Commands(bc)}, h,
		consumers.WithLogger(log), consumers.DrainTimeout(bound*8/10),
		consumers.WithClientOpts(append([]kgo.Opt{kgo.ClientID(member)}, vopts...)...))
	if err != nil {
		return err
	}
	workers := []service.Worker{service.Named("processor", timed{g})}
	if gate := os.Getenv(envGate); gate != "" {
		workers = append(workers, service.Named("gate", service.WorkerFunc(func(ctx context.Context) error {
			<-ctx.Done()
			waitGate(gate, bound/2)
			return nil
		})))
	}
	return service.Run(ctx, service.Options{
		ShutdownTimeout: bound,
		Addr:            "127.0.0.1:0",
		Ready: []service.Check{
			{Name: "kafka", Check: func(ctx context.Context) error { return cl.Ping(ctx) }},
			{Name: "postgres", Check: func(ctx context.Context) error { return pool.Ping(ctx) }},
		},
		OnListen: func(addr string) { emit(childEvent{Ev: "listen", Addr: addr}) },
	}, workers...)
}

// waitGate holds the shutdown open until the test has probed it (the file
// exists) or d passed, so that the test's probes of /readyz and /livez
// during the shutdown do not depend on the drain being slower than they.
func waitGate(file string, d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(file); err == nil {
			return
		}
	}
}

// timed runs the group and reports how long its drain took after the
// shutdown began; it keeps the group's Heartbeat for /livez.
type timed struct{ g *consumers.Group }

func (t timed) Run(ctx context.Context) error {
	var stopped time.Time
	done, fin := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(fin)
		select {
		case <-ctx.Done():
			stopped = time.Now()
		case <-done:
		}
	}()
	err := t.g.Run(ctx)
	close(done)
	<-fin
	if ctx.Err() != nil && !stopped.IsZero() {
		emit(childEvent{Ev: "drained", Us: time.Since(stopped).Microseconds()})
	}
	return err
}

func (t timed) Heartbeat() time.Time { return t.g.Heartbeat() }

// notifying tells the test when the member handled its first batch: it
// has joined the group and owns partitions.
type notifying struct {
	*aggregates.Processor[testdomain.Ledger]
	once  sync.Once
	first func()
}

func (n *notifying) HandleBatch(ctx context.Context, recs []*kgo.Record) []error {
	errs := n.Processor.HandleBatch(ctx, recs)
	n.once.Do(n.first)
	return errs
}
