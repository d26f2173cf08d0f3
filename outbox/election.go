package outbox

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrLostLeadership reports that the relay's lock session ended (the
// connection broke, or the server ended a silent session); the relay
// stops publishing and campaigns again.
var ErrLostLeadership = errors.New("outbox: lost leadership")

// leadership is one term as the publishing relay.
type leadership interface {
	// lost is closed when the term ends by itself.
	lost() <-chan struct{}
	// release ends the term.
	release()
}

// always is the leadership of a relay without election.
type always struct{}

func (always) lost() <-chan struct{} { return nil }
func (always) release()              {}

// election campaigns for a PostgreSQL session advisory lock.
type election struct {
	cfg   *pgx.ConnConfig
	key   string
	lease time.Duration
	retry time.Duration
	log   *slog.Logger
}

func newElection(pool *pgxpool.Pool, key, instance string, lease time.Duration, log *slog.Logger) *election {
	cfg := pool.Config().ConnConfig.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	// A paused or hung leader stops pinging; the server then ends its
	// idle session after the lease, which releases the lock.
	cfg.RuntimeParams["idle_session_timeout"] = strconv.FormatInt(lease.Milliseconds(), 10)
	name := "orchestrix-relay"
	if instance != "" {
		name += " " + instance
	}
	cfg.RuntimeParams["application_name"] = name[:min(len(name), 63)]
	return &election{cfg: cfg, key: key, lease: lease, retry: min(time.Second, lease/4), log: log}
}

// campaign blocks until this relay holds the lock or ctx ends.
func (e *election) campaign(ctx context.Context) (leadership, error) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	standby := false
	for {
		if conn == nil {
			c, err := pgx.ConnectConfig(ctx, e.cfg)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				e.log.Warn("leader election: connect", "err", err)
			} else {
				conn = c
			}
		}
		if conn != nil {
			var ok bool
			qctx, cancel := context.WithTimeout(ctx, e.lease)
			err := conn.QueryRow(qctx, "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", e.key).Scan(&ok)
			cancel()
			switch {
			case err != nil && ctx.Err() != nil:
				return nil, ctx.Err()
			case err != nil:
				e.log.Warn("leader election: try lock", "err", err)
				conn.Close(context.Background())
				conn = nil
			case ok:
				l := &lock{conn: conn, key: e.key, done: make(chan struct{}), lostCh: make(chan struct{}), log: e.log}
				conn = nil
				l.stopped.Add(1)
				go l.heartbeat(e.lease / 3)
				return l, nil
			case !standby:
				standby = true
				e.log.Info("standby: another relay is leader", "lock", e.key)
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(e.retry):
		}
	}
}

// lock is a held session advisory lock and the goroutine pinging its
// connection.
type lock struct {
	conn     *pgx.Conn
	key      string
	done     chan struct{}
	lostCh   chan struct{}
	stopped  sync.WaitGroup
	stopOnce sync.Once
	log      *slog.Logger
}

func (l *lock) lost() <-chan struct{} { return l.lostCh }

func (l *lock) heartbeat(every time.Duration) {
	defer l.stopped.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		_, err := l.conn.Exec(ctx, "SELECT 1")
		cancel()
		if err != nil {
			l.log.Warn("leader election: lock session lost", "err", err)
			close(l.lostCh)
			return
		}
	}
}

func (l *lock) release() {
	l.stopOnce.Do(func() {
		close(l.done)
		l.stopped.Wait()
		select {
		case <-l.lostCh:
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := l.conn.Exec(ctx, "SELECT pg_advisory_unlock(hashtextextended($1, 0))", l.key); err != nil {
				l.log.Debug("leader election: unlock", "err", err)
			}
			cancel()
		}
		l.conn.Close(context.Background())
	})
}
