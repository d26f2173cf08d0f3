package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
)

// SourceStore is the checkpoint source name of the store source.
const SourceStore = "store"

// Runner builds a projection from an event store's log: every registered
// version from its own Version up that is not dropped (building, active or
// retired: retired versions stay current for a rollback), one goroutine
// per shard of each, leading the shards this process is elected for.
// Versions registered while it runs (`orchestrix projections rebuild`)
// are picked up within VersionScan. Create it with New; it is safe for
// concurrent use.
type Runner[T any] struct {
	name    string
	cfg     config
	backend Backend[T]
	source  Source
	handler Handler[T]

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced when a shard's state changes
	versions map[int][]shardState
}

// shardState is what WaitForNonStale watches and Stats reports.
type shardState struct {
	// caughtUp is the mark (Source.mark) of the last read that found the
	// shard at the end of its source.
	caughtUp uint64
	err      error // a stopped shard's poison error
	// atEnd: the last read found the end (caughtUp is its mark).
	atEnd           bool
	leading         bool
	applied, parked uint64
	lastCommit      time.Time
	lastEvent       time.Time // of the last event applied
}

// ShardStats is one shard as this process sees it (Runner.Stats), for
// metrics and health checks; the database's view of every process is
// Postgres.Status.
type ShardStats struct {
	Version, Shard int
	// Leading reports whether this process owns the shard now.
	Leading bool
	// Applied and Parked count the events this process applied and
	// parked since Run started.
	Applied, Parked uint64
	// Stopped is the poison error a stopped shard waits on, else nil.
	Stopped error
	// LastCommit is when this process last committed for the shard (its
	// heartbeat: a leading shard whose LastCommit grows old is stuck).
	LastCommit time.Time
	// CaughtUp reports whether the last read found the end of the source;
	// LagSeconds is 0 then, else the age (by Event.Time) of the last
	// event applied.
	CaughtUp   bool
	LagSeconds float64
}

// Stats returns the state of every shard of every version this runner
// builds, sorted by version and shard. It is safe to call at any time.
func (r *Runner[T]) Stats() []ShardStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []ShardStats
	for v, shards := range r.versions {
		for i, st := range shards {
			s := ShardStats{Version: v, Shard: i, Leading: st.leading, Applied: st.applied, Parked: st.parked,
				Stopped: st.err, LastCommit: st.lastCommit, CaughtUp: st.atEnd}
			if !st.atEnd && !st.lastEvent.IsZero() {
				s.LagSeconds = max(time.Since(st.lastEvent).Seconds(), 0)
			}
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b ShardStats) int { return (a.Version-b.Version)*4096 + a.Shard - b.Shard })
	return out
}

// update changes a shard's state under the lock.
func (r *Runner[T]) update(k key, fn func(*shardState)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if shards := r.versions[k.version]; k.shard < len(shards) {
		fn(&shards[k.shard])
	}
}

// New returns a runner of projection name on backend, reading source
// (FromStore or FromTopic), applying batches with h. It validates the whole configuration and
// reports every problem at once (errors wrap orchestrix.ErrInvalid).
func New[T any](name string, backend Backend[T], source Source, h Handler[T], opts ...Option) (*Runner[T], error) {
	cfg := config{version: 1, shards: 1, batchSize: DefaultBatchSize, poll: DefaultPollInterval, policy: Stop,
		attempts: DefaultAttempts, retryStopped: DefaultRetryStopped, lease: DefaultLease, scan: DefaultVersionScan}
	for _, o := range opts {
		o(&cfg)
	}
	err := cfg.validate(name)
	var errs []error
	if backend == nil {
		errs = append(errs, errors.New("nil backend"))
	}
	if source == nil {
		errs = append(errs, errors.New("nil source"))
	}
	if h == nil {
		errs = append(errs, errors.New("nil handler"))
	}
	if cfg.setup != nil {
		if _, ok := cfg.setup.(func(context.Context, T, int) error); !ok {
			errs = append(errs, fmt.Errorf("setup is a %T, the backend's transactions need a func(context.Context, %T, int) error", cfg.setup, *new(T)))
		}
	}
	if len(errs) > 0 {
		err = errors.Join(err, fmt.Errorf("projections: %s: %w: %w", name, orchestrix.ErrInvalid, errors.Join(errs...)))
	}
	if err != nil {
		return nil, err
	}
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}
	cfg.log = cfg.log.With("projection", name)
	return &Runner[T]{name: name, cfg: cfg, backend: backend, source: source, handler: h,
		changed: make(chan struct{}), versions: map[int][]shardState{}}, nil
}

// Run registers the runner's version (active if the projection has none,
// else building), then builds every version from it up until ctx ends; it
// returns nil on a clean shutdown. It returns an error only when the
// projection cannot be registered (the database is unreachable at start,
// or the configuration contradicts the registered version, e.g. another
// shard count) or a shard's elector cannot be made. Later outages are
// logged and retried: a shard that loses its database or its lease
// campaigns again, a version whose Setup fails is retried at the next
// scan. A stopped shard (poison event) does not end Run either: it stays
// stopped, visibly, and is retried every RetryStopped.
func (r *Runner[T]) Run(ctx context.Context) error {
	shards := r.cfg.shards
	if n, err := r.source.shards(ctx); err != nil {
		return fmt.Errorf("projections: %s: source: %w", r.name, err)
	} else if n > 0 {
		shards = n
	}
	if err := r.backend.register(ctx, key{r.name, r.cfg.version, 0}, shards, r.source.kind()); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	defer wg.Wait()
	for {
		vs, err := r.backend.versions(ctx, r.name)
		if err != nil && ctx.Err() == nil {
			// The database is away: the shards notice too and start over;
			// look again at the next scan.
			r.cfg.log.Warn("list versions", "err", err)
		}
		for _, v := range vs {
			if v.Version < r.cfg.version {
				continue
			}
			r.mu.Lock()
			_, running := r.versions[v.Version]
			if !running {
				r.versions[v.Version] = make([]shardState, v.Shards)
			}
			r.mu.Unlock()
			if running {
				continue
			}
			if err := r.setup(ctx, v.Version); err != nil {
				// A version whose tables cannot be prepared must not stop
				// the others (the active one keeps serving): log it and
				// try again at the next scan.
				r.mu.Lock()
				delete(r.versions, v.Version)
				r.mu.Unlock()
				if ctx.Err() == nil {
					r.cfg.log.Error("cannot set up version; retrying at the next scan", "version", v.Version, "err", err)
				}
				continue
			}
			r.cfg.log.Info("building version", "version", v.Version, "status", v.Status, "shards", v.Shards)
			for s := range v.Shards {
				wg.Go(func() {
					if err := r.runShard(ctx, v.Version, v.Shards, s); err != nil {
						emu.Lock()
						errs = append(errs, err)
						emu.Unlock()
						cancel()
					}
				})
			}
		}
		if !sleep(ctx, r.cfg.scan) {
			break
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (r *Runner[T]) setup(ctx context.Context, version int) error {
	var fn func(context.Context, T) error
	if user, ok := r.cfg.setup.(func(context.Context, T, int) error); ok {
		fn = func(ctx context.Context, tx T) error { return user(ctx, tx, version) }
	}
	if err := r.backend.setup(ctx, key{r.name, version, 0}, fn); err != nil {
		return fmt.Errorf("projections: %s v%d: setup: %w", r.name, version, err)
	}
	return nil
}

func (r *Runner[T]) role(version, shard int) string {
	return fmt.Sprintf("orchestrix.projection:%s:v%d:%d", r.name, version, shard)
}

func (r *Runner[T]) runShard(ctx context.Context, version, shards, shard int) error {
	log := r.cfg.log.With("version", version, "shard", shard)
	el, err := r.backend.elector(r.role(version, shard), r.cfg.lease, r.cfg.instance, log)
	if err != nil {
		return err
	}
	for ctx.Err() == nil {
		term, err := el.Campaign(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("projections: %s v%d shard %d: campaign: %w", r.name, version, shard, err)
		}
		log.Info("leading shard")
		k := key{r.name, version, shard}
		r.update(k, func(st *shardState) { st.leading = true })
		err = r.lead(ctx, term, k, shards, log)
		r.update(k, func(st *shardState) { st.leading = false })
		term.Release()
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("shard lost, campaigning again", "err", err)
		if !sleep(ctx, time.Second) {
			return nil
		}
	}
	return nil
}

// lead runs one term of a shard: claim (raise the epoch), then read,
// apply and commit until ctx ends, the term is lost or a commit is fenced.
func (r *Runner[T]) lead(ctx context.Context, term stores.Term, k key, shards int, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-term.Lost():
			cancel()
		case <-ctx.Done():
		}
	}()
	c, err := r.backend.claim(ctx, k, r.cfg.instance)
	if err != nil {
		return err
	}
	rd, err := r.source.open(ctx, k.shard, shards, c.cursor, r.cfg.batchSize)
	if err != nil {
		return fmt.Errorf("projections: %s v%d shard %d: %w", r.name, k.version, k.shard, err)
	}
	defer rd.close()
	// While a page is applied, the next one is read (when the source is
	// not at its end): reading and committing overlap. The prefetched page
	// is drained before the reader is rewound or closed.
	type readResult struct {
		page  []item
		atEnd uint64
		err   error
	}
	var next chan readResult
	prefetch := func() {
		next = make(chan readResult, 1)
		go func(ch chan<- readResult) {
			page, atEnd, err := rd.read(ctx)
			ch <- readResult{page, atEnd, err}
		}(next)
	}
	drain := func() {
		if next != nil {
			<-next
			next = nil
		}
	}
	defer drain()
	s := &shardRun[T]{r: r, k: k, epoch: c.epoch, status: c.status, created: c.created, cursor: c.cursor, log: log}
	lastBeat, lastRetries := time.Now(), time.Time{}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var res readResult
		if next != nil {
			res = <-next
			next = nil
		} else {
			res.page, res.atEnd, res.err = rd.read(ctx)
		}
		page, atEnd, err := res.page, res.atEnd, res.err
		if err != nil {
			return fmt.Errorf("projections: %s v%d shard %d: %w", r.name, k.version, k.shard, err)
		}
		if len(page) > 0 {
			if atEnd == 0 {
				prefetch()
			}
			if err := s.apply(ctx, page); err != nil {
				drain()
				var pe *PoisonError
				if !errors.As(err, &pe) {
					return err
				}
				r.setState(k, 0, pe)
				log.Error("shard stopped on a poison event", "err", err)
				// Wait RetryStopped, or less if an operator asks to skip.
				for waited := time.Duration(0); waited < r.cfg.retryStopped; waited += time.Second {
					if !sleep(ctx, min(time.Second, r.cfg.retryStopped-waited)) {
						return ctx.Err()
					}
					if st, err := r.backend.shardStatus(ctx, k); err == nil && st == "skip" {
						break
					}
				}
				if err := rd.rewind(s.cursor); err != nil {
					return err
				}
				continue
			}
			r.setState(k, 0, nil)
			lastBeat = time.Now()
		}
		if atEnd > 0 {
			r.setState(k, atEnd, nil)
			if time.Since(lastRetries) > time.Second {
				lastRetries = time.Now()
				if err := s.applyRetries(ctx); err != nil {
					return err
				}
			}
			if time.Since(lastBeat) > r.cfg.lease/4 {
				// A heartbeat is an empty commit: it proves the owner's
				// loop runs and that it still holds the epoch.
				if err := s.commit(ctx, nil, progress{cursor: s.cursor}); err != nil {
					return err
				}
				lastBeat = time.Now()
			}
			if !sleep(ctx, r.cfg.poll) {
				return ctx.Err()
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (r *Runner[T]) setState(k key, caughtUp uint64, poison *PoisonError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := &r.versions[k.version][k.shard]
	st.atEnd = caughtUp > 0
	if caughtUp > 0 {
		st.caughtUp = caughtUp
	}
	if poison != nil {
		st.err = poison
	} else {
		st.err = nil
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// WaitForNonStale blocks until every shard of every version this runner
// builds (at least its own Version) has applied every event committed
// before the call, or returns the poison error of a stopped shard, or
// ctx's error. With a PostgreSQL store that means a read whose gap-safe
// horizon passed every transaction that existed at the call, so a
// long-running transaction anywhere in the cluster delays it (see
// stores/postgres); with a topic, a read that found the partition's last
// stable offset reached after the call began. Tests and read-your-writes
// callers use it; it watches this process's shards, so call it where Run
// runs and this process leads the shards.
func (r *Runner[T]) WaitForNonStale(ctx context.Context) error {
	since, err := r.source.mark(ctx)
	if err != nil {
		return fmt.Errorf("projections: %s: wait: %w", r.name, err)
	}
	for {
		r.mu.Lock()
		_, done := r.versions[r.cfg.version]
		changed := r.changed
		var err error
		for _, shards := range r.versions {
			for _, st := range shards {
				if st.err != nil {
					err = st.err
				}
				if st.caughtUp < since {
					done = false
				}
			}
		}
		r.mu.Unlock()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// shardRun is one term of one shard.
type shardRun[T any] struct {
	r       *Runner[T]
	k       key
	epoch   int64
	cursor  string // the last committed
	status  string
	created time.Time // the version's registration
	log     *slog.Logger
}

// handlerError marks an error returned by the user's handler (as opposed
// to one of the backend's own statements).
type handlerError struct{ err error }

func (e *handlerError) Error() string { return e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

func (s *shardRun[T]) batch(events []orchestrix.Event) Batch {
	replaying := s.status != "active" || (len(events) > 0 && events[len(events)-1].Time.Before(s.created))
	return Batch{Projection: s.r.name, Version: s.k.version, Shard: s.k.shard, Events: events, Replaying: replaying}
}

// commit applies events (maybe none) and moves the checkpoint to p in one
// transaction.
func (s *shardRun[T]) commit(ctx context.Context, events []orchestrix.Event, p progress) error {
	start := time.Now()
	_, err := s.r.backend.commit(ctx, s.k, s.epoch, p, func(ctx context.Context, tx T, status string) error {
		s.status = status
		if len(events) > 0 {
			if err := s.r.handler(ctx, tx, s.batch(events)); err != nil {
				return &handlerError{err}
			}
		}
		if s.r.cfg.beforeCommit != nil {
			return s.r.cfg.beforeCommit(ctx, s.k.version, s.k.shard)
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.cursor = p.cursor
	s.r.update(s.k, func(st *shardState) {
		st.applied += uint64(len(events))
		st.lastCommit = time.Now()
		if len(events) > 0 {
			st.lastEvent = events[len(events)-1].Time
		}
	})
	if s.r.cfg.onCommit != nil {
		s.r.cfg.onCommit(Commit{Projection: s.r.name, Version: s.k.version, Shard: s.k.shard, Events: events, Cursor: p.cursor, Took: time.Since(start)})
	}
	return nil
}

func progressAt(it item, applied int) progress {
	return progress{cursor: it.cursor, position: it.event.Position, eventTime: it.event.Time, applied: applied}
}

// apply commits one page: all of it in one transaction, or, when the
// handler fails (or a record could not be decoded), event by event to
// find and handle the poison event.
func (s *shardRun[T]) apply(ctx context.Context, page []item) error {
	// A page whose events straddle the version's registration is applied
	// in two parts, so that no batch mixes replayed and live events.
	for i := 1; i < len(page); i++ {
		if page[i-1].event.Time.Before(s.created) && !page[i].event.Time.Before(s.created) {
			if err := s.apply(ctx, page[:i]); err != nil {
				return err
			}
			return s.apply(ctx, page[i:])
		}
	}
	mine := make([]orchestrix.Event, 0, len(page))
	idx := make([]int, 0, len(page))
	bad := false
	for i, it := range page {
		if it.mine {
			mine = append(mine, it.event)
			idx = append(idx, i)
			bad = bad || it.bad != nil
		}
	}
	last := page[len(page)-1]
	p := progress{cursor: last.cursor}
	if len(idx) > 0 {
		p = progressAt(page[idx[len(idx)-1]], len(mine))
		p.cursor = last.cursor
	}
	var he *handlerError
	if !bad {
		err := s.commit(ctx, mine, p)
		if err == nil || !errors.As(err, &he) {
			return err
		}
		s.log.Warn("batch failed, applying it event by event", "events", len(mine), "err", he.err)
	}
	for j, i := range idx {
		it := page[i]
		herr := it.bad
		for attempt := 1; herr == nil && attempt <= s.r.cfg.attempts; attempt++ {
			err := s.commit(ctx, mine[j:j+1], progressAt(it, 1))
			if err == nil {
				break
			}
			if !errors.As(err, &he) {
				return err
			}
			if attempt == s.r.cfg.attempts {
				herr = he.err
			} else if !sleep(ctx, time.Duration(attempt)*100*time.Millisecond) {
				return ctx.Err()
			}
		}
		if herr == nil {
			continue
		}
		// A handler failing because the database is down is not a poison
		// event: return and let the shard start over.
		if it.bad == nil {
			if err := s.r.backend.ping(ctx); err != nil {
				return fmt.Errorf("projections: %s shard %d: backend unreachable after a handler error (%v): %w", s.r.name, s.k.shard, herr, err)
			}
		}
		e := it.event
		pe := &PoisonError{Projection: s.r.name, Version: s.k.version, Shard: s.k.shard, Event: e, Attempts: s.r.cfg.attempts, Err: herr}
		if s.r.cfg.policy == Park {
			dl := DeadLetter{Projection: s.r.name, Version: s.k.version, Shard: s.k.shard, Event: e, Error: truncate(herr.Error()), Attempts: s.r.cfg.attempts}
			if err := s.r.backend.park(ctx, s.k, s.epoch, progressAt(it, 0), dl); err != nil {
				return err
			}
			s.cursor = it.cursor
			s.r.update(s.k, func(st *shardState) { st.parked++; st.lastCommit = time.Now() })
			s.log.Warn("parked a poison event", "stream", e.StreamID, "version", e.Version, "event_type", e.Type, "err", herr)
			continue
		}
		skip, err := s.r.backend.stop(ctx, s.k, s.epoch, truncate(pe.Error()))
		if err != nil {
			return err
		}
		if !skip {
			return pe
		}
		// An operator asked to skip it (SkipStopped): park it and go on.
		dl := DeadLetter{Projection: s.r.name, Version: s.k.version, Shard: s.k.shard, Event: e, Error: truncate("skipped by an operator: " + herr.Error()), Attempts: s.r.cfg.attempts}
		if err := s.r.backend.park(ctx, s.k, s.epoch, progressAt(it, 0), dl); err != nil {
			return err
		}
		s.cursor = it.cursor
		s.r.update(s.k, func(st *shardState) { st.parked++; st.lastCommit = time.Now() })
		s.log.Warn("parked the event the shard was stopped on, as an operator asked", "stream", e.StreamID, "version", e.Version, "event_type", e.Type)
	}
	// Entries of other shards after this shard's last event.
	if s.cursor == last.cursor {
		return nil
	}
	return s.commit(ctx, nil, progress{cursor: last.cursor})
}

// applyRetries applies the dead letters an operator asked to retry; one
// that fails again stays parked with its new error.
func (s *shardRun[T]) applyRetries(ctx context.Context) error {
	dls, err := s.r.backend.retries(ctx, s.k)
	if err != nil {
		return err
	}
	for _, dl := range dls {
		err := s.r.backend.resolve(ctx, s.k, s.epoch, dl.ID, func(ctx context.Context, tx T) error {
			if err := s.r.handler(ctx, tx, s.batch([]orchestrix.Event{dl.Event})); err != nil {
				return &handlerError{err}
			}
			return nil
		})
		var he *handlerError
		if errors.As(err, &he) {
			s.log.Warn("a retried dead letter failed again", "id", dl.ID, "err", he.err)
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

const maxErrorLen = 4096

func truncate(s string) string {
	if len(s) <= maxErrorLen {
		return s
	}
	return s[:maxErrorLen] + "…"
}
