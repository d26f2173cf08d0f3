package prom

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/prometheus/client_golang/prometheus"
)

// Sagas are the series of saga runtimes, fed by sagas.OnTransition
// (Observe) and by a store wrapped with Store:
//
//	orchestrix_saga_transitions_total{saga_type,input,to}   committed transitions by input kind and resulting status
//	orchestrix_saga_transition_seconds{saga_type}           histogram: a transition's decision to its commit
//	orchestrix_saga_commands_total{saga_type}               commands written to the outbox with a transition
//	orchestrix_saga_timers_fired_total{saga_type}           timers fired (TimerFired messages written)
//	orchestrix_saga_timer_lateness_seconds{saga_type}       histogram: a timer's fire time minus its due time
//
// One Sagas serves every saga type of a process.
type Sagas struct {
	transitions *prometheus.CounterVec
	seconds     *prometheus.HistogramVec
	commands    *prometheus.CounterVec
	fired       *prometheus.CounterVec
	lateness    *prometheus.HistogramVec
}

// NewSagas registers the saga series with reg.
func NewSagas(reg prometheus.Registerer) (*Sagas, error) {
	s := &Sagas{
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_saga_transitions_total",
			Help: "Committed saga transitions, by saga type, input kind and the status they led to."}, []string{"saga_type", "input", "to"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "orchestrix_saga_transition_seconds",
			Help:    "Time from a transition's decision (its At) to its commit, as seen by OnTransition.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"saga_type"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_saga_commands_total",
			Help: "Commands written to the outbox with committed saga transitions."}, []string{"saga_type"}),
		fired: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orchestrix_saga_timers_fired_total",
			Help: "Saga timers fired (their TimerFired message committed to the outbox)."}, []string{"saga_type"}),
		lateness: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "orchestrix_saga_timer_lateness_seconds",
			Help:    "A fired timer's fire time minus its due time.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}, []string{"saga_type"}),
	}
	if err := register(reg, s.transitions, s.seconds, s.commands, s.fired, s.lateness); err != nil {
		return nil, err
	}
	return s, nil
}

// Observe records a committed transition; pass it to sagas.OnTransition.
func (s *Sagas) Observe(tr sagas.Transition) {
	s.transitions.WithLabelValues(tr.Type, string(tr.InputKind), string(tr.To)).Inc()
	if !tr.At.IsZero() {
		s.seconds.WithLabelValues(tr.Type).Observe(max(0, time.Since(tr.At).Seconds()))
	}
}

// Store returns st counting what its writes commit: the commands of each
// applied transition and the timers fired, with their lateness. Give the
// wrapped store to sagas.NewRuntime; operator tools may keep the
// unwrapped one.
func (s *Sagas) Store(st sagas.Store) sagas.Store { return &sagaStore{Store: st, m: s} }

type sagaStore struct {
	sagas.Store
	m *Sagas
}

// Apply implements sagas.Store.
func (s *sagaStore) Apply(ctx context.Context, typ, sagaID, inputID string, fn func(cur *sagas.Instance) (*sagas.Change, error)) error {
	var ch *sagas.Change
	err := s.Store.Apply(ctx, typ, sagaID, inputID, func(cur *sagas.Instance) (*sagas.Change, error) {
		c, err := fn(cur)
		ch = c
		return c, err
	})
	if err == nil && ch != nil && len(ch.Messages) > 0 {
		s.m.commands.WithLabelValues(typ).Add(float64(len(ch.Messages)))
	}
	return err
}

// ApplyBatch implements sagas.Store.
func (s *sagaStore) ApplyBatch(ctx context.Context, typ string, items []sagas.Item) []error {
	changes := make([]*sagas.Change, len(items))
	wrapped := make([]sagas.Item, len(items))
	for i, it := range items {
		decide := it.Decide
		wrapped[i] = sagas.Item{SagaID: it.SagaID, InputID: it.InputID, Decide: func(cur *sagas.Instance) (*sagas.Change, error) {
			c, err := decide(cur)
			changes[i] = c
			return c, err
		}}
	}
	errs := s.Store.ApplyBatch(ctx, typ, wrapped)
	n := 0
	for i, c := range changes {
		if c != nil && i < len(errs) && errs[i] == nil {
			n += len(c.Messages)
		}
	}
	if n > 0 {
		s.m.commands.WithLabelValues(typ).Add(float64(n))
	}
	return errs
}

// FireTimers implements sagas.Store.
func (s *sagaStore) FireTimers(ctx context.Context, typ string, now time.Time, limit int, msg func(sagas.Timer) (outbox.Message, error)) (int, error) {
	var due []time.Time
	n, err := s.Store.FireTimers(ctx, typ, now, limit, func(t sagas.Timer) (outbox.Message, error) {
		due = append(due, t.Due)
		return msg(t)
	})
	if err == nil && n > 0 {
		s.m.fired.WithLabelValues(typ).Add(float64(n))
		late := s.m.lateness.WithLabelValues(typ)
		for _, d := range due[max(0, len(due)-n):] {
			late.Observe(max(0, now.Sub(d).Seconds()))
		}
	}
	return n, err
}

// InstanceCountCap bounds the instances SagaInstances counts per status
// and the timers it counts: a count at the cap means "at least".
const InstanceCountCap = 10000

// sagaInstances counts a saga type's open instances and timers at
// each scrape.
type sagaInstances struct {
	st                         sagas.Store
	typ                        string
	pool                       *pgxpool.Pool
	query                      string
	instances, timers, overdue *prometheus.Desc
	scrapeErr                  *prometheus.Desc
	errs                       counter
}

// countedStatuses are the statuses SagaInstances reports: the open ones
// and compensation_failed. Completed and compensated instances only
// accumulate; their rate is in orchestrix_saga_transitions_total.
var countedStatuses = []sagas.Status{sagas.StatusRunning, sagas.StatusCompensating, sagas.StatusCompensationFailed}

// SagaInstances returns a collector that counts, at each scrape, the
// instances of saga type typ by status and its pending timers:
//
//	orchestrix_saga_instances{saga_type,status}     running, compensating, compensation_failed (capped at InstanceCountCap)
//	orchestrix_saga_timers_pending{saga_type}       timers waiting to fire (capped at InstanceCountCap)
//	orchestrix_saga_timer_overdue_seconds{saga_type} now minus the earliest pending timer's due time, 0 if none is due
//
// On a sagas.PostgresStore one scrape is one query of bounded cost (each
// count stops at the cap, through the status and due-time indexes);
// other stores are asked through List and Timers.
func SagaInstances(st sagas.Store, typ string) prometheus.Collector {
	l := prometheus.Labels{"saga_type": typ}
	c := &sagaInstances{st: st, typ: typ,
		instances: prometheus.NewDesc("orchestrix_saga_instances", "Saga instances by status (open ones and compensation_failed), counted up to InstanceCountCap.", []string{"status"}, l),
		timers:    prometheus.NewDesc("orchestrix_saga_timers_pending", "Saga timers waiting to fire, counted up to InstanceCountCap.", nil, l),
		overdue:   prometheus.NewDesc("orchestrix_saga_timer_overdue_seconds", "Now minus the due time of the earliest pending timer; 0 when none is due. Grows while no timer poller fires.", nil, l),
		scrapeErr: scrapeErrorsDesc("saga_instances", typ),
	}
	if w, ok := st.(*sagaStore); ok {
		st = w.Store
		c.st = st
	}
	if pg, ok := st.(interface {
		Pool() *pgxpool.Pool
		Schema() string
	}); ok {
		inst := pgx.Identifier{pg.Schema(), "saga_instances"}.Sanitize()
		timers := pgx.Identifier{pg.Schema(), "saga_timers"}.Sanitize()
		count := func(status string) string {
			return `(SELECT count(*) FROM (SELECT 1 FROM ` + inst + ` WHERE status = '` + status + `' AND saga_type = $1 LIMIT $2) x)`
		}
		c.pool = pg.Pool()
		c.query = `SELECT ` + count(string(sagas.StatusRunning)) + `, ` + count(string(sagas.StatusCompensating)) + `, ` +
			count(string(sagas.StatusCompensationFailed)) + `,
			(SELECT count(*) FROM (SELECT 1 FROM ` + timers + ` WHERE saga_type = $1 LIMIT $2) t),
			(SELECT min(due_at) FROM ` + timers + ` WHERE saga_type = $1)`
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *sagaInstances) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.instances
	ch <- c.timers
	ch <- c.overdue
	ch <- c.scrapeErr
}

// Collect implements prometheus.Collector.
func (c *sagaInstances) Collect(ch chan<- prometheus.Metric) {
	defer func() {
		ch <- prometheus.MustNewConstMetric(c.scrapeErr, prometheus.CounterValue, float64(c.errs.load()))
	}()
	ctx, cancel := scrapeCtx()
	defer cancel()
	counts := make([]int64, len(countedStatuses))
	var timers int64
	var earliest *time.Time
	if c.pool != nil {
		if err := c.pool.QueryRow(ctx, c.query, c.typ, InstanceCountCap).Scan(&counts[0], &counts[1], &counts[2], &timers, &earliest); err != nil {
			c.errs.inc()
			return
		}
	} else {
		for i, s := range countedStatuses {
			list, err := c.st.List(ctx, sagas.Filter{Type: c.typ, Status: s, Limit: InstanceCountCap})
			if err != nil {
				c.errs.inc()
				return
			}
			counts[i] = int64(len(list))
		}
		ts, err := c.st.Timers(ctx, c.typ, InstanceCountCap)
		if err != nil {
			c.errs.inc()
			return
		}
		timers = int64(len(ts))
		if len(ts) > 0 {
			earliest = &ts[0].Due
		}
	}
	for i, s := range countedStatuses {
		ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(counts[i]), string(s))
	}
	ch <- prometheus.MustNewConstMetric(c.timers, prometheus.GaugeValue, float64(timers))
	overdue := 0.0
	if earliest != nil {
		overdue = max(0, time.Since(*earliest).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(c.overdue, prometheus.GaugeValue, overdue)
}
