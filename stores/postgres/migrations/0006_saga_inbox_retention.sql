-- Retention of saga_inbox (sagas.Store.PruneInbox): the inbox rows of an
-- instance that ended (completed or compensated; never
-- compensation_failed, which an operator may still retry) are deleted
-- once it has not changed for the retention, and the instance is marked,
-- so a prune never scans the instances it already pruned. An ended
-- instance ignores every input, so it needs no inbox to stay unchanged.
ALTER TABLE {{schema}}.saga_instances ADD COLUMN inbox_pruned_at timestamptz;
CREATE INDEX saga_instances_prunable ON {{schema}}.saga_instances (saga_type, updated_at)
    WHERE inbox_pruned_at IS NULL AND status IN ('completed', 'compensated');
