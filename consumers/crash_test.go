package consumers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// crashConfig is what the helper process needs to run the group.
type crashConfig struct {
	Seeds        []string
	Topic, Group string
	File         string // handled record values are appended here
	Seed         uint64 // of the helper's random failures
}

func crashPolicy() consumers.FailurePolicy {
	return consumers.RetryTopics(50*time.Millisecond, 100*time.Millisecond).KeepKeyOrder(consumers.OrderedResume).ThenDLQ()
}

// crashFailRate is the share of handler calls failing in TestOrderedCrash:
// high enough that records exhaust the ladder and are dead-lettered (with
// their dead-letter markers) around the crash.
const crashFailRate = 0.15

// crashHandler fails crashFailRate of calls, drawn from rng, and appends
// each handled record to w as "<value>|<level>[p]|<origin offset>" (p: it
// was parked), for the key history a failure prints. mu guards rng and
// write.
func crashHandler(mu *sync.Mutex, rng *rand.Rand, write func(string)) consumers.Handler {
	return consumers.HandlerFunc(func(ctx context.Context, r *kgo.Record) error {
		mu.Lock()
		defer mu.Unlock()
		if rng.Float64() < crashFailRate {
			return errors.New("transient")
		}
		lv := "0"
		p := ""
		for _, h := range r.Headers {
			if h.Key == consumers.HeaderLevel {
				lv = string(h.Value)
			}
			if h.Key == consumers.HeaderParked {
				p = "p"
			}
		}
		write(string(r.Value) + "|" + lv + p + "|" + strconv.FormatInt(r.Offset, 10))
		return nil
	})
}

// TestGroupHelperProcess is not a test: run by TestOrderedCrash as a
// separate process, it runs the group until it is killed.
func TestGroupHelperProcess(t *testing.T) {
	raw := os.Getenv("GROUP_HELPER")
	if raw == "" {
		t.Skip("helper process only")
	}
	var c crashConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		os.Exit(3)
	}
	f, err := os.OpenFile(c.File, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		os.Exit(3)
	}
	var mu sync.Mutex
	h := crashHandler(&mu, seeded(c.Seed), func(v string) { fmt.Fprintln(f, v) })
	lf, _ := os.Create(c.File + ".log")
	g, err := consumers.New(c.Seeds, c.Group, []string{c.Topic}, h, consumers.WithFailurePolicy(crashPolicy()), consumers.KeyConcurrency(4),
		consumers.WithLogger(slog.New(slog.NewTextHandler(lf, &slog.HandlerOptions{Level: slog.LevelInfo}))),
		consumers.WithClientOpts(kgo.SessionTimeout(6*time.Second)))
	if err != nil {
		os.Exit(3)
	}
	_ = g.Run(context.Background())
	os.Exit(1)
}

// TestOrderedCrash kills (SIGKILL) a member in ordered mode while keys are
// parked in the retry topics, then finishes with a new member: every
// record is handled or dead-lettered, and each key's records are handled
// for the first time in order across the crash — including records
// dead-lettered before the crash, whose uncommitted copies the new member
// must not hand to the handler after their key's later records.
func TestOrderedCrash(t *testing.T) {
	for _, b := range testenv.Brokerages() {
		t.Run(b.Name, func(t *testing.T) { testOrderedCrash(t, b.Seeds(t)) })
	}
}

func testOrderedCrash(t *testing.T, seeds []string) {
	const partitions, keys, perKey = 4, 40, 150
	// The killed member, the kill's moment and the new member draw from
	// one seed.
	seed := testenv.Seed(t)
	rng := seeded(seed + 1)
	topic := testenv.Topic(t, seeds, partitions, nil)
	group := testenv.Name("g")
	policy := crashPolicy()
	createTopics(t, seeds, partitions, policy.Topics(topic, group)...)
	var recs []*kgo.Record
	for s := range perKey {
		for k := range keys {
			recs = append(recs, &kgo.Record{Topic: topic, Key: []byte("k" + strconv.Itoa(k)), Value: []byte(strconv.Itoa(k) + ":" + strconv.Itoa(s))})
		}
	}
	if err := testenv.Client(t, seeds).ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	file := t.TempDir() + "/handled"
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(crashConfig{Seeds: seeds, Topic: topic, Group: group, File: file, Seed: seed})
	cmd := exec.Command(os.Args[0], "-test.run=^TestGroupHelperProcess$")
	cmd.Env = append(os.Environ(), "GROUP_HELPER="+string(raw))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(testenv.Client(t, seeds))
	parked := func() int64 {
		ends, err := adm.ListEndOffsets(t.Context(), consumers.RetryTopic(topic, group, 1))
		if err != nil {
			return 0
		}
		var n int64
		ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
		return n
	}
	deadline := time.Now().Add(60 * time.Second)
	for (parked() < 50 || committed(t, seeds, group, topic) < keys*perKey/4) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// Kill at a varying moment: while records are parked, failing over
	// levels, or being dead-lettered.
	time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	before, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		seq = strings.Fields(string(before))
	)
	t.Logf("killed after %d handled calls, %d records in retry level 1, origin committed %d", len(seq), parked(), committed(t, seeds, group, topic))
	lf, err := os.Create(file + ".log2")
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	g, err := consumers.New(seeds, group, []string{topic}, crashHandler(&mu, seeded(seed+2), func(v string) { seq = append(seq, v) }),
		consumers.WithLogger(slog.New(slog.NewTextHandler(lf, &slog.HandlerOptions{Level: slog.LevelInfo}))),
		consumers.WithFailurePolicy(policy), consumers.KeyConcurrency(4), consumers.WithClientOpts(kgo.SessionTimeout(6*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	chain := append([]string{topic}, policy.Topics(topic, group)...)
	if err := runGroup(t, g, func() bool { return drained(t, adm, group, chain[:len(chain)-1]...) }); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	inDLQ := map[string]bool{}
	for _, r := range readAll(t, seeds, consumers.DeadLetterTopic(topic, group)) {
		inDLQ[string(r.Value)] = true
	}
	handled := map[string]bool{}
	maxSeq := map[string]int{}
	nBefore := len(strings.Fields(string(before)))
	for i, full := range seq {
		v, _, _ := strings.Cut(full, "|")
		if handled[v] {
			continue // a redelivery after the crash
		}
		handled[v] = true
		k, s, _ := strings.Cut(v, ":")
		n, _ := strconv.Atoi(s)
		if m, ok := maxSeq[k]; ok && n < m {
			var hist []string
			for j, w := range seq {
				if strings.HasPrefix(w, k+":") {
					mark := ""
					if j >= nBefore {
						mark = "*"
					}
					hist = append(hist, mark+w)
				}
			}
			// The members' lifecycle (assignments, loaded state).
			logs, _ := os.ReadFile(file + ".log")
			logs2, _ := os.ReadFile(file + ".log2")
			logs = append(append(logs, "---- new member ----\n"...), logs2...)
			for _, l := range strings.Split(string(logs), "\n") {
				if !strings.Contains(l, "handler failed") && !strings.Contains(l, "sent to retry") && !strings.Contains(l, "dead-lettered") {
					t.Log(l)
				}
			}
			t.Fatalf("key %s: %d handled for the first time (call %d, %d before the crash) after %d; key history (* after the crash): %v", k, n, i, nBefore, m, hist)
		}
		maxSeq[k] = n
	}
	for _, r := range recs {
		if !handled[string(r.Value)] && !inDLQ[string(r.Value)] {
			// Where its copies are, and the members' lifecycle.
			var copies []string
			for l := 1; l <= 2; l++ {
				for _, c := range readAll(t, seeds, consumers.RetryTopic(topic, group, l)) {
					if string(c.Value) == string(r.Value) || (string(c.Key) == string(r.Key) && header(c, consumers.HeaderMarker) != "") {
						copies = append(copies, fmt.Sprintf("L%d@%d hop=%s retries=%s parked=%s marker=%s o=%s", l, c.Offset,
							header(c, consumers.HeaderHop), header(c, consumers.HeaderRetries), header(c, consumers.HeaderParked),
							header(c, consumers.HeaderMarker), header(c, consumers.HeaderOffset)))
					}
				}
			}
			offs, _ := adm.FetchOffsets(t.Context(), group)
			var cm []string
			offs.Each(func(o kadm.OffsetResponse) { cm = append(cm, fmt.Sprintf("%s/%d=%d", o.Topic, o.Partition, o.At)) })
			logs, _ := os.ReadFile(file + ".log")
			logs2, _ := os.ReadFile(file + ".log2")
			for _, l := range strings.Split(string(logs)+"---- new member ----\n"+string(logs2), "\n") {
				if strings.Contains(l, "loaded") || strings.Contains(l, "assigned") || strings.Contains(l, "revoked") || strings.Contains(l, "ERROR") || strings.Contains(l, "new member") {
					t.Log(l)
				}
			}
			t.Fatalf("record %s (origin offset %d) lost; copies and its key's markers: %v; committed: %v", r.Value, r.Offset, copies, cm)
		}
	}
	t.Logf("%d handler calls in all, %d dead letters", len(seq), len(inDLQ))
}
