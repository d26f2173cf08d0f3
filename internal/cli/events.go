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
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/twmb/franz-go/pkg/kgo"
)

const eventsUsage = "events export|tail (--from store [--after TX/POS] | --from topic --topic T) [--limit N] [--follow] | events import --topic T [--file F] [--execute]"

// eventsStdin is where import reads NDJSON without --file (replaced in tests).
var eventsStdin io.Reader = os.Stdin

// eventJSON returns e as a structured-mode CloudEvents JSON object: the
// attributes and extensions of its Kafka binary form (codec.EventToRecord,
// ce_ prefix dropped), datacontenttype, and data (JSON content as is,
// anything else as data_base64).
func eventJSON(e orchestrix.Event) (map[string]any, error) {
	r, err := codec.EventToRecord("export", e)
	if err != nil {
		return nil, err
	}
	out := map[string]any{}
	for _, h := range r.Headers {
		switch {
		case h.Key == codec.ContentTypeHeader:
			out["datacontenttype"] = string(h.Value)
		case strings.HasPrefix(h.Key, codec.HeaderPrefix):
			out[strings.TrimPrefix(h.Key, codec.HeaderPrefix)] = string(h.Value)
		}
	}
	ct, _ := out["datacontenttype"].(string)
	if (ct == "" || strings.HasSuffix(strings.SplitN(ct, ";", 2)[0], "json")) && json.Valid(e.Data) {
		out["data"] = json.RawMessage(e.Data)
	} else {
		out["data_base64"] = base64.StdEncoding.EncodeToString(e.Data)
	}
	return out, nil
}

// eventFromJSON parses one structured-mode CloudEvents JSON object into a
// record of the binary mode and validates it with codec.RecordToEvent (the
// same checks as a consumer's): attributes other than data become ce_
// headers, the key is the aggregateid extension.
func eventFromJSON(line []byte) (orchestrix.Event, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return orchestrix.Event{}, fmt.Errorf("not a JSON object: %w", err)
	}
	r := &kgo.Record{}
	for k, raw := range m {
		switch k {
		case "orchestrixcursor", "orchestrixpartition", "orchestrixoffset":
			continue // where export found the event, not part of it
		case "data":
			r.Value = raw
			continue
		case "data_base64":
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return orchestrix.Event{}, fmt.Errorf("data_base64: %w", err)
			}
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return orchestrix.Event{}, fmt.Errorf("data_base64: %w", err)
			}
			r.Value = b
			continue
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			// CloudEvents JSON allows numbers and booleans for extensions.
			s = strings.TrimSpace(string(raw))
		}
		if k == "datacontenttype" {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: codec.ContentTypeHeader, Value: []byte(s)})
			continue
		}
		if k == "aggregateid" {
			r.Key = []byte(s)
		}
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: codec.HeaderPrefix + k, Value: []byte(s)})
	}
	if r.Value == nil {
		r.Value = []byte{}
	}
	return codec.RecordToEvent(r)
}

func runEvents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: %s", errUsage, eventsUsage)
	}
	sub := args[0]
	switch sub {
	case "export", "tail", "import":
	case "-h", "--help", "help":
		fmt.Fprintln(stderr, "usage: orchestrix "+eventsUsage)
		return flag.ErrHelp
	default:
		return fmt.Errorf("%w: unknown events command %q: %s", errUsage, sub, eventsUsage)
	}
	fs := flags("events "+sub, stderr)
	brokers := fs.String("brokers", flagenv.Or("KAFKA_BROKERS", ""), "comma-separated seed brokers (env KAFKA_BROKERS)")
	topic := fs.String("topic", "", "the topic to read or write")
	var (
		from, after, file string
		url, schema       *string
		limit             int
		follow, execute   bool
	)
	if sub != "import" {
		fs.StringVar(&from, "from", "store", "store or topic")
		url = urlFlag(fs, "database-url", flagenv.Or("DATABASE_URL", ""), "PostgreSQL `URL` of the store (env DATABASE_URL)")
		schema = fs.String("schema", flagenv.Or("ORCHESTRIX_SCHEMA", postgres.DefaultSchema), "the store's schema (env ORCHESTRIX_SCHEMA)")
		fs.StringVar(&after, "after", "", "store: start after this cursor (tx/position, as exported in the position extension's cursor)")
		fs.IntVar(&limit, "limit", 0, "stop after this many events (0: no limit)")
		if sub == "export" {
			fs.BoolVar(&follow, "follow", false, "keep waiting for new events")
		}
	} else {
		fs.StringVar(&file, "file", "", "NDJSON file to import (default stdin)")
		fs.BoolVar(&execute, "execute", false, "produce the events (without it, every line is validated and counted, nothing written)")
	}
	sec := kafkaFlags(fs)
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if sub == "tail" {
		follow = true
	}
	var errs []error
	seeds := flagenv.List(*brokers)
	needBrokers := sub == "import" || from == "topic"
	if needBrokers && len(seeds) == 0 {
		errs = append(errs, errors.New("--brokers or KAFKA_BROKERS is required"))
	}
	if needBrokers && *topic == "" {
		errs = append(errs, errors.New("--topic is required"))
	}
	var cursor stores.Cursor
	if sub != "import" {
		switch from {
		case "store":
			if *url == "" {
				errs = append(errs, errors.New("--database-url or DATABASE_URL is required with --from store"))
			}
			if after != "" {
				c, err := stores.ParseCursor(after)
				if err != nil {
					errs = append(errs, fmt.Errorf("--after: %w", err))
				}
				cursor = c
			}
		case "topic":
			if after != "" {
				errs = append(errs, errors.New("--after is for --from store"))
			}
		default:
			errs = append(errs, fmt.Errorf("--from %q: want store or topic", from))
		}
		errs = append(errs, intIn("limit", limit, 0, unbounded))
	}
	if err := checkFlags(errs...); err != nil {
		return fmt.Errorf("%w (usage: orchestrix %s)", err, eventsUsage)
	}
	var kopts []kgo.Opt
	if needBrokers {
		var err error
		if kopts, err = sec.options(); err != nil {
			return err
		}
		if err := sec.check(ctx, seeds); err != nil {
			return err
		}
		kopts = append(kopts, kgo.SeedBrokers(seeds...))
	}
	w := bufio.NewWriter(stdout)
	defer w.Flush()
	emit := func(e orchestrix.Event, extra map[string]any) error {
		m, err := eventJSON(e)
		if err != nil {
			return err
		}
		for k, v := range extra {
			m[k] = v
		}
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		w.Write(append(b, '\n'))
		if follow {
			return w.Flush()
		}
		return nil
	}
	switch {
	case sub == "import":
		return importEvents(ctx, kopts, *topic, file, execute, stdout, stderr)
	case from == "store":
		return exportStore(ctx, *url, *schema, cursor, sub == "tail" && after == "", follow, limit, emit, stderr)
	default:
		return exportTopic(ctx, kopts, *topic, sub == "tail", follow, limit, emit)
	}
}

// exportStore writes the store's log from cursor (tail: from the oldest
// running transaction, so recent events not yet below the horizon are
// not passed over) in ReadAll's gap-safe order, each with its cursor in the
// orchestrixcursor attribute.
func exportStore(ctx context.Context, url, schema string, cursor stores.Cursor, tail, follow bool, limit int, emit func(orchestrix.Event, map[string]any) error, stderr io.Writer) error {
	pool, err := openPool(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := postgres.New(ctx, pool, postgres.WithSchema(schema))
	if err != nil {
		return err
	}
	if tail {
		var xmin uint64
		if err := pool.QueryRow(ctx, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").Scan(&xmin); err != nil {
			return err
		}
		cursor = stores.Cursor{Tx: xmin - 1, Position: math.MaxInt64}
	}
	// Without --follow, export everything committed before the command
	// started: ReadAll reads below the oldest running transaction, so wait
	// until that horizon has passed every transaction of the start.
	var target uint64
	if err := pool.QueryRow(ctx, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").Scan(&target); err != nil {
		return err
	}
	waitingSince := time.Time{}
	n := 0
	for {
		var horizon uint64
		if err := pool.QueryRow(ctx, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").Scan(&horizon); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		got := 0
		for e, err := range store.ReadAll(ctx, cursor, 1000) {
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			if err := emit(e.Event, map[string]any{"orchestrixcursor": e.Cursor.String()}); err != nil {
				return err
			}
			cursor = e.Cursor
			got++
			if n++; limit > 0 && n >= limit {
				return nil
			}
		}
		if got == 0 && !follow {
			if horizon >= target {
				return nil
			}
			if waitingSince.IsZero() {
				waitingSince = time.Now()
			} else if time.Since(waitingSince) > 2*time.Second {
				fmt.Fprintf(stderr, "waiting for transactions older than the export (below xid %d) to end before reading their events\n", target)
				waitingSince = time.Now().Add(time.Hour)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if got == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

// exportTopic writes a topic's records (read_committed) decoded as events,
// from the start (export) or the end (tail); a record that is not a valid
// CloudEvent is reported on the output as {"error", "partition",
// "offset"} and skipped.
func exportTopic(ctx context.Context, kopts []kgo.Opt, topic string, tail, follow bool, limit int, emit func(orchestrix.Event, map[string]any) error) error {
	start := kgo.NewOffset().AtStart()
	if tail {
		start = kgo.NewOffset().AtEnd()
	}
	cl, err := kgo.NewClient(append(slices.Clone(kopts), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(start), kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return err
	}
	defer cl.Close()
	n := 0
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		if follow {
			pctx, cancel = context.WithCancel(ctx)
		}
		fs := cl.PollRecords(pctx, 1000)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if fs.Empty() && !follow {
			return nil
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) {
			if ferr == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				ferr = fmt.Errorf("fetch %s[%d]: %w", t, p, err)
			}
		})
		if ferr != nil {
			return ferr
		}
		for _, r := range fs.Records() {
			e, err := codec.RecordToEvent(r)
			if err != nil {
				return fmt.Errorf("%s[%d]@%d is not an event: %w", r.Topic, r.Partition, r.Offset, err)
			}
			if err := emit(e, map[string]any{"orchestrixpartition": r.Partition, "orchestrixoffset": r.Offset}); err != nil {
				return err
			}
			if n++; limit > 0 && n >= limit {
				return nil
			}
		}
	}
}

// importEvents validates every NDJSON line as a CloudEvent of this
// package's shape and, with execute, produces them to topic keyed by
// aggregate ID (idempotent producer: a rerun produces them again).
func importEvents(ctx context.Context, kopts []kgo.Opt, topic, file string, execute bool, stdout, stderr io.Writer) error {
	in := eventsStdin
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		defer f.Close()
		in = f
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	var recs []*kgo.Record
	var bad []error
	line := 0
	for sc.Scan() {
		line++
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		e, err := eventFromJSON(sc.Bytes())
		if err == nil {
			var r *kgo.Record
			if r, err = codec.EventToRecord(topic, e); err == nil {
				recs = append(recs, r)
				continue
			}
		}
		if bad = append(bad, fmt.Errorf("line %d: %w", line, err)); len(bad) >= 20 {
			break
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read input: %w", err)
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %d invalid lines, nothing imported:\n%w", errUsage, len(bad), errors.Join(bad...))
	}
	if !execute {
		fmt.Fprintf(stdout, "%d valid events; nothing written (--execute produces them to %s)\n", len(recs), topic)
		return nil
	}
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	for i := 0; i < len(recs); i += 1000 {
		if err := cl.ProduceSync(ctx, recs[i:min(i+1000, len(recs))]...).FirstErr(); err != nil {
			return fmt.Errorf("produce to %s after %d events: %w", topic, i, err)
		}
	}
	fmt.Fprintf(stdout, "imported %d events into %s\n", len(recs), topic)
	return nil
}
