package cli

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// dlqStdin is where purge reads its confirmation (replaced in tests).
var dlqStdin io.Reader = os.Stdin

const dlqUsage = "dlq list|show|redrive|purge --topic T --group G [flags]"

// Bounds of dlq's --rate: a slower one would overflow the wait between
// records.
const (
	dlqMinRate = 0.001
	dlqMaxRate = 1e6
)

// dlqConfig holds the flags shared by the dlq subcommands.
type dlqConfig struct {
	seeds              []string
	kafka              []kgo.Opt // TLS and SASL
	topic, group       string
	dlq, redriveGroup  string
	class, ceType, key string
	since, until       time.Time
	all                bool
	limit              int
	// redrive
	dryRun, force, fromStart bool
	rate                     float64
	maxRedrives, toLevel     int
	// purge
	yes bool
}

// parseWhen accepts RFC 3339 or a duration before now ("2h").
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%w: time %q is neither RFC 3339 nor a duration ago like 2h", errUsage, s)
}

func runDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: %s", errUsage, dlqUsage)
	}
	sub := args[0]
	switch sub {
	case "list", "show", "redrive", "purge":
	case "-h", "--help", "help":
		fmt.Fprintln(stderr, "usage: orchestrix "+dlqUsage)
		return flag.ErrHelp
	default:
		return fmt.Errorf("%w: unknown dlq command %q: %s", errUsage, sub, dlqUsage)
	}
	var c dlqConfig
	fs := flags("dlq "+sub, stderr)
	brokers := fs.String("brokers", flagenv.Or("KAFKA_BROKERS", ""), "comma-separated seed brokers (env KAFKA_BROKERS)")
	sec := kafkaFlags(fs)
	fs.StringVar(&c.topic, "topic", "", "the consumed topic whose dead letters to work on (required)")
	fs.StringVar(&c.group, "group", "", "the consumer group that dead-lettered them (required)")
	fs.StringVar(&c.dlq, "dlq", "", "dead-letter topic (default <topic>.<group>.dlq)")
	fs.StringVar(&c.redriveGroup, "redrive-group", "", "consumer group holding the redriver's position (default <dlq>.redrive)")
	fs.StringVar(&c.class, "class", "", "only dead letters whose error class or reason starts with this (permanent, transient, poison:...)")
	fs.StringVar(&c.ceType, "type", "", "only dead letters with this CloudEvents type (ce_type)")
	fs.StringVar(&c.key, "key", "", "only dead letters with this record key")
	since := fs.String("since", "", "only dead letters written at or after this time (RFC 3339 or a duration ago, e.g. 2h)")
	until := fs.String("until", "", "only dead letters written before this time (RFC 3339 or a duration ago)")
	if sub == "list" || sub == "show" {
		fs.BoolVar(&c.all, "all", false, "include dead letters already redriven or purged (before the redriver's position)")
		fs.IntVar(&c.limit, "limit", 0, "stop after this many matching dead letters (0: all)")
	}
	if sub == "redrive" {
		fs.BoolVar(&c.dryRun, "dry-run", false, "print what would be redriven; produce and commit nothing")
		fs.Float64Var(&c.rate, "rate", 0, "at most this many records per second (0: unlimited)")
		fs.IntVar(&c.maxRedrives, "max-redrives", 3, "refuse records already redriven this many times")
		fs.BoolVar(&c.force, "force", false, "redrive records over --max-redrives too")
		fs.IntVar(&c.toLevel, "to-level", 0, "redrive into retry level n instead of the original topic")
		fs.BoolVar(&c.fromStart, "from-start", false, "start at the beginning of the dead-letter topic, not at the redriver's position")
	}
	if sub == "purge" {
		fs.BoolVar(&c.yes, "yes", false, "do not ask for confirmation")
	}
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	var errs []error
	if c.seeds = flagenv.List(*brokers); len(c.seeds) == 0 {
		errs = append(errs, errors.New("--brokers or KAFKA_BROKERS is required"))
	}
	if c.topic == "" || c.group == "" {
		errs = append(errs, errors.New("--topic and --group are required"))
	}
	var err error
	now := time.Now()
	if c.since, err = parseWhen(*since, now); err != nil {
		errs = append(errs, err)
	}
	if c.until, err = parseWhen(*until, now); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, // nil ones are dropped by errors.Join
		intIn("limit", c.limit, 0, unbounded),
		intIn("max-redrives", c.maxRedrives, 0, unbounded),
		intIn("to-level", c.toLevel, 0, maxRetryLevel))
	if c.rate != 0 { // 0: unlimited
		if err := floatIn("rate", c.rate, dlqMinRate, dlqMaxRate); err != nil {
			errs = append(errs, fmt.Errorf("%w (or 0: unlimited)", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if c.dlq == "" {
		c.dlq = consumers.DeadLetterTopic(c.topic, c.group)
	}
	if c.redriveGroup == "" {
		c.redriveGroup = c.dlq + ".redrive"
	}
	if c.kafka, err = sec.options(); err != nil {
		return err
	}
	if err := sec.check(ctx, c.seeds); err != nil {
		return err
	}
	cl, err := kgo.NewClient(slices.Concat(c.kafka, []kgo.Opt{kgo.SeedBrokers(c.seeds...), kgo.RecordPartitioner(kgo.ManualPartitioner())})...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	switch sub {
	case "list", "show":
		return dlqRead(ctx, cl, c, sub == "show", stdout)
	case "redrive":
		return dlqRedrive(ctx, cl, c, stdout, stderr)
	default:
		return dlqPurge(ctx, cl, c, stdout, stderr)
	}
}

// dlqRange is a partition's offsets to read: [from, to).
type dlqRange struct{ from, to int64 }

// dlqRanges returns what to read of the dead-letter topic: from the
// redriver's committed position (or the start) to the current end.
func dlqRanges(ctx context.Context, adm *kadm.Client, c dlqConfig, fromStart bool) (map[int32]dlqRange, error) {
	starts, err := adm.ListStartOffsets(ctx, c.dlq)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, c.offsetsErr("start", err)
	}
	ends, err := adm.ListEndOffsets(ctx, c.dlq)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, c.offsetsErr("end", err)
	}
	var committed kadm.OffsetResponses
	if !fromStart {
		if committed, err = adm.FetchOffsets(ctx, c.redriveGroup); err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
			return nil, fmt.Errorf("position of %s: %w", c.redriveGroup, err)
		}
	}
	out := map[int32]dlqRange{}
	ends.Each(func(e kadm.ListedOffset) {
		if e.Topic != c.dlq {
			return
		}
		r := dlqRange{to: e.Offset}
		if s, ok := starts.Lookup(c.dlq, e.Partition); ok && s.Err == nil {
			r.from = s.Offset
		}
		if o, ok := committed.Lookup(c.dlq, e.Partition); ok && o.Err == nil && o.At > r.from {
			r.from = o.At
		}
		out[e.Partition] = r
	})
	if len(out) == 0 {
		return nil, c.notFound()
	}
	return out, nil
}

// errDLQNotFound reports that the dead-letter topic does not exist.
var errDLQNotFound = errors.New("not found")

// notFound explains a missing dead-letter topic: usually a --group or
// --topic that is not the pair that dead-lettered.
func (c dlqConfig) notFound() error {
	return fmt.Errorf("dead-letter topic %s %w (dead letters of --topic %s by --group %s go to <topic>.<group>.dlq; check both, or name the topic with --dlq)",
		c.dlq, errDLQNotFound, c.topic, c.group)
}

// offsetsErr wraps an error listing the dead-letter topic's offsets;
// an unknown topic is reported as not found.
func (c dlqConfig) offsetsErr(which string, err error) error {
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return c.notFound()
	}
	return fmt.Errorf("%s offsets of %s: %w", which, c.dlq, err)
}

// scanDLQ calls fn for each record in ranges, in offset order per
// partition, until fn returns false or an error.
func scanDLQ(ctx context.Context, c dlqConfig, ranges map[int32]dlqRange, fn func(*kgo.Record) (bool, error)) error {
	consume := map[int32]kgo.Offset{}
	left := map[int32]int64{}
	for p, r := range ranges {
		if r.to > r.from {
			consume[p] = kgo.NewOffset().At(r.from)
			left[p] = r.to - 1
		}
	}
	if len(consume) == 0 {
		return nil
	}
	rd, err := kgo.NewClient(slices.Concat(c.kafka, []kgo.Opt{kgo.SeedBrokers(c.seeds...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{c.dlq: consume})})...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer rd.Close()
	for len(left) > 0 {
		fs := rd.PollFetches(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) { ferr = fmt.Errorf("fetch %s/%d: %w", t, p, err) })
		if ferr != nil {
			return ferr
		}
		for it := fs.RecordIter(); !it.Done(); {
			r := it.Next()
			last, ok := left[r.Partition]
			if !ok || r.Offset > last {
				continue
			}
			if r.Offset == last {
				delete(left, r.Partition)
			}
			more, err := fn(r)
			if err != nil || !more {
				return err
			}
		}
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			// Control records can end a partition without a record.
			if last, ok := left[p.Partition]; ok && len(p.Records) == 0 && p.LastStableOffset > 0 && p.LastStableOffset <= last {
				delete(left, p.Partition)
			}
		})
	}
	return nil
}

func hdr(r *kgo.Record, k string) string {
	for _, h := range r.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}

func (c dlqConfig) match(r *kgo.Record) bool {
	if c.class != "" && !strings.HasPrefix(hdr(r, consumers.HeaderErrorClass), c.class) && !strings.HasPrefix(hdr(r, consumers.HeaderReason), c.class) {
		return false
	}
	if c.ceType != "" && hdr(r, "ce_type") != c.ceType {
		return false
	}
	if c.key != "" && string(r.Key) != c.key {
		return false
	}
	if !c.since.IsZero() && r.Timestamp.Before(c.since) {
		return false
	}
	if !c.until.IsZero() && !r.Timestamp.Before(c.until) {
		return false
	}
	return true
}

func dlqRead(ctx context.Context, cl *kgo.Client, c dlqConfig, show bool, stdout io.Writer) error {
	ranges, err := dlqRanges(ctx, kadm.NewClient(cl), c, c.all)
	if err != nil {
		return err
	}
	n := 0
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if !show {
		fmt.Fprintf(stdout, "%-14s %-24s %-10s %-28s %-9s %-30s %s\n", "PARTITION@OFF", "KEY", "CLASS", "REASON", "ATTEMPTS", "TYPE", "ERROR")
	}
	err = scanDLQ(ctx, c, ranges, func(r *kgo.Record) (bool, error) {
		if !c.match(r) {
			return true, nil
		}
		n++
		if show {
			if err := enc.Encode(describe(r)); err != nil {
				return false, err
			}
		} else {
			msg := hdr(r, consumers.HeaderError)
			if len(msg) > 80 {
				msg = msg[:80] + "…"
			}
			fmt.Fprintf(stdout, "%-14s %-24q %-10s %-28s %-9s %-30s %s\n", fmt.Sprintf("%d@%d", r.Partition, r.Offset), r.Key,
				hdr(r, consumers.HeaderErrorClass), hdr(r, consumers.HeaderReason), hdr(r, consumers.HeaderAttempts), hdr(r, "ce_type"), msg)
		}
		return c.limit == 0 || n < c.limit, nil
	})
	if err != nil {
		return err
	}
	if !show {
		fmt.Fprintf(stdout, "%d dead letters\n", n)
	}
	return nil
}

// dlqView is `dlq show`'s JSON form of a dead letter.
type dlqView struct {
	Partition int32             `json:"partition"`
	Offset    int64             `json:"offset"`
	Timestamp time.Time         `json:"timestamp"`
	Key       string            `json:"key"`
	Failure   map[string]string `json:"failure"`
	Headers   map[string]string `json:"headers,omitempty"`
	Event     map[string]any    `json:"event,omitempty"`
	EventErr  string            `json:"event_error,omitempty"`
	Payload   json.RawMessage   `json:"payload,omitempty"`
	PayloadB  string            `json:"payload_base64,omitempty"`
}

func describe(r *kgo.Record) dlqView {
	v := dlqView{Partition: r.Partition, Offset: r.Offset, Timestamp: r.Timestamp, Key: string(r.Key), Failure: map[string]string{}, Headers: map[string]string{}}
	for _, h := range r.Headers {
		if name, ok := strings.CutPrefix(h.Key, consumers.HeaderPrefix); ok {
			v.Failure[name] = string(h.Value)
		} else {
			v.Headers[h.Key] = string(h.Value)
		}
	}
	if hdr(r, "ce_type") != "" {
		if e, err := codec.RecordToEvent(r); err == nil {
			v.Event = map[string]any{"id": e.ID, "type": e.Type, "source": e.Source, "subject": e.Subject, "time": e.Time,
				"stream": e.StreamID, "version": e.Version, "content_type": e.ContentType}
			if e.CorrelationID != "" {
				v.Event["correlation_id"] = e.CorrelationID
			}
			if e.CausationID != "" {
				v.Event["causation_id"] = e.CausationID
			}
		} else if c, cerr := codec.RecordToCommand(r); cerr == nil {
			v.Event = map[string]any{"id": c.ID, "type": c.Type, "source": c.Source, "subject": c.Subject, "time": c.Time, "content_type": c.ContentType}
		} else {
			v.EventErr = err.Error()
		}
	}
	if json.Valid(r.Value) && len(r.Value) > 0 {
		v.Payload = json.RawMessage(r.Value)
	} else if len(r.Value) > 0 {
		v.PayloadB = base64.StdEncoding.EncodeToString(r.Value)
	}
	return v
}

// redriven returns the record r becomes when redriven: original key,
// value and headers, the redrive count raised, and for a retry level the
// origin trail with a due time of now.
func redriven(r *kgo.Record, c dlqConfig, redrives int) (*kgo.Record, error) {
	origin := hdr(r, consumers.HeaderTopic)
	if origin == "" {
		origin = c.topic
	}
	part, err := strconv.ParseInt(hdr(r, consumers.HeaderPartition), 10, 32)
	if err != nil {
		return nil, fmt.Errorf("dead letter %d@%d has no valid %s header", r.Partition, r.Offset, consumers.HeaderPartition)
	}
	out := &kgo.Record{Topic: origin, Partition: int32(part), Key: r.Key, Value: r.Value}
	keep := map[string]bool{}
	if c.toLevel > 0 {
		out.Topic = consumers.RetryTopic(origin, c.group, c.toLevel)
		for _, k := range []string{consumers.HeaderTopic, consumers.HeaderPartition, consumers.HeaderOffset, consumers.HeaderTimestamp,
			consumers.HeaderGroup, consumers.HeaderAttempts, consumers.HeaderFirstFailure, consumers.HeaderLastFailure} {
			keep[k] = true
		}
	}
	for _, h := range r.Headers {
		if !strings.HasPrefix(h.Key, consumers.HeaderPrefix) || keep[h.Key] {
			out.Headers = append(out.Headers, h)
		}
	}
	add := func(k, v string) { out.Headers = append(out.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)}) }
	if c.toLevel > 0 {
		add(consumers.HeaderLevel, strconv.Itoa(c.toLevel))
		add(consumers.HeaderDue, time.Now().UTC().Format(time.RFC3339Nano))
	}
	add(consumers.HeaderRedrives, strconv.Itoa(redrives))
	return out, nil
}

func dlqRedrive(ctx context.Context, cl *kgo.Client, c dlqConfig, stdout, stderr io.Writer) error {
	adm := kadm.NewClient(cl)
	ranges, err := dlqRanges(ctx, adm, c, c.fromStart)
	if err != nil {
		return err
	}
	var total int64
	for _, r := range ranges {
		total += max(r.to-r.from, 0)
	}
	var (
		seen, moved, refused, skipped atomic.Int64
		doomed                        atomic.Int64 // dry run: permanent or poison
		pending                       = kadm.Offsets{}
		lastCommit                    = time.Now()
		interval                      time.Duration
		next                          = time.Now()
	)
	if c.rate > 0 {
		interval = time.Duration(float64(time.Second) / c.rate)
	}
	commit := func(force bool) error {
		if c.dryRun || len(pending) == 0 || (!force && time.Since(lastCommit) < time.Second) {
			return nil
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		resp, err := adm.CommitOffsets(cctx, c.redriveGroup, pending)
		if err == nil {
			err = resp.Error()
		}
		if err != nil {
			return fmt.Errorf("commit position of %s: %w", c.redriveGroup, err)
		}
		pending, lastCommit = kadm.Offsets{}, time.Now()
		return nil
	}
	// Destinations are checked once each: a missing topic is an error,
	// not a produce that hangs until its timeout.
	checked := map[string]error{}
	checkDest := func(topic string) error {
		if err, ok := checked[topic]; ok {
			return err
		}
		td, err := adm.ListTopics(ctx, topic)
		if err == nil {
			if d, ok := td[topic]; !ok || d.Err != nil {
				err = fmt.Errorf("destination topic %s does not exist", topic)
			}
		}
		checked[topic] = err
		return err
	}
	stop := func() {}
	if total >= 1000 {
		stop = progress(stderr, "records", total, &seen, time.Now())
	}
	err = scanDLQ(ctx, c, ranges, func(r *kgo.Record) (bool, error) {
		defer seen.Add(1)
		done := func() {
			pending.Add(kadm.Offset{Topic: c.dlq, Partition: r.Partition, At: r.Offset + 1, LeaderEpoch: -1})
		}
		if !c.match(r) {
			skipped.Add(1)
			done()
			return true, commit(false)
		}
		n, _ := strconv.Atoi(hdr(r, consumers.HeaderRedrives))
		if n >= c.maxRedrives && !c.force {
			refused.Add(1)
			fmt.Fprintf(stdout, "refused %d@%d key %q: redriven %d times already (--max-redrives %d; use --force)\n", r.Partition, r.Offset, r.Key, n, c.maxRedrives)
			done()
			return true, commit(false)
		}
		out, err := redriven(r, c, n+1)
		if err != nil {
			refused.Add(1)
			fmt.Fprintf(stdout, "refused: %v\n", err)
			done()
			return true, commit(false)
		}
		if err := checkDest(out.Topic); err != nil {
			return false, err
		}
		if c.dryRun {
			note := ""
			if why := failsAgain(r); why != "" {
				doomed.Add(1)
				note = "; " + why
			}
			fmt.Fprintf(stdout, "would redrive %d@%d key %q to %s/%d (redrive %d)%s\n", r.Partition, r.Offset, r.Key, out.Topic, out.Partition, n+1, note)
			moved.Add(1)
			return true, nil
		}
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				select {
				case <-ctx.Done():
					return false, ctx.Err()
				case <-time.After(d):
				}
			}
			next = time.Now().Add(interval)
		}
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := cl.ProduceSync(pctx, out).FirstErr(); err != nil {
			return false, fmt.Errorf("redrive %d@%d to %s: %w", r.Partition, r.Offset, out.Topic, err)
		}
		moved.Add(1)
		done()
		return true, commit(false)
	})
	stop()
	if cerr := commit(true); cerr != nil {
		err = errors.Join(err, cerr)
	}
	verb := "redriven"
	if c.dryRun {
		verb = "would be redriven"
	}
	fmt.Fprintf(stdout, "%d %s, %d refused, %d not matching the filters (of %d read)\n", moved.Load(), verb, refused.Load(), skipped.Load(), seen.Load())
	if d := doomed.Load(); d > 0 {
		fmt.Fprintf(stderr, "warning: %d of the %d would fail again: they were dead-lettered as permanent or poison, which retrying does not cure; redrive them once the handler, codec or data is fixed (select with --class or --key)\n", d, moved.Load())
	}
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("interrupted; run again to resume from the committed position: %w", err)
	}
	return err
}

// failsAgain says why redriving r unchanged will fail again, or "" when
// its failure may have been transient: a poison record cannot be decoded,
// and a permanent error is one the handler declared retrying cannot cure.
func failsAgain(r *kgo.Record) string {
	reason := hdr(r, consumers.HeaderReason)
	switch {
	case strings.HasPrefix(reason, "poison"):
		return "will fail again: " + reason + ", the record cannot be decoded"
	case hdr(r, consumers.HeaderErrorClass) == "permanent":
		return "will fail again unless the handler or the data changed: classed permanent (" + reason + ")"
	}
	return ""
}

// dlqPurge moves the redriver's position to the end (or to --until): the
// dead letters stay in the topic, but redrive and list skip them.
func dlqPurge(ctx context.Context, cl *kgo.Client, c dlqConfig, stdout, stderr io.Writer) error {
	if c.class != "" || c.ceType != "" || c.key != "" || !c.since.IsZero() {
		return fmt.Errorf("%w: purge moves a position; it takes only --until, not --class, --type, --key or --since", errUsage)
	}
	adm := kadm.NewClient(cl)
	ranges, err := dlqRanges(ctx, adm, c, false)
	if err != nil {
		return err
	}
	to := map[int32]int64{}
	for p, r := range ranges {
		to[p] = r.to
	}
	if !c.until.IsZero() {
		after, err := adm.ListOffsetsAfterMilli(ctx, c.until.UnixMilli(), c.dlq)
		if err != nil {
			return fmt.Errorf("offsets at %s: %w", c.until.Format(time.RFC3339), err)
		}
		after.Each(func(o kadm.ListedOffset) {
			if o.Err == nil && o.Offset >= 0 && o.Offset < to[o.Partition] {
				to[o.Partition] = o.Offset
			}
		})
	}
	var n int64
	offs := kadm.Offsets{}
	for p, r := range ranges {
		if to[p] > r.from {
			n += to[p] - r.from
			offs.Add(kadm.Offset{Topic: c.dlq, Partition: p, At: to[p], LeaderEpoch: -1})
		}
	}
	if n == 0 {
		fmt.Fprintln(stdout, "nothing to purge")
		return nil
	}
	if !c.yes {
		fmt.Fprintf(stderr, "Skip %d dead letters of %s for group %s? They stay in the topic. [y/N] ", n, c.dlq, c.redriveGroup)
		line, _ := bufio.NewReader(dlqStdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
			return errors.New("purge cancelled")
		}
	}
	resp, err := adm.CommitOffsets(ctx, c.redriveGroup, offs)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		return fmt.Errorf("commit position of %s: %w", c.redriveGroup, err)
	}
	fmt.Fprintf(stdout, "purged %d dead letters (position of %s moved; nothing deleted)\n", n, c.redriveGroup)
	return nil
}
