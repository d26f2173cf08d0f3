// Package consumers is the consumer-group runtime every Orchestrix
// processor runs on (aggregate processors, projections, sagas).
//
// A [Group] reads one or more topics as a Kafka consumer group with
// read_committed isolation and hands records to a [Handler]:
//
//   - Partitions are processed concurrently, each in offset order. With
//     [KeyConcurrency](n) the records of one partition are spread over n
//     lanes by key, so different keys of one partition run in parallel
//     while each key keeps its order.
//   - Offsets are committed only after the handler returned for every
//     record below them (the batch barrier: a poll's records are all
//     finished, forwarded, dead-lettered or failed before anything is
//     committed, and a partition's commit never passes its first failed
//     record), and after every retry record or dead letter produced for
//     them was acknowledged by the broker.
//   - Rebalances wait for the batch in flight ([kgo.BlockRebalanceOnPoll]),
//     so a revoked partition is never processed by two members at once and
//     never has unprocessed work committed. [PartitionAware] handlers are told
//     about revoked and lost partitions to drop cached state; [Assignable]
//     handlers (a projection keeping its offsets with its read model) say
//     where newly assigned partitions start.
//   - When [Group.Run]'s context ends, the batch in flight gets [DrainTimeout] to
//     finish, what finished is committed, the member leaves the group and
//     Run returns nil.
//
// # Unreachable brokers
//
// At start, Run waits up to [ConnectTimeout] (15s by default) for a seed
// broker to answer and otherwise returns an error matching [ErrUnreachable]
// that names the seeds and the last dial error: a misconfigured address
// fails fast instead of waiting silently. Once running, Run does not stop
// when the brokers go away: franz-go reconnects with backoff, the group
// logs one error when the outage starts ("brokers unreachable", repeated
// every 30s while it lasts) and one line when they answer again, and
// [OnConnectivity] tells a readiness probe. Records already fetched are
// still handled; commits that fail are kept and retried with the next
// commit; retry records and dead letters wait in the producer until
// acknowledged. A member that loses its session during the outage rejoins
// and resumes from the committed offsets, so records handled but not yet
// committed are handled again (at-least-once). At shutdown or before a
// rebalance, retry records not acknowledged within DrainTimeout leave
// their progress uncommitted instead of blocking.
//
// [Group.Heartbeat] is when the poll loop last went round: it beats at
// least every [HeartbeatInterval] while idle and through an outage, and
// stops while a handler call or a drain never returns, so a group run by
// package service (a service.Heartbeater) fails /livez when it is stuck,
// not when the brokers are down.
//
// # Failures
//
// A handler error goes to the [FailurePolicy]:
//
//  1. [Permanent] errors, [orchestrix.ErrInvalid] and [orchestrix.ErrUnknownType]
//     (which include the codec's PoisonError and DecodeError) go straight
//     to the dead-letter topic "<topic>.<group>.dlq".
//  2. Others are retried in place Retries times with exponential backoff
//     and jitter. An in-place retry holds up the whole poll, so
//     [RetryTopics] uses none by default.
//  3. With retry topics (RetryTopics(delays...)), a record that still
//     fails goes to "<topic>.<group>.retry.1" with a due time (now plus
//     the level's delay) and its partition moves on. The group consumes
//     its retry topics too: a retry partition whose next record is not due
//     is paused ([kgo.Client.PauseFetchPartitions]) and its fetched records are
//     held in memory until due, while every other partition flows. A
//     record failing at level n goes to level n+1; after the last level,
//     to the dead-letter topic ([FailurePolicy.ThenDLQ]) or Run stops with the error.
//     Each handler call has a deadline ([FailurePolicy.AttemptTimeout], 10s by default,
//     [FailurePolicy.WithAttemptTimeout]); a call that fails after it is not retried in
//     place ([ErrAttemptTimeout]), so a handler that hangs until its context
//     ends holds up the member's other partitions for at most that long. A
//     handler that ignores its context cannot be stopped: the group logs
//     it at error level until it returns.
//  4. Without dead-lettering, Run stops with the error and the record's
//     offset stays uncommitted.
//
// A panic in Handle, HandleBatch or PartitionsRevoked (so also in
// decide, evolve or a codec they call) is recovered: the call fails with
// a [PanicError], which is permanent, and the record is dead-lettered with
// reason "panic", the panic value and the stack (header [HeaderStack], at
// most [MaxStackLength] bytes). A batch that panicked is handled again one
// record at a time, so only the record that panicked is dead-lettered.
// A panic in a goroutine the handler started itself cannot be recovered.
//
// Retry records and dead letters keep the original key, value and
// headers and add headers under [HeaderPrefix]: origin topic, partition,
// offset and timestamp, group, attempts, first and last failure, error
// class, reason and message (truncated to [FailurePolicy.MaxErrorLength]), and for retry
// records the level and due time. A handler sees a retry record with its
// origin topic, partition, offset and timestamp.
//
//	policy := consumers.RetryTopics(time.Second, 10*time.Second, time.Minute).ThenDLQ()
//	g, err := consumers.New(seeds, "billing", []string{"billing.commands"}, h,
//		consumers.WithFailurePolicy(policy))
//	// create policy.Topics("billing.commands", "billing") first (topics.Ensure, or
//	// orchestrix topics create --topics billing.commands --group billing --retry-levels 3)
//
// Run checks before consuming that every topic the policy writes to
// exists, the default policy's dead-letter topic included, and otherwise
// returns a *[MissingTopicsError] naming them and the command that creates
// them.
//
// # Per-key order with retry topics
//
// With [Unordered] (the default), later records of a key overtake a record
// waiting in the retry topics. [FailurePolicy.KeepKeyOrder]([OrderedDeadLetterRest]) or
// KeepKeyOrder([OrderedResume]) keep each key's order instead: once a
// record of a key is in the retry chain, later records of that key are
// parked behind it while other keys flow.
//
// The parked records live in the retry topics themselves (no second store
// that could disagree with Kafka); ordered modes need the retry topics to
// have as many partitions as the topic (Run checks) and use range
// assignment. How parking, rebuilding after a restart, copies left by a
// crash and dead-letter markers work is described in docs/failures.md
// ("How ordered retries work inside").
//
// Delivery is at-least-once: a handler sees a record again after a crash
// or a lost partition, so effects must be idempotent or, as the aggregate
// processor and projections do, recorded with what they consumed.
// Retry records can be duplicated the same way; a handler that records
// consumed offsets must expect a retried record's older origin offset.
// In ordered modes, copies left by a crash are dropped (see above), so a
// key's records reach the handler for the first time in order; only a
// record whose handling succeeded may be seen again, before its key's
// later records are. A record failing permanently at the origin (its key
// has nothing in the chain) is dead-lettered durably the same way, with
// its marker in retry level 1, so after a crash it is not handled or
// dead-lettered again.
//
// The CLI's `orchestrix dlq list|show|redrive|purge` works on the
// dead-letter topics (see docs/failures.md).
package consumers
