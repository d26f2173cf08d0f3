package exampleapp

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestSplitList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{" , ,", nil},
		{"a:1", []string{"a:1"}},
		{" a:1 ,b:2,, c:3 ", []string{"a:1", "b:2", "c:3"}},
	} {
		if got := SplitList(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("SplitList(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

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
