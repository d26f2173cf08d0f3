package lifecycletest

import (
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/testenv"
)

// variantsEnv selects the group options TestRollingRestartIntegration
// measures: a comma-separated list of variantOpts names, or "all" (every
// one but kip848-static, which cannot restart with franz-go v1.22.3: its
// static leave omits the instance ID, Kafka 4.4 refuses it with
// INVALID_REQUEST "InstanceId can't be null", and the restarted member
// gets UNRELEASED_INSTANCE_ID until the session times out).
const variantsEnv = "LIFECYCLE_VARIANTS"

// pauseTarget is the target for the pause's p99.
const pauseTarget = 2 * time.Second

// pauseBound is what a variant guarantees for the p99 and the longest gap
// during the restarts, over the machine's own latency before them. A
// dynamic member's restart costs up to two rebalances that the other
// members notice at their next heartbeat (franz-go's default 3s; 5s, the
// broker's group.consumer.heartbeat.interval.ms, for KIP-848); a static
// member's costs none, or one when it led the group; the bound is those
// heartbeat intervals plus the target. consumers' own heartbeat
// (consumers.GroupHeartbeat, 500ms) is short enough that its pauses fit
// in the target.
var pauseBound = map[string]time.Duration{
	"default":       pauseTarget,
	"heartbeat-3s":  2*classicHeartbeat + pauseTarget,
	"static":        pauseTarget,
	"static-3s":     classicHeartbeat + pauseTarget,
	"eager":         pauseTarget,
	"kip848":        2*5*time.Second + pauseTarget,
	"kip848-static": pauseTarget,
}

// defaultVariants run without LIFECYCLE_VARIANTS: consumers' defaults,
// dynamic and static (about 40s together).
var defaultVariants = []string{"default", "static"}

// TestRollingRestartIntegration restarts the 3 members of a processor
// group one by one (SIGTERM, wait for the exit, start again, wait until the
// new process handles records; each at a random moment) under about 600
// commands/s and measures the processing pause: send→outcome latency of
// the commands sent during the restarts (from each SIGTERM to a second
// after the new process's first batch) against those sent before, and the
// longest time in the restarts with no outcome at all. Every variant of group options (variantOpts) must lose
// nothing and apply nothing twice, and keep the pause within what it
// guarantees (pauseBound); the figures are logged against the 2s target.
func TestRollingRestartIntegration(t *testing.T) {
	variants := defaultVariants
	switch v := os.Getenv(variantsEnv); v {
	case "":
	case "all":
		variants = slices.DeleteFunc(slices.Collect(maps.Keys(pauseBound)), func(v string) bool { return v == "kip848-static" })
		slices.Sort(variants)
	default:
		variants = strings.Split(v, ",")
	}
	for _, v := range variants {
		t.Run(v, func(t *testing.T) {
			if _, ok := pauseBound[v]; !ok {
				t.Fatalf("unknown variant %q", v)
			}
			rollingRestart(t, v)
		})
	}
}

func rollingRestart(t *testing.T, variant string) {
	const (
		rate     = 600
		bound    = 10 * time.Second
		accounts = 300
	)
	h := newHarness(t, variant, 6, bound)
	names := []string{"m0", "m1", "m2"}
	members := map[string]*child{}
	for _, n := range names {
		members[n] = h.start(n, false)
	}
	for _, n := range names {
		members[n].awaitReady(30 * time.Second)
	}
	l := h.startLoad(rate, accounts)
	for _, n := range names {
		t.Logf("%s: first batch after %s", n, ms(members[n].awaitHandled(30*time.Second)))
	}
	// The initial rebalances settle: the first members notice the later
	// ones at their next heartbeat (3s by default).
	time.Sleep(3 * time.Second)
	before := time.Now()
	time.Sleep(3 * time.Second)
	// Each restart starts at a random moment: the pause of a dynamic
	// member's rebalance depends on where the others are in their
	// heartbeat interval, and a fixed schedule would always hit the same
	// phase.
	rng := rand.New(rand.NewPCG(testenv.Seed(t), 0))
	var windows []window // from each SIGTERM to 1s after the new process's first batch
	for _, n := range names {
		time.Sleep(time.Duration(rng.Int64N(int64(3 * time.Second))))
		took, sig := members[n].terminate(bound)
		c := h.start(n, false)
		ready := c.awaitReady(30 * time.Second)
		handled := c.awaitHandled(30 * time.Second)
		windows = append(windows, window{sig, time.Now().Add(time.Second)})
		old := members[n]
		members[n] = c
		t.Logf("%s: exited %s after SIGTERM (processor drained in %s); the new process ready after %s, first batch after %s, %s after the SIGTERM",
			n, ms(took), old.drainTook(), ms(ready), ms(handled), ms(time.Since(sig)))
	}
	time.Sleep(2 * time.Second) // commands sent at the end of the window get their outcomes
	cmds := l.finish()
	h.checkEffects(cmds, l)
	base, during := h.stats(cmds, window{before, windows[0].from}), h.stats(cmds, windows...)
	t.Logf("%s: before the restarts: %s", variant, base)
	t.Logf("%s: during the restarts (%s in all): %s", variant, ms(total(windows)), during)
	t.Logf("%s: pause p99 %s (target %s), max %s, longest gap %s; p99 %.1fx the p99 before", variant,
		ms(during.p99), pauseTarget, ms(during.max), ms(during.gap), float64(during.p99)/float64(max(base.p99, time.Millisecond)))
	if bound := pauseBound[variant]; during.p99 > bound+base.p99 || during.gap > bound+base.gap {
		t.Errorf("%s: the pause (p99 %s, longest gap %s) exceeds what the variant guarantees, %s over the p99 %s and longest gap %s before",
			variant, ms(during.p99), ms(during.gap), bound, ms(base.p99), ms(base.gap))
	}
}
