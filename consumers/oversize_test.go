package consumers_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestOversizedDeadLetters: records of 990 kB to 1.04 MB that the topic
// takes fail in the handler; each is dead-lettered — with its value when
// it fits with the dead-letter headers, without it (HeaderValueDropped,
// the origin coordinates kept) when it does not — and the records after
// them are handled: the group never stops at a record for its size.
// Before, a 1,040,000-byte record the broker had accepted stopped the
// group with MESSAGE_TOO_LARGE (the producer's own limit, 1,000,012
// bytes), uncommitted, so a restart hit it again.
func TestOversizedDeadLetters(t *testing.T) {
	sizes := []int{990_000, 1_000_000, 1_020_000, 1_040_000}
	for _, b := range testenv.Brokerages() {
		for _, policy := range []struct {
			name string
			p    consumers.FailurePolicy
			fail error
		}{
			{"permanent", consumers.DefaultFailurePolicy(), consumers.Permanent(errors.New("refused"))},
			{"retry-topics", consumers.RetryTopics(100 * time.Millisecond).ThenDLQ(), errors.New("flaky")},
		} {
			t.Run(b.Name+"/"+policy.name, func(t *testing.T) {
				seeds := b.Seeds(t)
				big := "1100000"
				topic := testenv.Topic(t, seeds, 1, map[string]*string{"max.message.bytes": &big})
				group := testenv.Name("big")
				for _, name := range policy.p.Topics(topic, group) {
					testenv.TopicNamed(t, seeds, name, 1, nil)
				}
				prod := testenv.Client(t, seeds, kgo.ProducerBatchMaxBytes(1_100_000))
				var recs []*kgo.Record
				for i, n := range sizes {
					recs = append(recs, &kgo.Record{Topic: topic, Key: []byte("big" + strconv.Itoa(i)), Value: bytes.Repeat([]byte{'x'}, n)},
						&kgo.Record{Topic: topic, Key: []byte("small" + strconv.Itoa(i)), Value: []byte("ok")})
				}
				for _, r := range recs {
					if err := prod.ProduceSync(t.Context(), r).FirstErr(); err != nil {
						t.Fatalf("produce %d bytes: %v", len(r.Value), err)
					}
				}
				var mu sync.Mutex
				handled := 0
				h := consumers.HandlerFunc(func(_ context.Context, r *kgo.Record) error {
					if len(r.Value) > 900_000 {
						return policy.fail
					}
					mu.Lock()
					handled++
					mu.Unlock()
					return nil
				})
				g, err := consumers.New(seeds, group, []string{topic}, h, consumers.WithFailurePolicy(policy.p))
				if err != nil {
					t.Fatal(err)
				}
				dlq := consumers.DeadLetterTopic(topic, group)
				reader := testenv.Client(t, seeds, kgo.ConsumeTopics(dlq), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxBytes(4<<20))
				var dead []*kgo.Record
				err = runGroup(t, g, func() bool {
					ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
					defer cancel()
					dead = append(dead, reader.PollFetches(ctx).Records()...)
					mu.Lock()
					defer mu.Unlock()
					return handled == len(sizes) && len(dead) >= len(sizes)
				})
				if err != nil {
					t.Fatalf("the group stopped: %v", err)
				}
				if len(dead) != len(sizes) {
					t.Fatalf("%d dead letters, want %d; %d small records handled", len(dead), len(sizes), handled)
				}
				dropped := 0
				for _, d := range dead {
					var size, origin string
					for _, h := range d.Headers {
						switch h.Key {
						case consumers.HeaderValueDropped:
							size = string(h.Value)
						case consumers.HeaderOffset:
							origin = string(h.Value)
						}
					}
					if origin == "" {
						t.Errorf("dead letter %s has no origin offset", d.Key)
					}
					if size != "" {
						dropped++
						if d.Value != nil {
							t.Errorf("dead letter %s: value kept though marked dropped", d.Key)
						}
					} else if len(d.Value) < 900_000 {
						t.Errorf("dead letter %s: value of %d bytes, want the record's", d.Key, len(d.Value))
					}
				}
				if dropped == 0 {
					t.Errorf("no dead letter had its value dropped: the test did not reach the limit")
				}
				t.Logf("%d dead letters, %d without their value", len(dead), dropped)
			})
		}
	}
}
