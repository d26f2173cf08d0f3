package flagenv

import (
	"slices"
	"testing"
)

func TestOr(t *testing.T) {
	t.Setenv("ORCHESTRIX_FLAGENV_SET", "v")
	t.Setenv("ORCHESTRIX_FLAGENV_EMPTY", "")
	if got := Or("ORCHESTRIX_FLAGENV_SET", "d"); got != "v" {
		t.Errorf("set: %q", got)
	}
	if got := Or("ORCHESTRIX_FLAGENV_EMPTY", "d"); got != "d" {
		t.Errorf("empty: %q", got)
	}
}

func TestList(t *testing.T) {
	for in, want := range map[string][]string{
		"":                nil,
		" , ,":            nil,
		"a":               {"a"},
		" a , b,,c ":      {"a", "b", "c"},
		"127.0.0.1:19092": {"127.0.0.1:19092"},
	} {
		if got := List(in); !slices.Equal(got, want) {
			t.Errorf("List(%q) = %q, want %q", in, got, want)
		}
	}
}
