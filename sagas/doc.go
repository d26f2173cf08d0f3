// Package sagas is the saga (process-manager) runtime: a saga coordinates
// work across aggregates by sending them commands, one step at a time,
// and undoing the completed steps in reverse when one fails.
//
// A saga type is a Definition over a state type S: steps, each with an
// action (a command to an aggregate's command topic), an optional
// compensation, a timeout and a Policy (Retry then compensate, or Pivot:
// only forward). Transition is the pure engine: (instance, input) →
// (instance, commands, timer). State is data (JSON), never replayed code,
// and an instance keeps the definition version it started with.
//
// The Runtime applies one input per transaction of its Store (PostgresStore
// in production, MemoryStore for tests and the embedded demo): the
// input's ID is recorded (an inbox: a second copy changes nothing), the
// instance is updated with its version as a fence, the next commands are
// written to the outbox (the relay publishes them exactly once, after the
// state committed), the instance's timer is replaced, and the transition
// is appended to the instance's history — all or nothing.
//
// Inputs reach an instance on one Kafka topic keyed by saga ID,
// "<type>.saga-inbox" (InboxTopic): the Forwarder re-publishes outcomes
// and events whose correlation ID names a saga ("saga:<type>:<id>",
// Correlation) there, and fired timers are written to it through the
// outbox. A keyed consumer group runs the Runtime as its Handler, so one
// instance's inputs are handled in order, one at a time, without locks;
// the version fence only stops a member that lost its partition and did
// not notice.
//
// Run the inbox group with InboxOptions, the forwarder group with
// ForwarderOptions and the relay with RelayOptions (no lingers: each
// would be waited once per step), and
// Runtime.RunInboxRetention to delete the inbox rows of instances that
// ended long enough ago (they ignore every input anyway).
//
// See docs/sagas.md for the guarantees, how each is tested, a full
// example and what an operator does with StatusCompensationFailed.
package sagas
