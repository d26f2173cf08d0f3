package codec_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
)

const orderSchema = `{"type":"record","name":"Order","namespace":"shop","fields":[
 {"name":"id","type":"string"},
 {"name":"amount","type":"long"},
 {"name":"qty","type":"int"},
 {"name":"note","type":["null","string"],"default":null},
 {"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]}},
 {"name":"tags","type":{"type":"array","items":"string"}},
 {"name":"attrs","type":{"type":"map","values":"long"}},
 {"name":"blob","type":"bytes"},
 {"name":"hash","type":{"type":"fixed","name":"Hash","size":4}},
 {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}},
 {"name":"due","type":["null",{"type":"long","logicalType":"timestamp-millis"}],"default":null},
 {"name":"ttl","type":{"type":"long","logicalType":"time-micros"}},
 {"name":"customer","type":{"type":"record","name":"Customer","fields":[
   {"name":"name","type":"string"},{"name":"vip","type":"boolean"},{"name":"score","type":"float"}]}},
 {"name":"referrer","type":["null","Customer"],"default":null},
 {"name":"ratio","type":"double"},
 {"name":"ok","type":"boolean","default":true}
]}`

type Customer struct {
	Name  string  `json:"name"`
	VIP   bool    `json:"vip"`
	Score float32 `json:"score"`
}

type Order struct {
	ID       string           `json:"id"`
	Amount   int64            `json:"amount"`
	Qty      int32            `json:"qty"`
	Note     *string          `json:"note"`
	Status   string           `json:"status"`
	Tags     []string         `json:"tags"`
	Attrs    map[string]int64 `json:"attrs"`
	Blob     []byte           `json:"blob"`
	Hash     []byte           `json:"hash"`
	At       time.Time        `json:"at"`
	Due      *time.Time       `json:"due"`
	TTL      time.Duration    `json:"ttl"`
	Customer Customer         `json:"customer"`
	Referrer *Customer        `json:"referrer"`
	Ratio    float64          `json:"ratio"`
	Extra    string           `json:"extra,omitempty"` // not in the schema: dropped
}

func sampleOrder() Order {
	note := "leave at door"
	due := time.Date(2025, 3, 4, 5, 6, 7, 8e6, time.UTC)
	return Order{
		ID: "o-1", Amount: 1<<60 + 1, Qty: -3, Note: &note, Status: "PAID",
		Tags: []string{"a", "b"}, Attrs: map[string]int64{"x": 1}, Blob: []byte{0, 1, 254, 255}, Hash: []byte("abcd"),
		At: time.Date(2025, 1, 2, 3, 4, 5, 123456000, time.UTC), Due: &due, TTL: 1500 * time.Microsecond,
		Customer: Customer{Name: "Ann", VIP: true, Score: 1.5}, Referrer: &Customer{Name: "Bob"}, Ratio: 0.25,
	}
}

func TestAvroRoundTrip(t *testing.T) {
	r := codec.NewRegistry()
	if err := codec.RegisterAvro[Order](r, "shop.OrderPlaced", orderSchema); err != nil {
		t.Fatal(err)
	}
	minimal := Order{Status: "NEW", Tags: []string{}, Attrs: map[string]int64{}, Blob: []byte{}, Hash: []byte("wxyz"), At: time.Unix(0, 0).UTC()}
	for _, tc := range []struct {
		name string
		in   any
		want Order
	}{
		{"full", sampleOrder(), sampleOrder()},
		{"pointer, nulls", &minimal, minimal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			typ, ct, ds, data, err := r.Encode(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if typ != "shop.OrderPlaced" || ct != codec.ContentTypeAvro || !strings.HasPrefix(ds, "avro:shop.OrderPlaced:") || len(ds) != len("avro:shop.OrderPlaced:")+16 {
				t.Fatalf("Encode = %q, %q, %q", typ, ct, ds)
			}
			for _, schema := range []string{ds, ""} {
				got, err := r.Decode(typ, ct, schema, data)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("Decode =\n%#v\nwant\n%#v", got, tc.want)
				}
			}
		})
	}

	t.Run("errors", func(t *testing.T) {
		bad := sampleOrder()
		bad.Status = "LOST"
		if _, _, _, _, err := r.Encode(bad); !errors.Is(err, orchestrix.ErrInvalid) {
			t.Fatalf("bad enum: %v", err)
		}
		_, _, ds, data, _ := r.Encode(sampleOrder())
		for name, data := range map[string][]byte{"truncated": data[:len(data)/2], "trailing": append(data, 0), "empty": nil} {
			_, err := r.Decode("shop.OrderPlaced", codec.ContentTypeAvro, ds, data)
			var de *codec.DecodeError
			if !errors.As(err, &de) || !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("%s: %v", name, err)
			}
		}
		_, err := r.Decode("shop.OrderPlaced", codec.ContentTypeAvro, "avro:shop.OrderPlaced:0000000000000000", data)
		if !errors.Is(err, codec.ErrUnknownSchema) {
			t.Fatalf("unknown schema: %v", err)
		}
	})
}

// Data that claims more than it holds must fail before anything allocates
// by the claim, and nesting is bounded.
func TestAvroHostileData(t *testing.T) {
	r := codec.NewRegistry()
	type Node struct {
		Next *Node `json:"next"`
	}
	if err := errors.Join(
		codec.RegisterAvro[[]any](r, "nulls", `{"type":"array","items":"null"}`),
		codec.RegisterAvro[map[string]string](r, "strings", `{"type":"map","values":"string"}`),
		codec.RegisterAvro[Node](r, "list", `{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}`),
	); err != nil {
		t.Fatal(err)
	}
	deep := bytes.Repeat([]byte{2}, 5000) // union branch 1 (a Node), 5000 times
	deep = append(deep, 0)
	for _, tc := range []struct {
		name, typ string
		data      []byte
	}{
		{"array of 2^30 nulls in 5 bytes", "nulls", binary.AppendVarint(nil, 1<<30)},
		{"negative block count", "nulls", binary.AppendVarint(binary.AppendVarint(nil, -(1<<30)), 4)},
		{"string of 2^40 bytes", "strings", binary.AppendVarint(binary.AppendVarint([]byte{2, 2, 'k'}, 1<<40), 0)},
		{"nested 5000 deep", "list", deep},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := r.Decode(tc.typ, "", "", tc.data); !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	got, err := r.Decode("list", "", "", []byte{2, 2, 0})
	if err != nil || got.(Node).Next.Next == nil || got.(Node).Next.Next.Next != nil {
		t.Fatalf("recursive type: %#v, %v", got, err)
	}
}

func TestRegisterAvroErrors(t *testing.T) {
	r := codec.NewRegistry()
	_ = codec.RegisterJSON[Withdrawn](r, "w")
	for _, tc := range []struct {
		name string
		run  func() error
		want error
	}{
		{"not JSON", func() error { return codec.RegisterAvro[Order](r, "o", `{`) }, orchestrix.ErrInvalid},
		{"unknown named type", func() error { return codec.RegisterAvro[Order](r, "o", `"Nope"`) }, orchestrix.ErrInvalid},
		{"decimal", func() error {
			return codec.RegisterAvro[Order](r, "o", `{"type":"bytes","logicalType":"decimal","precision":"x"}`)
		}, orchestrix.ErrInvalid},
		{"bad fields", func() error { return codec.RegisterAvro[Order](r, "o", `{"type":"record","name":"R","fields":[1]}`) }, orchestrix.ErrInvalid},
		{"bad enum", func() error { return codec.RegisterAvro[Order](r, "o", `{"type":"enum","name":"E","symbols":3}`) }, orchestrix.ErrInvalid},
		{"old schema of unknown type", func() error { return r.RegisterAvroSchema("nope", `"string"`) }, orchestrix.ErrUnknownType},
		{"old schema of JSON type", func() error { return r.RegisterAvroSchema("w", `"string"`) }, orchestrix.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// Three versions of one event type. v2 widens amount to long, drops memo,
// adds currency with a default; v3 adds branch without a default.
const (
	depositV1 = `{"type":"record","name":"Deposited","namespace":"banking","fields":[
		{"name":"amount","type":"int"},{"name":"memo","type":"string"},
		{"name":"kind","type":{"type":"enum","name":"Kind","symbols":["CASH","WIRE","CHEQUE"]}}]}`
	depositV2 = `{"type":"record","name":"Deposited","namespace":"banking","fields":[
		{"name":"amount","type":"long"},
		{"name":"currency","type":"string","default":"EUR"},
		{"name":"at","type":{"type":"long","logicalType":"timestamp-millis"},"default":1000},
		{"name":"source","type":["null","string"],"default":null},
		{"name":"kind","type":{"type":"enum","name":"Kind","symbols":["CASH","WIRE","OTHER"],"default":"OTHER"}}]}`
	depositV3 = `{"type":"record","name":"Deposited","namespace":"banking","fields":[
		{"name":"amount","type":"long"},{"name":"branch","type":"string"}]}`
)

type DepositV1 struct {
	Amount int32  `json:"amount"`
	Memo   string `json:"memo"`
	Kind   string `json:"kind"`
}

type DepositV2 struct {
	Amount   int64     `json:"amount"`
	Currency string    `json:"currency"`
	At       time.Time `json:"at"`
	Source   *string   `json:"source"`
	Kind     string    `json:"kind"`
}

func TestAvroSchemaEvolution(t *testing.T) {
	old := codec.NewRegistry()
	if err := codec.RegisterAvro[DepositV1](old, "banking.Deposited", depositV1); err != nil {
		t.Fatal(err)
	}
	typ, ct, dsV1, cheque, err := old.Encode(DepositV1{Amount: 42, Memo: "gone", Kind: "CHEQUE"})
	if err != nil {
		t.Fatal(err)
	}
	_, _, _, wire, _ := old.Encode(DepositV1{Amount: 7, Kind: "WIRE"})

	r := codec.NewRegistry()
	if err := codec.RegisterAvro[DepositV2](r, "banking.Deposited", depositV2); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Decode(typ, ct, dsV1, cheque); !errors.Is(err, codec.ErrUnknownSchema) {
		t.Fatalf("before RegisterAvroSchema: %v", err)
	}
	if err := r.RegisterAvroSchema("banking.Deposited", depositV1); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterAvroSchema("banking.Deposited", depositV1); err != nil {
		t.Fatalf("second registration: %v", err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want DepositV2
	}{
		{"removed field, new defaults, enum default", cheque, DepositV2{Amount: 42, Currency: "EUR", At: time.UnixMilli(1000).UTC(), Kind: "OTHER"}},
		{"enum symbol kept", wire, DepositV2{Amount: 7, Currency: "EUR", At: time.UnixMilli(1000).UTC(), Kind: "WIRE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Decode(typ, ct, dsV1, tc.data)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Decode = %#v, want %#v", got, tc.want)
			}
		})
	}

	t.Run("through an event", func(t *testing.T) {
		e := orchestrix.Event{Metadata: orchestrix.Metadata{Type: typ, Extensions: map[string]string{codec.DataSchemaKey: dsV1}}, ContentType: ct, Data: wire}
		if err := r.DecodeEvent(&e); err != nil || e.Payload.(DepositV2).Amount != 7 {
			t.Fatalf("DecodeEvent: %+v, %v", e.Payload, err)
		}
	})

	t.Run("new field without default", func(t *testing.T) {
		r3 := codec.NewRegistry()
		if err := codec.RegisterAvro[DepositV2](r3, "banking.Deposited", depositV3); err != nil {
			t.Fatal(err)
		}
		err := r3.RegisterAvroSchema("banking.Deposited", depositV1)
		if !errors.Is(err, orchestrix.ErrInvalid) || !strings.Contains(err.Error(), "banking.Deposited.branch is new and has no default") {
			t.Fatalf("err = %v", err)
		}
		if _, err := r3.Decode(typ, ct, dsV1, cheque); !errors.Is(err, codec.ErrUnknownSchema) {
			t.Fatalf("decode with refused schema: %v", err)
		}
	})

	t.Run("incompatible types", func(t *testing.T) {
		r4 := codec.NewRegistry()
		if err := codec.RegisterAvro[DepositV1](r4, "banking.Deposited", depositV1); err != nil {
			t.Fatal(err)
		}
		// long cannot narrow to int.
		if err := r4.RegisterAvroSchema("banking.Deposited", depositV2); !errors.Is(err, orchestrix.ErrInvalid) {
			t.Fatalf("err = %v", err)
		}
	})
}
