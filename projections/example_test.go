package projections_test

import (
	"context"
	"fmt"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
)

// A balances read model on the memory backend: the handler folds each
// batch into the versioned table, queries read the view "balances".
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := memory.New()
	back := projections.NewMemory("balances")
	apply := func(ctx context.Context, tx *projections.MemTx, b projections.Batch) error {
		for _, e := range b.Events {
			var n int
			fmt.Sscanf(string(e.Data), `{"amount":%d}`, &n)
			old, _ := tx.Get(b.Table("balances"), e.StreamID)
			bal, _ := old.(int)
			tx.Put(b.Table("balances"), e.StreamID, bal+n)
		}
		return nil
	}
	r, err := projections.New("balances", back, projections.FromStore(store), apply, projections.PollInterval(time.Millisecond))
	if err != nil {
		fmt.Println(err)
		return
	}
	go func() { _ = r.Run(ctx) }()
	for _, amount := range []int{100, 50, -30} {
		ev := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "Deposited", Source: "/bank", Time: time.Now()}, Data: fmt.Appendf(nil, `{"amount":%d}`, amount)}
		if _, err := store.Append(ctx, "acc-1", stores.Any, []orchestrix.Event{ev}); err != nil {
			fmt.Println(err)
			return
		}
	}
	if err := r.WaitForNonStale(ctx); err != nil {
		fmt.Println(err)
		return
	}
	bal, _ := back.Get("balances", "acc-1")
	fmt.Println("acc-1:", bal)
	// Output: acc-1: 120
}
