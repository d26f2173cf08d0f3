package codec_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/twmb/franz-go/pkg/kgo"
)

// encodeHeaders and decodeHeaders give the fuzzer headers as one string,
// "key=value" lines.
func encodeHeaders(hs []kgo.RecordHeader) string {
	var b strings.Builder
	for _, h := range hs {
		b.WriteString(h.Key + "=" + string(h.Value) + "\n")
	}
	return b.String()
}

func decodeHeaders(s string) []kgo.RecordHeader {
	var hs []kgo.RecordHeader
	for line := range strings.SplitSeq(s, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			hs = append(hs, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
	}
	return hs
}

// FuzzRecordToEvent checks that no record makes RecordToEvent panic, that
// every error is a *PoisonError, and that every accepted record maps back
// to a record that reads as the same event.
func FuzzRecordToEvent(f *testing.F) {
	valid, err := codec.EventToRecord("x", sampleEvent())
	if err != nil {
		f.Fatal(err)
	}
	cmd, _ := codec.CommandToRecord("x", sampleCommand())
	vh := encodeHeaders(valid.Headers)
	f.Add([]byte("acc-1"), []byte(`{"amount":10}`), vh)
	f.Add([]byte(nil), []byte(nil), encodeHeaders(cmd.Headers))
	f.Add([]byte("k"), []byte(nil), "ce_specversion=1.0\nce_id=1\nce_source=s\nce_type=t\nce_time=2025-01-01T00:00:00+02:00\n")
	f.Add([]byte("k"), []byte(nil), strings.Replace(vh, "ce_time=2025", "ce_time=20x5", 1))
	f.Add([]byte("acc-2"), []byte("x"), vh+"ce_id=dup\n")
	f.Add([]byte(nil), []byte(nil), "")
	f.Fuzz(func(t *testing.T, key, value []byte, headers string) {
		r := &kgo.Record{Key: key, Value: value, Headers: decodeHeaders(headers)}
		e, err := codec.RecordToEvent(r)
		if err != nil {
			var pe *codec.PoisonError
			if !errors.As(err, &pe) || pe.Reason == "" || !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("error %v is not a *PoisonError", err)
			}
			return
		}
		again, err := codec.EventToRecord("x", e)
		if err != nil {
			t.Fatalf("accepted event %+v cannot be written: %v", e, err)
		}
		e2, err := codec.RecordToEvent(again)
		if err != nil {
			t.Fatalf("rewritten record is poison: %v", err)
		}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("round trip changed the event:\n%+v\n%+v", e, e2)
		}
		_, _ = codec.RecordToCommand(r)
	})
}

// FuzzDecodeAvro checks that no payload makes Avro decoding panic.
func FuzzDecodeAvro(f *testing.F) {
	r := codec.NewRegistry()
	if err := codec.RegisterAvro[Order](r, "o", orderSchema); err != nil {
		f.Fatal(err)
	}
	_, _, _, data, err := r.Encode(sampleOrder())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := r.Decode("o", codec.ContentTypeAvro, "", data); err != nil && !errors.Is(err, orchestrix.ErrInvalid) {
			t.Fatalf("error %v does not match ErrInvalid", err)
		}
	})
}
