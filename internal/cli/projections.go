package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/stores/postgres"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

const projectionsUsage = "projections list | status NAME | rebuild NAME [--shards N] | cutover NAME [--version V] [--max-lag N] | rollback NAME | skip NAME --shard S [--version V] | parked list|retry|skip NAME [--id 1,2 | --all]"

func runProjections(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: %s", errUsage, projectionsUsage)
	}
	sub := args[0]
	rest := args[1:]
	switch sub {
	case "list", "status", "rebuild", "cutover", "rollback", "skip":
	case "parked":
		if len(rest) == 0 || (rest[0] != "list" && rest[0] != "retry" && rest[0] != "skip") {
			return fmt.Errorf("%w: projections parked list|retry|skip NAME", errUsage)
		}
		sub += " " + rest[0]
		rest = rest[1:]
	case "-h", "--help", "help":
		fmt.Fprintln(stderr, "usage: orchestrix "+projectionsUsage)
		return flag.ErrHelp
	default:
		return fmt.Errorf("%w: unknown projections command %q: %s", errUsage, sub, projectionsUsage)
	}
	name := ""
	if sub != "list" && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		name, rest = rest[0], rest[1:]
	}
	fs := flags("projections "+sub, stderr)
	url := urlFlag(fs, "database-url", flagenv.Or("DATABASE_URL", ""), "PostgreSQL `URL` of the read models (env DATABASE_URL)")
	schema := fs.String("schema", flagenv.Or("ORCHESTRIX_SCHEMA", postgres.DefaultSchema), "schema holding the projection tables (env ORCHESTRIX_SCHEMA)")
	out := fs.String("o", "text", "output: text or json")
	brokers := new(string)
	var sec *kafkaSecurity
	if sub == "status" || sub == "cutover" {
		brokers = fs.String("brokers", flagenv.Or("KAFKA_BROKERS", ""), "seed brokers, to count the lag of a topic source (env KAFKA_BROKERS)")
		sec = kafkaFlags(fs)
	}
	var (
		shards, version int
		shard           int
		maxLag          int64
		blueGreen       bool
		from            string
		ids             string
		all             bool
		limit           int
	)
	switch sub {
	case "rebuild":
		fs.IntVar(&shards, "shards", 0, "shards of the new version (0: the active version's)")
		fs.BoolVar(&blueGreen, "blue-green", true, "build the new version beside the active one (the only mode: an in-place rebuild would serve a partial model)")
		fs.StringVar(&from, "from", "", "store or topic: must be the projection's source (a runner's source is set in its code)")
	case "skip":
		fs.IntVar(&version, "version", 0, "version of the stopped shard (default: the active one)")
		fs.IntVar(&shard, "shard", -1, "the stopped shard (required)")
	case "cutover":
		fs.IntVar(&version, "version", 0, "version to make active (default: the newest building one)")
		fs.Int64Var(&maxLag, "max-lag", 0, "refuse unless every shard of the version is at most this many events behind")
	case "parked list":
		fs.BoolVar(&all, "all", false, "include retried and skipped events")
		fs.IntVar(&limit, "limit", 100, "show at most this many")
	case "parked retry", "parked skip":
		fs.StringVar(&ids, "id", "", "comma-separated dead-letter IDs")
		fs.BoolVar(&all, "all", false, "every parked event of the projection")
	}
	if err := parse(fs, rest); err != nil {
		return err
	}
	var errs []error
	if *url == "" {
		errs = append(errs, errors.New("--database-url or DATABASE_URL is required"))
	}
	if sub != "list" {
		if name == "" {
			errs = append(errs, errors.New("a projection NAME is required"))
		} else if err := projections.CheckName(name); err != nil {
			errs = append(errs, err)
		}
	}
	if *out != "text" && *out != "json" {
		errs = append(errs, fmt.Errorf("-o %q: want text or json", *out))
	}
	if !blueGreen && sub == "rebuild" {
		errs = append(errs, errors.New("--blue-green=false: an in-place rebuild would serve a partial model; rebuild builds a new version and `cutover` switches to it"))
	}
	if from != "" && from != "store" && from != "topic" {
		errs = append(errs, fmt.Errorf("--from %q: want store or topic", from))
	}
	var idList []int64
	if strings.HasPrefix(sub, "parked ") && sub != "parked list" {
		if (ids == "") == !all {
			errs = append(errs, errors.New("give --id or --all"))
		}
		for _, s := range strings.Split(ids, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < 1 {
				errs = append(errs, fmt.Errorf("--id: %q is not a dead-letter ID", s))
			}
			idList = append(idList, n)
		}
	}
	errs = append(errs, intIn("shards", shards, 0, 1024), intIn("version", version, 0, unbounded), intIn("limit", limit, 0, 100_000))
	if maxLag < 0 {
		errs = append(errs, fmt.Errorf("--max-lag %d must be at least 0", maxLag))
	}
	if sub == "skip" {
		errs = append(errs, intIn("shard", shard, 0, 1023))
	}
	if err := checkFlags(errs...); err != nil {
		return fmt.Errorf("%w (usage: orchestrix %s)", err, projectionsUsage)
	}
	pool, err := openPool(ctx, *url)
	if err != nil {
		return err
	}
	defer pool.Close()
	back, err := projections.NewPostgres(pool, *schema)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	asJSON := *out == "json"
	emit := func(v any, text func()) error {
		if asJSON {
			return json.NewEncoder(stdout).Encode(v)
		}
		text()
		return nil
	}
	unknown := func(err error) error {
		if errors.Is(err, projections.ErrUnknownProjection) {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		return err
	}
	switch sub {
	case "list":
		vs, err := back.List(ctx)
		if err != nil {
			return err
		}
		return emit(vs, func() {
			fmt.Fprintf(stdout, "%-30s %7s %-9s %6s %-20s %s\n", "PROJECTION", "VERSION", "STATUS", "SHARDS", "SOURCE", "ACTIVATED")
			for _, v := range vs {
				act := "-"
				if !v.ActivatedAt.IsZero() {
					act = v.ActivatedAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(stdout, "%-30s %7d %-9s %6d %-20s %s\n", v.Projection, v.Version, v.Status, v.Shards, v.Source, act)
			}
		})
	case "status":
		st, err := back.Status(ctx, name)
		if err != nil {
			return unknown(err)
		}
		if seeds := flagenv.List(*brokers); len(seeds) > 0 {
			if err := topicLag(ctx, back, sec, seeds, name, st); err != nil {
				fmt.Fprintf(stderr, "warning: lag of the topic source unknown: %v\n", err)
			}
		}
		return emit(st, func() {
			fmt.Fprintf(stdout, "%-8s %-9s %5s %-8s %10s %10s %8s %9s %6s %6s %s\n", "VERSION", "VSTATUS", "SHARD", "STATUS", "APPLIED", "LAG", "LAG_S", "HEARTBEAT", "EPOCH", "PARKED", "ERROR")
			for _, s := range st {
				lag := strconv.FormatInt(s.LagEvents, 10)
				if s.LagEvents < 0 {
					lag = "?"
				}
				hb := "never"
				if !s.Heartbeat.IsZero() {
					hb = s.HeartbeatAge.Round(100 * time.Millisecond).String()
				}
				fmt.Fprintf(stdout, "%-8d %-9s %5d %-8s %10d %10s %8.1f %9s %6d %6d %s\n", s.Version, s.VersionStatus, s.Shard, s.Status, s.Applied, lag, s.LagSeconds, hb, s.OwnerEpoch, s.Parked, s.Error)
			}
		})
	case "rebuild":
		if from != "" {
			vs, err := back.List(ctx)
			if err != nil {
				return err
			}
			for _, v := range vs {
				if v.Projection == name && v.Status == "active" && !strings.HasPrefix(v.Source, from) {
					return fmt.Errorf("%w: %s reads from %s; a runner's source is set in its code: deploy a runner of a new version with the other source instead", errUsage, name, v.Source)
				}
			}
		}
		v, err := back.Rebuild(ctx, name, shards)
		if err != nil {
			return unknown(err)
		}
		return emit(map[string]any{"projection": name, "version": v, "status": "building"}, func() {
			fmt.Fprintf(stdout, "%s v%d registered as building: running runners build it from the start while the active version serves; `orchestrix projections status %s` shows its lag, `orchestrix projections cutover %s` switches to it\n", name, v, name, name)
		})
	case "cutover":
		if version == 0 {
			vs, err := back.List(ctx)
			if err != nil {
				return err
			}
			for _, v := range vs {
				if v.Projection == name && v.Status == "building" && v.Version > version {
					version = v.Version
				}
			}
			if version == 0 {
				return fmt.Errorf("%w: %s has no building version (start one with `orchestrix projections rebuild %s`)", errUsage, name, name)
			}
		}
		// The lag of a topic source is counted here, from the brokers.
		vs, err := back.List(ctx)
		if err != nil {
			return err
		}
		for _, v := range vs {
			if v.Projection != name || v.Version != version || !strings.HasPrefix(v.Source, "topic:") {
				continue
			}
			seeds := flagenv.List(*brokers)
			if len(seeds) == 0 {
				return fmt.Errorf("%w: %s v%d reads %s: --brokers or KAFKA_BROKERS is required to check its lag", errUsage, name, version, v.Source)
			}
			st, err := back.Status(ctx, name)
			if err != nil {
				return unknown(err)
			}
			if err := topicLag(ctx, back, sec, seeds, name, st); err != nil {
				return fmt.Errorf("lag of %s: %w", v.Source, err)
			}
			for _, sh := range st {
				if sh.Version == version && (sh.LagEvents < 0 || sh.LagEvents > maxLag) {
					return fmt.Errorf("projections: %s v%d shard %d is %d events behind (--max-lag %d): %w", name, version, sh.Shard, sh.LagEvents, maxLag, projections.ErrLagging)
				}
			}
		}
		if err := back.Cutover(ctx, name, version, maxLag); err != nil {
			return unknown(err)
		}
		return emit(map[string]any{"projection": name, "active": version}, func() {
			fmt.Fprintf(stdout, "%s: v%d is active; the previous version is retired and kept for `orchestrix projections rollback %s`\n", name, version, name)
		})
	case "skip":
		if err := back.SkipStopped(ctx, name, version, shard); err != nil {
			return unknown(err)
		}
		return emit(map[string]any{"projection": name, "shard": shard, "skip": true}, func() {
			fmt.Fprintf(stdout, "%s shard %d: its owner parks the event it is stopped on within a second and goes on (`orchestrix projections parked list %s` shows it)\n", name, shard, name)
		})
	case "rollback":
		v, err := back.Rollback(ctx, name)
		if err != nil {
			return unknown(err)
		}
		return emit(map[string]any{"projection": name, "active": v}, func() { fmt.Fprintf(stdout, "%s: v%d is active again\n", name, v) })
	case "parked list":
		if _, err := back.Status(ctx, name); err != nil {
			return unknown(err)
		}
		dls, err := back.DeadLetters(ctx, name, all, limit)
		if err != nil {
			return err
		}
		return emit(dls, func() {
			for _, d := range dls {
				fmt.Fprintf(stdout, "%d\tv%d shard %d\t%s\t%s v%d (%s, position %d)\tattempts %d\t%s\t%s\n", d.ID, d.Version, d.Shard, d.Status,
					d.Event.StreamID, d.Event.Version, d.Event.Type, d.Event.Position, d.Attempts, d.ParkedAt.UTC().Format(time.RFC3339), d.Error)
			}
			fmt.Fprintf(stdout, "%d parked events\n", len(dls))
		})
	default: // parked retry, parked skip
		if _, err := back.Status(ctx, name); err != nil {
			return unknown(err)
		}
		var n int64
		if sub == "parked retry" {
			n, err = back.RetryParked(ctx, name, idList)
		} else {
			n, err = back.SkipParked(ctx, name, idList)
		}
		if err != nil {
			return err
		}
		verb := map[string]string{"parked retry": "marked for retry (the running shard applies them within seconds)", "parked skip": "skipped"}[sub]
		return emit(map[string]any{"projection": name, "count": n}, func() { fmt.Fprintf(stdout, "%d parked events of %s %s\n", n, name, verb) })
	}
}

// topicLag fills in the lag in events of the shards of versions that read
// a topic: the partition's last stable offset less the checkpoint's next
// offset (the log start when the shard has none).
func topicLag(ctx context.Context, back *projections.Postgres, sec *kafkaSecurity, seeds []string, name string, st []projections.ShardStatus) error {
	vs, err := back.List(ctx)
	if err != nil {
		return err
	}
	topics := map[int]string{}
	for _, v := range vs {
		if t, ok := strings.CutPrefix(v.Source, "topic:"); ok && v.Projection == name {
			topics[v.Version] = t
		}
	}
	if len(topics) == 0 {
		return nil
	}
	kopts, err := sec.options()
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(kopts, kgo.SeedBrokers(seeds...))...)
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	var names []string
	for _, t := range topics {
		names = append(names, t)
	}
	ends, err := adm.ListCommittedOffsets(ctx, names...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return err
	}
	starts, err := adm.ListStartOffsets(ctx, names...)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return err
	}
	for i := range st {
		t, ok := topics[st[i].Version]
		if !ok {
			continue
		}
		end, ok1 := ends.Lookup(t, int32(st[i].Shard))
		start, ok2 := starts.Lookup(t, int32(st[i].Shard))
		if !ok1 || !ok2 {
			continue
		}
		next := start.Offset
		if st[i].Cursor != "" {
			if n, err := strconv.ParseInt(st[i].Cursor, 10, 64); err == nil {
				next = max(n, start.Offset)
			}
		}
		st[i].LagEvents = max(end.Offset-next, 0)
	}
	return nil
}
