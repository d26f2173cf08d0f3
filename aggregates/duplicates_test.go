package aggregates_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/internal/testdomain"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/esdb"
	"github.com/orchestrix/orchestrix/stores/esdb/esdbtest"
	"github.com/orchestrix/orchestrix/stores/memory"
	"github.com/orchestrix/orchestrix/stores/postgres/pgtest"
	"github.com/twmb/franz-go/pkg/kgo"
)

// storeKinds are the three stores a processor test runs on: memory,
// PostgreSQL (a fresh schema on DATABASE_URL) and EventSourcingDB (the
// in-repo double of its HTTP API).
func storeKinds() []struct {
	name string
	new  func(t *testing.T) stores.EventStore
} {
	return []struct {
		name string
		new  func(t *testing.T) stores.EventStore
	}{
		{"memory", func(t *testing.T) stores.EventStore { return memory.New() }},
		{"postgres", func(t *testing.T) stores.EventStore { return pgtest.Store(t, testenv.Pool(t)) }},
		{"esdb", func(t *testing.T) stores.EventStore {
			srv := esdbtest.NewServer("secret")
			t.Cleanup(srv.Close)
			c, err := esdb.NewClient(srv.URL, "secret")
			if err != nil {
				t.Fatal(err)
			}
			s, err := esdb.New(c)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
	}
}

// outcomeLog is an outcomes topic on kfake and what was published to it.
type outcomeLog struct {
	client *kgo.Client
	topic  string
}

func newOutcomeLog(t *testing.T) outcomeLog {
	t.Helper()
	seeds := testenv.FakeBrokers(t)
	return outcomeLog{client: testenv.Client(t, seeds, kgo.ProducerLinger(0)), topic: testenv.Topic(t, seeds, 1, nil)}
}

// processor returns a processor on repo that publishes to the log.
func (l outcomeLog) processor(t *testing.T, repo *aggregates.Repository[testdomain.Ledger]) *aggregates.Processor[testdomain.Ledger] {
	t.Helper()
	p, err := aggregates.NewProcessor(repo, aggregates.WithOutcomes(l.client, l.topic))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// read returns every outcome published so far, by command ID, in order.
func (l outcomeLog) read(t *testing.T) map[string][]orchestrix.Outcome {
	t.Helper()
	ctx := t.Context()
	end, err := l.client.ProduceSync(ctx, &kgo.Record{Topic: l.topic, Key: []byte("end")}).First()
	if err != nil {
		t.Fatal(err)
	}
	cl := testenv.Client(t, l.client.OptValue(kgo.SeedBrokers).([]string), kgo.ConsumeTopics(l.topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	out := map[string][]orchestrix.Outcome{}
	for {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatal(err)
		}
		for _, r := range fs.Records() {
			if r.Offset == end.Offset {
				return out
			}
			var o orchestrix.Outcome
			if err := json.Unmarshal(r.Value, &o); err != nil {
				t.Fatal(err)
			}
			out[o.CommandID] = append(out[o.CommandID], o)
		}
	}
}

// TestProcessorCommandTwice is the regression test of a command ID
// delivered 2-5 times in one poll and again in later polls (a sender that
// resends after a timeout, a dead-letter redrive), on every store, with a
// snapshot every 2 events. Before the fix the memory store stored the
// events of every copy, and PostgreSQL and ESDB skipped the copies while
// the processor answered each "accepted" with versions never written,
// cached them and saved a snapshot past the stream's end, after which
// every command on the aggregate conflicted forever.
func TestProcessorCommandTwice(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			for copies := 2; copies <= 5; copies++ {
				t.Run(fmt.Sprintf("copies=%d", copies), func(t *testing.T) {
					testCommandTwice(t, kind.new(t), copies)
				})
			}
		})
	}
}

func testCommandTwice(t *testing.T, store stores.EventStore, copies int) {
	reg := testdomain.Registry(t)
	repo, err := aggregates.NewRepository(testdomain.Aggregate(t, aggregates.SnapshotEvery(2)), store, reg, "/test")
	if err != nil {
		t.Fatal(err)
	}
	log := newOutcomeLog(t)
	newProc := func() *aggregates.Processor[testdomain.Ledger] { return log.processor(t, repo) }
	times := func(c orchestrix.Command) []orchestrix.Command {
		out := make([]orchestrix.Command, copies)
		for i := range out {
			out[i] = c
		}
		return out
	}
	// Account b has copies at the end of its poll (no later command of b
	// exposes a wrong version there), account a in the middle of its
	// poll, next to a rejected command sent as often.
	p := newProc()
	poll1 := append([]orchestrix.Command{cmd("b-open", "b", testdomain.Open{Name: "bob"})}, times(cmd("b-dep1", "b", testdomain.Post{Amount: 5}))...)
	checkNoErrors(t, handleConcurrently(p, records(t, reg, 0, poll1...)))
	var poll1a []orchestrix.Command
	poll1a = append(poll1a, cmd("a-open", "a", testdomain.Open{Name: "ada"}))
	poll1a = append(poll1a, times(cmd("a-dep1", "a", testdomain.Post{Amount: 10}))...)
	poll1a = append(poll1a, times(cmd("a-wd", "a", testdomain.Post{Amount: -1000}))...)
	poll1a = append(poll1a, cmd("a-dep2", "a", testdomain.Post{Amount: 20}))
	checkNoErrors(t, handleConcurrently(p, records(t, reg, 0, poll1a...)))

	// The same commands again in a later poll, then new ones.
	var poll2 []orchestrix.Command
	poll2 = append(poll2, times(cmd("a-dep1", "a", testdomain.Post{Amount: 10}))...)
	poll2 = append(poll2, cmd("a-dep3", "a", testdomain.Post{Amount: 30}))
	poll2 = append(poll2, times(cmd("b-dep1", "b", testdomain.Post{Amount: 5}))...)
	poll2 = append(poll2, cmd("b-dep2", "b", testdomain.Post{Amount: 7}))
	checkNoErrors(t, handleConcurrently(p, records(t, reg, 0, poll2...)))

	// A new owner of the partition (cold cache: it loads from snapshots)
	// takes more commands, and the copies once more.
	p = newProc()
	poll3 := []orchestrix.Command{
		cmd("a-dep4", "a", testdomain.Post{Amount: 40}), cmd("b-dep3", "b", testdomain.Post{Amount: 9}),
		cmd("a-dep1", "a", testdomain.Post{Amount: 10}), cmd("b-dep1", "b", testdomain.Post{Amount: 5}),
	}
	checkNoErrors(t, handleConcurrently(p, records(t, reg, 0, poll3...)))

	want := map[string]struct {
		version uint64
		balance int64
		cmds    []string
	}{
		"a": {5, 100, []string{"a-open", "a-dep1", "a-dep2", "a-dep3", "a-dep4"}},
		"b": {4, 21, []string{"b-open", "b-dep1", "b-dep2", "b-dep3"}},
	}
	for id, w := range want {
		var got []string
		for e, err := range store.ReadStream(t.Context(), id, 0) {
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, e.CommandID)
		}
		if fmt.Sprint(got) != fmt.Sprint(w.cmds) {
			t.Errorf("stream %s holds the events of %v, want %v (each command once)", id, got, w.cmds)
		}
		root, err := repo.Load(t.Context(), id)
		if err != nil || root.Version != w.version || root.State.Balance != w.balance {
			t.Errorf("%s = version %d balance %d, %v; want version %d balance %d", id, root.Version, root.State.Balance, err, w.version, w.balance)
		}
		if snap, ok, err := store.LoadSnapshot(t.Context(), id); err != nil || (ok && snap.Version > w.version) {
			t.Errorf("snapshot of %s at version %d (%v), past the stream's end %d", id, snap.Version, err, w.version)
		}
	}

	// Outcomes: the first copy is decided, every later copy is answered
	// with its result: a duplicate with the versions stored, or the same
	// rejection.
	outs := log.read(t)
	versions := map[string][2]uint64{"a-dep1": {2, 2}, "b-dep1": {2, 2}}
	for id, v := range versions {
		o := outs[id]
		if len(o) != 2*copies+1 {
			t.Errorf("%s: %d outcomes, want %d (one per delivery)", id, len(o), 2*copies+1)
			continue
		}
		for i, x := range o {
			status := orchestrix.OutcomeDuplicate
			if i == 0 {
				status = orchestrix.OutcomeAccepted
			}
			if x.Status != status || x.FromVersion != v[0] || x.ToVersion != v[1] {
				t.Errorf("%s outcome %d = %s %d-%d, want %s %d-%d", id, i, x.Status, x.FromVersion, x.ToVersion, status, v[0], v[1])
			}
		}
	}
	if o := outs["a-wd"]; len(o) != copies {
		t.Errorf("a-wd: %d outcomes, want %d", len(o), copies)
	} else {
		for i, x := range o {
			if x.Status != orchestrix.OutcomeRejected || x.Code != "insufficient_funds" {
				t.Errorf("a-wd outcome %d = %s %q, want rejected insufficient_funds", i, x.Status, x.Code)
			}
		}
	}
}

// TestProcessorDuplicateRace: another member decides a command between the
// round's lookup and its append (the store then skips the request as a
// duplicate). The outcome says what the store did, and the processor
// neither caches nor snapshots a version that was not written.
func TestProcessorDuplicateRace(t *testing.T) {
	for _, kind := range storeKinds() {
		t.Run(kind.name, func(t *testing.T) {
			inner := kind.new(t)
			reg := testdomain.Registry(t)
			store := &racingStore{EventStore: inner}
			repo, err := aggregates.NewRepository(testdomain.Aggregate(t, aggregates.SnapshotEvery(2)), store, reg, "/test")
			if err != nil {
				t.Fatal(err)
			}
			log := newOutcomeLog(t)
			p := log.processor(t, repo)
			checkNoErrors(t, handleConcurrently(p, records(t, reg, 0, cmd("open", "a", testdomain.Open{Name: "ada"}))))
			// The other member's decision lands right before our append.
			other, err := aggregates.NewRepository(testdomain.Aggregate(t), inner, reg, "/other")
			if err != nil {
				t.Fatal(err)
			}
			store.before = func() {
				for _, c := range []orchestrix.Command{cmd("side", "a", testdomain.Post{Amount: 5}), cmd("dep", "a", testdomain.Post{Amount: 10})} {
					if _, err := other.Handle(t.Context(), c); err != nil {
						t.Error(err)
					}
				}
			}
			checkNoErrors(t, handleConcurrently(p, records(t, reg, 0, cmd("dep", "a", testdomain.Post{Amount: 10}))))
			store.before = nil
			// The state cached and snapshotted must be the stored one.
			checkNoErrors(t, handleConcurrently(p, records(t, reg, 0, cmd("dep2", "a", testdomain.Post{Amount: 1}), cmd("dep3", "a", testdomain.Post{Amount: 1}))))
			root, err := repo.Load(t.Context(), "a")
			if err != nil || root.Version != 5 || root.State.Balance != 17 {
				t.Fatalf("a = version %d balance %d, %v; want 5, 17", root.Version, root.State.Balance, err)
			}
			outs := log.read(t)
			if o := outs["dep"]; len(o) != 1 || o[0].Status != orchestrix.OutcomeDuplicate || o[0].ToVersion != 3 {
				t.Fatalf("outcome of dep = %+v, want one duplicate of version 3 (the store skipped it)", o)
			}
			if o := outs["dep3"]; len(o) != 1 || o[0].Status != orchestrix.OutcomeAccepted || o[0].ToVersion != 5 {
				t.Fatalf("outcome of dep3 = %+v, want accepted at version 5", o)
			}
		})
	}
}

// racingStore runs before (when set) ahead of each AppendMany.
type racingStore struct {
	stores.EventStore
	before func()
}

func (s *racingStore) AppendMany(ctx context.Context, reqs []stores.AppendRequest) ([]stores.AppendResult, error) {
	if s.before != nil {
		s.before()
	}
	return s.EventStore.AppendMany(ctx, reqs)
}

// TestOutcomeCarriesCorrelation: an outcome names its command's type and
// correlation ID (a saga's ID), first answers and duplicates alike.
func TestOutcomeCarriesCorrelation(t *testing.T) {
	reg := testdomain.Registry(t)
	repo, err := aggregates.NewRepository(testdomain.Aggregate(t), memory.New(), reg, "/test")
	if err != nil {
		t.Fatal(err)
	}
	log := newOutcomeLog(t)
	p := log.processor(t, repo)
	open := cmd("open", "a", testdomain.Open{Name: "ada"})
	open.CorrelationID = "saga-7"
	wd := cmd("wd", "a", testdomain.Post{Amount: -5})
	wd.CorrelationID = "saga-7"
	checkNoErrors(t, handleConcurrently(p, records(t, reg, 0, open, wd, open, wd)))
	outs := log.read(t)
	for id, typ := range map[string]string{"open": testdomain.TypeOpen, "wd": testdomain.TypePost} {
		if len(outs[id]) != 2 {
			t.Fatalf("%s: %d outcomes, want 2", id, len(outs[id]))
		}
		for _, o := range outs[id] {
			if o.CorrelationID != "saga-7" || o.CommandType != typ {
				t.Errorf("%s outcome %s: correlation %q, type %q; want saga-7, %s", id, o.Status, o.CorrelationID, o.CommandType, typ)
			}
		}
	}
}
