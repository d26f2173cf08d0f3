package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

const replayUsage = "replay --from SRC --to DST [--partitions 0,1] [--from-offset N --to-offset M | --since T --until U] [--key K] [--header k=v] [--type T] [--rate R] [--limit N] [--dry-run | --execute] [-o text|json]"

// Provenance headers written on every replayed record.
const (
	// HeaderReplayID names the replay (its --id).
	HeaderReplayID = "orchestrix.replay.id"
	// HeaderReplaySource is the source record's "topic/partition/offset".
	HeaderReplaySource = "orchestrix.replay.source"
	// HeaderReplayTime is when the record was replayed (RFC 3339).
	HeaderReplayTime = "orchestrix.replay.time"
	// HeaderReplayHops counts how often the record was replayed; the
	// loop guard refuses records at --max-hops.
	HeaderReplayHops = "orchestrix.replay.hops"
)

// replayCheckpointTopic holds the progress of every replay, one key per
// replay ID, written in the replay's Kafka transactions.
const replayCheckpointTopic = "orchestrix.replay.checkpoints"

// replayConfig is a parsed replay command line.
type replayConfig struct {
	seeds              []string
	from, to           string
	partitions         []int32
	fromOffset, toOff  int64 // -1: unset
	since, until       time.Time
	key, ceType        string
	headers            map[string]string
	rate               float64
	limit              int64
	dryRun, execute    bool
	json               bool
	id                 string
	maxHops            int
	batch              int
	checkpointTopic    string
	transactionTimeout time.Duration
	sec                *kafkaSecurity
	kafka              []kgo.Opt // TLS and SASL
}

// replayPlan is what a replay copies: per partition [Start, End), and
// Next, where a resumed replay goes on. It is stored in each checkpoint.
type replayPlan struct {
	ID     string                `json:"id"`
	From   string                `json:"from"`
	To     string                `json:"to"`
	Ranges map[int32]*replaySpan `json:"ranges"`
	Copied int64                 `json:"copied"`
	Done   bool                  `json:"done"`
}

type replaySpan struct {
	Start int64 `json:"start"`
	End   int64 `json:"end"`
	Next  int64 `json:"next"`
}

func (p *replayPlan) remaining() int64 {
	var n int64
	for _, s := range p.Ranges {
		n += max(s.End-s.Next, 0)
	}
	return n
}

func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseReplay(args, stderr)
	if err != nil {
		return err
	}
	if err := c.sec.check(ctx, c.seeds); err != nil {
		return err
	}
	cl, err := kgo.NewClient(c.opts()...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	plan, err := replayRanges(ctx, adm, c)
	if err != nil {
		return err
	}
	if !c.execute && !c.dryRun {
		return printPlan(stdout, c, plan, "plan (nothing written; --dry-run reads and counts the matches, --execute copies)")
	}
	if c.dryRun {
		return replayDry(ctx, c, plan, stdout, stderr)
	}
	return replayExecute(ctx, adm, c, plan, stdout, stderr)
}

func parseReplay(args []string, stderr io.Writer) (replayConfig, error) {
	c := replayConfig{headers: map[string]string{}}
	fs := flags("replay", stderr)
	brokers := fs.String("brokers", flagenv.Or("KAFKA_BROKERS", ""), "comma-separated seed brokers (env KAFKA_BROKERS)")
	fs.StringVar(&c.from, "from", "", "source topic (required)")
	fs.StringVar(&c.to, "to", "", "destination topic (required, not the source)")
	parts := fs.String("partitions", "", "source partitions, e.g. 0,1,2 (default all)")
	fs.Int64Var(&c.fromOffset, "from-offset", -1, "first offset to copy in each partition (default: the start, or --since)")
	fs.Int64Var(&c.toOff, "to-offset", -1, "offset to stop before in each partition (default: the end when the replay starts, or --until)")
	since := fs.String("since", "", "copy records with timestamps at or after this (RFC 3339 or a duration ago like 24h; Kafka ListOffsets semantics)")
	until := fs.String("until", "", "copy records before the first with a timestamp at or after this (RFC 3339 or a duration ago)")
	fs.StringVar(&c.key, "key", "", "only records with this key")
	fs.Func("header", "only records with header k=v (repeatable; all must match)", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return fmt.Errorf("want k=v, got %q", s)
		}
		c.headers[k] = v
		return nil
	})
	fs.StringVar(&c.ceType, "type", "", "only records with this CloudEvents type (ce_type)")
	fs.Float64Var(&c.rate, "rate", 0, "at most this many records per second written (0: unlimited)")
	fs.Int64Var(&c.limit, "limit", 0, "copy at most this many matching records (0: all)")
	fs.BoolVar(&c.dryRun, "dry-run", false, "read the slice and count what would be copied; write nothing")
	fs.BoolVar(&c.execute, "execute", false, "copy (without it, only the plan is printed)")
	out := fs.String("o", "text", "output: text or json")
	fs.StringVar(&c.id, "id", "", "replay ID: the transactional ID and checkpoint key (default: derived from the arguments, so the same command resumes)")
	fs.IntVar(&c.maxHops, "max-hops", 3, "loop guard: refuse records already replayed this many times")
	fs.IntVar(&c.batch, "batch", 5000, "at most this many records per Kafka transaction (one poll)")
	fs.StringVar(&c.checkpointTopic, "checkpoint-topic", replayCheckpointTopic, "compacted topic holding replay progress")
	c.sec = kafkaFlags(fs)
	if err := parse(fs, args); err != nil {
		return c, err
	}
	var errs []error
	if c.seeds = flagenv.List(*brokers); len(c.seeds) == 0 {
		errs = append(errs, errors.New("--brokers or KAFKA_BROKERS is required"))
	}
	if c.from == "" || c.to == "" {
		errs = append(errs, errors.New("--from and --to are required"))
	} else if c.from == c.to {
		errs = append(errs, fmt.Errorf("--to %s is the source topic: a replay into its own source would read what it writes", c.to))
	}
	if *parts != "" {
		for _, p := range strings.Split(*parts, ",") {
			n, err := strconv.ParseInt(strings.TrimSpace(p), 10, 32)
			if err != nil || n < 0 {
				errs = append(errs, fmt.Errorf("--partitions: %q is not a partition number", p))
				continue
			}
			c.partitions = append(c.partitions, int32(n))
		}
	}
	now := time.Now()
	var err error
	if c.since, err = parseWhen(*since, now); err != nil {
		errs = append(errs, fmt.Errorf("--since: %w", err))
	}
	if c.until, err = parseWhen(*until, now); err != nil {
		errs = append(errs, fmt.Errorf("--until: %w", err))
	}
	if !c.since.IsZero() && !c.until.IsZero() && !c.until.After(c.since) {
		errs = append(errs, fmt.Errorf("--until %s is not after --since %s", c.until.Format(time.RFC3339), c.since.Format(time.RFC3339)))
	}
	if c.fromOffset >= 0 && !c.since.IsZero() {
		errs = append(errs, errors.New("--from-offset and --since both set the start: give one"))
	}
	if c.toOff >= 0 && !c.until.IsZero() {
		errs = append(errs, errors.New("--to-offset and --until both set the end: give one"))
	}
	if c.fromOffset < -1 || c.toOff < -1 {
		errs = append(errs, errors.New("--from-offset and --to-offset must be at least 0"))
	}
	if c.fromOffset >= 0 && c.toOff >= 0 && c.toOff < c.fromOffset {
		errs = append(errs, fmt.Errorf("--to-offset %d is before --from-offset %d", c.toOff, c.fromOffset))
	}
	if c.dryRun && c.execute {
		errs = append(errs, errors.New("--dry-run and --execute exclude each other"))
	}
	switch *out {
	case "text":
	case "json":
		c.json = true
	default:
		errs = append(errs, fmt.Errorf("-o %q: want text or json", *out))
	}
	if c.rate != 0 {
		if err := floatIn("rate", c.rate, dlqMinRate, dlqMaxRate); err != nil {
			errs = append(errs, fmt.Errorf("%w (or 0: unlimited)", err))
		}
	}
	errs = append(errs, intIn("limit", int(min(c.limit, int64(unbounded))), 0, unbounded), intIn("max-hops", c.maxHops, 1, 1000), intIn("batch", c.batch, 1, 100_000))
	if err := checkFlags(errs...); err != nil {
		return c, fmt.Errorf("%w (usage: orchestrix %s)", err, replayUsage)
	}
	if c.id == "" {
		h := sha256.New()
		fmt.Fprintf(h, "%s\x00%s\x00%v\x00%d\x00%d\x00%d\x00%d\x00%s\x00%s\x00%v\x00%d", c.from, c.to, c.partitions, c.fromOffset, c.toOff,
			c.since.UnixMilli(), c.until.UnixMilli(), c.key, c.ceType, sortedHeaders(c.headers), c.limit)
		c.id = "replay-" + hex.EncodeToString(h.Sum(nil))[:16]
	}
	c.transactionTimeout = time.Minute
	if c.kafka, err = c.sec.options(); err != nil {
		return c, err
	}
	return c, nil
}

// opts returns the client options: seeds, TLS and SASL, then more.
func (c replayConfig) opts(more ...kgo.Opt) []kgo.Opt {
	return slices.Concat(c.kafka, []kgo.Opt{kgo.SeedBrokers(c.seeds...)}, more)
}

func sortedHeaders(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

// replayRanges resolves the slice to offsets: ListOffsets semantics for
// times (the first offset whose timestamp is at or after the time), the
// last stable offset for "the end" (a read_committed reader's end).
func replayRanges(ctx context.Context, adm *kadm.Client, c replayConfig) (*replayPlan, error) {
	// A broker learns of a topic created a moment ago with a delay: look
	// again for 3s before calling it missing.
	var td kadm.TopicDetails
	var missing []string
	for deadline := time.Now().Add(3 * time.Second); ; {
		var err error
		if td, err = adm.ListTopics(ctx, c.from, c.to); err != nil {
			return nil, fmt.Errorf("list topics: %w", err)
		}
		missing = missing[:0]
		for _, t := range []string{c.from, c.to} {
			if d, ok := td[t]; !ok || d.Err != nil {
				missing = append(missing, t)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: topic %s does not exist", errUsage, strings.Join(missing, " and "))
	}
	src := td[c.from]
	parts := c.partitions
	if len(parts) == 0 {
		for p := range src.Partitions {
			parts = append(parts, p)
		}
		slices.Sort(parts)
	}
	for _, p := range parts {
		if _, ok := src.Partitions[p]; !ok {
			return nil, fmt.Errorf("%w: topic %s has no partition %d (it has %d)", errUsage, c.from, p, len(src.Partitions))
		}
	}
	starts, err := adm.ListStartOffsets(ctx, c.from)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("start offsets of %s: %w", c.from, err)
	}
	ends, err := adm.ListCommittedOffsets(ctx, c.from)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", c.from, err)
	}
	at := func(t time.Time) (kadm.ListedOffsets, error) {
		if t.IsZero() {
			return nil, nil
		}
		o, err := adm.ListOffsetsAfterMilli(ctx, t.UnixMilli(), c.from)
		if err == nil {
			err = o.Error()
		}
		return o, err
	}
	sinceOffs, err := at(c.since)
	if err != nil {
		return nil, fmt.Errorf("offsets of %s at --since: %w", c.from, err)
	}
	untilOffs, err := at(c.until)
	if err != nil {
		return nil, fmt.Errorf("offsets of %s at --until: %w", c.from, err)
	}
	plan := &replayPlan{ID: c.id, From: c.from, To: c.to, Ranges: map[int32]*replaySpan{}}
	for _, p := range parts {
		lo, _ := starts.Lookup(c.from, p)
		hi, _ := ends.Lookup(c.from, p)
		s := &replaySpan{Start: lo.Offset, End: hi.Offset}
		if c.fromOffset >= 0 {
			s.Start = max(s.Start, c.fromOffset)
		}
		if o, ok := sinceOffs.Lookup(c.from, p); ok {
			// No record at or after the time: ListOffsets answers the end.
			s.Start = max(s.Start, o.Offset)
		}
		if c.toOff >= 0 {
			s.End = min(s.End, c.toOff)
		}
		if o, ok := untilOffs.Lookup(c.from, p); ok {
			s.End = min(s.End, o.Offset)
		}
		s.End = max(s.End, s.Start)
		s.Next = s.Start
		plan.Ranges[p] = s
	}
	return plan, nil
}

func printPlan(w io.Writer, c replayConfig, plan *replayPlan, note string) error {
	if c.json {
		return json.NewEncoder(w).Encode(map[string]any{"plan": plan, "note": note})
	}
	fmt.Fprintf(w, "replay %s: %s -> %s, %s\n", plan.ID, plan.From, plan.To, note)
	parts := slices.Sorted(mapsKeys(plan.Ranges))
	for _, p := range parts {
		s := plan.Ranges[p]
		fmt.Fprintf(w, "  partition %d: offsets [%d, %d) next %d, %d records to read\n", p, s.Start, s.End, s.Next, max(s.End-s.Next, 0))
	}
	fmt.Fprintf(w, "filters: key=%q type=%q headers=%v limit=%d; %d records to read in all\n", c.key, c.ceType, sortedHeaders(c.headers), c.limit, plan.remaining())
	return nil
}

func mapsKeys(m map[int32]*replaySpan) func(func(int32) bool) {
	return func(yield func(int32) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// replayVerdict says what happens to a source record.
type replayVerdict int

const (
	copyIt replayVerdict = iota
	filtered
	looping
)

func (c replayConfig) judge(r *kgo.Record) replayVerdict {
	if c.key != "" && string(r.Key) != c.key {
		return filtered
	}
	for k, v := range c.headers {
		if hdr(r, k) != v {
			return filtered
		}
	}
	if c.ceType != "" && hdr(r, codec.HeaderPrefix+"type") != c.ceType {
		return filtered
	}
	if hops, _ := strconv.Atoi(hdr(r, HeaderReplayHops)); hops >= c.maxHops || hdr(r, HeaderReplayID) == c.id {
		return looping
	}
	return copyIt
}

// replayed returns r's copy for the destination with provenance headers.
func (c replayConfig) replayed(r *kgo.Record, now string) *kgo.Record {
	hops, _ := strconv.Atoi(hdr(r, HeaderReplayHops))
	out := &kgo.Record{Topic: c.to, Key: r.Key, Value: r.Value, Timestamp: r.Timestamp}
	for _, h := range r.Headers {
		switch h.Key {
		case HeaderReplayID, HeaderReplaySource, HeaderReplayTime, HeaderReplayHops:
			continue
		}
		out.Headers = append(out.Headers, h)
	}
	out.Headers = append(out.Headers,
		kgo.RecordHeader{Key: HeaderReplayID, Value: []byte(c.id)},
		kgo.RecordHeader{Key: HeaderReplaySource, Value: []byte(fmt.Sprintf("%s/%d/%d", r.Topic, r.Partition, r.Offset))},
		kgo.RecordHeader{Key: HeaderReplayTime, Value: []byte(now)},
		kgo.RecordHeader{Key: HeaderReplayHops, Value: []byte(strconv.Itoa(hops + 1))})
	return out
}

// scanReplay reads every partition's [Next, End) with read_committed,
// control records included so that a range ending in a transaction marker
// is known to be finished, and calls fn per data record in offset order
// per partition; fn returning false stops the scan. After each poll,
// after(plan) is called (the caller commits there).
func scanReplay(ctx context.Context, c replayConfig, plan *replayPlan, fn func(r *kgo.Record) bool, after func() error) error {
	offs := map[int32]kgo.Offset{}
	for p, s := range plan.Ranges {
		if s.Next < s.End {
			offs[p] = kgo.NewOffset().At(s.Next)
		}
	}
	if len(offs) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(c.opts(kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords(),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{c.from: offs}))...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	open := len(offs)
	for open > 0 {
		fs := cl.PollRecords(ctx, c.batch)
		if err := ctx.Err(); err != nil {
			return err
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) {
			if ferr == nil {
				ferr = fmt.Errorf("fetch %s[%d]: %w", t, p, err)
			}
		})
		if ferr != nil {
			return ferr
		}
		stop := false
		fs.EachPartition(func(fp kgo.FetchTopicPartition) {
			s := plan.Ranges[fp.Partition]
			for _, r := range fp.Records {
				if stop || s == nil || s.Next >= s.End || r.Offset < s.Next {
					continue
				}
				if r.Offset >= s.End {
					s.Next = s.End
					break
				}
				if !r.Attrs.IsControl() && !fn(r) {
					stop = true
					return
				}
				s.Next = r.Offset + 1
			}
			if s != nil && fp.LastStableOffset >= s.End && len(fp.Records) > 0 && fp.Records[len(fp.Records)-1].Offset+1 >= s.End {
				s.Next = s.End
			}
		})
		if err := after(); err != nil {
			return err
		}
		if stop {
			return nil
		}
		open = 0
		for _, s := range plan.Ranges {
			if s.Next < s.End {
				open++
			}
		}
	}
	return nil
}

func replayDry(ctx context.Context, c replayConfig, plan *replayPlan, stdout, stderr io.Writer) error {
	var seen, matched, loops atomic.Int64
	start := time.Now()
	stop := replayProgress(stderr, plan.remaining(), &seen, c.json)
	err := scanReplay(ctx, c, plan, func(r *kgo.Record) bool {
		seen.Add(1)
		switch c.judge(r) {
		case copyIt:
			matched.Add(1)
		case looping:
			loops.Add(1)
		}
		return c.limit == 0 || matched.Load() < c.limit
	}, func() error { return nil })
	stop()
	if err != nil {
		return err
	}
	return replaySummary(stdout, c, "dry run: would copy", matched.Load(), seen.Load(), loops.Load(), plan, time.Since(start))
}

func replaySummary(w io.Writer, c replayConfig, verb string, copied, seen, loops int64, plan *replayPlan, took time.Duration) error {
	if c.json {
		return json.NewEncoder(w).Encode(map[string]any{"id": c.id, "result": verb, "copied": copied, "read": seen, "refused_loop": loops,
			"seconds": took.Seconds(), "plan": plan})
	}
	fmt.Fprintf(w, "replay %s: %s %d records (read %d, %d refused by the loop guard) from %s to %s in %s\n", c.id, verb, copied, seen, loops, c.from, c.to, took.Round(time.Millisecond))
	return nil
}

// replayProgress draws read/total, the rate and an ETA on w until stop.
func replayProgress(w io.Writer, total int64, done *atomic.Int64, quiet bool) func() {
	if quiet || total < 1000 {
		return func() {}
	}
	start := time.Now()
	draw := func() {
		n := done.Load()
		rate := float64(n) / max(time.Since(start).Seconds(), 1e-3)
		eta := "?"
		if rate > 0 {
			eta = (time.Duration(float64(max(total-n, 0))/rate) * time.Second).Round(time.Second).String()
		}
		fmt.Fprintf(w, "\r%d/%d records read, %.0f/s, ETA %s   ", n, total, rate, eta)
	}
	return redraw(w, 500*time.Millisecond, draw)
}

// replayExecute copies with a transactional producer whose transactional
// ID is the replay ID: every transaction holds a batch of copies and a
// checkpoint record (the plan with each partition's next offset) in the
// checkpoint topic, so after a crash the last committed checkpoint says
// exactly what the destination holds, and a rerun of the same command
// resumes there. Initialising the producer fences an earlier run still
// alive and aborts its open transaction.
func replayExecute(ctx context.Context, adm *kadm.Client, c replayConfig, plan *replayPlan, stdout, stderr io.Writer) error {
	compact := "compact"
	resp, err := adm.CreateTopic(ctx, 1, -1, map[string]*string{"cleanup.policy": &compact}, c.checkpointTopic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("create checkpoint topic %s: %w", c.checkpointTopic, err)
	}
	p, err := kgo.NewClient(c.opts(kgo.TransactionalID(c.id), kgo.TransactionTimeout(c.transactionTimeout),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))...)
	if err != nil {
		return fmt.Errorf("transactional producer: %w", err)
	}
	defer p.Close()
	saved, err := replayRecover(ctx, p, c)
	if err != nil {
		return err
	}
	if saved != nil {
		if saved.From != c.from || saved.To != c.to {
			return fmt.Errorf("%w: replay ID %s was used for %s -> %s", errUsage, c.id, saved.From, saved.To)
		}
		plan = saved
		if plan.Done {
			return replaySummary(stdout, c, "already finished; copied", plan.Copied, 0, 0, plan, 0)
		}
		fmt.Fprintf(stderr, "resuming replay %s: %d copied before, %d records left to read\n", c.id, plan.Copied, plan.remaining())
	}
	var (
		seen, loops atomic.Int64
		batch       []*kgo.Record
		interval    time.Duration
		next        = time.Now()
		now         = time.Now().UTC().Format(time.RFC3339Nano)
		copied      = plan.Copied
	)
	if c.rate > 0 {
		interval = time.Duration(float64(time.Second) / c.rate)
	}
	// One Kafka transaction per poll: its copies and the checkpoint (the
	// plan as of the end of that poll). A writer goroutine produces and
	// commits them in order while the next poll is read; a failed
	// transaction stops the reading.
	type txn struct {
		recs []*kgo.Record
		ckpt []byte
	}
	produceTxn := func(ctx context.Context, t txn) error {
		if err := p.BeginTransaction(); err != nil {
			return fmt.Errorf("begin transaction: %w", err)
		}
		recs := append(t.recs, &kgo.Record{Topic: c.checkpointTopic, Key: []byte(c.id), Value: t.ckpt})
		if err := p.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			_ = p.EndTransaction(context.WithoutCancel(ctx), kgo.TryAbort)
			return fmt.Errorf("produce to %s: %w", c.to, err)
		}
		if err := p.EndTransaction(ctx, kgo.TryCommit); err != nil {
			return fmt.Errorf("commit transaction: %w", err)
		}
		return nil
	}
	snapshot := func(final bool) ([]byte, error) {
		plan.Copied = copied
		plan.Done = final
		return json.Marshal(plan)
	}
	rctx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	pages := make(chan txn, 2)
	var werr error
	written := make(chan struct{})
	go func() {
		defer close(written)
		for t := range pages {
			if werr == nil {
				if werr = produceTxn(ctx, t); werr != nil {
					stopReading()
				}
			}
		}
	}()
	start := time.Now()
	stop := replayProgress(stderr, plan.remaining(), &seen, c.json)
	err = scanReplay(rctx, c, plan, func(r *kgo.Record) bool {
		seen.Add(1)
		switch c.judge(r) {
		case filtered:
			return true
		case looping:
			loops.Add(1)
			return true
		}
		if c.limit > 0 && copied >= c.limit {
			return false
		}
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				select {
				case <-rctx.Done():
					return false
				case <-time.After(d):
				}
			}
			next = next.Add(interval)
			if time.Since(next) > time.Second {
				next = time.Now() // do not burst after a stall
			}
		}
		batch = append(batch, c.replayed(r, now))
		copied++
		return true
	}, func() error {
		if len(batch) == 0 {
			return nil
		}
		b, err := snapshot(false)
		if err != nil {
			return err
		}
		select {
		case pages <- txn{batch, b}:
		case <-rctx.Done():
			return rctx.Err()
		}
		batch = nil // the writer owns the sent one
		return nil
	})
	close(pages)
	<-written
	stop()
	if werr != nil {
		err = werr
	}
	if err == nil && ctx.Err() == nil {
		if c.limit > 0 && copied >= c.limit {
			// The limit ends the replay here: the rest of the plan is not
			// copied by a rerun either.
			for _, s := range plan.Ranges {
				s.End = s.Next
			}
		}
		var b []byte
		if b, err = snapshot(true); err == nil {
			err = produceTxn(ctx, txn{batch, b})
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted; run the same command again to resume from the last committed transaction: %w", err)
		}
		return err
	}
	return replaySummary(stdout, c, "copied", copied, seen.Load(), loops.Load(), plan, time.Since(start))
}

// replayRecover returns the last committed checkpoint of c.id, or nil. It
// first commits a session marker so that every earlier record of the
// checkpoint partition is decided (committed or aborted) below it.
func replayRecover(ctx context.Context, p *kgo.Client, c replayConfig) (*replayPlan, error) {
	if err := p.BeginTransaction(); err != nil {
		return nil, fmt.Errorf("begin session transaction: %w", err)
	}
	res := p.ProduceSync(ctx, &kgo.Record{Topic: c.checkpointTopic, Key: []byte(c.id + ".session"), Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))})
	if err := res.FirstErr(); err != nil {
		_ = p.EndTransaction(context.WithoutCancel(ctx), kgo.TryAbort)
		return nil, fmt.Errorf("write session record: %w", err)
	}
	mark := res[0].Record.Offset
	if err := p.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return nil, fmt.Errorf("commit session record: %w", err)
	}
	cl, err := kgo.NewClient(c.opts(kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{c.checkpointTopic: {0: kgo.NewOffset().AtStart()}}))...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var last []byte
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := fs.Err0(); err != nil {
			return nil, fmt.Errorf("read checkpoints: %w", err)
		}
		done := false
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset >= mark {
				done = true
				return
			}
			if string(r.Key) == c.id {
				last = r.Value
			}
		})
		if done {
			break
		}
	}
	if last == nil {
		return nil, nil
	}
	var plan replayPlan
	if err := json.Unmarshal(last, &plan); err != nil {
		return nil, fmt.Errorf("checkpoint of %s: %w", c.id, err)
	}
	return &plan, nil
}
