package topics_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
)

// TestEnsureUsableIntegration: a topic Ensure created is usable at once,
// from another client: listed, with a leader for every partition. Before
// Ensure waited for that, a consumers.Group started right after it (the
// pipeline benchmark) found its fresh dead-letter topic missing from the
// metadata and refused to start.
func TestEnsureUsableIntegration(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			seeds := b.Seeds(t)
			adm := kadm.NewClient(testenv.Client(t, seeds))
			for i := range 5 {
				name := fmt.Sprintf("%s-%d", testenv.Name("ensure"), i)
				t.Cleanup(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					_, _ = adm.DeleteTopics(ctx, name)
				})
				if _, err := topics.Ensure(t.Context(), adm, topics.Spec{Name: name, Partitions: 6, ReplicationFactor: 1}); err != nil {
					t.Fatal(err)
				}
				other := kadm.NewClient(testenv.Client(t, seeds))
				td, err := other.ListTopics(t.Context(), name)
				if err != nil {
					t.Fatal(err)
				}
				d, ok := td[name]
				if !ok || d.Err != nil || len(d.Partitions) != 6 {
					t.Fatalf("topic %s right after Ensure: listed %v, err %v, %d partitions; want 6 partitions", name, ok, d.Err, len(d.Partitions))
				}
				for _, p := range d.Partitions {
					if p.Err != nil || p.Leader < 0 {
						t.Fatalf("topic %s partition %d right after Ensure: leader %d, err %v", name, p.Partition, p.Leader, p.Err)
					}
				}
			}
		})
	}
}

// TestForContextFitsTheLargestEvent: the commands and events topics of
// ForContext take the stores' largest event with its headers (the relay
// checks the event limit plus 4 KiB against the topic), and the broker
// keeps the setting.
func TestForContextFitsTheLargestEvent(t *testing.T) {
	if topics.MaxMessageBytes < stores.DefaultMaxEventSize+8192 {
		t.Fatalf("MaxMessageBytes %d leaves less than 8 KiB over the largest event (%d)", topics.MaxMessageBytes, stores.DefaultMaxEventSize)
	}
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) {
			seeds := b.Seeds(t)
			adm := kadm.NewClient(testenv.Client(t, seeds))
			name := strings.ReplaceAll(testenv.Name("ctx"), "_", "-")
			specs := topics.ForContext(name, 2, 1)
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				for _, s := range specs {
					_, _ = adm.DeleteTopics(ctx, s.Name)
				}
			})
			if _, err := topics.Ensure(t.Context(), adm, specs...); err != nil {
				t.Fatal(err)
			}
			ds, err := topics.Describe(t.Context(), adm, topics.Events(name), topics.Commands(name))
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range ds {
				if got := d.Configs["max.message.bytes"]; got != strconv.Itoa(topics.MaxMessageBytes) {
					t.Errorf("%s: max.message.bytes %q, want %d", d.Name, got, topics.MaxMessageBytes)
				}
			}
		})
	}
}
