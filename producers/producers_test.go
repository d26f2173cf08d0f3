package producers_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/twmb/franz-go/pkg/kgo"
)

type Ping struct {
	Note string `json:"note"`
}

func newSender(t *testing.T, seeds []string, topic string, opts ...kgo.Opt) (*producers.Sender, *kgo.Client) {
	t.Helper()
	cl, err := producers.NewClient(seeds, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	reg := codec.NewRegistry()
	if err := codec.RegisterJSON[Ping](reg, "test.Ping"); err != nil {
		t.Fatal(err)
	}
	s, err := producers.NewSender(cl, reg, topic, "/test")
	if err != nil {
		t.Fatal(err)
	}
	return s, cl
}

func TestSender(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			seeds := b.Seeds(t)
			topic := testenv.Topic(t, seeds, 3, map[string]*string{"max.message.bytes": ptr("10000")})
			s, _ := newSender(t, seeds, topic)
			cmd, err := s.Command("agg-1", Ping{Note: "hi"})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Send(t.Context(), cmd); err != nil {
				t.Fatalf("send: %v", err)
			}
			done := make(chan error, 1)
			s.SendAsync(t.Context(), cmd, func(err error) { done <- err })
			if err := <-done; err != nil {
				t.Fatalf("send async: %v", err)
			}
			// The record on the topic is the command, keyed by aggregate.
			cl := testenv.Client(t, seeds, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			var recs []*kgo.Record
			for len(recs) < 2 && ctx.Err() == nil {
				recs = append(recs, cl.PollFetches(ctx).Records()...)
			}
			if len(recs) != 2 || string(recs[0].Key) != "agg-1" || recs[0].Partition != recs[1].Partition {
				t.Fatalf("records: %d, want 2 keyed agg-1 in one partition", len(recs))
			}
			got, err := codec.RecordToCommand(recs[0])
			if err != nil || got.ID != cmd.ID || got.Type != "test.Ping" {
				t.Fatalf("record decodes to %+v, %v", got, err)
			}

			t.Run("TooLarge", func(t *testing.T) {
				noise := make([]byte, 20000)
				_, _ = rand.Read(noise)
				big, err := s.Command("agg-1", Ping{Note: hex.EncodeToString(noise)}) // incompressible
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Send(t.Context(), big); !errors.Is(err, producers.ErrTooLarge) {
					t.Fatalf("send oversized = %v, want ErrTooLarge", err)
				}
			})
			t.Run("UnknownTopic", func(t *testing.T) {
				s, _ := newSender(t, seeds, "no-such-topic-"+testenv.Name("x"))
				c, _ := s.Command("agg-1", Ping{})
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				if err := s.Send(ctx, c); !errors.Is(err, producers.ErrUnknownTopic) {
					t.Fatalf("send to a missing topic = %v, want ErrUnknownTopic", err)
				}
			})
		})
	}
}

func TestSenderUnreachable(t *testing.T) {
	s, _ := newSender(t, []string{"127.0.0.1:1"}, "commands", kgo.RecordDeliveryTimeout(time.Second))
	c, _ := s.Command("agg-1", Ping{})
	err := s.Send(t.Context(), c)
	if !errors.Is(err, producers.ErrUnreachable) {
		t.Fatalf("send to an unreachable broker = %v, want ErrUnreachable", err)
	}
}

func TestBadInput(t *testing.T) {
	if _, err := producers.NewClient(nil); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Errorf("NewClient(nil) = %v", err)
	}
	if _, err := producers.NewSender(nil, nil, "", ""); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Errorf("NewSender(nil...) = %v", err)
	}
	s, _ := newSender(t, testenv.FakeBrokers(t), "t")
	if _, err := s.Command("", Ping{}); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Errorf("Command with no aggregate = %v", err)
	}
	if _, err := s.Command("a", struct{}{}); !errors.Is(err, orchestrix.ErrUnknownType) {
		t.Errorf("Command with an unregistered payload = %v", err)
	}
}

func ptr(s string) *string { return &s }
