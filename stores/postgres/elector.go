package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
)

// Elector campaigns for a PostgreSQL session advisory lock named by its
// role, on a dedicated connection (not one of the pool's: a pooled
// connection would carry the lock back into the pool). It implements
// stores.Elector; the outbox relay, saga timer pollers and projection
// rebuilds use it to keep one active instance.
//
// The lock connection sets idle_session_timeout to the lease and pings
// every lease/3: a leader that stops answering (paused, hung,
// partitioned) has its session ended by the server after the lease, which
// releases the lock, and a standby that retries every second (or lease/4)
// takes over. A broken lock connection ends the term (Term.Lost). Do not
// put a transaction-pooling PgBouncer between an Elector and the
// database: session advisory locks need the session.
type Elector struct {
	cfg   *pgx.ConnConfig
	key   string
	lease time.Duration
	retry time.Duration
	log   *slog.Logger
}

// NewElector returns an elector for cfg.Role on pool's database. The
// lease must be at least a second.
func NewElector(pool *pgxpool.Pool, cfg stores.ElectorConfig) (*Elector, error) {
	var errs []error
	if pool == nil {
		errs = append(errs, errors.New("nil pool"))
	}
	if cfg.Role == "" {
		errs = append(errs, errors.New("empty role"))
	}
	if cfg.Lease < time.Second {
		errs = append(errs, fmt.Errorf("lease %s must be at least 1s", cfg.Lease))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("postgres: elector: %w: %w", orchestrix.ErrInvalid, err)
	}
	cc := pool.Config().ConnConfig.Copy()
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	cc.RuntimeParams["idle_session_timeout"] = strconv.FormatInt(cfg.Lease.Milliseconds(), 10)
	name := "orchestrix " + cfg.Role
	if cfg.Instance != "" {
		name += " " + cfg.Instance
	}
	cc.RuntimeParams["application_name"] = name[:min(len(name), 63)]
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Elector{cfg: cc, key: cfg.Role, lease: cfg.Lease, retry: min(time.Second, cfg.Lease/4), log: log}, nil
}

// Elector implements stores.Leaser on the store's pool.
func (s *Store) Elector(cfg stores.ElectorConfig) (stores.Elector, error) {
	return NewElector(s.pool, cfg)
}

// Campaign implements stores.Elector: it blocks until this process holds
// the lock or ctx ends.
func (e *Elector) Campaign(ctx context.Context) (stores.Term, error) {
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
				e.log.Warn("leader election: connect", "role", e.key, "err", err)
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
				e.log.Warn("leader election: try lock", "role", e.key, "err", err)
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
				e.log.Info("standby: another instance leads", "role", e.key)
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
// connection: a stores.Term.
type lock struct {
	conn     *pgx.Conn
	key      string
	done     chan struct{}
	lostCh   chan struct{}
	stopped  sync.WaitGroup
	stopOnce sync.Once
	log      *slog.Logger
}

func (l *lock) Lost() <-chan struct{} { return l.lostCh }

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
			l.log.Warn("leader election: lock session lost", "role", l.key, "err", err)
			close(l.lostCh)
			return
		}
	}
}

func (l *lock) Release() {
	l.stopOnce.Do(func() {
		close(l.done)
		l.stopped.Wait()
		select {
		case <-l.lostCh:
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := l.conn.Exec(ctx, "SELECT pg_advisory_unlock(hashtextextended($1, 0))", l.key); err != nil {
				l.log.Debug("leader election: unlock", "role", l.key, "err", err)
			}
			cancel()
		}
		l.conn.Close(context.Background())
	})
}

var (
	_ stores.Elector = (*Elector)(nil)
	_ stores.Leaser  = (*Store)(nil)
)
