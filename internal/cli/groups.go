package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

const groupsUsage = "groups describe --group G [-o json] | groups reset --group G --topic T[:p,...] (--to-datetime T | --by-duration D | --to-offset N | --shift-by ±N | --to-earliest | --to-latest) [--execute] [-o json]"

// errGroupActive refuses a reset while the group has members: their
// commits would overwrite the reset, and they would not seek to it.
var errGroupActive = errors.New("the group has active members; stop its consumers first")

// groupRow is one partition of a group's offsets, as describe and a
// reset plan show it.
type groupRow struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Committed int64  `json:"committed"` // -1: none
	Start     int64  `json:"start"`
	End       int64  `json:"end"` // last stable offset
	Lag       int64  `json:"lag"`
	New       *int64 `json:"new,omitempty"` // a reset's target
}

func runGroups(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: %s", errUsage, groupsUsage)
	}
	sub := args[0]
	switch sub {
	case "describe", "reset":
	case "-h", "--help", "help":
		fmt.Fprintln(stderr, "usage: orchestrix "+groupsUsage)
		return flag.ErrHelp
	default:
		return fmt.Errorf("%w: unknown groups command %q: %s", errUsage, sub, groupsUsage)
	}
	fs := flags("groups "+sub, stderr)
	brokers := fs.String("brokers", flagenv.Or("KAFKA_BROKERS", ""), "comma-separated seed brokers (env KAFKA_BROKERS)")
	group := fs.String("group", "", "consumer group (required)")
	out := fs.String("o", "text", "output: text or json")
	var topics []string
	fs.Func("topic", "topic, or topic:p,p to limit partitions (repeatable; describe: default all the group's topics)", func(s string) error {
		topics = append(topics, s)
		return nil
	})
	var (
		toDatetime, byDuration string
		toOffset, shiftBy      int64
		toEarliest, toLatest   bool
		execute                bool
		setOffset, setShift    bool
	)
	if sub == "reset" {
		fs.StringVar(&toDatetime, "to-datetime", "", "reset to the first offset with a timestamp at or after this (RFC 3339)")
		fs.StringVar(&byDuration, "by-duration", "", "reset to the first offset at or after now minus this (24h, or ISO 8601 PnDTnHnMnS)")
		fs.Func("to-offset", "reset to this offset (clamped to the partition's range)", func(s string) error {
			n, err := strconv.ParseInt(s, 10, 64)
			toOffset, setOffset = n, true
			return err
		})
		fs.Func("shift-by", "move the committed offset by ±N (clamped)", func(s string) error {
			n, err := strconv.ParseInt(s, 10, 64)
			shiftBy, setShift = n, true
			return err
		})
		fs.BoolVar(&toEarliest, "to-earliest", false, "reset to the start of each partition")
		fs.BoolVar(&toLatest, "to-latest", false, "reset to the end of each partition")
		fs.BoolVar(&execute, "execute", false, "commit the new offsets (without it, only the plan is printed)")
	}
	sec := kafkaFlags(fs)
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	var errs []error
	seeds := flagenv.List(*brokers)
	if len(seeds) == 0 {
		errs = append(errs, errors.New("--brokers or KAFKA_BROKERS is required"))
	}
	if *group == "" {
		errs = append(errs, errors.New("--group is required"))
	}
	if *out != "text" && *out != "json" {
		errs = append(errs, fmt.Errorf("-o %q: want text or json", *out))
	}
	scope, err := parseTopicScope(topics)
	if err != nil {
		errs = append(errs, err)
	}
	var target func(r groupRow, at map[string]map[int32]int64) int64
	var at time.Time
	if sub == "reset" {
		n := 0
		for _, set := range []bool{toDatetime != "", byDuration != "", setOffset, setShift, toEarliest, toLatest} {
			if set {
				n++
			}
		}
		if n != 1 {
			errs = append(errs, errors.New("give exactly one of --to-datetime, --by-duration, --to-offset, --shift-by, --to-earliest, --to-latest"))
		}
		if len(scope) == 0 {
			errs = append(errs, errors.New("--topic is required for reset"))
		}
		switch {
		case toDatetime != "":
			if at, err = time.Parse(time.RFC3339Nano, toDatetime); err != nil {
				errs = append(errs, fmt.Errorf("--to-datetime %q is not RFC 3339 (e.g. 2026-12-05T08:00:00Z)", toDatetime))
			}
		case byDuration != "":
			d, err := parseISODuration(byDuration)
			if err != nil {
				errs = append(errs, err)
			}
			at = time.Now().Add(-d)
		case setOffset && toOffset < 0:
			errs = append(errs, fmt.Errorf("--to-offset %d must be at least 0", toOffset))
		}
		clamp := func(r groupRow, v int64) int64 { return min(max(v, r.Start), r.End) }
		switch {
		case !at.IsZero():
			target = func(r groupRow, offs map[string]map[int32]int64) int64 { return clamp(r, offs[r.Topic][r.Partition]) }
		case setOffset:
			target = func(r groupRow, _ map[string]map[int32]int64) int64 { return clamp(r, toOffset) }
		case setShift:
			target = func(r groupRow, _ map[string]map[int32]int64) int64 {
				base := r.Committed
				if base < 0 {
					base = r.Start
				}
				return clamp(r, base+shiftBy)
			}
		case toEarliest:
			target = func(r groupRow, _ map[string]map[int32]int64) int64 { return r.Start }
		case toLatest:
			target = func(r groupRow, _ map[string]map[int32]int64) int64 { return r.End }
		}
	}
	if err := checkFlags(errs...); err != nil {
		return fmt.Errorf("%w (usage: orchestrix %s)", err, groupsUsage)
	}
	kopts, err := sec.options()
	if err != nil {
		return err
	}
	if err := sec.check(ctx, seeds); err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(kopts, kgo.SeedBrokers(seeds...))...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	// A coordinator that is loading or moving answers with a retriable
	// error (a fresh cluster creates __consumer_offsets on first use): try
	// again for a while before giving up.
	var desc kadm.DescribedGroup
	for deadline := time.Now().Add(15 * time.Second); ; {
		dg, err := adm.DescribeGroups(ctx, *group)
		if err == nil {
			desc = dg[*group]
			err = desc.Err
		}
		if errors.Is(err, kerr.GroupIDNotFound) {
			// Kafka 4 says so for a group that has never committed: like
			// kafka-consumer-groups, a reset may create it.
			desc, err = kadm.DescribedGroup{Group: *group, State: "Dead"}, nil
		}
		if err == nil {
			break
		}
		if !kerr.IsRetriable(err) && !errors.Is(err, kerr.CoordinatorNotAvailable) || time.Now().After(deadline) {
			return fmt.Errorf("describe group %s: %w", *group, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	rows, err := groupRows(ctx, adm, *group, scope)
	if err != nil {
		return err
	}
	if sub == "describe" {
		return printGroup(stdout, *out == "json", desc, rows, "")
	}
	var offs map[string]map[int32]int64
	if !at.IsZero() {
		var names []string
		for t := range scope {
			names = append(names, t)
		}
		lo, err := adm.ListOffsetsAfterMilli(ctx, at.UnixMilli(), names...)
		if err == nil {
			err = lo.Error()
		}
		if err != nil {
			return fmt.Errorf("offsets at %s: %w", at.Format(time.RFC3339), err)
		}
		offs = map[string]map[int32]int64{}
		lo.Each(func(o kadm.ListedOffset) {
			if offs[o.Topic] == nil {
				offs[o.Topic] = map[int32]int64{}
			}
			offs[o.Topic][o.Partition] = o.Offset
		})
	}
	commit := kadm.Offsets{}
	for i := range rows {
		v := target(rows[i], offs)
		rows[i].New = &v
		commit.Add(kadm.Offset{Topic: rows[i].Topic, Partition: rows[i].Partition, At: v, LeaderEpoch: -1})
	}
	active := len(desc.Members) > 0 || (desc.State != "Empty" && desc.State != "Dead" && desc.State != "")
	note := "plan (nothing committed; --execute commits it)"
	if execute {
		if active {
			_ = printGroup(stdout, *out == "json", desc, rows, "refused")
			return fmt.Errorf("reset of %s refused: state %s, %d members: %w", *group, desc.State, len(desc.Members), errGroupActive)
		}
		resp, err := adm.CommitOffsets(ctx, *group, commit)
		if err == nil {
			err = resp.Error()
		}
		if err != nil {
			return fmt.Errorf("commit offsets of %s: %w", *group, err)
		}
		note = "committed"
	} else if active {
		note += fmt.Sprintf("; warning: the group is %s with %d members, --execute will be refused until they stop", desc.State, len(desc.Members))
	}
	return printGroup(stdout, *out == "json", desc, rows, note)
}

var scopeRe = regexp.MustCompile(`^([A-Za-z0-9._-]+)(?::([0-9]+(?:,[0-9]+)*))?$`)

// parseTopicScope parses --topic values: topic -> partitions (nil: all).
func parseTopicScope(vals []string) (map[string][]int32, error) {
	out := map[string][]int32{}
	for _, v := range vals {
		m := scopeRe.FindStringSubmatch(v)
		if m == nil {
			return nil, fmt.Errorf("--topic %q: want topic or topic:p,p", v)
		}
		var ps []int32
		if m[2] != "" {
			for _, p := range strings.Split(m[2], ",") {
				n, err := strconv.ParseInt(p, 10, 32)
				if err != nil {
					return nil, fmt.Errorf("--topic %q: partition %q: %w", v, p, err)
				}
				ps = append(ps, int32(n))
			}
		}
		out[m[1]] = append(out[m[1]], ps...)
		if m[2] == "" {
			out[m[1]] = nil
		}
	}
	return out, nil
}

var isoDuration = regexp.MustCompile(`^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$`)

// parseISODuration accepts a Go duration (24h) or ISO 8601 PnDTnHnMnS.
func parseISODuration(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return d, nil
	}
	m := isoDuration.FindStringSubmatch(s)
	if m == nil || s == "P" || s == "PT" {
		return 0, fmt.Errorf("--by-duration %q is neither a duration like 24h nor ISO 8601 like P1DT2H", s)
	}
	var d time.Duration
	for i, unit := range []time.Duration{24 * time.Hour, time.Hour, time.Minute} {
		if m[i+1] != "" {
			n, _ := strconv.ParseInt(m[i+1], 10, 64)
			d += time.Duration(n) * unit
		}
	}
	if m[4] != "" {
		f, _ := strconv.ParseFloat(m[4], 64)
		d += time.Duration(f * float64(time.Second))
	}
	return d, nil
}

// groupRows returns the group's offsets over scope (all its committed
// topics when scope is empty) with each partition's start, end and lag.
func groupRows(ctx context.Context, adm *kadm.Client, group string, scope map[string][]int32) ([]groupRow, error) {
	committed, err := adm.FetchOffsets(ctx, group)
	if err == nil {
		err = committed.Error()
	}
	if errors.Is(err, kerr.GroupIDNotFound) {
		committed, err = kadm.OffsetResponses{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fetch offsets of %s: %w", group, err)
	}
	if len(scope) == 0 {
		for t := range committed {
			scope[t] = nil
		}
	}
	var names []string
	for t := range scope {
		names = append(names, t)
	}
	slices.Sort(names)
	if len(names) == 0 {
		return nil, nil
	}
	td, err := adm.ListTopics(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("list topics: %w", err)
	}
	for _, t := range names {
		if d, ok := td[t]; !ok || d.Err != nil {
			return nil, fmt.Errorf("%w: topic %s does not exist", errUsage, t)
		}
	}
	starts, err := adm.ListStartOffsets(ctx, names...)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("start offsets: %w", err)
	}
	ends, err := adm.ListCommittedOffsets(ctx, names...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("end offsets: %w", err)
	}
	var rows []groupRow
	for _, t := range names {
		ps := scope[t]
		if ps == nil {
			for p := range td[t].Partitions {
				ps = append(ps, p)
			}
		}
		slices.Sort(ps)
		for _, p := range ps {
			if _, ok := td[t].Partitions[p]; !ok {
				return nil, fmt.Errorf("%w: topic %s has no partition %d", errUsage, t, p)
			}
			r := groupRow{Topic: t, Partition: p, Committed: -1}
			if o, ok := committed.Lookup(t, p); ok {
				r.Committed = o.At
			}
			s, _ := starts.Lookup(t, p)
			e, _ := ends.Lookup(t, p)
			r.Start, r.End = s.Offset, e.Offset
			if r.Committed >= 0 {
				r.Lag = max(r.End-r.Committed, 0)
			} else {
				r.Lag = r.End - r.Start
			}
			rows = append(rows, r)
		}
	}
	return rows, nil
}

func printGroup(w io.Writer, asJSON bool, desc kadm.DescribedGroup, rows []groupRow, note string) error {
	if asJSON {
		return json.NewEncoder(w).Encode(map[string]any{"group": desc.Group, "state": desc.State, "members": len(desc.Members), "partitions": rows, "note": note})
	}
	fmt.Fprintf(w, "group %s: state %s, %d members\n", desc.Group, desc.State, len(desc.Members))
	for _, m := range desc.Members {
		fmt.Fprintf(w, "  member %s (%s, %s)\n", m.MemberID, m.ClientID, m.ClientHost)
	}
	fmt.Fprintf(w, "%-30s %9s %12s %12s %12s %10s", "TOPIC", "PARTITION", "COMMITTED", "START", "END", "LAG")
	hasNew := len(rows) > 0 && rows[0].New != nil
	if hasNew {
		fmt.Fprintf(w, " %12s", "NEW")
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		c := "-"
		if r.Committed >= 0 {
			c = strconv.FormatInt(r.Committed, 10)
		}
		fmt.Fprintf(w, "%-30s %9d %12s %12d %12d %10d", r.Topic, r.Partition, c, r.Start, r.End, r.Lag)
		if hasNew {
			fmt.Fprintf(w, " %12d", *r.New)
		}
		fmt.Fprintln(w)
	}
	if note != "" {
		fmt.Fprintln(w, note)
	}
	return nil
}
