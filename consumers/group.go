package consumers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"
)

// Group is a consumer-group runtime. Create it with New and call Run.
type Group struct {
	cfg    config
	topics []string
	group  string
	h      Handler
	cl     *kgo.Client
	log    *slog.Logger
	// chain places every consumed topic: origin topics and their retry
	// levels.
	chain map[string]chainPos
	// assignErr is an Assignable handler's failure, which stops Run.
	assignErr atomic.Pointer[assignError]
	// beat is when the poll loop last went round, in Unix nanoseconds
	// (see Heartbeat).
	beat atomic.Int64

	mu sync.Mutex
	// states holds the parking state per origin partition (ordered modes).
	states map[tp]*chainState
	// held keeps, per paused retry partition, the fetched records from
	// the first one not yet due on. The partition is paused (franz-go
	// then keeps its fetch position right after them) until they are
	// handled.
	held map[tp]*heldRecs
	// pending queues, per partition, progress to commit once the retry
	// records and dead letters its processing produced are acked.
	pending map[tp][]pendingCommit
	// retryCommit holds, per partition, progress whose commit failed (the
	// broker unreachable): committed with the next commit.
	retryCommit map[tp]*kgo.Record
	// inflight counts asynchronous commits not yet answered.
	inflight sync.WaitGroup
	// down is when the brokers became unreachable (zero: reachable);
	// downLogged when that was last logged.
	down, downLogged time.Time
	// inplace holds the history of records retried in place, by partition
	// and offset.
	inplace map[tp]map[int64]inPlace
	// processed and committed are, per partition, the offset after the
	// last record processed by a completed poll and the committed offset
	// (ordered modes: dead-letter markers wait for them).
	processed, committed map[tp]int64
	// slots are the attempt-deadline slots of the lanes now processing;
	// watching says the watchdog runs (see deadline.go).
	slotMu   sync.Mutex
	slots    map[*callSlot]struct{}
	watching bool
	wake     chan struct{}
}

// New returns a group named group reading topics from the seed brokers,
// after checking the whole configuration.
func New(seeds []string, group string, topics []string, h Handler, opts ...Option) (*Group, error) {
	cfg := defaultConfig(seeds)
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(group, topics, h); err != nil {
		return nil, err
	}
	log := cfg.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Group{cfg: cfg, topics: topics, group: group, h: h, log: log.With("group", group),
		chain: map[string]chainPos{}, states: map[tp]*chainState{}, held: map[tp]*heldRecs{}, pending: map[tp][]pendingCommit{},
		processed: map[tp]int64{}, committed: map[tp]int64{}, retryCommit: map[tp]*kgo.Record{}, inplace: map[tp]map[int64]inPlace{}}
	consume := append([]string(nil), topics...)
	for _, t := range topics {
		g.chain[t] = chainPos{origin: t}
		for l := 1; l <= len(cfg.policy.RetryDelays); l++ {
			rt := RetryTopic(t, group, l)
			g.chain[rt] = chainPos{origin: t, level: l}
			consume = append(consume, rt)
		}
	}
	kopts := []kgo.Opt{
		kgo.SeedBrokers(seeds...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(consume...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(cfg.startOffset),
		kgo.WithLogger(kslog.New(log)),
		kgo.OnPartitionsAssigned(g.assigned),
		kgo.OnPartitionsRevoked(g.revoked),
		kgo.OnPartitionsLost(g.revoked),
		// The client produces only retry records, dead letters and
		// markers. A partition's commit waits for their acks, but commits
		// are asynchronous, and a retry waits a second or more anyway:
		// lingering gathers them into fewer, larger batches. Without it,
		// 1% of failing calls at 650k records/s sent a produce request
		// per few records, and the broker's work cost the group 10-25%
		// of its throughput (BenchmarkGoodput, 2us handler: 1%/0% goodput
		// 0.82-0.91 with no linger, 0.89-0.90 with 5ms, 0.98-1.02 with
		// 20ms). WithClientOpts can set another.
		kgo.ProducerLinger(20 * time.Millisecond),
		// In the classic group protocol the other members learn that a
		// rebalance started at their next heartbeat; at franz-go's 3 s a
		// rolling restart of 3 members paused processing for a p99 of
		// 0.9-2.75 s, at 500 ms for 0.23-0.58 s (internal/lifecycletest,
		// 600 commands/s). It costs two small requests a second per
		// member. WithClientOpts can set another.
		kgo.HeartbeatInterval(GroupHeartbeat),
		kgo.RecordPartitioner(chainPartitioner{
			manual: func(t string) bool { pos, ok := g.chain[t]; return ok && pos.level > 0 && cfg.policy.ordered() },
			def:    kgo.StickyKeyPartitioner(nil),
		}),
	}
	if len(cfg.policy.RetryDelays) > 0 {
		// Resuming a paused retry partition waits for the fetch in
		// flight: keep fetches short so due records start promptly.
		kopts = append(kopts, kgo.FetchMaxWait(500*time.Millisecond))
	}
	if cfg.policy.ordered() {
		// Range assignment gives partition p of a topic and of its retry
		// topics (equal partition counts) to the same member, so one
		// member owns a key's whole retry chain.
		kopts = append(kopts, kgo.Balancers(kgo.RangeBalancer()))
	}
	cl, err := kgo.NewClient(append(kopts, cfg.clientOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("consumers: new client: %w", err)
	}
	g.cl = cl
	g.stamp()
	return g, nil
}

// GroupHeartbeat is the group's Kafka heartbeat interval (franz-go's
// default is 3 s): how soon the other members join a rebalance when a
// member leaves or joins, which bounds the pause of a rolling restart.
const GroupHeartbeat = 500 * time.Millisecond

// HeartbeatInterval bounds a group's idle wait for records: a loop that
// finds nothing to do still goes round, and so beats, this often.
const HeartbeatInterval = time.Second

// Heartbeat returns when the group's poll loop last went round: a poll
// returned (with records or not) and its records were handled and
// committed, or the connect loop at start tried once more. An idle group
// beats at least every HeartbeatInterval, also while its brokers are
// unreachable (it keeps polling and probing them); a group whose handler
// is stuck (a call that never returns, a drain that never ends) stops
// beating. It makes the group a service.Heartbeater, so /livez sees a
// stuck loop, not a broker outage. Before Run it is the time of New.
func (g *Group) Heartbeat() time.Time { return time.Unix(0, g.beat.Load()) }

// stamp records a heartbeat now.
func (g *Group) stamp() { g.beat.Store(time.Now().UnixNano()) }

// Client returns the group's franz-go client (for producing dead letters
// or inspecting; do not poll it). Its producer lingers 20ms (see New)
// unless WithClientOpts says otherwise.
func (g *Group) Client() *kgo.Client { return g.cl }

// assigned asks an Assignable handler where the assigned partitions of
// the consumed topics start, and seeks there.
func (g *Group) assigned(ctx context.Context, cl *kgo.Client, added map[string][]int32) {
	a, ok := g.h.(Assignable)
	if !ok {
		return
	}
	seek := map[string]map[int32]kgo.EpochOffset{}
	for topic, parts := range added {
		if g.chain[topic].level > 0 {
			continue
		}
		offs, err := a.PartitionsAssigned(ctx, topic, parts)
		if err != nil {
			g.assignErr.CompareAndSwap(nil, &assignError{fmt.Errorf("consumers: start offsets of %s %v: %w", topic, parts, err)})
			return
		}
		for p, o := range offs {
			if seek[topic] == nil {
				seek[topic] = map[int32]kgo.EpochOffset{}
			}
			seek[topic][p] = kgo.EpochOffset{Epoch: -1, Offset: o}
		}
	}
	if len(seek) > 0 {
		cl.SetOffsets(seek)
	}
}

// assignError is the first error of an Assignable handler.
type assignError struct{ err error }

func (g *Group) revoked(ctx context.Context, cl *kgo.Client, lost map[string][]int32) {
	// Commit what was processed before the partitions go (retry records
	// and dead letters acked first).
	if err := g.commitReady(ctx, cl, true); err != nil {
		g.log.Error("commit before revoke", "err", err)
	}
	pa, ok := g.h.(PartitionAware)
	g.mu.Lock()
	resume := map[string][]int32{}
	for topic, parts := range lost {
		pos := g.chain[topic]
		for _, p := range parts {
			delete(g.states, tp{pos.origin, p})
			delete(g.processed, tp{topic, p})
			delete(g.committed, tp{topic, p})
			delete(g.retryCommit, tp{topic, p})
			delete(g.inplace, tp{topic, p})
			if _, w := g.held[tp{topic, p}]; w {
				// Dropped: the next owner fetches them again from the
				// committed offset.
				delete(g.held, tp{topic, p})
				resume[topic] = append(resume[topic], p)
			}
		}
	}
	g.mu.Unlock()
	if len(resume) > 0 {
		cl.ResumeFetchPartitions(resume)
	}
	for topic, parts := range lost {
		g.log.Info("partitions revoked", "topic", topic, "partitions", parts)
		if ok && g.chain[topic].level == 0 {
			g.partitionsRevoked(pa, topic, parts)
		}
	}
}

// Run consumes until ctx ends (then drains, commits and returns nil) or a
// record fails beyond the failure policy (then returns that error after
// committing everything before it). It first waits up to ConnectTimeout
// for a seed broker to answer and returns an error matching
// ErrUnreachable if none does. Losing the brokers later does not stop it
// (see the package documentation). It closes the client when it returns.
func (g *Group) Run(ctx context.Context) error {
	defer g.cl.Close()
	if err := g.connect(ctx); err != nil || ctx.Err() != nil {
		return err
	}
	if err := g.checkTopics(ctx); err != nil {
		return err
	}
	for {
		g.stamp()
		due, ok := g.nextDue()
		if g.hasPending() && (!ok || time.Until(due) > 10*time.Millisecond) {
			// Come back soon to commit progress waiting for acks.
			due, ok = time.Now().Add(10*time.Millisecond), true
		}
		if g.isDown() && (!ok || time.Until(due) > time.Second) {
			// Check every second whether the brokers are back.
			due, ok = time.Now().Add(time.Second), true
		}
		if beat := time.Now().Add(HeartbeatInterval); !ok || due.After(beat) {
			// A bounded wait: an idle loop still beats.
			due = beat
		}
		// Wake up when the first held retry record is due.
		pctx, cancel := context.WithDeadline(ctx, due)
		fetches := g.cl.PollRecords(pctx, g.cfg.maxPoll)
		cancel()
		if fetches.IsClientClosed() || ctx.Err() != nil {
			err := g.commitReady(ctx, g.cl, true)
			g.cl.AllowRebalance()
			g.log.Info("stopping: context done")
			return err
		}
		var connErr error
		fetches.EachError(func(topic string, p int32, err error) {
			switch {
			case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
			case isConnError(err):
				connErr = err
			default:
				g.log.Warn("fetch error", "topic", topic, "partition", p, "err", err)
			}
		})
		if connErr != nil {
			g.brokersDown(connErr)
		} else if g.isDown() {
			g.probe(ctx)
		}
		if ae := g.assignErr.Load(); ae != nil {
			// Nothing of the partitions was handled: stop without commit.
			g.cl.AllowRebalance()
			return ae.err
		}
		err := g.process(ctx, fetches)
		g.cl.AllowRebalance()
		if err != nil {
			return err
		}
		if n := fetches.NumRecords(); n > 0 && n < PollLingerBelow && g.cfg.linger > 0 {
			// A small poll: let more records arrive before the next one.
			select {
			case <-ctx.Done():
			case <-time.After(g.cfg.linger):
			}
		}
	}
}

// work is one partition's records to process in a poll.
type work struct {
	topic     string
	partition int32
	recs      []*kgo.Record
	hwm       int64
	skip      map[int64]bool
}

// process handles one poll's records and the held retry records now due:
// every partition concurrently, then commits each partition's last record
// below its first failure or first record not yet due, and pauses retry
// partitions until their next record is due.
func (g *Group) process(ctx context.Context, fetches kgo.Fetches) error {
	hctx, cancel := g.handlerContext(ctx)
	defer cancel()
	parts, need := g.gather(fetches)
	if err := g.loadStates(hctx, need); err != nil {
		// Nothing was processed or committed: stopping loses nothing.
		return err
	}
	out := pollResult{pause: map[string][]int32{}, resume: map[string][]int32{}}
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Go(func() { g.runPartition(hctx, p, &out) })
	}
	wg.Wait()
	return g.finishPoll(ctx, &out)
}

// handlerContext returns the context handlers get: it survives ctx by
// DrainTimeout.
func (g *Group) handlerContext(ctx context.Context) (context.Context, context.CancelFunc) {
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(g.cfg.drainTimeout, cancel)
		context.AfterFunc(hctx, func() { t.Stop() })
	})
	return hctx, func() { stop(); cancel() }
}

// gather returns a poll's work: the fetched partitions' records and the
// held retry records now due (records fetched for a partition still held
// queue behind its held records), and, in ordered modes, the origin
// partitions whose chain state must be loaded first.
func (g *Group) gather(fetches kgo.Fetches) (parts []work, need []tp) {
	seen := map[tp]bool{}
	add := func(w work) {
		parts = append(parts, w)
		if g.cfg.policy.ordered() {
			k := tp{g.chain[w.topic].origin, w.partition}
			if g.states[k] == nil && !seen[k] {
				seen[k] = true
				need = append(need, k)
			}
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	due := map[tp]*heldRecs{}
	for k, h := range g.held {
		if !h.due.After(now) {
			delete(g.held, k)
			due[k] = h
		}
	}
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		if len(p.Records) == 0 {
			return
		}
		k := tp{p.Topic, p.Partition}
		h := g.held[k]
		if h == nil {
			h = due[k]
		}
		if h != nil {
			// Fetched before the pause took effect: they queue behind
			// the held records.
			if last := h.recs[len(h.recs)-1].Offset; p.Records[0].Offset > last {
				h.recs = append(h.recs, p.Records...)
			}
			h.hwm = max(h.hwm, p.HighWatermark)
			return
		}
		add(work{p.Topic, p.Partition, p.Records, p.HighWatermark, nil})
	})
	for k, h := range due {
		add(work{k.topic, k.partition, h.recs, h.hwm, h.skip})
	}
	return parts, need
}

// pollResult gathers what a poll's partitions leave to do once all are
// processed.
type pollResult struct {
	mu     sync.Mutex
	commit []*kgo.Record
	errs   []error
	pause  map[string][]int32
	resume map[string][]int32
}

// runPartition processes p, reports its stats, and records in out what
// it leaves to commit, pause or resume, and the error that stops the
// group.
func (g *Group) runPartition(ctx context.Context, p work, out *pollResult) {
	start := time.Now()
	k := tp{p.topic, p.partition}
	res := g.partition(ctx, p)
	if res.err != nil {
		// The group stops: let what can be committed land.
		_ = res.fl.wait()
	}
	done := g.enqueueCommit(k, res.done, res.fl)
	st := res.st
	st.Topic, st.Partition, st.Duration = p.topic, p.partition, time.Since(start)
	st.Lag = p.hwm - (p.recs[len(p.recs)-1].Offset + 1)
	if g.cfg.onStats != nil {
		g.callback("WithStats", func() { g.cfg.onStats(st) })
	}
	out.mu.Lock()
	defer out.mu.Unlock()
	if res.err == nil {
		next := p.recs[len(p.recs)-1].Offset + 1
		if res.held != nil {
			next = res.held.recs[0].Offset
		}
		g.mu.Lock()
		g.processed[k] = max(g.processed[k], next)
		if s := g.states[k]; s != nil && g.chain[p.topic].level == 0 {
			s.originNext = max(s.originNext, next)
			s.sweep(s.originNext)
		}
		g.mu.Unlock()
	}
	if done != nil {
		out.commit = append(out.commit, done)
	}
	if res.held != nil {
		res.held.hwm = p.hwm
		g.mu.Lock()
		g.held[k] = res.held
		g.mu.Unlock()
		out.pause[p.topic] = append(out.pause[p.topic], p.partition)
	} else if g.chain[p.topic].level > 0 {
		out.resume[p.topic] = append(out.resume[p.topic], p.partition)
	}
	if res.err != nil {
		out.errs = append(out.errs, res.err)
	}
}

// finishPoll pauses and resumes the retry partitions out names and
// commits the poll's progress with what became ready meanwhile.
func (g *Group) finishPoll(ctx context.Context, out *pollResult) error {
	if len(out.pause) > 0 {
		g.cl.PauseFetchPartitions(out.pause)
	}
	if len(out.resume) > 0 {
		g.cl.ResumeFetchPartitions(out.resume)
	}
	errs := out.errs
	ready, err := g.readyCommits(len(errs) > 0)
	if err != nil {
		errs = append(errs, err)
	}
	commit := append(out.commit, ready...)
	if err := g.commit(ctx, commit, len(errs) > 0); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
