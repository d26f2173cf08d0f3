package consumers

import (
	"context"
	"fmt"
	"time"

	"github.com/orchestrix/orchestrix/internal/kafkaerr"
	"github.com/orchestrix/orchestrix/kafkaconn"
)

// ErrUnreachable is returned by Run when no seed broker answers within
// ConnectTimeout at start (wrapped with the seeds and the last error).
// Later outages do not stop Run: see the package documentation.
var ErrUnreachable = kafkaconn.ErrUnreachable

// connect waits up to ConnectTimeout for a seed broker to answer.
func (g *Group) connect(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, g.cfg.connectTimeout)
	defer cancel()
	var err error
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		g.stamp()
		if err = g.cl.Ping(cctx); err == nil {
			return nil
		}
		g.log.Warn("brokers unreachable at start, retrying", "seeds", g.cfg.seeds, "err", err)
		select {
		case <-cctx.Done():
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%w: none of the seed brokers %v answered within %s: %w", ErrUnreachable, g.cfg.seeds, g.cfg.connectTimeout, err)
		case <-time.After(wait):
		}
	}
}

// isConnError reports whether err says a broker could not be reached.
func isConnError(err error) bool {
	return kafkaerr.Is(err, kafkaerr.Disconnected)
}

func (g *Group) isDown() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.down.IsZero()
}

// brokersDown notes that the brokers could not be reached: logged as an
// error when the outage starts and every 30s while it lasts.
func (g *Group) brokersDown(err error) {
	g.mu.Lock()
	now := time.Now()
	first := g.down.IsZero()
	if first {
		g.down = now
	}
	logIt := first || now.Sub(g.downLogged) >= 30*time.Second
	if logIt {
		g.downLogged = now
	}
	since := g.down
	g.mu.Unlock()
	if logIt {
		g.log.Error("brokers unreachable: retrying; processing and commits resume when they are back",
			"seeds", g.cfg.seeds, "down for", now.Sub(since).Round(time.Millisecond), "err", err)
	}
	if first && g.cfg.onConn != nil {
		g.callback("OnConnectivity", func() { g.cfg.onConn(false, err) })
	}
}

// probe checks, during an outage, whether a broker answers again.
func (g *Group) probe(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := g.cl.Ping(pctx); err != nil {
		if ctx.Err() == nil {
			g.brokersDown(err)
		}
		return
	}
	g.mu.Lock()
	since := g.down
	g.down = time.Time{}
	g.mu.Unlock()
	g.log.Info("brokers reachable again", "seeds", g.cfg.seeds, "down for", time.Since(since).Round(time.Millisecond))
	if g.cfg.onConn != nil {
		g.callback("OnConnectivity", func() { g.cfg.onConn(true, nil) })
	}
}
