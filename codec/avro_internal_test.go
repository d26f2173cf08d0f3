package codec

import (
	"strings"
	"testing"
)

// The registry refuses a writer schema the reader cannot read, so resolve
// meets a reader field without default only through a bug; it must still
// fail clearly, never guess.
func TestResolveMissingFieldWithoutDefault(t *testing.T) {
	w, err := parseAvro(`{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseAvro(`{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = resolve(w, r, map[string]any{"a": int32(1)})
	if err == nil || !strings.Contains(err.Error(), "R.b: absent from the writer schema and has no default") {
		t.Fatalf("err = %v", err)
	}
	for _, v := range []any{nil, "x", []any{}, map[string]any{"a": "x"}} {
		if _, err := resolve(w, r, v); err == nil {
			t.Fatalf("resolve(%#v) succeeded", v)
		}
	}
}
