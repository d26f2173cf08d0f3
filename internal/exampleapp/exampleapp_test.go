package exampleapp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestProblemsReport(t *testing.T) {
	var p Problems
	p.Addf("--count %d: want 1 to 10", 0)
	p.Add(nil)
	p.Add(errors.New("--rate: want a positive number"))
	p.Int("--partitions", 4, 1, 1000) // within: no problem
	p.Int("--replication", 11, 1, 10)
	var out strings.Builder
	if code := p.Report(&out, "demo serve"); code != UsageExit {
		t.Errorf("exit %d, want %d", code, UsageExit)
	}
	if want := "demo serve: --count 0: want 1 to 10; --rate: want a positive number; --replication 11: want 1 to 10\n"; out.String() != want {
		t.Errorf("report %q, want %q", out.String(), want)
	}
}

func TestParseLevel(t *testing.T) {
	if _, err := ParseLevel("loud"); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("ParseLevel(loud): %v, want an error naming --log-level", err)
	}
	if l, err := ParseLevel("debug"); err != nil || l.String() != "DEBUG" {
		t.Errorf("ParseLevel(debug) = %v, %v", l, err)
	}
}

func TestOpenBroker(t *testing.T) {
	b, err := OpenBroker([]string{"k1:9092", "k2:9092"}, 0)
	if err != nil || b.Embedded || b.Where != "Kafka at k1:9092,k2:9092" {
		t.Fatalf("given seeds: %+v, %v", b, err)
	}
	b.Close() // nothing to stop
	b, err = OpenBroker(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !b.Embedded || len(b.Seeds) != 1 || b.Where != "embedded Kafka (kfake)" {
		t.Fatalf("embedded: %+v", b)
	}
}

func TestModes(t *testing.T) {
	mode := func(name string, code int) RunFunc {
		return func(_ context.Context, args []string, stdout, _ io.Writer) int {
			fmt.Fprintf(stdout, "%s %q", name, args)
			return code
		}
	}
	run := Modes(mode("check", 1), map[string]RunFunc{"serve": mode("serve", 0), "drive": mode("drive", UsageExit)})
	for _, tc := range []struct {
		args []string
		want string
		code int
	}{
		{nil, `check []`, 1},
		{[]string{"--seed", "1"}, `check ["--seed" "1"]`, 1},
		{[]string{"serve", "--init"}, `serve ["--init"]`, 0},
		{[]string{"drive"}, `drive []`, UsageExit},
		{[]string{"extra", "serve"}, `check ["extra" "serve"]`, 1},
	} {
		var out strings.Builder
		if code := run(t.Context(), tc.args, &out, io.Discard); code != tc.code || out.String() != tc.want {
			t.Errorf("%q: exit %d, ran %s; want %d, %s", tc.args, code, out.String(), tc.code, tc.want)
		}
	}
}

func TestSeedAndRunID(t *testing.T) {
	if got := Seed(42); got != 42 {
		t.Errorf("Seed(42) = %d", got)
	}
	if Seed(0) == 0 {
		t.Error("Seed(0) = 0, want one from the clock")
	}
	if id := RunID(); id == "" || strings.Trim(id, "0123456789abcdefghijklmnopqrstuvwxyz") != "" {
		t.Errorf("RunID() = %q, want base 36", id)
	}
}
