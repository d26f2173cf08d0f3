package outbox

import (
	"bytes"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

func TestHeadersRoundTrip(t *testing.T) {
	in := []kgo.RecordHeader{{Key: "ce_id", Value: []byte("1")}, {Key: "empty", Value: []byte{}}, {Key: "bin", Value: []byte{0xff, 0, 1}}, {Key: "ce_id", Value: []byte("dup")}}
	b, err := encodeHeaders(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := decodeHeaders(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("%d headers back, want %d", len(out), len(in))
	}
	for i := range in {
		if out[i].Key != in[i].Key || !bytes.Equal(out[i].Value, in[i].Value) {
			t.Errorf("header %d = %q:%q, want %q:%q", i, out[i].Key, out[i].Value, in[i].Key, in[i].Value)
		}
	}
	if hs, err := decodeHeaders(nil); hs != nil || err != nil {
		t.Errorf("decodeHeaders(nil) = %v, %v", hs, err)
	}
}
