package cli

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Range checks for numeric flags. Each returns nil or an error naming the
// flag, its value and the range; checkFlags joins them into one usage
// error (exit code 2), so a command reports every bad flag at once and
// never converts an out-of-range value (--replication 65537 became 1 as
// an int16).

// unbounded is an upper bound meaning "no upper bound".
const unbounded = math.MaxInt

// maxRetryLevel bounds --retry-levels and --to-level: each level is a
// topic per consumed topic.
const maxRetryLevel = 100

// intIn checks that the int flag name lies in [lo, hi].
func intIn(name string, v, lo, hi int) error {
	if v >= lo && v <= hi {
		return nil
	}
	return fmt.Errorf("--%s %d is out of range: want %s", name, v, span(strconv.Itoa(lo), strconv.Itoa(hi), hi == unbounded))
}

// floatIn checks that the float flag name is a finite number in [lo, hi].
func floatIn(name string, v, lo, hi float64) error {
	if v >= lo && v <= hi && !math.IsInf(v, 0) { // false for NaN
		return nil
	}
	f := func(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }
	return fmt.Errorf("--%s %s is out of range: want %s", name, f(v), span(f(lo), f(hi), math.IsInf(hi, 1)))
}

// durationIn checks that the duration flag name lies in [lo, hi].
func durationIn(name string, v, lo, hi time.Duration) error {
	if v >= lo && v <= hi {
		return nil
	}
	return fmt.Errorf("--%s %s is out of range: want %s", name, v, span(lo.String(), hi.String(), hi == math.MaxInt64))
}

func span(lo, hi string, open bool) string {
	if open {
		return "at least " + lo
	}
	return lo + " to " + hi
}

// checkFlags returns the problems (nil ones skipped) as one usage error
// on one line, or nil when there are none.
func checkFlags(problems ...error) error {
	var msgs []string
	for _, p := range problems {
		if p != nil {
			msgs = append(msgs, p.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", errUsage, strings.Join(msgs, "; "))
}
