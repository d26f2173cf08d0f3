package sagas

import (
	"testing"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/outbox"
)

// TestDeploymentOptions: the recommended relay and inbox options are
// valid as given and with a topic, and build a group on the inbox.
func TestDeploymentOptions(t *testing.T) {
	if err := outbox.CheckOptions(append(RelayOptions(), outbox.ToTopic("banking.events"))...); err != nil {
		t.Fatalf("RelayOptions: %v", err)
	}
	g, err := consumers.New(testenv.FakeBrokers(t), "transfer-sagas", []string{InboxTopic("transfer")}, consumers.HandlerFunc(nil), InboxOptions()...)
	if err != nil || g == nil {
		t.Fatalf("InboxOptions: %v", err)
	}
	if g, err := consumers.New(testenv.FakeBrokers(t), "fwd", []string{"banking.outcomes"}, consumers.HandlerFunc(nil), ForwarderOptions()...); err != nil || g == nil {
		t.Fatalf("ForwarderOptions: %v", err)
	}
}
