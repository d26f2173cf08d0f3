// Package consumers is the consumer-group runtime every Orchestrix
// processor runs on (aggregate processors, projections, sagas).
//
// A Group reads one or more topics as a Kafka consumer group with
// read_committed isolation and hands records to a Handler:
//
//   - Partitions are processed concurrently, each in offset order. With
//     KeyConcurrency(n) the records of one partition are spread over n
//     lanes by key, so different keys of one partition run in parallel
//     while each key keeps its order.
//   - Offsets are committed only after the handler returned for every
//     record below them (the batch barrier: a poll's records are all
//     finished, dead-lettered or failed before anything is committed, and a
//     partition's commit never passes its first failed record).
//   - Rebalances wait for the batch in flight (kgo.BlockRebalanceOnPoll),
//     so a revoked partition is never processed by two members at once and
//     never has unprocessed work committed. PartitionAware handlers are told
//     about revoked and lost partitions to drop cached state.
//   - When Run's context ends, the batch in flight gets DrainTimeout to
//     finish, what finished is committed, the member leaves the group and
//     Run returns nil.
//
// A handler error goes to the FailurePolicy: bounded in-place retries with
// exponential backoff and jitter (Permanent errors and orchestrix.ErrInvalid
// skip them), then the dead-letter topic "<topic>.<group>.dlq" with the
// original key, value and headers plus DLQ headers (HeaderPrefix), or, if
// dead-lettering is off, Run stops with the error and the record's offset
// stays uncommitted.
//
// Delivery is at-least-once: a handler sees a record again after a crash
// or a lost partition, so effects must be idempotent or, as the aggregate
// processor and projections do, recorded with what they consumed.
package consumers
