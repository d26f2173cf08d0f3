package aggregates_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/twmb/franz-go/pkg/kgo"
	"pgregory.net/rapid"
)

// TestProcessorModel checks the processor against a simple model under
// random schedules: commands on a few accounts in two partitions, each
// command delivered 1-3 times (back to back or later), polls of random
// size, store calls that fail before or after they commit (a lost
// acknowledgement), and restarts (a new processor with a cold cache;
// offsets not committed are delivered again). The consumer is simulated
// as the consumers runtime behaves: records of a partition in order, the
// offset committed below the first failed record.
//
// The model decides each distinct command once, in the order of its first
// delivery, against the model state. At the end every account's stream
// must hold exactly the events of the commands the model accepted, in that
// order, and its snapshot must not lie past the stream's end.
func TestProcessorModel(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		rapid.Check(t, func(rt *rapid.T) { runModel(t, rt, memory.New(), "") })
	})
	t.Run("postgres", func(t *testing.T) {
		store := pgtest.Store(t, testenv.Pool(t))
		var n atomic.Int64
		rapid.Check(t, func(rt *rapid.T) { runModel(t, rt, store, fmt.Sprintf("c%d-", n.Add(1))) })
	})
}

// modelCmd is one command of a schedule.
type modelCmd struct {
	id, account string
	part        int32
	kind        int // -1 open, 0 credit, 1 debit
	amount      int64
}

// modelAccount is the model's state of an account.
type modelAccount struct {
	balance int64
	cmds    []string // commands whose events the stream holds, in order
}

// faultyStore fails store writes on demand, before or after the write.
type faultyStore struct {
	stores.EventStore
	rr    stores.RejectionRecorder
	fault func() (fail, after bool)
}

var errInjected = errors.New("injected store failure")

func (s *faultyStore) write(f func() ([]stores.AppendResult, error)) ([]stores.AppendResult, error) {
	fail, after := s.fault()
	if !fail {
		return f()
	}
	if after {
		if _, err := f(); err != nil {
			return nil, err
		}
	}
	return nil, errInjected
}

func (s *faultyStore) AppendMany(ctx context.Context, reqs []stores.AppendRequest) ([]stores.AppendResult, error) {
	return s.write(func() ([]stores.AppendResult, error) { return s.EventStore.AppendMany(ctx, reqs) })
}

func (s *faultyStore) Append(ctx context.Context, id string, exp stores.ExpectedVersion, evs []orchestrix.Event) (stores.AppendResult, error) {
	res, err := s.write(func() ([]stores.AppendResult, error) {
		r, err := s.EventStore.Append(ctx, id, exp, evs)
		return []stores.AppendResult{r}, err
	})
	if err != nil {
		return stores.AppendResult{}, err
	}
	return res[0], nil
}

func (s *faultyStore) AppendDecisions(ctx context.Context, reqs []stores.AppendRequest, rejected []stores.RejectedCommand) ([]stores.AppendResult, error) {
	return s.write(func() ([]stores.AppendResult, error) { return s.rr.AppendDecisions(ctx, reqs, rejected) })
}

func (s *faultyStore) FindCommands(ctx context.Context, ids []string) (map[string]stores.AppendResult, error) {
	if f, ok := s.EventStore.(aggregates.CommandFinder); ok {
		return f.FindCommands(ctx, ids)
	}
	out := map[string]stores.AppendResult{}
	for _, id := range ids {
		r, ok, err := s.FindCommand(ctx, id)
		if err != nil {
			return nil, err
		}
		if ok {
			out[id] = r
		}
	}
	return out, nil
}

func runModel(t *testing.T, rt *rapid.T, inner stores.EventStore, prefix string) {
	ctx := t.Context()
	reg := testdomain.Registry(t)
	// Store faults come from a sequence drawn up front: the processor
	// calls the store from whichever goroutine runs a combined round, and
	// a rapid.T must not be drawn from concurrently.
	var faultOn atomic.Bool
	faultOn.Store(rapid.Bool().Draw(rt, "faults"))
	seq := rapid.SliceOfN(rapid.IntRange(0, 9), 1, 64).Draw(rt, "faultSeq")
	var calls atomic.Int64
	store := &faultyStore{EventStore: inner, rr: inner.(stores.RejectionRecorder), fault: func() (bool, bool) {
		if !faultOn.Load() {
			return false, false
		}
		f := seq[int(calls.Add(1)-1)%len(seq)]
		return f < 2, f == 0 // 20% of writes fail, half of them after committing
	}}
	agg, err := testdomain.NewAggregate(aggregates.SnapshotEvery(uint64(rapid.IntRange(0, 3).Draw(rt, "snapshotEvery"))))
	if err != nil {
		rt.Fatal(err)
	}
	repo, err := aggregates.NewRepository(agg, store, reg, "/model")
	if err != nil {
		rt.Fatal(err)
	}
	newProc := func() *aggregates.Processor[testdomain.Ledger] {
		p, err := aggregates.NewProcessor(repo, aggregates.CacheSize(rapid.SampledFrom([]int{0, 1, 100}).Draw(rt, "cache")))
		if err != nil {
			rt.Fatal(err)
		}
		return p
	}

	// The schedule: every account opened first, then random commands,
	// each delivered 1-3 times.
	accounts := []string{prefix + "a0", prefix + "a1", prefix + "b0"}
	partOf := map[string]int32{accounts[0]: 0, accounts[1]: 0, accounts[2]: 1}
	var logs [2][]modelCmd
	var cmds []modelCmd
	for _, a := range accounts {
		cmds = append(cmds, modelCmd{id: a + "-open", account: a, part: partOf[a], kind: -1})
	}
	n := rapid.IntRange(1, 30).Draw(rt, "commands")
	for i := range n {
		a := rapid.SampledFrom(accounts).Draw(rt, "account")
		cmds = append(cmds, modelCmd{id: fmt.Sprintf("%s-c%d", a, i), account: a, part: partOf[a],
			kind: rapid.IntRange(0, 1).Draw(rt, "kind"), amount: rapid.Int64Range(1, 50).Draw(rt, "amount")})
	}
	var later []modelCmd // copies delivered again further down the log
	for _, c := range cmds {
		logs[c.part] = append(logs[c.part], c)
		for range rapid.IntRange(0, 2).Draw(rt, "copies") {
			if rapid.Bool().Draw(rt, "backToBack") {
				logs[c.part] = append(logs[c.part], c)
			} else {
				later = append(later, c)
			}
		}
		if len(later) > 0 && rapid.Bool().Draw(rt, "flushLater") {
			for _, l := range later {
				logs[l.part] = append(logs[l.part], l)
			}
			later = nil
		}
	}
	for _, l := range later {
		logs[l.part] = append(logs[l.part], l)
	}

	// The model: each distinct command once, in order of first delivery.
	model := map[string]*modelAccount{}
	decided := map[string]bool{}
	for part := range logs {
		for _, c := range logs[part] {
			if decided[c.id] {
				continue
			}
			decided[c.id] = true
			m := model[c.account]
			if m == nil {
				m = &modelAccount{}
				model[c.account] = m
			}
			switch {
			case c.kind <= 0:
				m.balance += c.amount
				m.cmds = append(m.cmds, c.id)
			case c.amount <= m.balance:
				m.balance -= c.amount
				m.cmds = append(m.cmds, c.id)
			}
		}
	}

	// The run: polls of random size per partition, handled concurrently,
	// committed below the first failure; random restarts.
	recs := [2][]*kgo.Record{}
	for part := range logs {
		for i, c := range logs[part] {
			recs[part] = append(recs[part], modelRecord(rt, reg, c, int64(i)))
		}
	}
	p := newProc()
	var committed [2]int
	for step := 0; committed[0] < len(recs[0]) || committed[1] < len(recs[1]); step++ {
		if step > 500 {
			if faultOn.Load() { // stop injecting: the rest must drain
				faultOn.Store(false)
			} else if step > 1000 {
				rt.Fatalf("no progress: committed %v of %d, %d", committed, len(recs[0]), len(recs[1]))
			}
		}
		var batches [][]*kgo.Record
		var parts []int
		for part := range recs {
			if committed[part] == len(recs[part]) {
				continue
			}
			size := rapid.IntRange(1, 8).Draw(rt, "poll")
			end := min(committed[part]+size, len(recs[part]))
			batches = append(batches, recs[part][committed[part]:end])
			parts = append(parts, part)
		}
		results := make([][]error, len(batches))
		var wg sync.WaitGroup
		for i, b := range batches {
			wg.Go(func() { results[i] = p.HandleBatch(ctx, b) })
		}
		wg.Wait()
		crash := rapid.IntRange(0, 5).Draw(rt, "crash") == 0
		if crash { // before the commit: everything polled comes again
			p = newProc()
			continue
		}
		for i, errs := range results {
			done := len(errs)
			for k, err := range errs {
				if err != nil {
					if !errors.Is(err, errInjected) && !errors.Is(err, stores.ErrConflict) && !strings.Contains(err.Error(), "an earlier command of the same aggregate failed") {
						rt.Fatalf("partition %d record %d: unexpected error %v", parts[i], committed[parts[i]]+k, err)
					}
					done = k
					break
				}
			}
			committed[parts[i]] += done
		}
	}

	for _, a := range accounts {
		m := model[a]
		var got []string
		var last uint64
		for e, err := range inner.ReadStream(ctx, a, 0) {
			if err != nil {
				rt.Fatal(err)
			}
			got = append(got, e.CommandID)
			last = e.Version
		}
		if fmt.Sprint(got) != fmt.Sprint(m.cmds) {
			rt.Fatalf("%s holds the events of %v, model %v", a, got, m.cmds)
		}
		root, err := repo.Load(ctx, a)
		if err != nil || root.State.Balance != m.balance || root.Version != last {
			rt.Fatalf("%s = balance %d version %d, %v; model balance %d version %d", a, root.State.Balance, root.Version, err, m.balance, last)
		}
	}
}

func modelRecord(rt *rapid.T, reg *codec.Registry, c modelCmd, offset int64) *kgo.Record {
	var payload any
	switch c.kind {
	case -1:
		payload = testdomain.Open{Name: "o"}
	case 0:
		payload = testdomain.Post{Amount: c.amount}
	default:
		payload = testdomain.Post{Amount: -c.amount}
	}
	cm := orchestrix.Command{Metadata: orchestrix.Metadata{ID: c.id, Source: "/model", Time: time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)}, AggregateID: c.account, Payload: payload}
	if err := reg.EncodeCommand(&cm); err != nil {
		rt.Fatal(err)
	}
	r, err := codec.CommandToRecord("bank.commands", cm)
	if err != nil {
		rt.Fatal(err)
	}
	r.Partition, r.Offset = c.part, offset
	return r
}
