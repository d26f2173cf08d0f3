package projections

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
)

// Memory keeps read models and checkpoints in process, for the embedded
// demo and tests: tables of keyed values. A batch's writes are staged in a
// *MemTx and made visible together with the checkpoint. Views work as in
// Postgres: Get(view, ...) reads the active version's table. It is safe
// for concurrent use; nothing survives the process.
type Memory struct {
	mu     sync.Mutex
	tables map[string]map[string]any
	views  map[string]int // view base -> active version
	bases  []string
	vers   map[string]map[int]*VersionInfo
	cps    map[key]*ShardStatus
	dead   []DeadLetter
	locks  map[string]chan struct{}
}

// NewMemory returns an empty memory backend; views names the bases read
// through views (see Views).
func NewMemory(views ...string) *Memory {
	return &Memory{tables: map[string]map[string]any{}, views: map[string]int{}, bases: views,
		vers: map[string]map[int]*VersionInfo{}, cps: map[key]*ShardStatus{}, locks: map[string]chan struct{}{}}
}

// MemTx is a Memory batch's transaction: reads see its own writes, and
// its writes become visible at commit, with the checkpoint.
type MemTx struct {
	m      *Memory
	writes map[string]map[string]*any // nil value: deleted
}

// Get returns a table's value at key, as this transaction sees it.
func (tx *MemTx) Get(table, key string) (any, bool) {
	if w, ok := tx.writes[table][key]; ok {
		if w == nil {
			return nil, false
		}
		return *w, true
	}
	v, ok := tx.m.tables[table][key]
	return v, ok
}

// Put sets a table's value at key.
func (tx *MemTx) Put(table, key string, v any) {
	if tx.writes[table] == nil {
		tx.writes[table] = map[string]*any{}
	}
	tx.writes[table][key] = &v
}

// Delete removes key from a table.
func (tx *MemTx) Delete(table, key string) {
	if tx.writes[table] == nil {
		tx.writes[table] = map[string]*any{}
	}
	tx.writes[table][key] = nil
}

// Truncate removes every key of a table.
func (tx *MemTx) Truncate(table string) {
	w := map[string]*any{}
	for k := range tx.m.tables[table] {
		w[k] = nil
	}
	tx.writes[table] = w
}

func (m *Memory) viewTable(table string) string {
	if v, ok := m.views[table]; ok {
		return VersionTable(table, v)
	}
	return table
}

// Get returns a committed value; table may be a view base.
func (m *Memory) Get(table, key string) (any, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.tables[m.viewTable(table)][key]
	return v, ok
}

// Table returns a copy of a committed table; table may be a view base.
func (m *Memory) Table(table string) map[string]any {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.tables[m.viewTable(table)])
}

func (m *Memory) register(ctx context.Context, k key, shards int, source string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	vs := m.vers[k.projection]
	if v, ok := vs[k.version]; ok {
		if v.Shards != shards {
			return fmt.Errorf("projections: %s v%d has %d shards, not %d: %w", k.projection, k.version, v.Shards, shards, orchestrix.ErrInvalid)
		}
		return nil
	}
	if vs == nil {
		vs = map[int]*VersionInfo{}
		m.vers[k.projection] = vs
	}
	status := "building"
	if len(vs) == 0 {
		status = "active"
	}
	m.addVersion(k.projection, k.version, shards, source, status)
	return nil
}

func (m *Memory) addVersion(name string, version, shards int, source, status string) {
	vi := &VersionInfo{Projection: name, Version: version, Status: status, Shards: shards, Source: source, CreatedAt: time.Now()}
	if status == "active" {
		vi.ActivatedAt = vi.CreatedAt
	}
	m.vers[name][version] = vi
	for s := range shards {
		m.cps[key{name, version, s}] = &ShardStatus{Projection: name, Version: version, Shard: s, Status: "running"}
	}
}

func (m *Memory) setup(ctx context.Context, k key, fn func(context.Context, *MemTx) error) error {
	if fn != nil {
		if _, err := m.commitTx(ctx, func(tx *MemTx) error { return fn(ctx, tx) }); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if v := m.vers[k.projection][k.version]; v != nil && v.Status == "active" {
		for _, b := range m.bases {
			if _, ok := m.views[b]; !ok {
				m.views[b] = k.version
			}
		}
	}
	return nil
}

// commitTx runs fn under the lock and applies its writes if it succeeds.
func (m *Memory) commitTx(ctx context.Context, fn func(tx *MemTx) error) (*MemTx, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	tx := &MemTx{m: m, writes: map[string]map[string]*any{}}
	if err := fn(tx); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for t, w := range tx.writes {
		if m.tables[t] == nil {
			m.tables[t] = map[string]any{}
		}
		for k, v := range w {
			if v == nil {
				delete(m.tables[t], k)
			} else {
				m.tables[t][k] = *v
			}
		}
	}
	return tx, nil
}

// memElector gives one in-process holder per role at a time.
type memElector struct {
	m    *Memory
	role string
}

type memTerm struct {
	ch   chan struct{}
	once sync.Once
}

func (t *memTerm) Lost() <-chan struct{} { return nil }
func (t *memTerm) Release()              { t.once.Do(func() { <-t.ch }) }

func (e *memElector) Campaign(ctx context.Context) (stores.Term, error) {
	e.m.mu.Lock()
	ch, ok := e.m.locks[e.role]
	if !ok {
		ch = make(chan struct{}, 1)
		e.m.locks[e.role] = ch
	}
	e.m.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return &memTerm{ch: ch}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (m *Memory) elector(role string, lease time.Duration, instance string, log *slog.Logger) (stores.Elector, error) {
	return &memElector{m: m, role: role}, nil
}

func (m *Memory) claim(ctx context.Context, k key, owner string) (claim, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := m.cps[k]
	if cp == nil {
		return claim{}, fmt.Errorf("projections: %s v%d shard %d: %w", k.projection, k.version, k.shard, ErrUnknownProjection)
	}
	cp.OwnerEpoch++
	cp.Owner, cp.Heartbeat = owner, time.Now()
	v := m.vers[k.projection][k.version]
	return claim{epoch: cp.OwnerEpoch, cursor: cp.Cursor, status: v.Status, created: v.CreatedAt}, nil
}

func (m *Memory) fence(k key, epoch int64, p progress, parked int) (string, error) {
	cp := m.cps[k]
	if cp == nil || cp.OwnerEpoch != epoch {
		return "", fmt.Errorf("projections: %s v%d shard %d epoch %d: %w", k.projection, k.version, k.shard, epoch, ErrFenced)
	}
	cp.Cursor = p.cursor
	cp.Position = max(cp.Position, p.position)
	if !p.eventTime.IsZero() {
		cp.EventTime = p.eventTime
	}
	cp.Applied += int64(p.applied)
	cp.Parked += int64(parked)
	cp.Heartbeat = time.Now()
	cp.Status, cp.Error = "running", ""
	return m.vers[k.projection][k.version].Status, nil
}

func (m *Memory) commit(ctx context.Context, k key, epoch int64, p progress, apply func(context.Context, *MemTx, string) error) (string, error) {
	var status string
	_, err := m.commitTx(ctx, func(tx *MemTx) error {
		if cp := m.cps[k]; cp == nil || cp.OwnerEpoch != epoch {
			return fmt.Errorf("projections: %s v%d shard %d epoch %d: %w", k.projection, k.version, k.shard, epoch, ErrFenced)
		}
		status = m.vers[k.projection][k.version].Status
		if err := apply(ctx, tx, status); err != nil {
			return err
		}
		_, err := m.fence(k, epoch, p, 0)
		return err
	})
	return status, err
}

func (m *Memory) park(ctx context.Context, k key, epoch int64, p progress, dl DeadLetter) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.fence(k, epoch, p, 1); err != nil {
		return err
	}
	dl.ID, dl.ParkedAt, dl.Status = int64(len(m.dead)+1), time.Now(), "parked"
	m.dead = append(m.dead, dl)
	return nil
}

func (m *Memory) stop(ctx context.Context, k key, epoch int64, reason string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := m.cps[k]
	if cp == nil || cp.OwnerEpoch != epoch {
		return false, fmt.Errorf("projections: %s v%d shard %d: %w", k.projection, k.version, k.shard, ErrFenced)
	}
	if cp.Status != "skip" {
		cp.Status = "stopped"
	}
	cp.Error, cp.Heartbeat = reason, time.Now()
	return cp.Status == "skip", nil
}

func (m *Memory) shardStatus(ctx context.Context, k key) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cp := m.cps[k]; cp != nil {
		return cp.Status, nil
	}
	return "", fmt.Errorf("projections: %s v%d shard %d: %w", k.projection, k.version, k.shard, ErrUnknownProjection)
}

// SkipStopped asks the owner of a stopped shard to park the event it is
// stopped on and go on (see Postgres.SkipStopped).
func (m *Memory) SkipStopped(ctx context.Context, name string, version, shard int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := m.cps[key{name, version, shard}]
	if cp == nil || cp.Status != "stopped" {
		return fmt.Errorf("projections: %s v%d shard %d is not stopped: %w", name, version, shard, ErrUnknownProjection)
	}
	cp.Status = "skip"
	return nil
}

func (m *Memory) retries(ctx context.Context, k key) ([]DeadLetter, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []DeadLetter
	for _, d := range m.dead {
		if d.Projection == k.projection && d.Version == k.version && d.Shard == k.shard && d.Status == "retry" {
			out = append(out, d)
		}
	}
	return out, nil
}

func (m *Memory) resolve(ctx context.Context, k key, epoch int64, id int64, apply func(context.Context, *MemTx) error) error {
	_, err := m.commitTx(ctx, func(tx *MemTx) error {
		cp := m.cps[k]
		if cp == nil || cp.OwnerEpoch != epoch {
			return fmt.Errorf("projections: %s v%d shard %d: %w", k.projection, k.version, k.shard, ErrFenced)
		}
		if err := apply(ctx, tx); err != nil {
			m.dead[id-1].Status, m.dead[id-1].Error = "parked", truncate(err.Error())
			m.dead[id-1].Attempts++
			return err
		}
		m.dead[id-1].Status = "retried"
		cp.Parked--
		return nil
	})
	return err
}

func (m *Memory) ping(ctx context.Context) error { return nil }

func (m *Memory) versions(ctx context.Context, name string) ([]VersionInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []VersionInfo
	for _, v := range m.vers[name] {
		out = append(out, *v)
	}
	slices.SortFunc(out, func(a, b VersionInfo) int { return a.Version - b.Version })
	return out, nil
}

// Status returns the checkpoints of every version of projection name
// (lag is not counted: LagEvents is -1).
func (m *Memory) Status(ctx context.Context, name string) ([]ShardStatus, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ShardStatus
	for k, cp := range m.cps {
		if k.projection == name {
			s := *cp
			s.VersionStatus = m.vers[name][k.version].Status
			s.LagEvents = -1
			if !s.Heartbeat.IsZero() {
				s.HeartbeatAge = time.Since(s.Heartbeat)
			}
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("projections: %q: %w", name, ErrUnknownProjection)
	}
	slices.SortFunc(out, func(a, b ShardStatus) int { return (a.Version-b.Version)*4096 + a.Shard - b.Shard })
	return out, nil
}

// DeadLetters returns the parked events of projection name.
func (m *Memory) DeadLetters(ctx context.Context, name string) []DeadLetter {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []DeadLetter
	for _, d := range m.dead {
		if d.Projection == name {
			out = append(out, d)
		}
	}
	return out
}

// RetryParked asks the runners to apply a parked event again.
func (m *Memory) RetryParked(ctx context.Context, id int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id < 1 || id > int64(len(m.dead)) {
		return fmt.Errorf("projections: no dead letter %d: %w", id, orchestrix.ErrInvalid)
	}
	m.dead[id-1].Status = "retry"
	return nil
}

// Rebuild registers the next version of projection name as building.
func (m *Memory) Rebuild(ctx context.Context, name string, shards int) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	vs := m.vers[name]
	if len(vs) == 0 {
		return 0, fmt.Errorf("projections: %q: %w", name, ErrUnknownProjection)
	}
	next, source := 0, ""
	for _, v := range vs {
		if v.Version >= next {
			next, source = v.Version+1, v.Source
		}
		if v.Status == "active" && shards == 0 {
			shards = v.Shards
		}
	}
	m.addVersion(name, next, shards, source, "building")
	return next, nil
}

// Cutover makes version active and repoints the views at once (no lag
// check: use the runner's WaitForNonStale first).
func (m *Memory) Cutover(ctx context.Context, name string, version int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.vers[name][version]
	if v == nil {
		return fmt.Errorf("projections: %s v%d: %w", name, version, ErrUnknownProjection)
	}
	for _, o := range m.vers[name] {
		if o.Status == "active" {
			o.Status = "retired"
		}
	}
	v.Status, v.ActivatedAt = "active", time.Now()
	for _, b := range m.bases {
		m.views[b] = version
	}
	return nil
}

var _ Backend[*MemTx] = (*Memory)(nil)
