package cli

import (
	"errors"
	"math"
	"testing"
	"time"
)

func TestFlagRanges(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string // "" for in range
	}{
		{"int in", intIn("n", 5, 1, 10), ""},
		{"int low edge", intIn("n", 1, 1, 10), ""},
		{"int high edge", intIn("n", 10, 1, 10), ""},
		{"int below", intIn("n", 0, 1, 10), "--n 0 is out of range: want 1 to 10"},
		{"int above int16", intIn("replication", 65537, 1, math.MaxInt16), "--replication 65537 is out of range: want 1 to 32767"},
		{"int unbounded", intIn("n", -1, 0, unbounded), "--n -1 is out of range: want at least 0"},
		{"float in", floatIn("rate", 2.5, 0.001, 1e6), ""},
		{"float NaN", floatIn("rate", math.NaN(), 0.001, 1e6), "--rate NaN is out of range: want 0.001 to 1e+06"},
		{"float inf", floatIn("rate", math.Inf(1), 0, math.Inf(1)), "--rate +Inf is out of range: want at least 0"},
		{"duration in", durationIn("t", time.Second, time.Millisecond, math.MaxInt64), ""},
		{"duration zero", durationIn("t", 0, time.Millisecond, math.MaxInt64), "--t 0s is out of range: want at least 1ms"},
		{"duration above", durationIn("t", time.Hour, time.Millisecond, time.Minute), "--t 1h0m0s is out of range: want 1ms to 1m0s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ""
			if tc.err != nil {
				got = tc.err.Error()
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	if err := checkFlags(nil, nil); err != nil {
		t.Fatalf("checkFlags(nil, nil) = %v", err)
	}
	err := checkFlags(intIn("a", 0, 1, 2), nil, intIn("b", 3, 1, 2))
	if !errors.Is(err, errUsage) || err.Error() != "usage: --a 0 is out of range: want 1 to 2; --b 3 is out of range: want 1 to 2" {
		t.Fatalf("checkFlags = %v", err)
	}
}
