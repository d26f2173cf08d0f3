package projections_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/memory"
)

// logOnly hides every method of a store but ReadAll.
type logOnly struct{ stores.LogReader }

// FromStore needs only the log: a source that can do nothing but ReadAll
// feeds a runner like the whole store does.
func TestFromStoreTakesALogReader(t *testing.T) {
	ctx := t.Context()
	store := memory.New()
	back := projections.NewMemory("counts")
	apply := func(ctx context.Context, tx *projections.MemTx, b projections.Batch) error {
		for _, e := range b.Events {
			old, _ := tx.Get(b.Table("counts"), e.StreamID)
			n, _ := old.(int)
			tx.Put(b.Table("counts"), e.StreamID, n+1)
		}
		return nil
	}
	r, err := projections.New("counts", back, projections.FromStore(logOnly{store}), apply, projections.PollInterval(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	runCtx, cancel := context.WithCancel(ctx)
	go func() { done <- r.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	for i := range 3 {
		ev := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "Counted", Source: "/t", Time: time.Now()}, Data: fmt.Appendf(nil, `{"i":%d}`, i)}
		if _, err := store.Append(ctx, "s-1", stores.Any, []orchestrix.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}
	wait, stop := context.WithTimeout(ctx, 30*time.Second)
	defer stop()
	if err := r.WaitForNonStale(wait); err != nil {
		t.Fatal(err)
	}
	if got, _ := back.Get("counts", "s-1"); got != 3 {
		t.Fatalf("count %v, want 3", got)
	}
}
