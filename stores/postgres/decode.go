package postgres

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/orchestrix/orchestrix/stores"
)

// eventColumnOIDs are the types of eventColumns, in order.
var eventColumnOIDs = [...]uint32{
	pgtype.Int8OID,        // position
	pgtype.TextOID,        // stream_id
	pgtype.Int8OID,        // version
	pgtype.TextOID,        // id
	pgtype.TextOID,        // type
	pgtype.TextOID,        // source
	pgtype.TextOID,        // subject
	pgtype.TimestamptzOID, // time
	pgtype.TextOID,        // content_type
	pgtype.ByteaOID,       // data
	pgtype.TextOID,        // correlation_id
	pgtype.TextOID,        // causation_id
	pgtype.TextOID,        // traceparent
	pgtype.JSONBOID,       // extensions
	pgtype.TextOID,        // command_id
}

// binaryEventColumns reports whether rowDecoder can decode rows with these
// fields: [tx_id::text,] eventColumns, with int8, timestamptz and bytea in
// binary format (text and jsonb may come in either).
func binaryEventColumns(fields []pgconn.FieldDescription, withTx bool) bool {
	if withTx {
		if len(fields) == 0 || fields[0].DataTypeOID != pgtype.TextOID {
			return false
		}
		fields = fields[1:]
	}
	if len(fields) != len(eventColumnOIDs) {
		return false
	}
	for i, f := range fields {
		if f.DataTypeOID != eventColumnOIDs[i] {
			return false
		}
		switch f.DataTypeOID {
		case pgtype.Int8OID, pgtype.TimestamptzOID, pgtype.ByteaOID:
			if f.Format != pgtype.BinaryFormatCode {
				return false
			}
		case pgtype.JSONBOID:
			// The binary form is a version byte, then the text.
			if f.Format == pgtype.BinaryFormatCode {
				return false
			}
		}
	}
	return true
}

// rowDecoder decodes the rows of one page from their wire bytes, with
// fewer allocations than rows.Scan: a string column equal to the previous
// row's (a stream's events come together, and most share their type,
// source and content type) reuses its string; the others of a row share
// one allocation; the payloads are cut from shared blocks.
type rowDecoder struct {
	prev  [len(eventColumnOIDs)]string
	buf   []byte
	block []byte
}

// dataBlock is the size of the blocks payloads are cut from: a payload
// kept after its page keeps at most this much memory alive.
const dataBlock = 32 << 10

// pgEpoch is 2000-01-01 UTC, PostgreSQL's timestamp epoch, in Unix seconds.
const pgEpoch = 946_684_800

var errNull = errors.New("unexpected NULL")

// decode fills e from one row's values, as described by binaryEventColumns.
func (d *rowDecoder) decode(e *stores.Entry, vals [][]byte, withTx bool) error {
	var tx uint64
	if withTx {
		t, ok := parseUint(vals[0])
		if !ok {
			return fmt.Errorf("tx id %q is not a number", vals[0])
		}
		tx, vals = t, vals[1:]
	}
	if len(vals) != len(eventColumnOIDs) {
		return fmt.Errorf("got %d columns, want %d", len(vals), len(eventColumnOIDs))
	}
	pos, err := int8Value(vals[0])
	if err != nil {
		return fmt.Errorf("position: %w", err)
	}
	ver, err := int8Value(vals[2])
	if err != nil {
		return fmt.Errorf("event at position %d: version: %w", pos, err)
	}
	e.Position, e.Version = uint64(pos), uint64(ver)
	if withTx {
		e.Cursor = stores.Cursor{Tx: tx, Position: e.Position}
	}
	e.Time, err = timestamptzValue(vals[7])
	if err != nil {
		return fmt.Errorf("event at position %d: time: %w", pos, err)
	}
	if vals[9] == nil {
		return fmt.Errorf("event at position %d: data: %w", pos, errNull)
	}
	e.Data = d.bytes(vals[9])
	if ext := vals[13]; len(ext) > 0 {
		if err := json.Unmarshal(ext, &e.Extensions); err != nil {
			return fmt.Errorf("event at position %d: extensions: %w", pos, err)
		}
	}

	// The text columns: reuse the previous row's string where equal,
	// make the others from one allocation.
	targets := [...]struct {
		col int
		dst *string
	}{
		{1, &e.StreamID}, {3, &e.ID}, {4, &e.Type}, {5, &e.Source}, {6, &e.Subject}, {8, &e.ContentType},
		{10, &e.CorrelationID}, {11, &e.CausationID}, {12, &e.TraceParent}, {14, &e.CommandID},
	}
	d.buf = d.buf[:0]
	var fresh [len(targets)]bool
	for i, t := range targets {
		v := vals[t.col]
		if v == nil {
			return fmt.Errorf("event at position %d: column %d: %w", pos, t.col, errNull)
		}
		if len(v) == 0 || string(v) == d.prev[t.col] {
			*t.dst = d.prev[t.col]
			if len(v) == 0 {
				*t.dst = ""
			}
			continue
		}
		fresh[i] = true
		d.buf = append(d.buf, v...)
	}
	if len(d.buf) > 0 {
		all, off := string(d.buf), 0
		for i, t := range targets {
			if !fresh[i] {
				continue
			}
			n := len(vals[t.col])
			*t.dst = all[off : off+n]
			d.prev[t.col] = *t.dst
			off += n
		}
	}
	return nil
}

// bytes returns a copy of v cut from the current block, or allocated
// alone when large.
func (d *rowDecoder) bytes(v []byte) []byte {
	if len(v) > dataBlock/4 {
		return bytes.Clone(v)
	}
	if len(v) > cap(d.block)-len(d.block) {
		d.block = make([]byte, 0, dataBlock)
	}
	n := len(d.block)
	d.block = append(d.block, v...)
	return d.block[n:len(d.block):len(d.block)]
}

func int8Value(v []byte) (int64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("int8 of %d bytes", len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// timestamptzValue decodes a binary timestamptz (microseconds since
// 2000-01-01 UTC) to a UTC time.
func timestamptzValue(v []byte) (time.Time, error) {
	if len(v) != 8 {
		return time.Time{}, fmt.Errorf("timestamptz of %d bytes", len(v))
	}
	us := int64(binary.BigEndian.Uint64(v))
	if us == math.MaxInt64 || us == math.MinInt64 {
		return time.Time{}, errors.New("infinite timestamp")
	}
	sec, frac := us/1_000_000, us%1_000_000
	if frac < 0 {
		sec, frac = sec-1, frac+1_000_000
	}
	return time.Unix(sec+pgEpoch, frac*1000).UTC(), nil
}

// parseUint parses a decimal uint64 without allocating.
func parseUint(v []byte) (uint64, bool) {
	if len(v) == 0 || len(v) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (math.MaxUint64-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}
