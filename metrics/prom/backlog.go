package prom

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// BacklogCountCap bounds the events RelayBacklog counts per scrape: a
// count at the cap means "at least".
const BacklogCountCap = 100000

// PostgresSource is a PostgreSQL event store (stores/postgres.Store).
type PostgresSource interface {
	Pool() *pgxpool.Pool
	Schema() string
}

// relayBacklog compares, at each scrape, the relay's last committed
// checkpoint in Kafka with the events table.
type relayBacklog struct {
	pool                  *pgxpool.Pool
	countQ, oldestQ       string
	seeds                 []string
	opts                  []kgo.Opt
	cpTopic               string
	events, oldest, cpAge *prometheus.Desc
	scrapeErr             *prometheus.Desc
	errs                  counter
}

// RelayBacklog returns a collector of what the relay of events topic
// topic has not published yet, measured from outside any relay: the last
// checkpoint committed to "<topic>"+outbox.CheckpointSuffix (read
// read_committed, as consumers see it) against the store's events table.
// Every process may export it, leader, standby or neither, so it keeps
// growing when the leader is gone (killed, partitioned, never started),
// which a relay's own orchestrix_relay_lag_events cannot show:
//
//	orchestrix_relay_backlog_events{topic}          committed events after the checkpoint (capped at BacklogCountCap)
//	orchestrix_relay_backlog_oldest_seconds{topic}  age of the first of them by event time; 0 when there is none
//
// seeds and opts (TLS, SASL) reach the brokers; one scrape costs one
// short-lived client reading at most the checkpoint topic's last 64
// records, and two indexed queries. A relay whose options name another
// checkpoint topic (outbox.CheckpointTopic) is not covered.
func RelayBacklog(src PostgresSource, topic string, seeds []string, opts ...kgo.Opt) prometheus.Collector {
	ev := pgx.Identifier{src.Schema(), "events"}.Sanitize()
	l := prometheus.Labels{"topic": topic}
	return &relayBacklog{pool: src.Pool(), seeds: seeds, opts: opts, cpTopic: topic + outbox.CheckpointSuffix,
		countQ:  `SELECT count(*) FROM (SELECT 1 FROM ` + ev + ` WHERE (tx_id, position) > ($1::text::xid8, $2) LIMIT $3) x`,
		oldestQ: `SELECT time FROM ` + ev + ` WHERE (tx_id, position) > ($1::text::xid8, $2) ORDER BY tx_id, position LIMIT 1`,
		events: prometheus.NewDesc("orchestrix_relay_backlog_events",
			"Events committed in the store after the relay's last committed checkpoint, counted up to BacklogCountCap.", nil, l),
		oldest: prometheus.NewDesc("orchestrix_relay_backlog_oldest_seconds",
			"Age, by event time, of the first event after the relay's last committed checkpoint; 0 when there is none.", nil, l),
		scrapeErr: scrapeErrorsDesc("relay_backlog", topic),
	}
}

// Describe implements prometheus.Collector.
func (c *relayBacklog) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.events
	ch <- c.oldest
	ch <- c.scrapeErr
}

// Collect implements prometheus.Collector.
func (c *relayBacklog) Collect(ch chan<- prometheus.Metric) {
	defer func() {
		ch <- prometheus.MustNewConstMetric(c.scrapeErr, prometheus.CounterValue, float64(c.errs.load()))
	}()
	ctx, cancel := scrapeCtx()
	defer cancel()
	cp, err := c.checkpoint(ctx)
	if err != nil {
		c.errs.inc()
		return
	}
	tx := fmt.Sprint(cp.Tx)
	var n int64
	if err := c.pool.QueryRow(ctx, c.countQ, tx, int64(cp.Position), BacklogCountCap).Scan(&n); err != nil {
		c.errs.inc()
		return
	}
	oldest := 0.0
	if n > 0 {
		var at time.Time
		err := c.pool.QueryRow(ctx, c.oldestQ, tx, int64(cp.Position)).Scan(&at)
		switch {
		case err == nil:
			oldest = max(0, time.Since(at).Seconds())
		case !errors.Is(err, pgx.ErrNoRows):
			c.errs.inc()
			return
		}
	}
	ch <- prometheus.MustNewConstMetric(c.events, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, oldest)
}

// checkpointKey is the key of the events cursor in a relay's checkpoint
// topic; its value is stores.Cursor's String form.
const checkpointKey = "events"

// checkpoint returns the events cursor of the last committed checkpoint
// (the zero cursor when the topic holds none: nothing published yet).
func (c *relayBacklog) checkpoint(ctx context.Context) (stores.Cursor, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.seeds...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(100 * time.Millisecond)}, c.opts...)...)
	if err != nil {
		return stores.Cursor{}, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ends, err := adm.ListCommittedOffsets(ctx, c.cpTopic)
	if err != nil {
		return stores.Cursor{}, err
	}
	starts, err := adm.ListStartOffsets(ctx, c.cpTopic)
	if err != nil {
		return stores.Cursor{}, err
	}
	end, ok1 := ends.Lookup(c.cpTopic, 0)
	start, ok2 := starts.Lookup(c.cpTopic, 0)
	if errors.Is(end.Err, kerr.UnknownTopicOrPartition) || errors.Is(start.Err, kerr.UnknownTopicOrPartition) ||
		(!ok1 && !ok2 && noTopic(ends, starts, c.cpTopic)) {
		// No relay has ever committed a checkpoint: everything is
		// backlog. This is the case the series exists to catch (a relay
		// that never started), so it is no scrape error.
		return stores.Cursor{}, nil
	}
	if !ok1 || !ok2 || end.Err != nil || start.Err != nil {
		return stores.Cursor{}, fmt.Errorf("checkpoint topic %s: %w", c.cpTopic, errors.Join(end.Err, start.Err, errors.New("no partition 0")))
	}
	// Look back in growing windows from the last stable offset: the last
	// checkpoint is normally within a few records (checkpoint, session
	// records, commit markers).
	for window := int64(64); ; window *= 8 {
		from := max(start.Offset, end.Offset-window)
		if from >= end.Offset {
			return stores.Cursor{}, nil
		}
		cur, found, err := c.scan(ctx, cl, from, end.Offset)
		if err != nil || found || from == start.Offset {
			return cur, err
		}
	}
}

// noTopic reports whether the listings show topic missing: absent, or
// only entries with UNKNOWN_TOPIC_OR_PARTITION (kadm lists a topic the
// metadata does not know that way, without its partitions).
func noTopic(ends, starts kadm.ListedOffsets, topic string) bool {
	for _, l := range []kadm.ListedOffsets{ends, starts} {
		for _, o := range l[topic] {
			if !errors.Is(o.Err, kerr.UnknownTopicOrPartition) {
				return false
			}
		}
	}
	return true
}

// scanQuiet is how long scan waits for more records before it takes the
// partition as read to its end: the last offsets below the stable offset
// are usually a commit marker, which read_committed never returns.
const scanQuiet = 400 * time.Millisecond

// scan reads [from, end) of the checkpoint partition read_committed and
// returns the last events cursor in it.
func (c *relayBacklog) scan(ctx context.Context, cl *kgo.Client, from, end int64) (cur stores.Cursor, found bool, err error) {
	cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{c.cpTopic: {0: kgo.NewOffset().At(from)}})
	defer cl.RemoveConsumePartitions(map[string][]int32{c.cpTopic: {0}})
	for {
		pctx, cancel := context.WithTimeout(ctx, scanQuiet)
		fs := cl.PollFetches(pctx)
		cancel()
		if err := ctx.Err(); err != nil {
			return cur, found, err
		}
		if fs.NumRecords() == 0 && pctx.Err() != nil {
			return cur, found, nil // quiet: read to the end
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) {
				ferr = errors.Join(ferr, err)
			}
		})
		if ferr != nil {
			return cur, found, ferr
		}
		done := false
		var perr error
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset >= end-1 {
				done = true
			}
			if r.Offset >= end || string(r.Key) != checkpointKey {
				return
			}
			v, err := stores.ParseCursor(string(r.Value))
			if err != nil {
				perr = err
				return
			}
			cur, found = v, true
		})
		if perr != nil {
			return cur, found, perr
		}
		if done {
			return cur, found, nil
		}
	}
}
