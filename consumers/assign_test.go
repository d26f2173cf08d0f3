package consumers_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
)

// positioned is a handler that keeps its own offsets (Assignable).
type positioned struct {
	start map[int32]int64
	err   error
	mu    sync.Mutex
	seen  []int64
	asked [][]int32
}

func (p *positioned) Handle(_ context.Context, r *kgo.Record) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen = append(p.seen, r.Offset)
	return nil
}

func (p *positioned) PartitionsAssigned(_ context.Context, _ string, parts []int32) (map[int32]int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.asked = append(p.asked, parts)
	return p.start, p.err
}

// TestAssignable: a handler that keeps its own position starts where it
// says, not at the group's committed offset; a handler that cannot tell
// stops the group before anything is handled.
func TestAssignable(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			seeds := b.Seeds(t)
			topic := testenv.Topic(t, seeds, 1, nil)
			produce(t, seeds, topic, 1, 10)
			group := testenv.Name("assign")
			testenv.TopicNamed(t, seeds, consumers.DeadLetterTopic(topic, group), 1, nil)
			h := &positioned{start: map[int32]int64{0: 6}}
			g, err := consumers.New(seeds, group, []string{topic}, h)
			if err != nil {
				t.Fatal(err)
			}
			if err := runGroup(t, g, func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.seen) >= 4 }); err != nil {
				t.Fatal(err)
			}
			h.mu.Lock()
			if len(h.seen) != 4 || h.seen[0] != 6 || len(h.asked) == 0 || h.asked[0][0] != 0 {
				t.Fatalf("handled offsets %v after being asked %v; want 6..9", h.seen, h.asked)
			}
			h.mu.Unlock()

			boom := errors.New("read-model database down")
			bad := &positioned{err: boom}
			group2 := testenv.Name("assign")
			testenv.TopicNamed(t, seeds, consumers.DeadLetterTopic(topic, group2), 1, nil)
			g2, err := consumers.New(seeds, group2, []string{topic}, bad)
			if err != nil {
				t.Fatal(err)
			}
			if err := runGroup(t, g2, func() bool { return false }); !errors.Is(err, boom) {
				t.Fatalf("Run = %v, want the handler's error", err)
			}
			if len(bad.seen) != 0 {
				t.Fatalf("handled %v although the start offsets were unknown", bad.seen)
			}
		})
	}
}
