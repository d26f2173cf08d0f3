package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Execer is anything that can execute a statement: a pgx.Tx, *pgx.Conn,
// *pgxpool.Pool or *pgxpool.Conn. Pass the transaction whose commit must
// include the messages.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Message is one Kafka record to publish through the outbox table.
type Message struct {
	// Topic is the record's topic; it must exist when the relay
	// publishes the message.
	Topic string
	// Key is the record key (nil: no key). Keep one aggregate's messages
	// under one key to keep them in order.
	Key []byte
	// Value is the record value.
	Value []byte
	// Headers are the record headers, in order.
	Headers []kgo.RecordHeader
}

// MaxMessageSize bounds a message's key, value and headers together.
const MaxMessageSize = 1 << 20

// Writer writes messages to the outbox table of one schema, inside the
// caller's transaction, so they are published if and only if that
// transaction commits. It is safe for concurrent use.
type Writer struct {
	insert string
}

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// NewWriter returns a writer for the outbox table of schema (created by
// the stores/postgres migrations, `orchestrix migrate`).
func NewWriter(schema string) (*Writer, error) {
	if !schemaName.MatchString(schema) {
		return nil, fmt.Errorf("outbox: schema name %q must match %s: %w", schema, schemaName, orchestrix.ErrInvalid)
	}
	return &Writer{insert: `INSERT INTO ` + pgx.Identifier{schema, "outbox"}.Sanitize() + ` (topic, key, value, headers)
	SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::jsonb[])`}, nil
}

// Write inserts msgs, in order, with one statement on db. The relay
// publishes them in that order once db's transaction commits, and never
// if it rolls back. Invalid messages (bad topic name, oversized) fail the
// whole call with an error matching orchestrix.ErrInvalid, before
// anything is written.
func (w *Writer) Write(ctx context.Context, db Execer, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	topics := make([]string, len(msgs))
	keys := make([][]byte, len(msgs))
	values := make([][]byte, len(msgs))
	headers := make([][]byte, len(msgs))
	var errs []error
	for i, m := range msgs {
		if err := checkTopic(m.Topic); err != nil {
			errs = append(errs, fmt.Errorf("message %d: %w", i, err))
		}
		size := len(m.Key) + len(m.Value)
		for _, h := range m.Headers {
			size += len(h.Key) + len(h.Value)
		}
		if size > MaxMessageSize {
			errs = append(errs, fmt.Errorf("message %d: %d bytes, limit %d", i, size, MaxMessageSize))
		}
		topics[i], keys[i], values[i] = m.Topic, m.Key, m.Value
		if len(m.Headers) > 0 {
			b, err := encodeHeaders(m.Headers)
			if err != nil {
				errs = append(errs, fmt.Errorf("message %d: %w", i, err))
			}
			headers[i] = b
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("outbox: write: %w: %w", orchestrix.ErrInvalid, err)
	}
	if _, err := db.Exec(ctx, w.insert, topics, keys, values, headers); err != nil {
		return fmt.Errorf("outbox: write %d messages: %w", len(msgs), err)
	}
	return nil
}

// WriteCommands writes commands to topic as CloudEvents records
// (codec.CommandToRecord: key = aggregate ID), the way a saga emits the
// commands of a step in the transaction that saves its state.
func (w *Writer) WriteCommands(ctx context.Context, db Execer, topic string, cmds ...orchestrix.Command) error {
	msgs := make([]Message, 0, len(cmds))
	for i, c := range cmds {
		r, err := codec.CommandToRecord(topic, c)
		if err != nil {
			return fmt.Errorf("outbox: command %d: %w", i, err)
		}
		msgs = append(msgs, Message{Topic: topic, Key: r.Key, Value: r.Value, Headers: r.Headers})
	}
	return w.Write(ctx, db, msgs...)
}

// checkTopic checks a Kafka topic name: 1-249 of [a-zA-Z0-9._-], not "."
// or "..".
func checkTopic(name string) error {
	if name == "" || len(name) > 249 || name == "." || name == ".." ||
		strings.IndexFunc(name, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
		}) >= 0 {
		return fmt.Errorf("topic name %q must be 1-249 of [a-zA-Z0-9._-]", name)
	}
	return nil
}

// header is one header in the table's jsonb column: the value as text
// ("v") when it is UTF-8, else base64 ("b").
type header struct {
	K string  `json:"k"`
	V *string `json:"v,omitempty"`
	B []byte  `json:"b,omitempty"`
}

func encodeHeaders(hs []kgo.RecordHeader) ([]byte, error) {
	out := make([]header, len(hs))
	for i, h := range hs {
		if !utf8.ValidString(h.Key) {
			return nil, fmt.Errorf("header key %q is not UTF-8", h.Key)
		}
		out[i].K = h.Key
		if utf8.Valid(h.Value) {
			v := string(h.Value)
			out[i].V = &v
		} else {
			out[i].B = h.Value
		}
	}
	return json.Marshal(out)
}

func decodeHeaders(b []byte) ([]kgo.RecordHeader, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var in []header
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, err
	}
	out := make([]kgo.RecordHeader, len(in))
	for i, h := range in {
		out[i].Key = h.K
		switch {
		case h.V != nil:
			out[i].Value = []byte(*h.V)
		case h.B != nil:
			out[i].Value = h.B
		default:
			out[i].Value = []byte{}
		}
	}
	return out, nil
}
