package testdomain_test

import (
	"errors"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/internal/testdomain"
)

// TestRules runs each command of the ledger's rules through the aggregate
// (validation, then Decide) on the state its given events fold to.
func TestRules(t *testing.T) {
	agg := testdomain.Aggregate(t)
	opened := testdomain.Opened{Name: "ada"}
	for _, c := range []struct {
		name  string
		given []any
		cmd   any
		want  any    // the one event, when accepted
		code  string // the rejection's or the field error's code
	}{
		{"open", nil, testdomain.Open{Name: "ada"}, opened, ""},
		{"open without a name", nil, testdomain.Open{}, nil, "required"},
		{"open twice", []any{opened}, testdomain.Open{Name: "bob"}, nil, "already_open"},
		{"post before open", nil, testdomain.Post{Amount: 5}, nil, "not_open"},
		{"credit", []any{opened}, testdomain.Post{Amount: 5}, testdomain.Posted{Amount: 5}, ""},
		{"zero", []any{opened}, testdomain.Post{}, nil, "nonzero"},
		{"debit to zero", []any{opened, testdomain.Posted{Amount: 5}}, testdomain.Post{Amount: -5}, testdomain.Posted{Amount: -5}, ""},
		{"debit below zero", []any{opened, testdomain.Posted{Amount: 5}}, testdomain.Post{Amount: -6}, nil, "insufficient_funds"},
		{"unknown command", []any{opened}, struct{}{}, nil, "unknown_command"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var state testdomain.Ledger
			for _, e := range c.given {
				state = agg.Evolve(state, orchestrix.Event{Payload: e})
			}
			evs, err := agg.Decide(state, orchestrix.Command{Payload: c.cmd})
			if c.code == "" {
				if err != nil || len(evs) != 1 || evs[0] != c.want {
					t.Fatalf("decide = %v, %v; want [%v]", evs, err, c.want)
				}
				return
			}
			if got := code(err); got != c.code || !errors.Is(err, orchestrix.ErrRejected) || evs != nil {
				t.Fatalf("decide = %v, %v (code %q); want a rejection %q", evs, err, got, c.code)
			}
		})
	}
}

func code(err error) string {
	var rej *orchestrix.Rejection
	var inv *orchestrix.ValidationError
	switch {
	case errors.As(err, &rej):
		return rej.Code
	case errors.As(err, &inv) && len(inv.Fields) == 1:
		return inv.Fields[0].Code
	}
	return ""
}

// TestEvolve: Opened names the ledger, Posted adds to its balance, and
// other events leave it as it is.
func TestEvolve(t *testing.T) {
	var l testdomain.Ledger
	for _, p := range []any{testdomain.Opened{Name: "ada"}, testdomain.Posted{Amount: 7}, "not a ledger event", testdomain.Posted{Amount: -2}} {
		l = testdomain.Evolve(l, orchestrix.Event{Payload: p})
	}
	if l != (testdomain.Ledger{Name: "ada", Balance: 5}) {
		t.Fatalf("ledger = %+v, want ada with balance 5", l)
	}
}

// TestRegistry: every command and event round-trips through the registry
// under its type name.
func TestRegistry(t *testing.T) {
	reg := testdomain.Registry(t)
	for typ, p := range map[string]any{testdomain.TypeOpen: testdomain.Open{Name: "ada"}, testdomain.TypePost: testdomain.Post{Amount: -3},
		testdomain.TypeOpened: testdomain.Opened{Name: "ada"}, testdomain.TypePosted: testdomain.Posted{Amount: 4}} {
		e := orchestrix.Event{Payload: p}
		if err := reg.EncodeEvent(&e); err != nil || e.Type != typ {
			t.Fatalf("encode %T = type %q, %v; want %q", p, e.Type, err, typ)
		}
		e.Payload = nil
		if err := reg.DecodeEvent(&e); err != nil || e.Payload != p {
			t.Fatalf("decode %s = %v, %v; want %v", typ, e.Payload, err, p)
		}
	}
	if _, err := testdomain.NewAggregate(aggregates.SnapshotEvery(2)); err != nil {
		t.Fatal(err)
	}
}

// TestOnlyTestsImport: no file of the repository but a _test.go file
// imports this package (it imports "testing").
func TestOnlyTestsImport(t *testing.T) {
	const self = "github.com/orchestrix/orchestrix/internal/testdomain"
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "vendor"):
			return filepath.SkipDir
		case d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go"):
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); p == self {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("%s imports %s, which is for tests only", rel, self)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
