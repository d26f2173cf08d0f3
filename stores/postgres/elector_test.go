package postgres_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
)

// TestElectorIntegration: one term at a time per role; a released term
// passes to the standby at once; a term whose lock session the server
// ends is lost (Lost closes) and the standby takes over; other roles are
// independent.
func TestElectorIntegration(t *testing.T) {
	pool := testenv.Pool(t)
	role := testenv.Name("role")
	cfg := stores.ElectorConfig{Role: role, Lease: 2 * time.Second, Instance: "a"}
	a, err := postgres.NewElector(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Instance = "b"
	b, err := postgres.NewElector(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	ta, err := a.Campaign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// b waits while a leads.
	short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	if _, err := b.Campaign(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b's campaign while a leads: %v, want the deadline", err)
	}
	cancel()
	// Another role is free.
	other, err := postgres.NewElector(pool, stores.ElectorConfig{Role: role + "-other", Lease: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	to, err := other.Campaign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	to.Release()
	// Released: b takes over within its retry.
	tbc := make(chan stores.Term, 1)
	go func() {
		tb, err := b.Campaign(ctx)
		if err != nil {
			t.Error(err)
		}
		tbc <- tb
	}()
	ta.Release()
	var tb stores.Term
	select {
	case tb = <-tbc:
	case <-time.After(5 * time.Second):
		t.Fatal("b did not take over within 5s of a's release")
	}
	// The server ends b's session: b's term is lost, a takes over.
	if _, err := pool.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", "orchestrix "+role+" b"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tb.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("b's term not lost within 5s of its session's end")
	}
	tb.Release()
	ctx5, cancel5 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel5()
	ta, err = a.Campaign(ctx5)
	if err != nil {
		t.Fatalf("a after b's loss: %v", err)
	}
	ta.Release()
}

func TestNewElectorBadInput(t *testing.T) {
	if _, err := postgres.NewElector(nil, stores.ElectorConfig{Lease: time.Millisecond}); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Fatalf("NewElector(nil pool, no role, 1ms) = %v, want ErrInvalid", err)
	}
}
