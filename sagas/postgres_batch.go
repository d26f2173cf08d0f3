package sagas

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/outbox"
)

// ApplyBatch implements Store in one transaction of two round trips,
// whatever the number of items: BEGIN, the inbox inserts and the
// instances' reads; every write, COMMIT. Each instance is updated once, fenced
// by the version it was read at.
func (s *PostgresStore) ApplyBatch(ctx context.Context, typ string, items []Item) []error {
	errs := make([]error, len(items))
	if len(items) == 0 {
		return errs
	}
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	c, err := s.begin(ctx)
	if err != nil {
		return fail(err)
	}
	defer end(ctx, c)
	b := beginBatch()
	ids := make([]string, 0, len(items))
	for _, it := range items {
		b.Queue(`INSERT INTO `+s.t["saga_inbox"]+` (saga_type, saga_id, input_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, typ, it.SagaID, it.InputID)
		if !slices.Contains(ids, it.SagaID) {
			ids = append(ids, it.SagaID)
		}
	}
	b.Queue(`SELECT `+instanceCols+` FROM `+s.t["saga_instances"]+` WHERE saga_type = $1 AND saga_id = ANY($2)`, typ, ids)
	br := c.SendBatch(ctx, b)
	dup := make([]bool, len(items))
	_, err = br.Exec()
	if err == nil {
		_, err = br.Exec()
	}
	for i := 0; err == nil && i < len(items); i++ {
		tag, e := br.Exec()
		err, dup[i] = e, tag.RowsAffected() == 0
	}
	cur := map[string]*Instance{}
	read := map[string]int64{} // version at read
	if err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			var list []Instance
			list, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Instance, error) { return scanInstance(r) })
			for _, inst := range list {
				cur[inst.ID], read[inst.ID] = &inst, inst.Version
			}
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(fmt.Errorf("sagas: inbox and read of %d inputs: %w", len(items), err))
	}
	if err := s.crash("read"); err != nil {
		return fail(err)
	}

	w := &pgx.Batch{}
	failed := map[string]bool{}
	type timerChange struct {
		timer *Timer
	}
	timers := map[string]timerChange{}
	changed := []string{}
	var history []Transition
	var msgs []outbox.Message
	for i, it := range items {
		switch {
		case failed[it.SagaID]:
			errs[i] = consumers.ErrBlocked
		case dup[i]:
			errs[i] = ErrDuplicateInput
			continue
		}
		if errs[i] == nil {
			var in *Instance
			if c := cur[it.SagaID]; c != nil {
				cp := *c
				in = &cp
			}
			ch, err := it.Decide(in)
			switch {
			case err != nil:
				errs[i] = err
			case ch == nil:
				continue
			case ch.Instance.Version != nextVersion(cur[it.SagaID]):
				errs[i] = fmt.Errorf("sagas: %s/%s: change to version %d: %w", typ, it.SagaID, ch.Instance.Version, ErrFenced)
			default:
				inst := ch.Instance
				cur[it.SagaID] = &inst
				if !slices.Contains(changed, it.SagaID) {
					changed = append(changed, it.SagaID)
				}
				switch {
				case ch.Timer != nil:
					timers[it.SagaID] = timerChange{ch.Timer}
				case !ch.KeepTimer:
					timers[it.SagaID] = timerChange{nil}
				}
				tr := ch.Transition
				tr.SagaID, tr.Version = it.SagaID, inst.Version
				history = append(history, tr)
				msgs = append(msgs, ch.Messages...)
				continue
			}
		}
		// Failed: the input is not recorded (unless it was before this
		// batch), and the instance's later inputs wait.
		failed[it.SagaID] = true
		if !dup[i] {
			w.Queue(`DELETE FROM `+s.t["saga_inbox"]+` WHERE saga_type = $1 AND saga_id = $2 AND input_id = $3`, typ, it.SagaID, it.InputID)
		}
	}
	fence := map[int]func() error{} // statement index -> its error when fenced
	slices.Sort(changed)            // two batches that overlap (a zombie's) lock in one order
	for _, id := range changed {
		i := cur[id]
		v, ok := read[id]
		fence[w.Len()] = func() error { return fmt.Errorf("sagas: %s/%s at version %d: %w", typ, id, v, ErrFenced) }
		if !ok {
			w.Queue(fenced(`INSERT INTO `+s.t["saga_instances"]+` (`+instanceCols+`) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) ON CONFLICT DO NOTHING`),
				typ, id, i.DefinitionVersion, i.Version, string(i.Status), i.Step, i.Attempt, i.Tries, i.Wait, []byte(i.State), i.Reason, i.StartedAt, i.UpdatedAt)
		} else {
			w.Queue(fenced(`UPDATE `+s.t["saga_instances"]+` SET version = $4, status = $5, step = $6, attempt = $7, tries = $8, wait = $9, state = $10,
				reason = $11, updated_at = $12 WHERE saga_type = $1 AND saga_id = $2 AND version = $3`),
				typ, id, v, i.Version, string(i.Status), i.Step, i.Attempt, i.Tries, i.Wait, []byte(i.State), i.Reason, i.UpdatedAt)
		}
		if tc, ok := timers[id]; ok {
			if t := tc.timer; t != nil {
				w.Queue(`INSERT INTO `+s.t["saga_timers"]+` (saga_type, saga_id, phase, step, try, kind, due_at) VALUES ($1,$2,$3,$4,$5,$6,$7)
					ON CONFLICT (saga_type, saga_id) DO UPDATE SET phase = $3, step = $4, try = $5, kind = $6, due_at = $7`,
					typ, id, string(t.Fired.Phase), t.Fired.Step, t.Fired.Try, t.Fired.Kind, t.Due)
			} else {
				w.Queue(`DELETE FROM `+s.t["saga_timers"]+` WHERE saga_type = $1 AND saga_id = $2`, typ, id)
			}
		}
	}
	// The history rows after the fenced updates: a lost race is then
	// reported as ErrFenced, not as a duplicate history row.
	for _, tr := range history {
		w.Queue(`INSERT INTO `+s.t["saga_transitions"]+` (saga_type, saga_id, version, at, input_id, input_kind, from_status, to_status, step, note)
			VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)`, typ, tr.SagaID, tr.Version, tr.At, tr.InputID, string(tr.InputKind), string(tr.From),
			string(tr.To), tr.Step, tr.Note)
	}
	if err := s.out.Write(ctx, batchExecer{w}, msgs...); err != nil {
		return fail(fmt.Errorf("sagas: commands of %d inputs: %w", len(items), err))
	}
	if err := s.commitWrites(ctx, c, w, fence); err != nil {
		if !errors.Is(err, ErrFenced) {
			err = fmt.Errorf("sagas: save %d inputs: %w", len(items), err)
		}
		return fail(err)
	}
	return errs
}

// nextVersion is the version a change of cur (nil: none yet) must have.
func nextVersion(cur *Instance) int64 {
	if cur == nil {
		return 1
	}
	return cur.Version + 1
}
