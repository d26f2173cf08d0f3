package aggregates_test

import (
	"context"
	"errors"
	"testing"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/aggregates/aggregatetest"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
)

func TestGivenWhenThen(t *testing.T) {
	a := testdomain.Aggregate(t)
	aggregatetest.For(t, a).Given().When(testdomain.Open{Name: "ada"}).Then(testdomain.Opened{Name: "ada"})
	aggregatetest.For(t, a).Given(testdomain.Opened{Name: "ada"}, testdomain.Posted{Amount: 10}).
		When(testdomain.Post{Amount: -50}).ThenRejected("insufficient_funds")
	aggregatetest.For(t, a).Given(testdomain.Opened{Name: "ada"}).When(testdomain.Post{Amount: 0}).ThenRejected("nonzero")
	aggregatetest.For(t, a).Given().When(testdomain.Open{}).ThenRejected("required")
}

func newRepo(t *testing.T, store stores.EventStore, opts ...aggregates.Option) *aggregates.Repository[testdomain.Ledger] {
	t.Helper()
	r, err := aggregates.NewRepository(testdomain.Aggregate(t, opts...), store, testdomain.Registry(t), "/test")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func cmd(id, agg string, payload any) orchestrix.Command {
	return orchestrix.Command{Metadata: orchestrix.Metadata{ID: id, Source: "/test"}, AggregateID: agg, Payload: payload}
}

func TestRepositoryHandle(t *testing.T) {
	store := memory.New()
	repo := newRepo(t, store, aggregates.SnapshotEvery(3))
	ctx := t.Context()
	steps := []struct {
		name    string
		cmd     orchestrix.Command
		version uint64
		err     error
		dup     bool
	}{
		{"open", cmd("c1", "a1", testdomain.Open{Name: "ada"}), 1, nil, false},
		{"credit", cmd("c2", "a1", testdomain.Post{Amount: 100}), 2, nil, false},
		{"duplicate credit", cmd("c2", "a1", testdomain.Post{Amount: 100}), 2, nil, true},
		{"debit too much", cmd("c3", "a1", testdomain.Post{Amount: -500}), 0, orchestrix.ErrRejected, false},
		{"invalid amount", cmd("c4", "a1", testdomain.Post{Amount: 0}), 0, orchestrix.ErrRejected, false},
		{"debit", cmd("c5", "a1", testdomain.Post{Amount: -40}), 3, nil, false},
		{"credit after snapshot", cmd("c6", "a1", testdomain.Post{Amount: 1}), 4, nil, false},
		{"empty aggregate id", cmd("c7", "", testdomain.Post{Amount: 1}), 0, orchestrix.ErrInvalid, false},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			res, err := repo.Handle(ctx, s.cmd)
			if !errors.Is(err, s.err) || (s.err == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, s.err)
			}
			if s.err == nil && (res.ToVersion != s.version || res.Duplicate != s.dup) {
				t.Fatalf("result = %+v, want version %d duplicate %v", res, s.version, s.dup)
			}
		})
	}
	snap, ok, _ := store.LoadSnapshot(ctx, "a1")
	if !ok || snap.Version != 3 {
		t.Fatalf("snapshot = %+v, %v; want version 3", snap, ok)
	}
	root, err := repo.Load(ctx, "a1")
	if err != nil || root.Version != 4 || root.State.Balance != 61 {
		t.Fatalf("load = %+v, %v; want version 4 balance 61", root, err)
	}
}

func TestLoadUnknownEventType(t *testing.T) {
	store := memory.New()
	if _, err := store.Append(t.Context(), "a1", stores.NoStream, []orchestrix.Event{{Metadata: orchestrix.Metadata{Type: "banking.Mystery"}, ContentType: "application/json", Data: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	_, err := newRepo(t, store).Load(t.Context(), "a1")
	if !errors.Is(err, orchestrix.ErrUnknownType) {
		t.Fatalf("load = %v, want ErrUnknownType", err)
	}
}

// conflicting makes the first append of a stream lose a race.
type conflicting struct {
	*memory.Store
	once bool
}

func (c *conflicting) Append(ctx context.Context, id string, exp stores.ExpectedVersion, evs []orchestrix.Event) (stores.AppendResult, error) {
	if !c.once {
		c.once = true
		// Someone else credits first.
		if _, err := c.Store.Append(ctx, id, stores.Any, []orchestrix.Event{{Metadata: orchestrix.Metadata{Type: testdomain.TypePosted}, ContentType: "application/json", Data: []byte(`{"amount":5}`)}}); err != nil {
			return stores.AppendResult{}, err
		}
	}
	return c.Store.Append(ctx, id, exp, evs)
}

func TestConflictRetries(t *testing.T) {
	mem := memory.New()
	plain := newRepo(t, mem)
	if _, err := plain.Handle(t.Context(), cmd("c1", "a1", testdomain.Open{Name: "ada"})); err != nil {
		t.Fatal(err)
	}
	repo := newRepo(t, &conflicting{Store: mem})
	res, err := repo.Handle(t.Context(), cmd("c2", "a1", testdomain.Post{Amount: 10}))
	if err != nil || res.ToVersion != 3 {
		t.Fatalf("handle after a conflict = %+v, %v; want version 3", res, err)
	}
}
