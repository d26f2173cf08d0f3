package lifecycletest

import (
	"net/http"
	"testing"
	"time"
)

// TestSIGTERMUnderLoadIntegration sends about 1,000 commands/s to a
// processor process (the account aggregate on PostgreSQL, under
// service.Run), sends it SIGTERM mid-load, and starts a new one: the
// process exits 0 within its shutdown bound; /readyz fails from the start
// of the shutdown while /livez answers 200 until nothing listens; and in
// the end no command is lost or applied twice (checkEffects).
func TestSIGTERMUnderLoadIntegration(t *testing.T) {
	const (
		rate     = 1000
		bound    = 10 * time.Second
		accounts = 200
	)
	h := newHarness(t, "default", 6, bound)
	var l *load
	// Two processes stopped mid-load, one after the other; a third
	// finishes the work.
	for i, name := range []string{"a", "b"} {
		c := h.start(name, true)
		t.Logf("%s: ready after %s", name, ms(c.awaitReady(30*time.Second)))
		if i == 0 {
			l = h.startLoad(rate, accounts)
		}
		t.Logf("%s: first batch after %s", name, ms(c.awaitHandled(30*time.Second)))
		time.Sleep(3 * time.Second)
		took, sig := c.terminate(bound)
		t.Logf("%s: SIGTERM under %d commands/s: exited 0 after %s (bound %s); the processor drained in %s; %d commands sent so far",
			name, rate, ms(took), bound, ms(c.drainTook()), sentSoFar(l))
		checkProbes(t, c, sig)
	}
	last := h.start("c", false)
	t.Logf("c: ready after %s", ms(last.awaitReady(30*time.Second)))
	t.Logf("c: first batch after %s", ms(last.awaitHandled(30*time.Second)))
	time.Sleep(2 * time.Second)
	cmds := l.finish()
	sent := cmds[len(cmds)-1].at.Sub(cmds[0].at)
	t.Logf("load: %d commands in %s (%.0f/s)", len(cmds), ms(sent), float64(len(cmds))/sent.Seconds())
	extra := h.checkEffects(cmds, l)
	if extra != 0 {
		// A graceful shutdown commits what it handled: nothing is
		// delivered twice.
		t.Errorf("%d commands redelivered after a graceful shutdown", extra)
	}
	t.Logf("latency over the run: %s", h.stats(cmds, window{cmds[0].at, cmds[len(cmds)-1].at.Add(time.Nanosecond)}))
	took, _ := last.terminate(bound)
	t.Logf("c: SIGTERM idle: exited 0 after %s", ms(took))
}

func sentSoFar(l *load) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.cmds)
}

// checkProbes checks a's probes around its SIGTERM at sig: /livez answered
// 200 from the start to the end (or nothing, once the process stopped
// listening); /readyz answered 200 once ready until the signal, went down
// soon after it (the signal reaches the process asynchronously), stayed
// down, and was seen down at least once (the gate holds the shutdown open
// until it was).
func checkProbes(t *testing.T, c *child, sig time.Time) {
	t.Helper()
	const downWithin = time.Second
	var ready503, live200 int
	var firstDown, lastUp time.Time
	for _, s := range c.probes.snapshot() {
		switch {
		case s.code == 0 && !s.at.Before(sig):
			// The process stopped listening.
		case s.path == "/livez" && s.code != http.StatusOK:
			t.Errorf("/livez answered %d (sent %s after SIGTERM): %s", s.code, ms(s.at.Sub(sig)), s.body)
		case s.path == "/livez":
			if !s.at.Before(sig) {
				live200++
			}
		case s.at.Before(c.readyAt):
		case s.answered.Before(sig) && s.code != http.StatusOK:
			t.Errorf("/readyz answered %d while ready, %s before SIGTERM: %s", s.code, ms(sig.Sub(s.answered)), s.body)
		case s.at.Before(sig):
			// Answered before the signal (200), or in flight when it was
			// sent: either answer is right (4 of 20 flakes.sh runs saw a
			// probe sent <1ms before SIGTERM answered 503 "shutting down").
		case s.code == http.StatusServiceUnavailable:
			ready503++
			if firstDown.IsZero() || s.at.Before(firstDown) {
				firstDown = s.at
			}
		case s.code == http.StatusOK:
			if s.at.After(lastUp) {
				lastUp = s.at
			}
		default:
			t.Errorf("/readyz answered %d after SIGTERM: %s", s.code, s.body)
		}
	}
	if ready503 == 0 || live200 == 0 {
		t.Fatalf("during the shutdown: %d /readyz 503 and %d /livez 200 answers, want both", ready503, live200)
	}
	if lastUp.After(firstDown) {
		t.Errorf("/readyz answered 200 again (sent %s after SIGTERM) after it went down", ms(lastUp.Sub(sig)))
	}
	if firstDown.Sub(sig) > downWithin {
		t.Errorf("/readyz went down %s after SIGTERM, want within %s", ms(firstDown.Sub(sig)), downWithin)
	}
	t.Logf("probes: /readyz down from a probe sent %s after SIGTERM (last 200: %s), 503 x%d; /livez 200 x%d during the shutdown, never failing",
		ms(firstDown.Sub(sig)), msOrNone(lastUp, sig), ready503, live200)
}

func msOrNone(at, sig time.Time) string {
	if at.IsZero() {
		return "none after the signal"
	}
	return ms(at.Sub(sig)) + " after"
}
