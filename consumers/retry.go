package consumers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// chainPos places a consumed topic in a retry chain: level 0 is the origin
// topic, level n its retry topic n.
type chainPos struct {
	origin string
	level  int
}

type tp struct {
	topic     string
	partition int32
}

// stateOf returns the loaded parking state of an origin partition.
func (g *Group) stateOf(origin string, p int32) *chainState {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.states[tp{origin, p}]
}

// loadStates rebuilds the parking state of origin partitions from their
// retry topics: the records from the group's committed offset to the end
// of each level's partition (see rebuild for copies a crash left behind,
// and dead-letter markers).
func (g *Group) loadStates(ctx context.Context, need []tp) error {
	if len(need) == 0 {
		return nil
	}
	levels := len(g.cfg.policy.RetryDelays)
	adm := kadm.NewClient(g.cl)
	var topics []string
	for _, n := range need {
		for l := 1; l <= levels; l++ {
			topics = append(topics, RetryTopic(n.topic, g.group, l))
		}
	}
	committed, err := adm.FetchOffsets(ctx, g.group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return fmt.Errorf("consumers: load parked keys: fetch offsets: %w", err)
	}
	starts, err := adm.ListStartOffsets(ctx, topics...)
	if err != nil {
		return fmt.Errorf("consumers: load parked keys: start offsets: %w", err)
	}
	ends, err := adm.ListEndOffsets(ctx, topics...)
	if err != nil {
		return fmt.Errorf("consumers: load parked keys: end offsets: %w", err)
	}
	consume := map[string]map[int32]kgo.Offset{}
	want := map[tp]int64{} // last offset to read
	copies := map[tp][]loadedCopy{}
	originNext := map[tp]int64{}
	for _, n := range need {
		if c, ok := committed.Lookup(n.topic, n.partition); ok && c.Err == nil {
			originNext[n] = c.At
		}
		for l := 1; l <= levels; l++ {
			t := RetryTopic(n.topic, g.group, l)
			end, ok := ends.Lookup(t, n.partition)
			if !ok || end.Err != nil {
				return fmt.Errorf("consumers: load parked keys: end offset of %s/%d: %v", t, n.partition, end.Err)
			}
			from := int64(0)
			if s, ok := starts.Lookup(t, n.partition); ok && s.Err == nil {
				from = s.Offset
			}
			if c, ok := committed.Lookup(t, n.partition); ok && c.Err == nil {
				g.mu.Lock()
				g.committed[tp{t, n.partition}] = max(g.committed[tp{t, n.partition}], c.At)
				g.mu.Unlock()
				from = max(from, c.At)
			}
			if end.Offset > from {
				if consume[t] == nil {
					consume[t] = map[int32]kgo.Offset{}
				}
				consume[t][n.partition] = kgo.NewOffset().At(from)
				want[tp{t, n.partition}] = end.Offset - 1
			}
		}
	}
	if len(consume) > 0 {
		opts := append([]kgo.Opt{kgo.SeedBrokers(g.cfg.seeds...)}, g.cfg.clientOpts...)
		opts = append(opts, kgo.ConsumePartitions(consume), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
		rd, err := kgo.NewClient(opts...)
		if err != nil {
			return fmt.Errorf("consumers: load parked keys: %w", err)
		}
		defer rd.Close()
		lctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		for len(want) > 0 {
			fs := rd.PollFetches(lctx)
			if lctx.Err() != nil {
				return fmt.Errorf("consumers: load parked keys: %d partitions unread: %w", len(want), lctx.Err())
			}
			fs.EachRecord(func(r *kgo.Record) {
				k := tp{r.Topic, r.Partition}
				last, ok := want[k]
				if !ok || r.Offset > last {
					return
				}
				pos := g.chain[r.Topic]
				o := tp{pos.origin, r.Partition}
				copies[o] = append(copies[o], loadedCopy{key: string(r.Key), level: pos.level, offset: r.Offset, m: readMeta(r, pos.origin)})
				if r.Offset == last {
					delete(want, k)
				}
			})
			// Transaction markers can hide the last offsets: stop a
			// partition once the reader's position passed its end.
			fs.EachPartition(func(p kgo.FetchTopicPartition) {
				k := tp{p.Topic, p.Partition}
				if last, ok := want[k]; ok && p.LastStableOffset > 0 && p.LastStableOffset <= last && len(p.Records) == 0 {
					delete(want, k)
				}
			})
		}
	}
	g.mu.Lock()
	for _, n := range need {
		s := rebuild(levels, copies[n])
		s.originNext = originNext[n]
		g.states[n] = s
		g.committed[n] = max(g.committed[n], originNext[n])
		g.log.Info("parked keys loaded", "topic", n.topic, "partition", n.partition, "keys", len(s.keys), "stale copies", len(s.stale))
	}
	g.mu.Unlock()
	return nil
}

// chainPartitioner places records of retry topics in the partition the
// runtime chose (the origin partition, in ordered modes) and leaves all
// others to the default partitioner.
type chainPartitioner struct {
	manual func(topic string) bool
	def    kgo.Partitioner
}

func (p chainPartitioner) ForTopic(t string) kgo.TopicPartitioner {
	if p.manual(t) {
		return kgo.ManualPartitioner().ForTopic(t)
	}
	return p.def.ForTopic(t)
}

// flight tracks the records a partition's processing produced
// asynchronously; the partition is committed only after all were acked.
type flight struct {
	wg      sync.WaitGroup
	pending atomic.Int64
	mu      sync.Mutex
	err     error
}

func (f *flight) add() { f.wg.Add(1); f.pending.Add(1) }

func (f *flight) done(err error) {
	if err != nil {
		f.mu.Lock()
		f.err = errors.Join(f.err, err)
		f.mu.Unlock()
	}
	f.pending.Add(-1)
	f.wg.Done()
}

// landed reports whether every record of the flight was acked or failed.
func (f *flight) landed() bool { return f.pending.Load() == 0 }

// waitFor waits up to d for the flight to land.
func (f *flight) waitFor(d time.Duration) bool {
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func (f *flight) wait() error {
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

type flightKey struct{}

// forward produces r's successor to retry level to (or the dead-letter
// topic when to is 0). Within a partition's processing (a flight in ctx)
// it does not wait for the ack: records produced to one partition keep
// the order of the calls, and the partition commits after every ack.
func (g *Group) forward(ctx context.Context, r *kgo.Record, m meta, cause error, to int) error {
	dest := DeadLetterTopic(m.topic, g.group)
	if to > 0 {
		dest = RetryTopic(m.topic, g.group, to)
	}
	out := g.derived(r, m, dest, cause, to)
	if f, ok := ctx.Value(flightKey{}).(*flight); ok {
		f.add()
		var done func(*kgo.Record, error)
		done = func(rec *kgo.Record, err error) {
			if err != nil && to > 0 && tooLarge(err) && !g.cfg.policy.ordered() && rec.Topic != DeadLetterTopic(m.topic, g.group) {
				// Too large for the retry topic: it cannot be retried
				// later, so it is dead-lettered now (without its value).
				g.log.Warn("record too large for its retry topic; dead-lettering it", "topic", m.topic, "partition", m.partition, "offset", m.offset, "size", len(rec.Value))
				why := fmt.Errorf("too large for retry topic %s: %w", dest, err)
				if cause != nil {
					why = fmt.Errorf("%w (after: %w)", why, cause)
				}
				dl := g.derived(r, m, DeadLetterTopic(m.topic, g.group), why, 0)
				g.cl.Produce(context.WithoutCancel(ctx), withoutValue(dl), done)
				return
			}
			if err != nil && tooLarge(err) && rec.Value != nil && rec.Topic == DeadLetterTopic(m.topic, g.group) {
				// Too large with its dead-letter headers: dead-letter it
				// without its value rather than stop at it.
				g.log.Warn("dead letter too large; dropping its value", "topic", m.topic, "partition", m.partition, "offset", m.offset, "size", len(rec.Value))
				g.cl.Produce(context.WithoutCancel(ctx), withoutValue(rec), done)
				return
			}
			if err != nil {
				err = fmt.Errorf("consumers: produce %s/%d@%d to %s: %w", m.topic, m.partition, m.offset, dest, err)
			}
			f.done(err)
		}
		g.cl.Produce(context.WithoutCancel(ctx), out, done)
		return nil
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := g.cl.ProduceSync(pctx, out).FirstErr()
	if err != nil && to == 0 && tooLarge(err) {
		g.log.Warn("dead letter too large; dropping its value", "topic", m.topic, "partition", m.partition, "offset", m.offset, "size", len(out.Value))
		err = g.cl.ProduceSync(pctx, withoutValue(out)).FirstErr()
	}
	if err != nil {
		return fmt.Errorf("produce to %s: %w", dest, err)
	}
	return nil
}
