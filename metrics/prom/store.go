package prom

import (
	"context"
	"errors"
	"iter"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/prometheus/client_golang/prometheus"
)

// StoreMetrics are the series of event stores wrapped by Store:
//
//	orchestrix_store_append_seconds{op,outcome}  histogram: one Append, AppendMany or AppendDecisions call
//	orchestrix_store_conflicts_total{op}         calls that failed the expected-version check (stores.ErrConflict)
//	orchestrix_store_appended_events_total{op}   events written (duplicates of an earlier command not counted)
//	orchestrix_store_duplicates_total{op}        streams whose command had been appended before (nothing written)
//
// op is append, append_many or append_decisions; outcome is ok,
// conflict or error. One StoreMetrics serves any number of stores.
type StoreMetrics struct {
	seconds                    *prometheus.HistogramVec
	conflicts, events, dupes   *prometheus.CounterVec
	okObs, conflictObs, errObs [3]prometheus.Observer
	conflictC, eventsC, dupesC [3]prometheus.Counter
}

const (
	opAppend = iota
	opAppendMany
	opAppendDecisions
)

var opNames = [3]string{"append", "append_many", "append_decisions"}

// NewStoreMetrics registers the store series with reg.
func NewStoreMetrics(reg prometheus.Registerer) (*StoreMetrics, error) {
	m := &StoreMetrics{
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "orchestrix_store_append_seconds",
			Help: "Time of one append call to the event store, by operation and outcome (ok, conflict, error).", Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16)},
			[]string{"op", "outcome"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_store_conflicts_total",
			Help: "Append calls that failed the expected-version check (stores.ErrConflict)."}, []string{"op"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_store_appended_events_total",
			Help: "Events written by append calls."}, []string{"op"}),
		dupes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_store_duplicates_total",
			Help: "Streams of an append whose command had been appended before (nothing written)."}, []string{"op"}),
	}
	if err := register(reg, m.seconds, m.conflicts, m.events, m.dupes); err != nil {
		return nil, err
	}
	for i, op := range opNames {
		m.okObs[i] = m.seconds.WithLabelValues(op, "ok")
		m.conflictObs[i] = m.seconds.WithLabelValues(op, "conflict")
		m.errObs[i] = m.seconds.WithLabelValues(op, "error")
		m.conflictC[i] = m.conflicts.WithLabelValues(op)
		m.eventsC[i] = m.events.WithLabelValues(op)
		m.dupesC[i] = m.dupes.WithLabelValues(op)
	}
	return m, nil
}

// done records one call of op that started at start.
func (m *StoreMetrics) done(op int, start time.Time, err error, results []stores.AppendResult) {
	d := time.Since(start).Seconds()
	switch {
	case err == nil:
		m.okObs[op].Observe(d)
	case errors.Is(err, stores.ErrConflict):
		m.conflictObs[op].Observe(d)
		m.conflictC[op].Inc()
		return
	default:
		m.errObs[op].Observe(d)
		return
	}
	n, dup := 0, 0
	for _, r := range results {
		switch {
		case r.Duplicate:
			dup++
		case r.Rejection == nil && r.ToVersion >= r.FromVersion && r.FromVersion > 0:
			n += int(r.ToVersion - r.FromVersion + 1)
		}
	}
	if n > 0 {
		m.eventsC[op].Add(float64(n))
	}
	if dup > 0 {
		m.dupesC[op].Add(float64(dup))
	}
}

// Store returns s timing its appends into m. The result keeps the
// optional interfaces the aggregates processor looks for
// (stores.RejectionRecorder, stores.MultiStreamReader) when s has them,
// so wrapping changes no behaviour; reads pass through untimed. Give a
// relay or a projection the unwrapped store: they look for capabilities
// of the concrete store (batch reads, leases) that the wrapper hides.
func Store(s stores.EventStore, m *StoreMetrics) stores.EventStore {
	t := &timedStore{s: s, m: m}
	rr, isRR := s.(stores.RejectionRecorder)
	ms, isMS := s.(stores.MultiStreamReader)
	switch {
	case isRR && isMS:
		return &timedRecorderReader{timedStore: t, rr: rr, MultiStreamReader: ms}
	case isRR:
		return &timedRecorder{timedStore: t, rr: rr}
	case isMS:
		return &timedReader{timedStore: t, MultiStreamReader: ms}
	}
	return t
}

type timedStore struct {
	s stores.EventStore
	m *StoreMetrics
}

func (t *timedStore) Append(ctx context.Context, streamID string, expected stores.ExpectedVersion, events []orchestrix.Event) (stores.AppendResult, error) {
	start := time.Now()
	r, err := t.s.Append(ctx, streamID, expected, events)
	t.m.done(opAppend, start, err, []stores.AppendResult{r})
	return r, err
}

func (t *timedStore) AppendMany(ctx context.Context, reqs []stores.AppendRequest) ([]stores.AppendResult, error) {
	start := time.Now()
	r, err := t.s.AppendMany(ctx, reqs)
	t.m.done(opAppendMany, start, err, r)
	return r, err
}

func (t *timedStore) ReadStream(ctx context.Context, streamID string, after uint64) iter.Seq2[orchestrix.Event, error] {
	return t.s.ReadStream(ctx, streamID, after)
}

func (t *timedStore) ReadAll(ctx context.Context, after stores.Cursor, limit int) iter.Seq2[stores.Entry, error] {
	return t.s.ReadAll(ctx, after, limit)
}

func (t *timedStore) FindCommand(ctx context.Context, commandID string) (stores.AppendResult, bool, error) {
	return t.s.FindCommand(ctx, commandID)
}

func (t *timedStore) SaveSnapshot(ctx context.Context, s stores.Snapshot) error {
	return t.s.SaveSnapshot(ctx, s)
}

func (t *timedStore) LoadSnapshot(ctx context.Context, streamID string) (stores.Snapshot, bool, error) {
	return t.s.LoadSnapshot(ctx, streamID)
}

func appendDecisions(ctx context.Context, t *timedStore, rr stores.RejectionRecorder, reqs []stores.AppendRequest, rejected []stores.RejectedCommand) ([]stores.AppendResult, error) {
	start := time.Now()
	r, err := rr.AppendDecisions(ctx, reqs, rejected)
	t.m.done(opAppendDecisions, start, err, r)
	return r, err
}

type timedRecorder struct {
	*timedStore
	rr stores.RejectionRecorder
}

func (t *timedRecorder) AppendDecisions(ctx context.Context, reqs []stores.AppendRequest, rejected []stores.RejectedCommand) ([]stores.AppendResult, error) {
	return appendDecisions(ctx, t.timedStore, t.rr, reqs, rejected)
}

type timedReader struct {
	*timedStore
	stores.MultiStreamReader
}

type timedRecorderReader struct {
	*timedStore
	stores.MultiStreamReader
	rr stores.RejectionRecorder
}

func (t *timedRecorderReader) AppendDecisions(ctx context.Context, reqs []stores.AppendRequest, rejected []stores.RejectedCommand) ([]stores.AppendResult, error) {
	return appendDecisions(ctx, t.timedStore, t.rr, reqs, rejected)
}

// register registers every collector or none.
func register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	var errs []error
	var done []prometheus.Collector
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		} else {
			done = append(done, c)
		}
	}
	if err := errors.Join(errs...); err != nil {
		for _, c := range done {
			reg.Unregister(c)
		}
		return err
	}
	return nil
}
