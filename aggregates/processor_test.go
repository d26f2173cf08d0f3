package aggregates_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/twmb/franz-go/pkg/kgo"
)

// slowStore counts AppendMany calls and makes the first one slow, so that
// concurrent batches queue behind it.
type slowStore struct {
	*memory.Store
	calls atomic.Int32
}

func (s *slowStore) AppendMany(ctx context.Context, reqs []stores.AppendRequest) ([]stores.AppendResult, error) {
	if s.calls.Add(1) == 1 {
		time.Sleep(50 * time.Millisecond)
	}
	return s.Store.AppendMany(ctx, reqs)
}

func records(t testing.TB, reg *codec.Registry, part int32, cmds ...orchestrix.Command) []*kgo.Record {
	t.Helper()
	var out []*kgo.Record
	for i, c := range cmds {
		r := commandRecord(t, reg, c, int64(i))
		r.Partition = part
		out = append(out, r)
	}
	return out
}

// commandRecord encodes c (its type from its payload) as the record at
// offset of partition 0.
func commandRecord(t testing.TB, reg *codec.Registry, c orchestrix.Command, offset int64) *kgo.Record {
	t.Helper()
	c.Time = time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	if err := reg.EncodeCommand(&c); err != nil {
		t.Fatal(err)
	}
	r, err := codec.CommandToRecord("bank.commands", c)
	if err != nil {
		t.Fatal(err)
	}
	r.Offset = offset
	return r
}

// newProcessor returns a ledger repository on store and a processor on it.
func newProcessor(t *testing.T, store stores.EventStore, reg *codec.Registry) (*aggregates.Repository[testdomain.Ledger], *aggregates.Processor[testdomain.Ledger]) {
	t.Helper()
	repo, err := aggregates.NewRepository(testdomain.Aggregate(t), store, reg, "/test")
	if err != nil {
		t.Fatal(err)
	}
	p, err := aggregates.NewProcessor(repo)
	if err != nil {
		t.Fatal(err)
	}
	return repo, p
}

func handleConcurrently(p *aggregates.Processor[testdomain.Ledger], batches ...[]*kgo.Record) [][]error {
	out := make([][]error, len(batches))
	var wg sync.WaitGroup
	for i, b := range batches {
		wg.Go(func() { out[i] = p.HandleBatch(context.Background(), b) })
	}
	wg.Wait()
	return out
}

func checkNoErrors(t *testing.T, results [][]error) {
	t.Helper()
	for part, errs := range results {
		for i, err := range errs {
			if err != nil {
				t.Errorf("partition %d record %d: %v", part, i, err)
			}
		}
	}
}

// TestProcessorCombinesPartitions: the partitions of a poll handled while
// a transaction runs share the next one, and every command lands once.
func TestProcessorCombinesPartitions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := testdomain.Registry(t)
		store := &slowStore{Store: memory.New()}
		repo, p := newProcessor(t, store, reg)
		var batches [][]*kgo.Record
		for part := range int32(4) {
			var cmds []orchestrix.Command
			for a := range 3 {
				id := fmt.Sprintf("p%d-a%d", part, a)
				cmds = append(cmds, cmd(id+"-open", id, testdomain.Open{Name: "ada"}), cmd(id+"-dep", id, testdomain.Post{Amount: 10}))
			}
			batches = append(batches, records(t, reg, part, cmds...))
		}
		checkNoErrors(t, handleConcurrently(p, batches...))
		// The first batch ran alone; the three that queued behind it
		// shared one transaction.
		if got := store.calls.Load(); got != 2 {
			t.Errorf("AppendMany calls = %d, want 2 (one alone, three combined)", got)
		}
		for part := range 4 {
			for a := range 3 {
				id := fmt.Sprintf("p%d-a%d", part, a)
				root, err := repo.Load(t.Context(), id)
				if err != nil || root.Version != 2 || root.State.Balance != 10 {
					t.Errorf("%s = version %d balance %d, %v; want 2, 10", id, root.Version, root.State.Balance, err)
				}
			}
		}
	})
}

// TestProcessorCombinedConflict: when one partition's cached state is
// stale (another writer appended behind the processor's back), the
// combined transaction conflicts and every partition's records are
// handled again one by one with fresh state: nothing lost, nothing twice.
func TestProcessorCombinedConflict(t *testing.T) {
	reg := testdomain.Registry(t)
	store := memory.New()
	repo, p := newProcessor(t, store, reg)
	open := [][]*kgo.Record{
		records(t, reg, 0, cmd("a-open", "a", testdomain.Open{Name: "ada"})),
		records(t, reg, 1, cmd("b-open", "b", testdomain.Open{Name: "bob"})),
	}
	checkNoErrors(t, handleConcurrently(p, open...))
	// Another writer moves "a" on; the processor's cache does not know.
	if _, err := repo.Handle(t.Context(), cmd("a-side", "a", testdomain.Post{Amount: 5})); err != nil {
		t.Fatal(err)
	}
	next := [][]*kgo.Record{
		records(t, reg, 0, cmd("a-dep", "a", testdomain.Post{Amount: 10})),
		records(t, reg, 1, cmd("b-dep", "b", testdomain.Post{Amount: 10})),
	}
	checkNoErrors(t, handleConcurrently(p, next...))
	// Redelivered: answered as duplicates, nothing appended again.
	checkNoErrors(t, handleConcurrently(p, next...))
	for id, want := range map[string]int64{"a": 15, "b": 10} {
		root, err := repo.Load(t.Context(), id)
		if err != nil || root.State.Balance != want {
			t.Errorf("%s balance = %d, %v; want %d", id, root.State.Balance, err, want)
		}
	}
	var n int
	for _, err := range store.ReadAll(t.Context(), stores.Cursor{}, 100) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 5 {
		t.Errorf("events = %d, want 5", n)
	}
}

// TestProcessorRedeliveredRejection: a poll's refused withdrawal and the
// deposit behind it are stored; the process dies before its offsets are
// committed and both are delivered again. The withdrawal keeps its first
// answer (rejected), though the balance would now cover it — in the
// combined path and in the one-by-one path.
func TestProcessorRedeliveredRejection(t *testing.T) {
	reg := testdomain.Registry(t)
	store := memory.New()
	repo, p := newProcessor(t, store, reg)
	poll := records(t, reg, 0,
		cmd("open", "a", testdomain.Open{Name: "ada"}),
		cmd("dep-50", "a", testdomain.Post{Amount: 50}),
		cmd("wd-100", "a", testdomain.Post{Amount: -100}),
		cmd("dep-100", "a", testdomain.Post{Amount: 100}))
	checkNoErrors(t, handleConcurrently(p, poll))
	prev, ok, err := store.FindCommand(t.Context(), "wd-100")
	if err != nil || !ok || prev.Rejection == nil {
		t.Fatalf("rejected withdrawal recorded = %+v, %v, %v; want its rejection", prev, ok, err)
	}
	// Redelivery after a crash (a new processor: empty cache).
	p2, _ := aggregates.NewProcessor(repo)
	checkNoErrors(t, handleConcurrently(p2, poll))
	for _, r := range poll[2:3] {
		if err := p2.Handle(t.Context(), r); err != nil {
			t.Fatalf("one by one: %v", err)
		}
	}
	root, err := repo.Load(t.Context(), "a")
	if err != nil || root.State.Balance != 150 || root.Version != 3 {
		t.Fatalf("account = version %d balance %d, %v; want version 3, balance 150 (the withdrawal stays refused)", root.Version, root.State.Balance, err)
	}
	_, err = repo.Handle(t.Context(), cmd("wd-100", "a", testdomain.Post{Amount: -100}))
	var rej *orchestrix.Rejection
	if !errors.As(err, &rej) || rej.Code != "insufficient_funds" {
		t.Fatalf("Repository.Handle of the recorded rejection = %v, want its insufficient_funds rejection", err)
	}
}
