// Package outbox publishes an event store's committed events, and the
// messages of its outbox table, to Kafka: the transactional outbox relay.
//
//	store, _ := postgres.New(ctx, pool)
//	relay, _ := outbox.NewRelay(store, seeds, outbox.ToTopic("banking.events"))
//	err := relay.Run(ctx) // until ctx ends; finishes the transaction in flight
//
// Every event becomes one CloudEvents record ([codec.EventToRecord], binary
// mode) keyed by its stream ID, so a stream's events share a partition;
// ce_position carries the store position. [Route] and [RouteFunc] send event
// types to other topics. A saga writes its outgoing commands with a [Writer]
// in the transaction that saves its state; the same relay publishes them.
//
// # Guarantees
//
// Exactly once into Kafka, for read_committed consumers. Each batch is
// published in one Kafka transaction (a transactional producer with a
// stable transactional ID) together with a record of the relay's
// checkpoint — the [stores.Cursor] just after the batch, in the string form
// — written to the compacted topic "<events topic>.relay-checkpoint". The
// records and the checkpoint commit or abort together. A relay that starts
// (or takes over) first initialises its producer, which fences every
// earlier instance with the same transactional ID and makes the broker
// abort that instance's open transaction; it then commits a session record
// to the checkpoint topic and reads the last checkpoint below it with a
// read_committed consumer. That checkpoint is exactly what consumers can
// see, so the relay resumes just after the last event they saw: nothing is
// published twice, nothing is skipped, after a crash (kill -9 mid-batch), a
// broker or database restart, or a takeover. A position kept in the
// database and updated after the Kafka commit could not give this.
//
// Order and completeness come from the source's log order, which is
// gap-safe ([stores.LogReader.ReadAll]): the PostgreSQL store, and the
// outbox table read the same way, only read rows whose transaction is
// older than the oldest transaction still running, in (transaction ID,
// position) order; an event committed late by a slow transaction is never
// skipped, and a rolled-back one is never read. Each stream's events are
// published in version order within their partition; one Kafka
// transaction's records become visible at once.
//
// One relay publishes at a time. With a PostgreSQL source, relays
// campaign for a session advisory lock on a dedicated connection
// ([postgres.Elector], found through [stores.Leaser]; [LeaderElection]
// takes any [stores.Elector]); the holder publishes, the others wait as
// standbys. The holder's connection
// pings every [Lease]/3 with PostgreSQL's idle_session_timeout set to the
// lease, so a leader that dies, hangs or is paused loses the lock within
// the lease and a standby takes over. A lost lock connection means lost
// leadership: the relay stops publishing and campaigns again. Mutual
// exclusion is the lock's job; safety does not depend on it: a paused
// leader that resumes after its replacement initialised its producer is
// fenced by Kafka and cannot commit anything.
//
// What a source offers beyond [Source] is found by type assertion:
// [Pooled] (its outbox table is drained, through a [postgres.OutboxTable];
// [OutboxTable] names another schema's, [DrainOutbox] takes any
// [OutboxReader]), [Notifier], [BatchReader], [BatchAppender], [Sizer]
// and [Observer].
//
// # Liveness and figures
//
// [Relay.Heartbeat] is when the relay's loops last went round; idle, a
// standby or waiting out an outage, it still beats every
// [HeartbeatInterval], and a read or transaction that never returns stops
// it, so a relay run by package service (a service.Heartbeater) fails
// /livez when it is stuck, not when a broker is down. [Relay.Stats] and
// [ReportStats] give its counters and lag; [OnCommit] sees every
// committed transaction.
//
// # Limits
//
//   - Consumers must read with read_committed (franz-go reads
//     read_uncommitted unless told); read_uncommitted consumers also see
//     records of aborted transactions, i.e. duplicates.
//   - Any long-running transaction in the PostgreSQL cluster, in any
//     database, holds the read horizon: the relay publishes nothing
//     committed after that transaction began until it ends (then all of it,
//     in order, at the next poll). Keep transactions short.
//   - Transaction IDs (xid8) do not survive a dump and restore: a restored
//     database's rows carry new ones, so the checkpoint no longer means
//     anything; publish it to a new events topic (a new checkpoint topic).
//   - No single event or outbox message stops the relay. One Kafka will
//     not take — larger than its topic's max.message.bytes, for a topic
//     that does not exist, refused by codec.EventToRecord (unless
//     [OnInvalid] decides), or an entry the source cannot read ([Unreadable],
//     e.g. a foreign EventSourcingDB event) — is written to the dead-letter
//     topic "<events topic>.relay-dlq" instead, in the transaction whose
//     checkpoint passes it, logged, and counted in [Stats].DeadLettered; the
//     rest is published in order. Run returns only what retrying cannot
//     fix (a missing events topic at start, an unmigrated schema, a refused
//     authorisation); everything transient is retried.
//   - The limit on an event's data is one setting for the stores
//     ([postgres.WithMaxEventSize]) and the relay ([MaxEventSize]). The relay sizes its
//     producer to each topic's max.message.bytes, read at the start of
//     every term, and reports a topic that cannot take an event of that
//     size ([LimitMismatchError]).
//   - Per-stream order holds within one topic: routing one stream's event
//     types to different topics orders each topic separately.
//   - The same transactional ID must never be used by two different
//     relays (different stores or topics): they would fence each other.
//   - The checkpoint topic belongs to the relay: delete it only with its
//     events topic, or the relay republishes from the start of the log.
//
// # Push sources
//
// A source that implements [Observer] (stores/esdb.Store: EventSourcingDB's
// observe-events stream; the store is its own outbox) is followed instead
// of polled. A goroutine reads the stream into a channel of one batch's
// size; the relay blocks for the first entry, takes whatever else is ready
// up to the batch size and publishes it, with the same transactions and
// checkpoint as a polled source, so the guarantees above hold unchanged.
// While a transaction commits, the next batch keeps growing; when Kafka is
// slower than the source, the full channel holds the stream back, so
// memory stays bounded. Every term (a start, a takeover, being fenced, any
// error) opens a new observation from the checkpoint it recovered from
// Kafka; a source that yields an entry not after the previous one is
// refused (the term ends) rather than published twice, and a stream that
// ends is observed anew. Dropped connections are the source's to resume
// (stores/esdb.Store resumes from the last event it yielded). The outbox
// table, if one is drained too, is still polled.
//
// # Latency and load
//
// A polled source is read with an adaptive interval ([PollInterval]): at once
// after a full batch; after a partial one, no sooner than the minimum and
// not before the transaction in flight has committed (one read per
// transaction under load, each transaction starting with a fresh read);
// after an empty read, a quarter of the time since a read last found work,
// from the minimum up to the maximum (a source written to steadily keeps
// being read at least every minimum interval, even when a slow
// transaction holds some reads back and they come back empty). It never asks writers for a NOTIFY inside their transaction; [Relay.Wake]
// (or a memory store's append signal) cuts a wait short after a commit.
// During a backlog reads run ahead of the transaction in flight, records
// are produced asynchronously within it, and one transaction carries up to
// 16 batches; records are let go of once acknowledged, so memory is bounded
// by a few batches, not by the backlog or the transaction's size.
package outbox
