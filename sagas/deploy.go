package sagas

import (
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/outbox"
)

// RelayPollMax is the longest a relay run with RelayOptions waits
// between reads of an idle outbox (outbox.DefaultPollMax is 100 ms).
const RelayPollMax = 25 * time.Millisecond

// RelayOptions are the options of a relay that publishes saga commands,
// for step latency over relay CPU (docs/sagas.md, Performance):
//
//   - no linger after a small batch (outbox.Linger(0)): the default
//     linger gathers a moderate rate into fewer Kafka transactions, but
//     every saga step waits for it once;
//   - idle reads at most RelayPollMax apart (outbox.PollInterval): a relay
//     that is not woken by the runtime (another process; see
//     OnTransition and outbox.Relay.Wake for one in the same process)
//     finds a quiet saga's next command within that, not within
//     outbox.DefaultPollMax, for about 40 empty reads a second when idle.
func RelayOptions() []outbox.Option {
	return []outbox.Option{outbox.Linger(0), outbox.PollInterval(outbox.DefaultPollMin, RelayPollMax)}
}

// InboxOptions are the options of the consumer group that runs a Runtime
// on its inbox: InboxFailurePolicy and no poll linger
// (consumers.PollLinger(0)), which every step would otherwise wait for
// once.
func InboxOptions() []consumers.Option {
	return []consumers.Option{consumers.PollLinger(0), consumers.WithFailurePolicy(InboxFailurePolicy())}
}

// ForwarderOptions are the options of the consumer group that runs a
// Forwarder: no poll linger (consumers.PollLinger(0)); every reply
// passes through it. (Forwarding 16 keys of a partition at once,
// consumers.KeyConcurrency(16), was no faster in BenchmarkSagaEndToEnd.)
func ForwarderOptions() []consumers.Option {
	return []consumers.Option{consumers.PollLinger(0)}
}
