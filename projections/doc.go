// Package projections runs read models (projections) built from an event
// store's log, with the checkpoint written in the same transaction as the
// read model's writes (DESIGN G9): a crash between applying a batch and
// committing it never applies the batch twice, and no event is skipped.
//
// # The model
//
// A projection has a name, a version and a number of shards, and reads a
// [Source]: [FromStore] (the store's gap-safe [stores.LogReader.ReadAll],
// so an event committed late by a slower transaction is never passed
// over; shards split streams by a hash of the stream ID) or [FromTopic]
// (a Kafka events topic, one shard per partition, read_committed). One
// stream's events are applied in order by one owner. Each shard has a
// checkpoint row (projection, version, shard, cursor, owner epoch,
// heartbeat, status) in the read model's database; a [Runner] reads from
// the cursor (a store cursor, or the partition's next offset: topic
// offsets live only there, not in a consumer group), hands each batch of
// its shard's events to the user's [Handler] inside one transaction of the
// [Backend], and updates the checkpoint in that same transaction.
//
// Ownership: a shard is led by one process at a time, elected through a
// [stores.Elector] (a PostgreSQL advisory lock for the [Postgres] backend,
// role "orchestrix.projection:<name>:v<version>:<shard>"). A new owner
// raises the shard's owner epoch as it starts; every commit updates the
// checkpoint only where the epoch is still its own, as the first statement
// of its transaction, so an old owner that was paused (SIGSTOP, a long GC,
// a partition) and wakes after a takeover cannot commit: its transaction
// fails with [ErrFenced] and its writes roll back.
//
// Poison events: a batch whose handler fails is applied again one event at
// a time, each retried a few times ([Attempts]). An event that still fails
// stops the shard (the default, [Stop]: a read model that silently skips
// is wrong) with the status "stopped" and the error in the checkpoint row,
// retried every [RetryStopped] until it applies or an operator skips it
// ([Postgres.SkipStopped]); or, with [Park], is written with its error to
// the dead-letter table and the shard goes on. Both are visible in
// [Postgres.Status], `orchestrix projections status` and [Runner.Stats].
//
// Versions and blue/green rebuilds: the first version of a projection is
// active at once. A later version registers as "building": it fills its
// own tables from the start of the log while the active version keeps
// serving, and its handlers see [Batch.Replaying] (side effects such as
// e-mails or commands must be skipped then). [Postgres.Cutover] makes it
// active in one transaction once its lag is under a threshold, repointing
// the views named with [Views]; the previous version is kept, retired,
// for [Postgres.Rollback].
//
// # Usage
//
//	backend, err := projections.NewPostgres(pool, "orchestrix", projections.Views("balances"))
//	r, err := projections.New("balances", backend, projections.FromStore(store),
//		func(ctx context.Context, tx pgx.Tx, b projections.Batch) error {
//			for _, e := range b.Events { /* upsert into b.Table("balances") */ }
//			return nil
//		}, projections.Version(1), projections.Shards(4))
//	err = r.Run(ctx) // until ctx ends
//
// The [Memory] backend keeps read models in process for the embedded demo
// and tests; its handlers get a [*MemTx].
package projections
