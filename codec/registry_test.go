package codec_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
)

type Deposited struct {
	Account string `json:"account"`
	Amount  int64  `json:"amount"`
	Memo    string `json:"memo,omitempty"`
}

type Withdrawn struct {
	Amount int64 `json:"amount"`
}

func newJSONRegistry(t testing.TB, opts ...codec.RegistryOption) *codec.Registry {
	t.Helper()
	r := codec.NewRegistry(opts...)
	if err := errors.Join(
		codec.RegisterJSON[Deposited](r, "banking.Deposited"),
		codec.RegisterJSON[Withdrawn](r, "banking.Withdrawn"),
	); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestJSONRoundTrip(t *testing.T) {
	r := newJSONRegistry(t)
	for _, tc := range []struct {
		name string
		in   any
		want any
		typ  string
	}{
		{"value", Deposited{Account: "a-1", Amount: 1 << 60, Memo: "x"}, Deposited{Account: "a-1", Amount: 1 << 60, Memo: "x"}, "banking.Deposited"},
		{"pointer", &Withdrawn{Amount: 7}, Withdrawn{Amount: 7}, "banking.Withdrawn"},
		{"zero", Withdrawn{}, Withdrawn{}, "banking.Withdrawn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			typ, ct, ds, data, err := r.Encode(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if typ != tc.typ || ct != codec.ContentTypeJSON || ds != "" {
				t.Fatalf("Encode = %q, %q, %q", typ, ct, ds)
			}
			got, err := r.Decode(typ, ct+"; charset=utf-8", "", data)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Decode = %#v, want %#v", got, tc.want)
			}
		})
	}
}

func TestRegistryErrors(t *testing.T) {
	r := newJSONRegistry(t, codec.WithMaxPayload(64))
	type unregistered struct{}
	big := Deposited{Account: strings.Repeat("x", 100)}
	bigJSON, _ := json.Marshal(big)
	var nilPtr *Deposited
	for _, tc := range []struct {
		name string
		run  func() error
		want error
	}{
		{"encode nil", func() error { _, _, _, _, err := r.Encode(nil); return err }, orchestrix.ErrInvalid},
		{"encode nil pointer", func() error { _, _, _, _, err := r.Encode(nilPtr); return err }, orchestrix.ErrInvalid},
		{"encode unknown", func() error { _, _, _, _, err := r.Encode(unregistered{}); return err }, orchestrix.ErrUnknownType},
		{"encode unmarshalable", func() error {
			r := codec.NewRegistry()
			_ = codec.RegisterJSON[map[string]any](r, "m")
			_, _, _, _, err := r.Encode(map[string]any{"c": make(chan int)})
			return err
		}, orchestrix.ErrInvalid},
		{"encode too large", func() error { _, _, _, _, err := r.Encode(big); return err }, orchestrix.ErrInvalid},
		{"decode too large", func() error { _, err := r.Decode("banking.Deposited", "", "", bigJSON); return err }, orchestrix.ErrInvalid},
		{"decode unknown", func() error { _, err := r.Decode("nope", "", "", []byte("{}")); return err }, orchestrix.ErrUnknownType},
		{"decode bad bytes", func() error { _, err := r.Decode("banking.Deposited", "", "", []byte("{")); return err }, orchestrix.ErrInvalid},
		{"decode wrong content type", func() error {
			_, err := r.Decode("banking.Deposited", "application/avro", "", []byte("{}"))
			return err
		}, orchestrix.ErrInvalid},
		{"register same name", func() error { return codec.RegisterJSON[unregistered](r, "banking.Deposited") }, codec.ErrAlreadyRegistered},
		{"register same Go type", func() error { return codec.RegisterJSON[Deposited](r, "other") }, codec.ErrAlreadyRegistered},
		{"register bad name", func() error { return codec.RegisterJSON[unregistered](r, "") }, orchestrix.ErrInvalid},
		{"upcaster for registered type", func() error {
			return r.RegisterUpcaster("banking.Deposited", func(ct string, d []byte) (string, []byte, error) { return "", nil, nil })
		}, codec.ErrAlreadyRegistered},
		{"nil upcaster", func() error { return r.RegisterUpcaster("old", nil) }, orchestrix.ErrInvalid},
		{"encode nil event", func() error { return r.EncodeEvent(nil) }, orchestrix.ErrInvalid},
		{"decode nil command", func() error { return r.DecodeCommand(nil) }, orchestrix.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestPayloadTooLarge(t *testing.T) {
	r := newJSONRegistry(t, codec.WithMaxPayload(16))
	_, _, _, _, err := r.Encode(Deposited{Account: "0123456789abcdef"})
	var tooLarge *codec.PayloadTooLargeError
	if !errors.As(err, &tooLarge) || tooLarge.Limit != 16 || tooLarge.Size <= 16 {
		t.Fatalf("Encode err = %v, want *PayloadTooLargeError", err)
	}
	_, err = r.Decode("banking.Withdrawn", "", "", bytes.Repeat([]byte(" "), 17))
	var de *codec.DecodeError
	if !errors.As(err, &de) || !errors.As(err, &tooLarge) || tooLarge.Size != 17 {
		t.Fatalf("Decode err = %v, want *DecodeError wrapping *PayloadTooLargeError", err)
	}
	if _, _, _, _, err := codec.NewRegistry(codec.WithMaxPayload(0)).Encode(nil); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Fatal(err)
	}
}

func TestDecodeErrorNamesType(t *testing.T) {
	r := newJSONRegistry(t)
	_, err := r.Decode("banking.Deposited", "", "", []byte(`{"amount":"x"}`))
	var de *codec.DecodeError
	if !errors.As(err, &de) || de.Type != "banking.Deposited" || de.Err == nil {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "banking.Deposited") {
		t.Fatalf("message %q does not name the type", err)
	}
}

// rename returns an upcaster to newType that renames JSON field from to to.
func rename(newType, from, to string) codec.Upcaster {
	return func(ct string, data []byte) (string, []byte, error) {
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			return "", nil, err
		}
		if v, ok := m[from]; ok {
			m[to] = v
			delete(m, from)
		}
		b, err := json.Marshal(m)
		return newType, b, err
	}
}

func TestUpcasterChain(t *testing.T) {
	r := newJSONRegistry(t)
	// v1 {"acct","amt"} -> v2 {"account","amt"} -> v3 = banking.Deposited
	if err := errors.Join(
		r.RegisterUpcaster("banking.Deposited.v1", rename("banking.Deposited.v2", "acct", "account")),
		r.RegisterUpcaster("banking.Deposited.v2", rename("banking.Deposited", "amt", "amount")),
	); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterUpcaster("banking.Deposited.v1", rename("x", "a", "b")); !errors.Is(err, codec.ErrAlreadyRegistered) {
		t.Fatalf("second upcaster: %v", err)
	}
	want := Deposited{Account: "a-1", Amount: 5}
	for _, tc := range []struct{ typ, data string }{
		{"banking.Deposited.v1", `{"acct":"a-1","amt":5}`},
		{"banking.Deposited.v2", `{"account":"a-1","amt":5}`},
		{"banking.Deposited", `{"account":"a-1","amount":5}`},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			got, err := r.Decode(tc.typ, codec.ContentTypeJSON, "", []byte(tc.data))
			if err != nil || got != want {
				t.Fatalf("Decode = %#v, %v", got, err)
			}
		})
	}

	t.Run("event is updated", func(t *testing.T) {
		ext := map[string]string{"tenant": "t1"}
		e := orchestrix.Event{Metadata: orchestrix.Metadata{Type: "banking.Deposited.v1", Extensions: ext}, ContentType: codec.ContentTypeJSON, Data: []byte(`{"acct":"a-1","amt":5}`)}
		if err := r.DecodeEvent(&e); err != nil {
			t.Fatal(err)
		}
		if e.Payload != want || e.Type != "banking.Deposited" || !json.Valid(e.Data) || !strings.Contains(string(e.Data), `"amount"`) {
			t.Fatalf("event = %+v", e)
		}
		if len(ext) != 1 {
			t.Fatalf("caller's extensions changed: %v", ext)
		}
	})
}

func TestUpcasterLoopAndFailure(t *testing.T) {
	r := newJSONRegistry(t)
	same := func(to string) codec.Upcaster {
		return func(ct string, d []byte) (string, []byte, error) { return to, d, nil }
	}
	if err := errors.Join(
		r.RegisterUpcaster("a", same("b")),
		r.RegisterUpcaster("b", same("c")),
		r.RegisterUpcaster("c", same("a")),
		r.RegisterUpcaster("self", same("self")),
		r.RegisterUpcaster("broken", func(string, []byte) (string, []byte, error) { return "", nil, errors.New("boom") }),
		r.RegisterUpcaster("to-nothing", same("")),
	); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		typ  string
		want error
	}{
		{"a", codec.ErrUpcastLoop},
		{"self", codec.ErrUpcastLoop},
		{"broken", orchestrix.ErrInvalid},
		{"to-nothing", orchestrix.ErrInvalid},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			_, err := r.Decode(tc.typ, "", "", []byte("{}"))
			var de *codec.DecodeError
			if !errors.Is(err, tc.want) || !errors.As(err, &de) || !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("err = %v, want %v in a *DecodeError", err, tc.want)
			}
		})
	}
}

func TestEncodeDecodeCommand(t *testing.T) {
	r := newJSONRegistry(t)
	c := orchestrix.Command{AggregateID: "a-1", Payload: &Withdrawn{Amount: 3}}
	if err := r.EncodeCommand(&c); err != nil {
		t.Fatal(err)
	}
	if c.Type != "banking.Withdrawn" || c.ContentType != codec.ContentTypeJSON || string(c.Data) != `{"amount":3}` || c.Extensions != nil {
		t.Fatalf("command = %+v", c)
	}
	c.Payload = nil
	if err := r.DecodeCommand(&c); err != nil || c.Payload != (Withdrawn{Amount: 3}) {
		t.Fatalf("DecodeCommand: %+v, %v", c.Payload, err)
	}
	c.Payload = nil
	if err := r.EncodeCommand(&c); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Fatalf("EncodeCommand(nil payload) = %v", err)
	}
}
