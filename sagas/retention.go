package sagas

import (
	"context"
	"fmt"
	"time"
)

// Inbox retention. The inbox keeps every input ID an instance applied,
// so that a redelivered input changes nothing. An instance that ended
// (StatusCompleted or StatusCompensated) ignores every input whether or
// not its inbox remembers it: a start finds it started, an outcome or a
// timer is not awaited, an event comes after the end, an operator's
// retry or resolve is not allowed (dead-lettered with ErrNotAllowed). So
// once an instance has ended and not changed for a while, its inbox rows
// can go. Instances in StatusCompensationFailed keep theirs: an operator
// can still move them on.
const (
	// DefaultInboxRetention is how long an ended instance keeps its
	// inbox rows (RunInboxRetention).
	DefaultInboxRetention = 24 * time.Hour
	// DefaultPruneEvery is how often RunInboxRetention prunes.
	DefaultPruneEvery = time.Minute
	// PruneBatch is how many instances one prune transaction handles.
	PruneBatch = 1000
)

// ended reports whether an instance in status s ignores every input.
func ended(s Status) bool { return s == StatusCompleted || s == StatusCompensated }

// PruneInbox deletes the inbox rows of the instances that ended before
// now minus keep, in transactions of PruneBatch instances, and returns
// how many instances and rows it pruned. An input of such an instance
// delivered again afterwards is still ignored: it is recorded again (one
// row) and changes nothing.
func (r *Runtime) PruneInbox(ctx context.Context, keep time.Duration) (instances, rows int, err error) {
	before := r.now().UTC().Add(-keep)
	for {
		n, k, err := r.store.PruneInbox(ctx, r.typ, before, PruneBatch)
		instances, rows = instances+n, rows+k
		if err != nil || n < PruneBatch {
			return instances, rows, err
		}
	}
}

// RunInboxRetention prunes the inbox (PruneInbox with keep) every
// interval until ctx ends, then returns nil. Every member may run it:
// prunes skip the instances another one holds. Errors are logged and
// tried again at the next interval.
func (r *Runtime) RunInboxRetention(ctx context.Context, keep, every time.Duration) error {
	if keep < 0 || every <= 0 {
		return fmt.Errorf("sagas: inbox retention %s every %s: keep must not be negative, every positive", keep, every)
	}
	for {
		n, k, err := r.PruneInbox(ctx, keep)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			r.log.Warn("prune inbox", "err", err)
		case n > 0:
			r.log.Debug("inbox pruned", "instances", n, "rows", k)
		}
		sleep(ctx, every)
		if ctx.Err() != nil {
			return nil
		}
	}
}

// PruneInbox implements Store.
func (s *PostgresStore) PruneInbox(ctx context.Context, typ string, endedBefore time.Time, limit int) (instances, rows int, err error) {
	err = s.pool.QueryRow(ctx, `WITH ended AS (
			SELECT saga_type, saga_id FROM `+s.t["saga_instances"]+`
			WHERE saga_type = $1 AND inbox_pruned_at IS NULL AND status IN ('completed', 'compensated') AND updated_at < $2
			ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED),
		marked AS (
			UPDATE `+s.t["saga_instances"]+` i SET inbox_pruned_at = now() FROM ended e
			WHERE i.saga_type = e.saga_type AND i.saga_id = e.saga_id RETURNING 1),
		gone AS (
			DELETE FROM `+s.t["saga_inbox"]+` b USING ended e
			WHERE b.saga_type = e.saga_type AND b.saga_id = e.saga_id RETURNING 1)
		SELECT (SELECT count(*) FROM marked), (SELECT count(*) FROM gone)`, typ, endedBefore, limit).Scan(&instances, &rows)
	if err != nil {
		return 0, 0, fmt.Errorf("sagas: prune %s inbox: %w", typ, err)
	}
	return instances, rows, nil
}

// PruneInbox implements Store.
func (m *MemoryStore) PruneInbox(ctx context.Context, typ string, endedBefore time.Time, limit int) (instances, rows int, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, i := range m.inst {
		if instances == limit {
			break
		}
		if k.typ != typ || !ended(i.Status) || !i.UpdatedAt.Before(endedBefore) || m.inbox[k] == nil {
			continue
		}
		instances, rows = instances+1, rows+len(m.inbox[k])
		delete(m.inbox, k)
	}
	return instances, rows, nil
}
