package banking

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/projections"
	"github.com/orchestrix/orchestrix/stores"
)

// StatementProjection is the name of the account-statement projection,
// and StatementTable the base name of its table (queries read the view of
// that name, which points at the active version's table).
const (
	StatementProjection = "statements"
	StatementTable      = "statements"
)

// StatementLine is one line of an account's statement: one per event of
// the account, in version order, with the balance after it.
type StatementLine struct {
	Version uint64 `json:"version"`
	// Kind is "opened", "deposit" or "withdrawal".
	Kind    string `json:"kind"`
	Amount  int64  `json:"amount"`
	Balance int64  `json:"balance"`
	// Ref is the event's correlation ID: "saga:<type>:<transfer ID>" for
	// the lines of a transfer, empty for direct commands.
	Ref string    `json:"ref,omitempty"`
	At  time.Time `json:"at"`
}

// StatementLineOf returns the statement line of a stored banking event
// (decoded from its JSON data), given the account's balance before it;
// ok is false for an event type that makes no line.
func StatementLineOf(e orchestrix.Event, before int64) (line StatementLine, ok bool, err error) {
	line = StatementLine{Version: e.Version, Balance: before, Ref: e.CorrelationID, At: e.Time.UTC().Truncate(time.Microsecond)}
	var amount struct {
		Amount int64 `json:"amount"`
	}
	switch e.Type {
	case TypeAccountOpened:
		line.Kind = "opened"
		return line, true, nil
	case TypeDeposited, TypeWithdrawn:
		if err := json.Unmarshal(e.Data, &amount); err != nil {
			return line, false, fmt.Errorf("banking: %s %s v%d: %w", e.Type, e.StreamID, e.Version, err)
		}
	default:
		return line, false, nil
	}
	line.Amount = amount.Amount
	if e.Type == TypeDeposited {
		line.Kind, line.Balance = "deposit", before+amount.Amount
	} else {
		line.Kind, line.Balance = "withdrawal", before-amount.Amount
	}
	return line, true, nil
}

// Statement folds an account's events (in version order) into its
// statement: what the projection must hold for it.
func Statement(events []orchestrix.Event) ([]StatementLine, error) {
	var out []StatementLine
	var bal int64
	for _, e := range events {
		l, ok, err := StatementLineOf(e, bal)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, l)
			bal = l.Balance
		}
	}
	return out, nil
}

// StreamStatement reads an account's stream from a store and folds it
// into its statement (see [Statement]): the reference a projected
// statement is checked against.
func StreamStatement(ctx context.Context, store stores.StreamReader, account string) ([]StatementLine, error) {
	var events []orchestrix.Event
	for e, err := range store.ReadStream(ctx, account, 0) {
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", account, err)
		}
		events = append(events, e)
	}
	return Statement(events)
}

// ApplyStatementMemory is the statement projection's handler on the
// projections.Memory backend: table b.Table(StatementTable) maps an
// account to its []StatementLine (a new slice per change: readers may
// keep what they got).
func ApplyStatementMemory(_ context.Context, tx *projections.MemTx, b projections.Batch) error {
	table := b.Table(StatementTable)
	for _, e := range b.Events {
		v, _ := tx.Get(table, e.StreamID)
		lines, _ := v.([]StatementLine)
		var before int64
		if len(lines) > 0 {
			before = lines[len(lines)-1].Balance
		}
		l, ok, err := StatementLineOf(e, before)
		if err != nil {
			return err
		}
		if ok {
			tx.Put(table, e.StreamID, append(slices.Clip(lines), l))
		}
	}
	return nil
}

// MemoryStatement returns an account's statement as the view of m shows
// it (the active version).
func MemoryStatement(m *projections.Memory, account string) []StatementLine {
	v, _ := m.Get(StatementTable, account)
	lines, _ := v.([]StatementLine)
	return lines
}

// SetupStatementPostgres returns the statement projection's Setup for
// the projections.Postgres backend in schema: it creates the version's
// table "<schema>.statements_v<N>" (account, version) → line.
func SetupStatementPostgres(schema string) func(ctx context.Context, tx pgx.Tx, version int) error {
	return func(ctx context.Context, tx pgx.Tx, version int) error {
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+pgx.Identifier{schema, projections.VersionTable(StatementTable, version)}.Sanitize()+` (
			account text NOT NULL, version bigint NOT NULL, kind text NOT NULL, amount bigint NOT NULL,
			balance bigint NOT NULL, ref text NOT NULL, at timestamptz NOT NULL, PRIMARY KEY (account, version))`)
		return err
	}
}

// ApplyStatementPostgres returns the statement projection's handler for
// the projections.Postgres backend in schema: per batch, one query for
// the balances its accounts ended with and one multi-row insert of the
// new lines.
func ApplyStatementPostgres(schema string) projections.Handler[pgx.Tx] {
	return func(ctx context.Context, tx pgx.Tx, b projections.Batch) error {
		table := pgx.Identifier{schema, b.Table(StatementTable)}.Sanitize()
		var accounts []string
		seen := map[string]bool{}
		for _, e := range b.Events {
			if !seen[e.StreamID] {
				seen[e.StreamID] = true
				accounts = append(accounts, e.StreamID)
			}
		}
		balance := make(map[string]int64, len(accounts))
		rows, err := tx.Query(ctx, `SELECT DISTINCT ON (account) account, balance FROM `+table+
			` WHERE account = ANY($1) ORDER BY account, version DESC`, accounts)
		if err != nil {
			return err
		}
		for rows.Next() {
			var a string
			var bal int64
			if err := rows.Scan(&a, &bal); err != nil {
				return err
			}
			balance[a] = bal
		}
		if err := rows.Err(); err != nil {
			return err
		}
		var (
			acc, kind, ref        []string
			ver, amount, balances []int64
			at                    []time.Time
		)
		for _, e := range b.Events {
			l, ok, err := StatementLineOf(e, balance[e.StreamID])
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			balance[e.StreamID] = l.Balance
			acc, kind, ref = append(acc, e.StreamID), append(kind, l.Kind), append(ref, l.Ref)
			ver, amount, balances = append(ver, int64(l.Version)), append(amount, l.Amount), append(balances, l.Balance)
			at = append(at, l.At)
		}
		if len(acc) == 0 {
			return nil
		}
		_, err = tx.Exec(ctx, `INSERT INTO `+table+` (account, version, kind, amount, balance, ref, at)
			SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::timestamptz[])`,
			acc, ver, kind, amount, balances, ref, at)
		return err
	}
}

// Querier is what the statement readers query with: a pool, a connection
// or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// PostgresStatement reads an account's statement through the view
// "<schema>.statements" (the active version).
func PostgresStatement(ctx context.Context, q Querier, schema, account string) ([]StatementLine, error) {
	all, err := queryStatements(ctx, q, pgx.Identifier{schema, StatementTable}.Sanitize(), account)
	return all[account], err
}

// PostgresStatements reads every account's statement in one query (one
// snapshot): through the view when version is 0, else from that
// version's table whatever its status.
func PostgresStatements(ctx context.Context, q Querier, schema string, version int) (map[string][]StatementLine, error) {
	table := pgx.Identifier{schema, StatementTable}.Sanitize()
	if version > 0 {
		table = pgx.Identifier{schema, projections.VersionTable(StatementTable, version)}.Sanitize()
	}
	return queryStatements(ctx, q, table, "")
}

// MemoryStatements returns every account's statement as the view of m
// shows it (one snapshot), or version's table when version > 0.
func MemoryStatements(m *projections.Memory, version int) map[string][]StatementLine {
	table := StatementTable
	if version > 0 {
		table = projections.VersionTable(StatementTable, version)
	}
	out := map[string][]StatementLine{}
	for k, v := range m.Table(table) {
		lines, _ := v.([]StatementLine)
		out[k] = lines
	}
	return out
}

func queryStatements(ctx context.Context, q Querier, table, account string) (map[string][]StatementLine, error) {
	rows, err := q.Query(ctx, `SELECT account, version, kind, amount, balance, ref, at FROM `+table+
		` WHERE $1 = '' OR account = $1 ORDER BY account, version`, account)
	if err != nil {
		return nil, fmt.Errorf("banking: read statements: %w", err)
	}
	defer rows.Close()
	out := map[string][]StatementLine{}
	for rows.Next() {
		var a string
		var v int64
		var l StatementLine
		if err := rows.Scan(&a, &v, &l.Kind, &l.Amount, &l.Balance, &l.Ref, &l.At); err != nil {
			return nil, fmt.Errorf("banking: read statements: %w", err)
		}
		l.Version, l.At = uint64(v), l.At.UTC()
		out[a] = append(out[a], l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("banking: read statements: %w", err)
	}
	return out, nil
}
