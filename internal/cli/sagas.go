package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/outbox"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores/postgres"
)

const sagasUsage = "sagas list [--type T --status S --older-than 1h] | show ID --type T | retry ID --type T [--note N] | resolve ID --type T --note N | timers [--type T] | prune --type T --older-than 24h"

// sagasConfig holds the flags of the sagas subcommands.
type sagasConfig struct {
	url, schema, typ, status, output, note string
	olderThan                              time.Duration
	limit                                  int
	id                                     string
}

func runSagas(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: %s", errUsage, sagasUsage)
	}
	sub := args[0]
	switch sub {
	case "list", "show", "retry", "resolve", "timers", "prune":
	case "-h", "--help", "help":
		fmt.Fprintln(stderr, "usage: orchestrix "+sagasUsage)
		return flag.ErrHelp
	default:
		return fmt.Errorf("%w: unknown sagas command %q: %s", errUsage, sub, sagasUsage)
	}
	var c sagasConfig
	fs := flags("sagas "+sub, stderr)
	url := urlFlag(fs, "database-url", flagenv.Or("DATABASE_URL", ""), "PostgreSQL `URL` (env DATABASE_URL)")
	fs.StringVar(&c.schema, "schema", flagenv.Or("ORCHESTRIX_SCHEMA", postgres.DefaultSchema), "schema holding the tables (env ORCHESTRIX_SCHEMA)")
	fs.StringVar(&c.typ, "type", flagenv.Or("ORCHESTRIX_SAGA_TYPE", ""), "saga type (env ORCHESTRIX_SAGA_TYPE)")
	fs.StringVar(&c.output, "o", flagenv.Or("ORCHESTRIX_OUTPUT", "text"), "output: text or json (env ORCHESTRIX_OUTPUT)")
	switch sub {
	case "list":
		fs.StringVar(&c.status, "status", "", "only instances in this status (running, compensating, completed, compensated, compensation_failed)")
		fs.DurationVar(&c.olderThan, "older-than", 0, "only instances not updated for this long (e.g. 1h)")
		fs.IntVar(&c.limit, "limit", 100, "at most this many instances")
	case "timers":
		fs.IntVar(&c.limit, "limit", 100, "at most this many timers")
	case "retry":
		fs.StringVar(&c.note, "note", "", "why, kept in the instance's history")
	case "resolve":
		fs.StringVar(&c.note, "note", "", "what was done by hand (required), kept in the instance's history")
	case "prune":
		fs.DurationVar(&c.olderThan, "older-than", 24*time.Hour, "prune the inbox of instances ended (completed, compensated) longer ago than this")
	}
	rest := args[1:]
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		c.id, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() == 1 && c.id == "" {
		c.id = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	c.url = *url
	var errs []error
	if c.url == "" {
		errs = append(errs, errors.New("--database-url or DATABASE_URL is required"))
	}
	if c.output != "text" && c.output != "json" {
		errs = append(errs, fmt.Errorf("-o %q must be text or json", c.output))
	}
	needID := sub == "show" || sub == "retry" || sub == "resolve"
	if needID && (c.id == "" || c.typ == "") {
		errs = append(errs, fmt.Errorf("sagas %s needs a saga ID and --type", sub))
	}
	if !needID && c.id != "" {
		errs = append(errs, fmt.Errorf("sagas %s takes no saga ID", sub))
	}
	if sub == "prune" && c.typ == "" {
		errs = append(errs, errors.New("sagas prune needs --type"))
	}
	if sub == "resolve" && strings.TrimSpace(c.note) == "" {
		errs = append(errs, errors.New("sagas resolve needs --note saying what was done by hand"))
	}
	switch sagas.Status(c.status) {
	case "", sagas.StatusRunning, sagas.StatusCompensating, sagas.StatusCompleted, sagas.StatusCompensated, sagas.StatusCompensationFailed:
	default:
		errs = append(errs, fmt.Errorf("--status %q is not a saga status", c.status))
	}
	if c.olderThan < 0 {
		errs = append(errs, fmt.Errorf("--older-than %s must not be negative", c.olderThan))
	}
	if sub == "list" || sub == "timers" {
		errs = append(errs, intIn("limit", c.limit, 1, 100_000))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	pool, err := openPool(ctx, c.url)
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := sagas.NewPostgresStore(pool, c.schema)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	err = sagasRun(ctx, sub, c, store, stdout)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
		return fmt.Errorf("schema %q has no saga tables (run `orchestrix migrate --schema %s`): %w", c.schema, c.schema, err)
	}
	return err
}

func sagasRun(ctx context.Context, sub string, c sagasConfig, store *sagas.PostgresStore, stdout io.Writer) error {
	switch sub {
	case "list":
		f := sagas.Filter{Type: c.typ, Status: sagas.Status(c.status), Limit: c.limit}
		if c.olderThan > 0 {
			f.UpdatedBefore = time.Now().Add(-c.olderThan)
		}
		list, err := store.List(ctx, f)
		if err != nil {
			return err
		}
		if c.output == "json" {
			return writeJSON(stdout, list)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TYPE\tID\tSTATUS\tSTEP\tTRIES\tVERSION\tUPDATED\tREASON")
		for _, i := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", i.Type, i.ID, i.Status, i.Step, i.Tries, i.Version, i.UpdatedAt.Format(time.RFC3339), i.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d instances\n", len(list))
		return nil
	case "show":
		i, err := store.Get(ctx, c.typ, c.id)
		if err != nil {
			return err
		}
		h, err := store.History(ctx, c.typ, c.id)
		if err != nil {
			return err
		}
		var timers []sagas.Timer
		all, err := store.Timers(ctx, c.typ, 100_000)
		if err != nil {
			return err
		}
		for _, t := range all {
			if t.SagaID == c.id {
				timers = append(timers, t)
			}
		}
		if c.output == "json" {
			return writeJSON(stdout, struct {
				Instance sagas.Instance     `json:"instance"`
				Timeline []sagas.Transition `json:"timeline"`
				Timers   []sagas.Timer      `json:"timers"`
			}{i, h, timers})
		}
		fmt.Fprintf(stdout, "%s/%s  status %s  step %d (attempt %d, try %d)  version %d  definition %d\nstarted %s  updated %s\n",
			i.Type, i.ID, i.Status, i.Step, i.Attempt, i.Tries, i.Version, i.DefinitionVersion, i.StartedAt.Format(time.RFC3339), i.UpdatedAt.Format(time.RFC3339))
		if i.Reason != "" {
			fmt.Fprintf(stdout, "reason: %s\n", i.Reason)
		}
		fmt.Fprintf(stdout, "state: %s\n\ntimeline:\n", i.State)
		for _, t := range h {
			fmt.Fprintf(stdout, "  %3d  %s  %-8s %-20s → %-20s %s\n", t.Version, t.At.Format(time.RFC3339Nano), t.InputKind, t.From, t.To, t.Note)
		}
		fmt.Fprintln(stdout, "\ntimers:")
		for _, t := range timers {
			fmt.Fprintf(stdout, "  %s due %s\n", t.Fired.ID(), t.Due.Format(time.RFC3339Nano))
		}
		return nil
	case "prune":
		// What the runtime's RunInboxRetention does on a timer, once:
		// the inbox rows of ended instances, whose duplicates can no
		// longer change them, in batches of sagas.PruneBatch.
		var instances, rows int
		before := time.Now().UTC().Add(-c.olderThan)
		for {
			n, k, err := store.PruneInbox(ctx, c.typ, before, sagas.PruneBatch)
			instances, rows = instances+n, rows+k
			if err != nil {
				return err
			}
			if n < sagas.PruneBatch {
				break
			}
		}
		if c.output == "json" {
			return writeJSON(stdout, map[string]any{"type": c.typ, "instances": instances, "inbox_rows": rows})
		}
		fmt.Fprintf(stdout, "pruned the inbox of %d ended %s instances (%d rows)\n", instances, c.typ, rows)
		return nil
	case "timers":
		ts, err := store.Timers(ctx, c.typ, c.limit)
		if err != nil {
			return err
		}
		if c.output == "json" {
			return writeJSON(stdout, ts)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TYPE\tID\tTIMER\tDUE")
		for _, t := range ts {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Type, t.SagaID, t.Fired.ID(), t.Due.Format(time.RFC3339Nano))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d timers\n", len(ts))
		return nil
	}
	// retry, resolve: checked here for a clear answer, applied by the
	// saga's runtime through its inbox (the CLI has no definitions).
	i, err := store.Get(ctx, c.typ, c.id)
	if err != nil {
		return err
	}
	if i.Status != sagas.StatusCompensationFailed {
		return fmt.Errorf("%s/%s is %s: only a compensation_failed instance can be retried or resolved: %w", c.typ, c.id, i.Status, sagas.ErrNotAllowed)
	}
	kind := sagas.KindRetry
	if sub == "resolve" {
		kind = sagas.KindResolve
	}
	w, err := outbox.NewWriter(c.schema)
	if err != nil {
		return err
	}
	op := uuid.NewString()
	if err := w.Write(ctx, store.Pool(), sagas.OperatorMessage(c.typ, c.id, kind, op, c.note)); err != nil {
		return err
	}
	if c.output == "json" {
		return writeJSON(stdout, map[string]string{"type": c.typ, "id": c.id, "action": string(kind), "input": "op:" + op, "topic": sagas.InboxTopic(c.typ)})
	}
	fmt.Fprintf(stdout, "%s of %s/%s queued (input op:%s to %s); the saga's runtime applies it once the relay publishes it: `orchestrix sagas show %s --type %s` shows the result\n",
		kind, c.typ, c.id, op, sagas.InboxTopic(c.typ), c.id, c.typ)
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
